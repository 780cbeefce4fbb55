//! Refresh: read every node's live certificate state, in parallel up to `--parallelism`,
//! one connection and one remote command per node. How a node's script is run is the
//! caller's: `plan` and `status` open a connection per node ([`refresh_over_ssh`]), `apply`
//! reads over the sessions its walk goes on using.

use crate::model::inventory::{Inventory, NodeInventory, UnreachableNode};
use crate::model::topology::{check_hostname_suffix, Node, Topology};
use crate::pki::catalogue::CertEntry;
use crate::remote::script::{parse_output, refresh_script, NodeReadSpec};
use crate::remote::ssh::{RemoteError, SshFleet};
use std::future::Future;
use std::sync::Arc;

/// How many nodes may be read at once. One limit may be shared by many reads: `status
/// --fleet` reads every cluster side by side within a single `--parallelism`.
#[derive(Debug, Clone)]
pub struct ReadLimit(Arc<tokio::sync::Semaphore>);

impl ReadLimit {
    pub fn new(at_once: usize) -> Self {
        ReadLimit(Arc::new(tokio::sync::Semaphore::new(at_once.max(1))))
    }

    /// Waits for a turn; the turn ends when the permit is dropped.
    pub async fn permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.0.clone().acquire_owned().await.expect("the read limit is never closed")
    }
}

#[derive(Debug, Clone)]
pub struct RefreshOptions {
    pub limit: ReadLimit,
    /// Record unreachable nodes instead of failing.
    pub skip_unreachable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// A host key problem stops everything, whatever `--skip-unreachable` says.
    #[error(transparent)]
    HostKey(RemoteError),
    #[error("{} node(s) could not be read:\n{}", .0.len(), .0.iter().map(|u| format!("  {}: {}", u.node, u.error)).collect::<Vec<_>>().join("\n"))]
    Unreachable(Vec<UnreachableNode>),
    #[error("{0}")]
    NameSuffix(String),
}

/// Reads every node of the topology over fresh SSH connections, one per node; the first
/// master is the jumpbox itself.
pub async fn refresh_over_ssh(
    fleet: Arc<SshFleet>,
    topo: &Topology,
    catalogue: &[CertEntry],
    opts: RefreshOptions,
) -> Result<Inventory, RefreshError> {
    refresh_some_over_ssh(fleet, topo, None, catalogue, opts).await
}

/// Runs one read-only script as root on `node` over a connection of its own, closed after:
/// through the jumpbox, unless the node is the jumpbox (the first master behind --ssh-host).
pub async fn run_as_root_once(fleet: &SshFleet, jumpbox: Option<&str>, node: &str, what: &str, script: &str) -> Result<String, RemoteError> {
    let session = fleet.connect(node, Some(node) != jumpbox).await?;
    let out = session.run_script_as_root(what, script).await;
    session.close().await;
    out
}

/// As [`refresh_over_ssh`], for the named nodes of the topology only (all when `only` is None).
pub async fn refresh_some_over_ssh(
    fleet: Arc<SshFleet>,
    topo: &Topology,
    only: Option<&[String]>,
    catalogue: &[CertEntry],
    opts: RefreshOptions,
) -> Result<Inventory, RefreshError> {
    let jumpbox = topo.masters.first().map(|m| m.name.clone());
    refresh_some(topo, only, catalogue, opts, move |node: Node, script: String| {
        let (fleet, jumpbox) = (fleet.clone(), jumpbox.clone());
        async move { run_as_root_once(&fleet, jumpbox.as_deref(), &node.name, "refresh", &script).await }
    })
    .await
}

