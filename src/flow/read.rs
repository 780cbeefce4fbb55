//! The cluster read: every node's certificates over SSH (refresh), and the agents the
//! Kubernetes API lists that the API model does not (nodes added by `aks-engine scale`), the
//! two done side by side. What the operator should know about it comes back as notes.

use crate::cloud::kube::{self as kube_ops, KubeAccess};
use crate::flow::discover::Discovered;
use crate::model::inventory::Inventory;
use crate::model::topology::{Node, Topology};
use crate::pki::catalogue::{self, CertEntry};
pub use crate::remote::refresh::ReadLimit;
use crate::remote::refresh::{refresh_over_ssh, refresh_some_over_ssh, RefreshError, RefreshOptions};
use crate::remote::script::NodeReadSpec;
use crate::remote::ssh::{RemoteError, SshFleet, SshSettings};
use std::sync::Arc;
use std::time::Duration;

/// How long the Kubernetes API gets to answer the node list: on a cluster whose certificates
/// have expired it never will, and that must not hold up planning.
pub const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the read needs besides the discovered cluster.
pub struct ReadInputs {
    /// Connections made by [`read_fleet`].
    pub fleet: Arc<SshFleet>,
    /// Nodes read at once; a fleet's clusters share one.
    pub limit: ReadLimit,
    pub skip_unreachable: bool,
    /// `--apiserver ADDRESS:PORT`, to reach the API by another address than the kubeconfig's.
    pub apiserver: Option<String>,
}

/// The live cluster.
pub struct ClusterRead {
    /// The API model's nodes plus the agents only the Kubernetes API knows.
    pub topology: Topology,
    pub catalogue: Vec<CertEntry>,
    pub inventory: Inventory,
    /// One line per thing worth knowing (the API not consulted, nodes it added, ...).
    pub notes: Vec<String>,
}

/// The connections a read uses: refresh sends and reads no private keys (see
/// SshSettings::no_private_keys).
pub fn read_fleet(ssh: SshSettings) -> Result<Arc<SshFleet>, RemoteError> {
    SshFleet::new(SshSettings { no_private_keys: true, ..ssh }).map(Arc::new)
}

/// The topology plus the Linux agents the Kubernetes API lists and the API model does not.
/// The API is asked only when the admin kubeconfig is beside the API model, within
/// NODE_LIST_TIMEOUT; whatever happens, the API model's nodes are kept.
pub async fn add_registered_nodes(cluster: &Discovered, apiserver: Option<&str>) -> (Topology, Vec<String>) {
    let mut notes = Vec::new();
    let topo = cluster.topology.clone();
    let path = cluster.admin_kubeconfig_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        notes.push(format!("no admin kubeconfig at {}; the Kubernetes API was not consulted, so only the API model's nodes are included", path.display()));
        return (topo, notes);
    };
    let access = match KubeAccess::from_kubeconfigs(&[(path.display().to_string(), text)], apiserver) {
        Ok(access) => access,
        Err(e) => {
            notes.push(format!("the Kubernetes API was not consulted ({e}); only the API model's nodes are included"));
            return (topo, notes);
        }
    };
    let list = async {
        let (client, _) = access.client(NODE_LIST_TIMEOUT).await?;
        kube_ops::registered_nodes(&client).await
    };
    let registered = match tokio::time::timeout(NODE_LIST_TIMEOUT * 2, list).await {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(e)) => {
            notes.push(format!("the Kubernetes API did not list the nodes ({e}); going on with the API model's nodes"));
            return (topo, notes);
        }
        Err(_) => {
            notes.push(format!("the Kubernetes API did not list the nodes within {}s; going on with the API model's nodes", (NODE_LIST_TIMEOUT * 2).as_secs()));
            return (topo, notes);
        }
    };
    let (with, more) = topo.with_registered_nodes(&registered);
    notes.extend(more);
    for added in topo.agents_missing_from(&with) {
        notes.push(format!(
            "{} is registered in the Kubernetes API but not in the API model (added by aks-engine scale?); it is included as agent {} of pool {}",
            added.name,
            added.index,
            added.pool.as_deref().unwrap_or("?")
        ));
    }
    (with, notes)
}

/// Reads the cluster: the nodes over SSH and the Kubernetes API's node list, side by side.
pub async fn read_cluster(cluster: &Discovered, inputs: ReadInputs) -> Result<ClusterRead, RefreshError> {
    let topo = &cluster.topology;
    let fleet = inputs.fleet;
    let model_catalogue = catalogue::catalogue(topo);
    // The node list and the reads of the API model's nodes do not depend on each other, so
    // neither waits for the other; only agents that the API adds are read after the list.
    let listing = add_registered_nodes(cluster, inputs.apiserver.as_deref());
    // Unreachable nodes are judged once both reads are in, so that the error names every
    // one of them, agents the API added included; host-key errors stop at once.
    let lenient = RefreshOptions { limit: inputs.limit.clone(), skip_unreachable: true };
    let reading = refresh_over_ssh(fleet.clone(), topo, &model_catalogue, lenient.clone());
    tokio::pin!(listing, reading);
    let ((full, notes), mut inventory) = tokio::select! {
        read = &mut reading => {
            let inventory = read?;
            (listing.await, inventory)
        }
        full = &mut listing => (full, reading.await?),
    };
    let cat = catalogue::catalogue(&full);
    // A node is read again should the added agents change what it must hold.
    let spec = |node: &Node, cat: &[CertEntry]| NodeReadSpec::for_node(node, cat, &full.admin_username);
    let unread: Vec<String> =
        full.nodes().filter(|n| topo.node(&n.name).is_none() || spec(n, &cat) != spec(n, &model_catalogue)).map(|n| n.name.clone()).collect();
    if !unread.is_empty() {
        let more = refresh_some_over_ssh(fleet, &full, Some(&unread), &cat, lenient).await?;
        inventory.nodes.retain(|n| !unread.contains(&n.node));
        inventory.unreachable.retain(|u| !unread.contains(&u.node));
        inventory.nodes.extend(more.nodes);
        inventory.unreachable.extend(more.unreachable);
        inventory.sort_in_order_of(&full);
    }
    if !inputs.skip_unreachable && !inventory.unreachable.is_empty() {
        return Err(RefreshError::Unreachable(inventory.unreachable));
    }
    Ok(ClusterRead { topology: full, catalogue: cat, inventory, notes })
}
