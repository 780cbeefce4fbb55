//! The fleet: `status --fleet FILE` over many clusters at once. Loads the fleet file (one
//! entry per cluster, each setting named as its flag in camelCase), reads every cluster with
//! the same discover and read stages as `status`, and renders the result as one expiry list
//! sorted by the soonest expiry, or as Prometheus text for node_exporter's textfile collector.
//! A cluster or node that cannot be read is part of the result, never left out.

use crate::diag::{InputError, SourceFile};
use crate::flow::discover::Discovered;
use crate::flow::read::{self, ReadInputs, ReadLimit};
use crate::model::inventory::ObservedContent;
use crate::remote::ssh::SshSettings;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The fleet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetFile {
    /// The clusters, each read as `status` would read it with these flags.
    #[schemars(length(min = 1))]
    pub clusters: Vec<FleetCluster>,
}

/// One cluster: `apiModel` and the per-cluster flags of `status`, in camelCase. Relative
/// paths are relative to the fleet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetCluster {
    /// Name shown in the table and the `cluster` label (default: the API model's dnsPrefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `--api-model`: apimodel.json of the cluster.
    pub api_model: PathBuf,
    /// `--ssh-host`: HOST or HOST:PORT that reaches every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host: Option<String>,
    /// `--linux-ssh-private-key`: the admin user's private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_ssh_private_key: Option<PathBuf>,
    /// `--known-hosts`: known_hosts file (default: trust on first use beside the API model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// `--apiserver`: ADDRESS:PORT the apiserver is reached at from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<String>,
    /// `--name-suffix`: the 8-digit VM name suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_suffix: Option<String>,
}

impl FleetFile {
    pub fn json_schema_document() -> schemars::Schema {
        schemars::schema_for!(FleetFile)
    }

    /// Reads and checks a fleet file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<FleetFile, InputError> {
        Self::from_source(&SourceFile::read(path, "fleet file")?)
    }

    pub fn from_source(source: &SourceFile) -> Result<FleetFile, InputError> {
        let help = "a fleet file is `clusters:` followed by a list of entries with `apiModel` and the cluster's flags in camelCase (see schemas/fleet.schema.json)";
        let mut fleet: FleetFile = serde_yaml::from_str(&source.text).map_err(|e| source.yaml_error(&e, "invalid fleet file", help))?;
        if fleet.clusters.is_empty() {
            return Err(source.error_at_path(&["clusters"], "the fleet file lists no cluster", help));
        }
        let base = source.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        for c in fleet.clusters.iter_mut() {
            for p in [Some(&mut c.api_model), c.linux_ssh_private_key.as_mut(), c.known_hosts.as_mut()].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            if let Some(name) = &c.name {
                if !seen.insert(name.clone()) {
                    // diag's key locator knows no list indexes: the second `name: <name>` is it.
                    let pattern = format!(r#"(?m)\bname:\s*['"]?{}['"]?\s*[,}}]?\s*$"#, regex::escape(name));
                    let range = regex::Regex::new(&pattern)
                        .ok()
                        .and_then(|re| re.find_iter(&source.text).nth(1).map(|m| m.range()))
                        .unwrap_or(0..0);
                    return Err(source.error_at(
                        range,
                        format!("cluster name {name} appears twice"),
                        "give every cluster its own name: it labels its rows and metrics",
                    ));
                }
            }
        }
        Ok(fleet)
    }
}

/// One certificate file on one node of one cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetCertificate {
    pub cluster: String,
    pub node: String,
    /// The catalogue's identifier of the certificate.
    pub certificate: String,
    pub path: String,
    /// None when the file is missing or is not a readable certificate (see `problem`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<time::OffsetDateTime>,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    pub serial: Option<String>,
    pub problem: Option<String>,
}

/// A node, or a whole cluster (`node` None), that could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unread {
    pub cluster: String,
    pub node: Option<String>,
    pub error: String,
}

/// Everything read across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetReport {
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: time::OffsetDateTime,
    /// Sorted by the soonest expiry; files without a certificate first.
    pub certificates: Vec<FleetCertificate>,
    pub unread: Vec<Unread>,
}

/// A cluster ready to be read: discovered and with its SSH settings, or why it is not.
pub struct PreparedCluster {
    pub name: String,
    pub ready: Result<(Discovered, SshSettings, Option<String>), String>,
}

