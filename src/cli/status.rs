//! `status`: a kubeadm-style expiry table of every certificate on every node, read live
//! over SSH (one connection and one command per node).

use super::args::{ClusterArgs, StatusArgs};
use super::Outcome;
use crate::flow::expiry::{self, ExpiryRow};
use crate::flow::{self, discover::Discovered, read::{self, ClusterRead, ReadInputs}};
use crate::model::apimodel::ApiModel;
use crate::model::topology::Topology;
use crate::remote::refresh::RefreshError;
use crate::remote::ssh::{HostKeyPolicy, SshSettings};
use miette::{miette, IntoDiagnostic};

/// File beside the API model where trust-on-first-use records node host keys.
pub const TOFU_KNOWN_HOSTS: &str = "certrotate_known_hosts";

/// SSH settings from the command line; says what is missing and how to supply it.
pub fn ssh_settings(args: &ClusterArgs, model: &ApiModel, topo: &Topology) -> miette::Result<SshSettings> {
    ssh_settings_from(args.ssh_host.as_deref(), args.linux_ssh_private_key.as_deref(), args.known_hosts.as_deref(), model, topo)
}

/// As [`ssh_settings`], from the three settings themselves (a fleet file entry's, say).
pub fn ssh_settings_from(
    ssh_host: Option<&str>,
    key: Option<&std::path::Path>,
    known_hosts: Option<&std::path::Path>,
    model: &ApiModel,
    topo: &Topology,
) -> miette::Result<SshSettings> {
    let ssh_host = ssh_host.ok_or_else(|| {
        miette!(
            help = "pass --ssh-host with the address of the jumpbox or first master (as for aks-engine rotate-certs)",
            "reading the nodes needs --ssh-host"
        )
    })?;
    let key = key.map(std::path::Path::to_path_buf).ok_or_else(|| {
        miette!(help = "pass --linux-ssh-private-key with the admin user's private key file", "reading the nodes needs --linux-ssh-private-key")
    })?;
    if !key.is_file() {
        return Err(miette!(help = "check the path of --linux-ssh-private-key", "SSH private key {} does not exist", key.display()));
    }
    let (host, port) = SshSettings::parse_host(ssh_host, topo.ssh_port);
    let host_keys = match known_hosts {
        Some(p) => {
            if !p.is_file() {
                return Err(miette!(help = "pass an existing known_hosts file, or leave --known-hosts out to trust on first use", "known_hosts file {} does not exist", p.display()));
            }
            HostKeyPolicy::Strict(p.to_path_buf())
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

/// Loads the API model and derives the topology, once, for the command.
pub fn discover(args: &ClusterArgs) -> miette::Result<Discovered> {
    discover_with_suffix(args, args.model.name_suffix.as_deref())
}

/// As [`discover`], with the VM name suffix given (a saved plan's, say).
pub fn discover_with_suffix(args: &ClusterArgs, name_suffix: Option<&str>) -> miette::Result<Discovered> {
    discover_model(args, ApiModel::load(&args.model.api_model)?, name_suffix)
}

/// As [`discover_with_suffix`], for the API model already loaded.
pub fn discover_model(args: &ClusterArgs, model: ApiModel, name_suffix: Option<&str>) -> miette::Result<Discovered> {
    let cluster = flow::discover::from_model(model, name_suffix)?;
    if let Some(location) = &args.azure.location {
        flow::discover::check_location(&cluster.model, location)?;
    }
    Ok(cluster)
}

/// Reads the cluster (see [`flow::read`]), printing its notes; the error says what to do.
pub fn read_cluster(args: &ClusterArgs, cluster: &Discovered) -> miette::Result<ClusterRead> {
    let settings = ssh_settings(args, &cluster.model, &cluster.topology)?;
    let fleet = flow::read::read_fleet(settings).into_diagnostic()?;
    let inputs = ReadInputs { fleet, limit: read::ReadLimit::new(args.parallelism as usize), skip_unreachable: args.skip_unreachable, apiserver: args.apiserver.clone() };
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    let read = runtime.block_on(flow::read::read_cluster(cluster, inputs)).map_err(|e: RefreshError| {
        let help = match &e {
            RefreshError::HostKey(_) => "do not go on until you know why the key changed; nothing was read or changed",
            RefreshError::Unreachable(_) => {
                "check that --ssh-host reaches the nodes and the key is the admin user's; use --skip-unreachable to go on without nodes that are down"
            }
            RefreshError::NameSuffix(_) => "the VM name suffix does not match the nodes: check azuredeploy.json, --name-suffix or the API model's dnsPrefix",
        };
        miette!(help = help, "{e}")
    })?;
    for note in &read.notes {
        eprintln!("note: {note}");
    }
    Ok(read)
}

pub fn run(a: &StatusArgs) -> miette::Result<Outcome> {
    if let Some(fleet) = &a.fleet {
        return run_fleet(a, fleet);
    }
    let cluster = discover(&a.cluster)?;
    let ClusterRead { catalogue: cat, inventory, .. } = read_cluster(&a.cluster, &cluster)?;
    let rows = expiry::rows_of_inventory(&cat, &inventory, time::OffsetDateTime::now_utc());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
    } else {
        print!("{}", expiry::render_with_unreachable(&rows, &inventory));
    }
    Ok(Outcome::Ok)
}

/// `status --fleet`: every cluster of the fleet file, one table (or JSON), and the metrics.
fn run_fleet(a: &StatusArgs, fleet_path: &std::path::Path) -> miette::Result<Outcome> {
    use crate::flow::fleet::{self, FleetFile, PreparedCluster};
    let file = FleetFile::load(fleet_path)?;
    let prepared = file
        .clusters
        .iter()
        .map(|entry| {
            let ready = flow::discover::discover(&entry.api_model, entry.name_suffix.as_deref()).map_err(|e| format!("{e}"));
            let name = fleet::cluster_name(entry, ready.as_ref().ok());
            let ready = ready.and_then(|d| {
                let ssh = ssh_settings_from(entry.ssh_host.as_deref(), entry.linux_ssh_private_key.as_deref(), entry.known_hosts.as_deref(), &d.model, &d.topology)
                    .map_err(|e| format!("{e}"))?;
                Ok((d, ssh, entry.apiserver.clone()))
            });
            PreparedCluster { name, ready }
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().into_diagnostic()?;
    let report = runtime.block_on(fleet::read_clusters(prepared, a.cluster.parallelism as usize));
    if let Some(path) = &a.prometheus {
        fleet::write_atomically(path, &fleet::render_prometheus(&report))
            .map_err(|e| miette!(help = "pass a writable path, e.g. in node_exporter's --collector.textfile.directory", "cannot write {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    } else {
        print!("{}", render_fleet_table(&report));
    }
    Ok(Outcome::Ok)
}

/// The fleet table: the single-cluster table with the cluster named, then what was not read.
fn render_fleet_table(report: &crate::flow::fleet::FleetReport) -> String {
    let rows: Vec<ExpiryRow> = report
        .certificates
        .iter()
        .map(|c| ExpiryRow {
            certificate: c.certificate.clone(),
            location: format!("{}/{}:{}", c.cluster, c.node, c.path.trim_start_matches("/etc/kubernetes/certs/")),
            expires: c.not_after.map(|t| t.date().to_string()).unwrap_or_else(|| "-".into()),
            residual_days: c.not_after.map(|t| (t - report.taken_at).whole_days()).unwrap_or(0),
            issuer: c.issuer_cn.clone().unwrap_or_else(|| "-".into()),
            findings: c.problem.iter().cloned().collect(),
        })
        .collect();
    let mut s = expiry::render(&rows);
    for u in &report.unread {
        match &u.node {
            Some(node) => s.push_str(&format!("unreachable: {}/{}: {}\n", u.cluster, node, u.error)),
            None => s.push_str(&format!("unreachable cluster: {}: {}\n", u.cluster, u.error)),
        }
    }
    s
}
