//! `status`: a kubeadm-style expiry table of every certificate on every node, read live
//! over SSH (one connection and one command per node).

use super::args::{ClusterArgs, StatusArgs};
use super::validate::{render_expiry_table, ExpiryRow};
use super::Outcome;
use crate::cloud::kube::{self as kube_ops, KubeAccess};
use crate::model::apimodel::ApiModel;
use crate::model::inventory::{Inventory, ObservedContent};
use crate::model::topology::Topology;
use crate::pki::audit::compare;
use crate::pki::catalogue::{self, CertEntry};
use crate::remote::refresh::{refresh_over_ssh, refresh_some_over_ssh, RefreshError, RefreshOptions};
use crate::remote::script::NodeReadSpec;
use crate::remote::ssh::{HostKeyPolicy, SshFleet, SshSettings};
use miette::{miette, IntoDiagnostic};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// File beside the API model where trust-on-first-use records node host keys.
pub const TOFU_KNOWN_HOSTS: &str = "certrotate_known_hosts";

/// SSH settings from the command line; says what is missing and how to supply it.
pub fn ssh_settings(args: &ClusterArgs, model: &ApiModel, topo: &Topology) -> miette::Result<SshSettings> {
    let ssh_host = args.ssh_host.as_deref().ok_or_else(|| {
        miette!(
            help = "pass --ssh-host with the address of the jumpbox or first master (as for aks-engine rotate-certs)",
            "reading the nodes needs --ssh-host"
        )
    })?;
    let key = args.linux_ssh_private_key.clone().ok_or_else(|| {
        miette!(help = "pass --linux-ssh-private-key with the admin user's private key file", "reading the nodes needs --linux-ssh-private-key")
    })?;
    if !key.is_file() {
        return Err(miette!(help = "check the path of --linux-ssh-private-key", "SSH private key {} does not exist", key.display()));
    }
    let (host, port) = SshSettings::parse_host(ssh_host, topo.ssh_port);
    let host_keys = match &args.known_hosts {
        Some(p) => {
            if !p.is_file() {
                return Err(miette!(help = "pass an existing known_hosts file, or leave --known-hosts out to trust on first use", "known_hosts file {} does not exist", p.display()));
            }
            HostKeyPolicy::Strict(p.clone())
        }
        None => {
            let p = model.dir().join(TOFU_KNOWN_HOSTS);
            if !p.exists() {
                eprintln!(
                    "note: no --known-hosts given; node host keys seen now are trusted and recorded in {} \
                     (later runs refuse keys that differ)",
                    p.display()
                );
            }
            HostKeyPolicy::TrustOnFirstUse(p)
        }
    };
    Ok(SshSettings {
        jumpbox_host: host,
        jumpbox_port: port,
        user: topo.admin_username.clone(),
        private_key: key,
        host_keys,
        connect_timeout: std::time::Duration::from_secs(15),
        no_private_keys: false,
    })
}

/// How long the Kubernetes API gets to answer the node list: on a cluster whose certificates
/// have expired it never will, and that must not hold up planning.
pub const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin kubeconfig AKS Engine writes beside the API model.
pub fn admin_kubeconfig_path(model: &ApiModel, topo: &Topology) -> PathBuf {
    model.dir().join("kubeconfig").join(format!("kubeconfig.{}.json", topo.location))
}

/// The topology plus the Linux agents the Kubernetes API lists and the API model does not
/// (nodes added by `aks-engine scale`). The API is asked only when the admin kubeconfig is
/// beside the API model, within NODE_LIST_TIMEOUT; whatever happens, the operator gets one
/// `note:` line per thing worth knowing on stderr and the API model's nodes are kept.
pub async fn add_registered_nodes(args: &ClusterArgs, model: &ApiModel, topo: Topology) -> Topology {
    let path = admin_kubeconfig_path(model, &topo);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "note: no admin kubeconfig at {}; the Kubernetes API was not consulted, so only the API model's nodes are included",
            path.display()
        );
        return topo;
    };
    let access = match KubeAccess::from_kubeconfigs(&[(path.display().to_string(), text)], args.apiserver.as_deref()) {
        Ok(access) => access,
        Err(e) => {
            eprintln!("note: the Kubernetes API was not consulted ({e}); only the API model's nodes are included");
            return topo;
        }
    };
    let list = async {
        let (client, _) = access.client(NODE_LIST_TIMEOUT).await?;
        kube_ops::registered_nodes(&client).await
    };
    let registered = match tokio::time::timeout(NODE_LIST_TIMEOUT * 2, list).await {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(e)) => {
            eprintln!("note: the Kubernetes API did not list the nodes ({e}); going on with the API model's nodes");
            return topo;
        }
        Err(_) => {
            eprintln!("note: the Kubernetes API did not list the nodes within {}s; going on with the API model's nodes", (NODE_LIST_TIMEOUT * 2).as_secs());
            return topo;
        }
    };
    let (with, notes) = topo.with_registered_nodes(&registered);
    for note in notes {
        eprintln!("note: {note}");
    }
    for added in topo.agents_missing_from(&with) {
        eprintln!(
            "note: {} is registered in the Kubernetes API but not in the API model (added by aks-engine scale?); it is included as agent {} of pool {}",
            added.name,
            added.index,
            added.pool.as_deref().unwrap_or("?")
        );
    }
    with
}