/// The name a cluster goes by: the entry's, else the API model's dnsPrefix, else its path.
pub fn cluster_name(entry: &FleetCluster, discovered: Option<&Discovered>) -> String {
    entry
        .name
        .clone()
        .or_else(|| discovered.map(|d| d.topology.dns_prefix.clone()).filter(|p| !p.is_empty()))
        .unwrap_or_else(|| entry.api_model.display().to_string())
}

/// Reads every cluster at once, at most `bound` nodes at a time across the whole fleet: a
/// node of any cluster starts as soon as any other finishes.
pub async fn read_clusters(clusters: Vec<PreparedCluster>, bound: usize) -> FleetReport {
    let limit = ReadLimit::new(bound);
    let reads = clusters.into_iter().map(|c| {
        let limit = limit.clone();
        async move {
        let (discovered, ssh, apiserver) = match c.ready {
            Ok(ready) => ready,
            Err(error) => return (c.name, Err(error)),
        };
        let fleet = match read::read_fleet(ssh) {
            Ok(fleet) => fleet,
            Err(e) => return (c.name, Err(e.to_string())),
        };
        let inputs = ReadInputs { fleet, limit, skip_unreachable: true, apiserver };
        let result = read::read_cluster(&discovered, inputs).await.map_err(|e| e.to_string());
        (c.name, result)
        }
    });
    let results = futures::future::join_all(reads).await;
    let mut certificates = Vec::new();
    let mut unread = Vec::new();
    for (cluster, result) in results {
        match result {
            Err(error) => unread.push(Unread { cluster, node: None, error }),
            Ok(read) => {
                for u in &read.inventory.unreachable {
                    unread.push(Unread { cluster: cluster.clone(), node: Some(u.node.clone()), error: u.error.clone() });
                }
                for node in &read.inventory.nodes {
                    for entry in read.catalogue.iter().filter(|e| e.holders.contains(&node.node)) {
                        let Some(file) = node.file(&entry.cert_file.path) else { continue };
                        let mut cert = FleetCertificate {
                            cluster: cluster.clone(),
                            node: node.node.clone(),
                            certificate: entry.id(),
                            path: entry.cert_file.path.clone(),
                            not_before: None,
                            not_after: None,
                            subject_cn: None,
                            issuer_cn: None,
                            serial: None,
                            problem: None,
                        };
                        match &file.content {
                            ObservedContent::Certificate { facts, .. } => {
                                cert.not_before = Some(facts.not_before);
                                cert.not_after = Some(facts.not_after);
                                cert.subject_cn = facts.subject_cn.clone();
                                cert.issuer_cn = facts.issuer_cn.clone();
                                cert.serial = Some(facts.serial.clone());
                            }
                            ObservedContent::Missing => cert.problem = Some("missing".into()),
                            ObservedContent::Unparseable { error } => cert.problem = Some(format!("unreadable: {error}")),
                            _ => cert.problem = Some("not a certificate".into()),
                        }
                        certificates.push(cert);
                    }
                }
            }
        }
    }
    let mut report = FleetReport { taken_at: time::OffsetDateTime::now_utc(), certificates, unread };
    sort_by_soonest_expiry(&mut report);
    report
}

/// Files without a certificate first (they need attention now), then by expiry, soonest
/// first; ties by cluster, node and path so the order is stable.
pub fn sort_by_soonest_expiry(report: &mut FleetReport) {
    report.certificates.sort_by(|a, b| {
        (a.not_after.is_some(), a.not_after, &a.cluster, &a.node, &a.path).cmp(&(b.not_after.is_some(), b.not_after, &b.cluster, &b.node, &b.path))
    });
    report.unread.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
}