/// Reads every node of the topology: `run(node, script)` runs the refresh script as root on
/// the node and returns its stdout. At most `opts.limit` run at once; the result keeps
/// the topology's order, and every hostname is checked against the VM name suffix.
pub async fn refresh<F, Fut>(topo: &Topology, catalogue: &[CertEntry], opts: RefreshOptions, run: F) -> Result<Inventory, RefreshError>
where
    F: Fn(Node, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, RemoteError>> + Send + 'static,
{
    refresh_some(topo, None, catalogue, opts, run).await
}

async fn refresh_some<F, Fut>(topo: &Topology, only: Option<&[String]>, catalogue: &[CertEntry], opts: RefreshOptions, run: F) -> Result<Inventory, RefreshError>
where
    F: Fn(Node, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, RemoteError>> + Send + 'static,
{
    let run = Arc::new(run);
    let limit = opts.limit.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for node in topo.nodes().filter(|n| only.is_none_or(|names| names.contains(&n.name))) {
        let spec = NodeReadSpec::for_node(node, catalogue, &topo.admin_username);
        let (run, limit, node) = (run.clone(), limit.clone(), node.clone());
        tasks.spawn(async move {
            let _permit = limit.permit().await;
            let name = node.name.clone();
            let result = read_node(&*run, node, &spec).await;
            (name, result)
        });
    }
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.expect("refresh task panicked");
        match result {
            Ok(inv) => nodes.push(inv),
            Err(e @ (RemoteError::HostKeyChanged { .. } | RemoteError::HostKeyUnknown { .. })) => {
                tasks.abort_all();
                return Err(RefreshError::HostKey(e));
            }
            Err(e) => unreachable.push(UnreachableNode { node: name, error: e.to_string() }),
        }
    }
    let mut inventory = Inventory { taken_at: time::OffsetDateTime::now_utc(), nodes, unreachable };
    inventory.sort_in_order_of(topo);
    for n in &inventory.nodes {
        if !n.hostname.is_empty() {
            check_hostname_suffix(&topo.name_suffix, &n.hostname).map_err(RefreshError::NameSuffix)?;
        }
    }
    if !inventory.unreachable.is_empty() && !opts.skip_unreachable {
        return Err(RefreshError::Unreachable(inventory.unreachable));
    }
    Ok(inventory)
}

async fn read_node<F, Fut>(run: &F, node: Node, spec: &NodeReadSpec) -> Result<NodeInventory, RemoteError>
where
    F: Fn(Node, String) -> Fut,
    Fut: Future<Output = Result<String, RemoteError>>,
{
    let name = node.name.clone();
    let out = run(node, refresh_script(spec)).await?;
    parse_output(&name, spec, &out).map_err(|e| RemoteError::Unreachable { node: name, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::model::apimodel::ApiModel;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn topology(prefix: &str) -> Topology {
        let json = format!(
            r#"{{"apiVersion":"vlabs","location":"local","properties":{{
            "orchestratorProfile":{{"kubernetesConfig":{{"serviceCidr":"10.0.0.0/16"}}}},
            "masterProfile":{{"count":3,"dnsPrefix":"{prefix}","firstConsecutiveStaticIP":"10.255.255.5"}},
            "agentPoolProfiles":[{{"name":"linuxpool","count":3}}],
            "linuxProfile":{{"adminUsername":"azureuser"}}}}}}"#
        );
        let model = ApiModel::parse(SourceFile::from_text("/nonexistent/apimodel.json", &json)).unwrap();
        Topology::derive_with_suffix(&model, "12345678").unwrap()
    }

    /// Two clusters' reads sharing one limit never have more nodes in flight than it allows,
    /// and do fill it.
    #[tokio::test]
    async fn one_limit_bounds_reads_of_many_clusters() {
        let (a, b) = (topology("one"), topology("two"));
        let (cat_a, cat_b) = (crate::pki::catalogue::catalogue(&a), crate::pki::catalogue::catalogue(&b));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let run = |in_flight: Arc<AtomicUsize>, most: Arc<AtomicUsize>| {
            move |node: Node, _script: String| {
                let (in_flight, most) = (in_flight.clone(), most.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Err(RemoteError::Reported(format!("{} is a test node", node.name)))
                }
            }
        };
        let limit = ReadLimit::new(3);
        let opts = RefreshOptions { limit, skip_unreachable: true };
        let (ra, rb) = tokio::join!(
            refresh(&a, &cat_a, opts.clone(), run(in_flight.clone(), most.clone())),
            refresh(&b, &cat_b, opts, run(in_flight.clone(), most.clone()))
        );
        assert_eq!(ra.unwrap().unreachable.len() + rb.unwrap().unreachable.len(), 12, "every node was tried");
        assert_eq!(most.load(Ordering::SeqCst), 3, "at most three nodes of both clusters at once, and three were reached");
    }
}
