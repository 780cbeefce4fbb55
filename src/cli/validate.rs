//! `validate` and `status --offline`: everything certrotate can tell from the API model and
//! the profile alone, without contacting the cluster.

use super::args::{StatusArgs, ValidateArgs};
use super::Outcome;
use crate::model::apimodel::{ApiModel, CertificateProfile};
use crate::model::profile::Profile;
use crate::model::topology::{Role, Topology};
use crate::pki::audit::{self, Finding, Severity};
use crate::pki::catalogue::{self, ApiModelField, CertEntry};
use crate::flow::expiry::{self, ExpiryRow};
use serde::Serialize;
use std::fmt::Write as _;

/// What validate found, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct ValidateReport {
    pub api_model: String,
    pub name_suffix_from: String,
    pub topology: Topology,
    pub profile: String,
    pub certificates: Vec<CertEntry>,
    pub findings: Vec<Finding>,
}

pub fn run(a: &ValidateArgs) -> miette::Result<Outcome> {
    let model = ApiModel::load(&a.model.api_model)?;
    let suffix = crate::model::topology::resolve_name_suffix(&model, a.model.name_suffix.as_deref())?;
    let topo = Topology::derive_with_suffix(&model, &suffix.value)?;
    let profile = Profile::load(&a.model.profile)?;
    let cat = catalogue::catalogue(&topo);
    let now = time::OffsetDateTime::now_utc();
    let mut findings = audit::audit_certificate_profile(&model, &cat, now)?.findings;
    if let Some(path) = &a.model.certificate_profile {
        let (cp, src) = CertificateProfile::load(path)?;
        findings.extend(audit::audit_profile_fields(&cp, &src, &[], &cat, now)?.findings);
    }
    let report = ValidateReport {
        api_model: a.model.api_model.display().to_string(),
        name_suffix_from: suffix.from,
        topology: topo,
        profile: format!("{} ({})", profile.name, profile.description.lines().next().unwrap_or("")),
        certificates: cat,
        findings,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    } else {
        print!("{}", render_validate(&report));
    }
    Ok(if report.findings.iter().any(|f| f.severity == Severity::Error) { Outcome::Attention } else { Outcome::Ok })
}

/// Human rendering of a validate report.
pub fn render_validate(r: &ValidateReport) -> String {
    let t = &r.topology;
    let mut s = String::new();
    let _ = writeln!(s, "API model   {}", r.api_model);
    let _ = writeln!(s, "Cluster     {} in {} (name suffix {} from {})", t.dns_prefix, t.location, t.name_suffix, r.name_suffix_from);
    let _ = writeln!(s, "API server  https://{}:443 (internal load balancer {})", t.fqdn, t.internal_lb_ip);
    let _ = writeln!(s, "SSH         {}@<ssh-host>:{} then each node by name", t.admin_username, t.ssh_port);
    let _ = writeln!(s, "Profile     {}", r.profile);
    let _ = writeln!(s, "\nNodes ({} masters, {} agents)", t.masters.len(), t.agents.len());
    for n in t.nodes() {
        let role = match n.role {
            Role::Master => "master".to_string(),
            Role::Agent => format!("agent ({})", n.pool.as_deref().unwrap_or("")),
        };
        let ip = n.ip.map(|i| i.to_string()).unwrap_or_else(|| "by name".into());
        let _ = writeln!(s, "  {:<28} {:<22} {:<16} {:?}", n.name, role, ip, n.os);
    }
    let _ = writeln!(s, "\nCertificates managed");
    for c in &r.certificates {
        let holders = if c.holders.len() == t.masters.len() + t.agents.len() {
            "all nodes".to_string()
        } else if c.holders.len() == t.masters.len() && t.masters.iter().all(|m| c.holders.contains(&m.name)) {
            "masters".to_string()
        } else {
            c.holders.join(", ")
        };
        let subject = match &c.organization {
            Some(o) => format!("CN={}, O={}", c.common_name, o),
            None => format!("CN={}", c.common_name),
        };
        let _ = writeln!(s, "  {:<14} {:<44} {:<34} {}", c.id(), c.cert_file.path, subject, holders);
        if !c.dns_sans.is_empty() || !c.ip_sans.is_empty() {
            let ips: Vec<String> = c.ip_sans.iter().map(|i| i.to_string()).collect();
            let sans: Vec<&str> = c.dns_sans.iter().map(String::as_str).chain(ips.iter().map(String::as_str)).collect();
            let _ = writeln!(s, "  {:<14} SANs: {}", "", sans.join(", "));
        }
    }
    let errors = r.findings.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = r.findings.len() - errors;
    if r.findings.is_empty() {
        let _ = writeln!(s, "\nNo findings: the API model's certificates match what AKS Engine issues for it.");
    } else {
        let _ = writeln!(s, "\nFindings ({errors} errors, {warnings} warnings)");
        for f in &r.findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let _ = writeln!(s, "  {sev:<8} {:<12} {:<28} {}", f.certificate, f.location, f.message);
        }
    }
    s
}

pub fn status_offline(a: &StatusArgs) -> miette::Result<Outcome> {
    let c = &a.cluster;
    let model = ApiModel::load(&c.model.api_model)?;
    let topo = Topology::derive(&model, c.model.name_suffix.as_deref())?;
    let cat = catalogue::catalogue(&topo);
    let now = time::OffsetDateTime::now_utc();
    let audit = audit::audit_certificate_profile(&model, &cat, now)?;
    let rows: Vec<ExpiryRow> = audit
        .certificates
        .iter()
        .map(|(id, facts)| ExpiryRow {
            certificate: id.clone(),
            location: format!("apimodel.json:{}", apimodel_location(&cat, id)),
            expires: facts.not_after.date().to_string(),
            residual_days: (facts.not_after - now).whole_days(),
            issuer: facts.issuer.clone(),
            findings: audit.findings.iter().filter(|f| &f.certificate == id).map(|f| f.message.clone()).collect(),
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
    } else {
        println!("Offline: certificates as recorded in {}; no node was contacted.\n", c.model.api_model.display());
        print!("{}", expiry::render(&rows));
    }
    Ok(Outcome::Ok)
}

/// The certificateProfile field a catalogue certificate is kept in, e.g. `etcdPeerCertificates[1]`.
fn apimodel_location(cat: &[CertEntry], id: &str) -> String {
    match cat.iter().find(|e| e.id() == id).and_then(|e| e.apimodel_field.as_ref()) {
        Some(ApiModelField::Pair { cert, .. }) => cert.clone(),
        Some(ApiModelField::PeerIndex(i)) => format!("etcdPeerCertificates[{i}]"),
        None => id.to_string(),
    }
}
