//! `status`: a kubeadm-style expiry table of every certificate on every node, read live
//! over SSH (one connection and one command per node).

use super::args::{ClusterArgs, StatusArgs};
use super::validate::{render_expiry_table, ExpiryRow};
use super::Outcome;
use crate::model::apimodel::ApiModel;
use crate::model::inventory::{Inventory, ObservedContent};
use crate::model::topology::Topology;
use crate::pki::audit::compare;
use crate::pki::catalogue::{self, CertEntry};
use crate::remote::refresh::{refresh, RefreshError, RefreshOptions};
use crate::remote::ssh::{HostKeyPolicy, SshFleet, SshSettings};
use miette::{miette, IntoDiagnostic};
use std::sync::Arc;

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
    })
}

/// Reads the cluster: API model, topology, catalogue, and the live inventory.
pub fn read_cluster(args: &ClusterArgs) -> miette::Result<(ApiModel, Topology, Vec<CertEntry>, Inventory)> {
    let model = ApiModel::load(&args.model.api_model)?;
    let topo = Topology::derive(&model, args.model.name_suffix.as_deref())?;
    let cat = catalogue::catalogue(&topo);
    let settings = ssh_settings(args, &model, &topo)?;
    let fleet = Arc::new(SshFleet::new(settings).into_diagnostic()?);
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    let opts = RefreshOptions { parallelism: args.parallelism as usize, skip_unreachable: args.skip_unreachable };
    let inventory = runtime.block_on(refresh(fleet, &topo, &cat, opts)).map_err(|e| {
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
