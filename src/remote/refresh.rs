//! Refresh: read every node's live certificate state, in parallel up to `--parallelism`,
//! one connection and one remote command per node.

use crate::model::inventory::{Inventory, NodeInventory, UnreachableNode};
use crate::model::topology::{check_hostname_suffix, Node, Topology};
use crate::pki::catalogue::CertEntry;
use crate::remote::script::{parse_output, refresh_script, NodeReadSpec};
use crate::remote::ssh::{RemoteError, SshFleet};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct RefreshOptions {
    pub parallelism: usize,
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

/// Reads every node of the topology. The first master is the jumpbox itself.
pub async fn refresh(
    fleet: Arc<SshFleet>,
    topo: &Topology,
    catalogue: &[CertEntry],
    opts: RefreshOptions,
) -> Result<Inventory, RefreshError> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(opts.parallelism.max(1)));
    let jumpbox = topo.masters.first().map(|m| m.name.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for node in topo.nodes() {
        let spec = NodeReadSpec::for_node(node, catalogue, &topo.admin_username);
        let fleet = fleet.clone();
        let semaphore = semaphore.clone();
        let node: Node = node.clone();
        let via_jumpbox = Some(&node.name) != jumpbox.as_ref();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await.expect("semaphore never closes");
            let result = read_node(&fleet, &node, via_jumpbox, &spec).await;
            (node.name, result)
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
    // Keep the topology's order so plans and tables read the same every time.
    let order: Vec<&str> = topo.nodes().map(|n| n.name.as_str()).collect();
    nodes.sort_by_key(|n| order.iter().position(|o| *o == n.node));
    unreachable.sort_by_key(|u| order.iter().position(|o| *o == u.node));
    for n in &nodes {
        if !n.hostname.is_empty() {
            check_hostname_suffix(&topo.name_suffix, &n.hostname).map_err(RefreshError::NameSuffix)?;
        }
    }
    if !unreachable.is_empty() && !opts.skip_unreachable {
        return Err(RefreshError::Unreachable(unreachable));
    }
    Ok(Inventory { taken_at: time::OffsetDateTime::now_utc(), nodes, unreachable })
}

async fn read_node(fleet: &SshFleet, node: &Node, via_jumpbox: bool, spec: &NodeReadSpec) -> Result<NodeInventory, RemoteError> {
    let session = fleet.connect(&node.name, via_jumpbox).await?;
    let out = session.run_script_as_root("refresh", &refresh_script(spec)).await;
    session.close().await;
    let out = out?;
    parse_output(&node.name, spec, &out).map_err(|e| RemoteError::Unreachable { node: node.name.clone(), message: e.to_string() })
}