/// Reads the cluster: API model, topology (with agents only the Kubernetes API knows),
/// catalogue, and the live inventory.
pub fn read_cluster(args: &ClusterArgs) -> miette::Result<(ApiModel, Topology, Vec<CertEntry>, Inventory)> {
    read_cluster_of(args, ApiModel::load(&args.model.api_model)?)
}

/// As [`read_cluster`], with the API model already loaded.
pub fn read_cluster_of(args: &ClusterArgs, model: ApiModel) -> miette::Result<(ApiModel, Topology, Vec<CertEntry>, Inventory)> {
    let topo = Topology::derive(&model, args.model.name_suffix.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    // Refresh sends and reads no private keys (see SshSettings::no_private_keys).
    let settings = SshSettings { no_private_keys: true, ..ssh_settings(args, &model, &topo)? };
    let fleet = Arc::new(SshFleet::new(settings).into_diagnostic()?);
    let opts = RefreshOptions { parallelism: args.parallelism as usize, skip_unreachable: args.skip_unreachable };
    let model_catalogue = catalogue::catalogue(&topo);
    let (topo, cat, inventory) = runtime
        .block_on(async {
            // The Kubernetes API's node list and the reads of the API model's nodes do not
            // depend on each other, so neither waits for the other; only agents that the API
            // adds are read after the list.
            let listing = add_registered_nodes(args, &model, topo.clone());
            // Unreachable nodes are judged once both reads are in, so that the error names
            // every one of them, agents the API added included; host-key errors stop at once.
            let lenient = RefreshOptions { skip_unreachable: true, ..opts };
            let reading = refresh_over_ssh(fleet.clone(), &topo, &model_catalogue, lenient);
            tokio::pin!(listing, reading);
            let (full, mut inventory) = tokio::select! {
                read = &mut reading => {
                    let inventory = read?;
                    (listing.await, inventory)
                }
                full = &mut listing => (full, reading.await?),
            };
            let cat = catalogue::catalogue(&full);
            // A node is read again should the added agents change what it must hold.
            let spec = |node: &crate::model::topology::Node, cat: &[CertEntry]| NodeReadSpec::for_node(node, cat, &full.admin_username);
            let unread: Vec<String> = full
                .nodes()
                .filter(|n| topo.node(&n.name).is_none() || spec(n, &cat) != spec(n, &model_catalogue))
                .map(|n| n.name.clone())
                .collect();
            if !unread.is_empty() {
                let more = refresh_some_over_ssh(fleet, &full, Some(&unread), &cat, lenient).await?;
                inventory.nodes.retain(|n| !unread.contains(&n.node));
                inventory.unreachable.retain(|u| !unread.contains(&u.node));
                inventory.nodes.extend(more.nodes);
                inventory.unreachable.extend(more.unreachable);
                inventory.sort_in_order_of(&full);
            }
            if !opts.skip_unreachable && !inventory.unreachable.is_empty() {
                return Err(RefreshError::Unreachable(inventory.unreachable));
            }
            Ok((full, cat, inventory))
        })
        .map_err(|e: RefreshError| {
            let help = match &e {
                RefreshError::HostKey(_) => "do not go on until you know why the key changed; nothing was read or changed",
                RefreshError::Unreachable(_) => {
                    "check that --ssh-host reaches the nodes and the key is the admin user's; use --skip-unreachable to go on without nodes that are down"
                }
                RefreshError::NameSuffix(_) => "the VM name suffix does not match the nodes: check azuredeploy.json or --name-suffix",
            };
            miette!(help = help, "{e}")
        })?;
    Ok((model, topo, cat, inventory))
}

pub fn run(a: &StatusArgs) -> miette::Result<Outcome> {
    let (_model, _topo, cat, inventory) = read_cluster(&a.cluster)?;
    let rows = expiry_rows(&cat, &inventory, time::OffsetDateTime::now_utc());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
    } else {
        print!("{}", render_expiry_table(&rows));
        for u in &inventory.unreachable {
            println!("unreachable: {}: {}", u.node, u.error);
        }
    }
    Ok(Outcome::Ok)
}

/// One row per certificate file found on a node, with its findings against the catalogue.
pub fn expiry_rows(cat: &[CertEntry], inventory: &Inventory, now: time::OffsetDateTime) -> Vec<ExpiryRow> {
    let mut rows = Vec::new();
    for node in &inventory.nodes {
        for entry in cat.iter().filter(|e| e.holders.contains(&node.node)) {
            let Some(file) = node.file(&entry.cert_file.path) else { continue };
            let location = format!("{}:{}", node.node, entry.cert_file.path.trim_start_matches("/etc/kubernetes/certs/"));
            match &file.content {
                ObservedContent::Certificate { facts, .. } => rows.push(ExpiryRow {
                    certificate: entry.id(),
                    location: location.clone(),
                    expires: facts.not_after.date().to_string(),
                    residual_days: (facts.not_after - now).whole_days(),
                    issuer: facts.issuer.clone(),
                    findings: compare(entry, facts, &location, now).into_iter().map(|f| f.message).collect(),
                }),
                other => rows.push(ExpiryRow {
                    certificate: entry.id(),
                    location,
                    expires: "-".into(),
                    residual_days: 0,
                    issuer: "-".into(),
                    findings: vec![match other {
                        ObservedContent::Missing => "missing".into(),
                        ObservedContent::Unparseable { error } => format!("unreadable: {error}"),
                        _ => "not a certificate".into(),
                    }],
                }),
            }
        }
    }
    rows
}