/// The Prometheus text exposition format, with the metric and label names of the
/// x509-certificate-exporter project (github.com/enix/x509-certificate-exporter):
/// `x509_cert_not_before`, `x509_cert_not_after` (Unix seconds), `x509_cert_expired` (0/1),
/// each labelled `cluster`, `node`, `filepath`, `certificate`, `subject_CN`, `issuer_CN`,
/// `serial_number`; and `x509_read_errors` (1 per node or cluster that could not be read,
/// 1 per certificate file that is missing or unreadable, labelled with the reason), so that
/// a gap in the fleet shows as a series rather than as silence.
pub fn render_prometheus(report: &FleetReport) -> String {
    let mut s = String::new();
    let cert_labels = |c: &FleetCertificate| {
        labels(&[
            ("cluster", &c.cluster),
            ("node", &c.node),
            ("filepath", &c.path),
            ("certificate", &c.certificate),
            ("subject_CN", c.subject_cn.as_deref().unwrap_or("")),
            ("issuer_CN", c.issuer_cn.as_deref().unwrap_or("")),
            ("serial_number", c.serial.as_deref().unwrap_or("")),
        ])
    };
    let readable: Vec<&FleetCertificate> = report.certificates.iter().filter(|c| c.not_after.is_some()).collect();
    let gauges: [(&str, &str, fn(&FleetCertificate, time::OffsetDateTime) -> i64); 3] = [
        ("x509_cert_not_before", "Certificate not-before date, in Unix seconds", |c, _| c.not_before.expect("readable").unix_timestamp()),
        ("x509_cert_not_after", "Certificate not-after (expiry) date, in Unix seconds", |c, _| c.not_after.expect("readable").unix_timestamp()),
        ("x509_cert_expired", "1 if the certificate had expired when it was read, else 0", |c, now| i64::from(c.not_after.expect("readable") <= now)),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        for c in &readable {
            let _ = writeln!(s, "{name}{} {}", cert_labels(c), value(c, report.taken_at));
        }
    }
    let _ = writeln!(s, "# HELP x509_read_errors Clusters, nodes and certificate files that could not be read at the last run\n# TYPE x509_read_errors gauge");
    for u in &report.unread {
        let what = if u.node.is_some() { "node unreachable" } else { "cluster unreachable" };
        let _ = writeln!(s, "x509_read_errors{} 1", labels(&[("cluster", &u.cluster), ("node", u.node.as_deref().unwrap_or("")), ("filepath", ""), ("reason", what)]));
    }
    for c in report.certificates.iter().filter(|c| c.not_after.is_none()) {
        let reason = c.problem.as_deref().unwrap_or("unreadable");
        let _ = writeln!(s, "x509_read_errors{} 1", labels(&[("cluster", &c.cluster), ("node", &c.node), ("filepath", &c.path), ("reason", reason)]));
    }
    let _ = writeln!(
        s,
        "# HELP certrotate_fleet_last_read_timestamp_seconds When certrotate status --fleet read the fleet, in Unix seconds\n# TYPE certrotate_fleet_last_read_timestamp_seconds gauge\ncertrotate_fleet_last_read_timestamp_seconds {}",
        report.taken_at.unix_timestamp()
    );
    s
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The exposition format's escapes for label values: backslash, double quote, line feed.
fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the metrics so the textfile collector never reads half a file: a temporary file in
/// the same directory, renamed over the target.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".certrotate-").suffix(".tmp").tempfile_in(dir)?;
    std::io::Write::write_all(&mut temp, text.as_bytes())?;
    temp.as_file().sync_all()?;
    // node_exporter runs as its own user: the metrics hold no secret and must be readable.
    std::fs::set_permissions(temp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn parse(text: &str) -> Result<FleetFile, InputError> {
        FleetFile::from_source(&SourceFile::from_text("/fleets/prod.yaml", text))
    }

    #[test]
    fn a_fleet_file_reads_its_clusters_with_paths_relative_to_itself() {
        let fleet = parse("clusters:\n  - name: east\n    apiModel: east/apimodel.json\n    sshHost: 10.0.0.4:2222\n    linuxSshPrivateKey: /keys/east\n  - apiModel: west/apimodel.json\n    nameSuffix: '12345678'\n").unwrap();
        assert_eq!(fleet.clusters.len(), 2);
        assert_eq!(fleet.clusters[0].api_model, PathBuf::from("/fleets/east/apimodel.json"));
        assert_eq!(fleet.clusters[0].linux_ssh_private_key, Some(PathBuf::from("/keys/east")));
        assert_eq!(fleet.clusters[0].ssh_host.as_deref(), Some("10.0.0.4:2222"));
        assert_eq!(fleet.clusters[1].name_suffix.as_deref(), Some("12345678"));
    }

    #[test]
    fn a_bad_fleet_file_is_an_error_naming_file_and_line() {
        for (text, line) in [
            ("clusters:\n  - apiModel: a.json\n    sshHots: x\n", 3),
            ("clusters:\n  - sshHost: x\n", 2),
            ("clusters: []\n", 1),
            ("clusters:\n  - name: a\n    apiModel: a.json\n  - name: a\n    apiModel: b.json\n", 4),
        ] {
            let e = parse(text).expect_err(text);
            let shown = format!("{:?}", miette::Report::new(e));
            assert!(shown.contains("prod.yaml"), "{text}: {shown}");
            assert!(shown.contains(&format!("prod.yaml:{line}")), "{text}: expected line {line} in {shown}");
        }
    }

    fn cert(cluster: &str, node: &str, path: &str, not_after: Option<time::OffsetDateTime>) -> FleetCertificate {
        FleetCertificate {
            cluster: cluster.into(),
            node: node.into(),
            certificate: "apiserver".into(),
            path: path.into(),
            not_before: not_after.map(|t| t - time::Duration::days(365)),
            not_after,
            subject_cn: Some("apiserver".into()),
            issuer_cn: Some("ca \"x\"".into()),
            serial: Some("0a".into()),
            problem: if not_after.is_none() { Some("missing".into()) } else { None },
        }
    }

    fn sample() -> FleetReport {
        let mut report = FleetReport {
            taken_at: datetime!(2026-12-07 12:00 UTC),
            certificates: vec![
                cert("west", "m0", "/etc/kubernetes/certs/apiserver.crt", Some(datetime!(2027-06-01 0:00 UTC))),
                cert("east", "m0", "/etc/kubernetes/certs/apiserver.crt", Some(datetime!(2026-12-01 0:00 UTC))),
                cert("east", "a0", "/etc/kubernetes/certs/client.crt", None),
                cert("west", "a0", "/etc/kubernetes/certs/client.crt", Some(datetime!(2027-01-01 0:00 UTC))),
            ],
            unread: vec![
                Unread { cluster: "west".into(), node: Some("a1".into()), error: "connection refused".into() },
                Unread { cluster: "north".into(), node: None, error: "cannot read apimodel.json".into() },
            ],
        };
        sort_by_soonest_expiry(&mut report);
        report
    }

    #[test]
    fn certificates_sort_by_soonest_expiry_across_clusters_problems_first() {
        let fleet = sample();
        let order: Vec<(&str, &str)> = fleet.certificates.iter().map(|c| (c.cluster.as_str(), c.node.as_str())).collect();
        assert_eq!(order, [("east", "a0"), ("east", "m0"), ("west", "a0"), ("west", "m0")]);
    }

    #[test]
    fn prometheus_text_names_every_certificate_and_every_gap() {
        let text = render_prometheus(&sample());
        assert!(text.contains(&format!(
            "x509_cert_not_after{{cluster=\"east\",node=\"m0\",filepath=\"/etc/kubernetes/certs/apiserver.crt\",certificate=\"apiserver\",subject_CN=\"apiserver\",issuer_CN=\"ca \\\"x\\\"\",serial_number=\"0a\"}} {}",
            datetime!(2026-12-01 0:00 UTC).unix_timestamp()
        )), "{text}");
        assert!(text.contains("x509_cert_expired{cluster=\"east\",node=\"m0\""), "{text}");
        let expired: Vec<&str> = text.lines().filter(|l| l.starts_with("x509_cert_expired{")).collect();
        assert_eq!(expired.iter().filter(|l| l.ends_with(" 1")).count(), 1, "{text}");
        assert!(text.contains("x509_read_errors{cluster=\"west\",node=\"a1\",filepath=\"\",reason=\"node unreachable\"} 1"), "{text}");
        assert!(text.contains("x509_read_errors{cluster=\"north\",node=\"\",filepath=\"\",reason=\"cluster unreachable\"} 1"), "{text}");
        assert!(text.contains("x509_read_errors{cluster=\"east\",node=\"a0\",filepath=\"/etc/kubernetes/certs/client.crt\",reason=\"missing\"} 1"), "{text}");
    }

    /// promtool (Debian's prometheus package, installed by tests/install-deps.sh) is
    /// Prometheus' own parser and linter of the text format.
    #[test]
    fn prometheus_text_passes_promtool() {
        use std::io::Write;
        let text = render_prometheus(&sample());
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is needed: run tests/install-deps.sh (Debian package prometheus)");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "promtool rejects the metrics:\n{}{}\n{text}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn metrics_are_written_atomically_and_readable_by_node_exporter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certrotate.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
