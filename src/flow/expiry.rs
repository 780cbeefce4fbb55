//! The expiry table: one row per certificate (where it lives, when it expires, who issued
//! it, what is wrong with it), built from a live read or from the API model, and rendered
//! kubeadm-style. `status` prints it, apply keeps the one it saw before changing anything,
//! and `evidence` puts both beside each other.

use crate::model::inventory::{Inventory, ObservedContent};
use crate::pki::audit::compare;
use crate::pki::catalogue::CertEntry;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One row of the expiry table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryRow {
    pub certificate: String,
    pub location: String,
    pub expires: String,
    pub residual_days: i64,
    pub issuer: String,
    pub findings: Vec<String>,
}

/// One row per certificate file found on a node, with its findings against the catalogue.
pub fn rows_of_inventory(cat: &[CertEntry], inventory: &Inventory, now: time::OffsetDateTime) -> Vec<ExpiryRow> {
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

/// The table as `status` prints it; nodes that could not be read follow it.
pub fn render_with_unreachable(rows: &[ExpiryRow], inventory: &Inventory) -> String {
    let mut s = render(rows);
    for u in &inventory.unreachable {
        let _ = writeln!(s, "unreachable: {}: {}", u.node, u.error);
    }
    s
}

pub fn render(rows: &[ExpiryRow]) -> String {
    let residual = |r: &ExpiryRow| {
        if r.expires == "-" {
            "-".to_string()
        } else if r.residual_days < 0 {
            "expired".to_string()
        } else if r.residual_days >= 365 {
            format!("{}y", r.residual_days / 365)
        } else {
            format!("{}d", r.residual_days)
        }
    };
    let width = |f: &dyn Fn(&ExpiryRow) -> usize, title: &str| rows.iter().map(f).max().unwrap_or(0).max(title.len());
    let (wc, wl, wi) = (
        width(&|r| r.certificate.len(), "CERTIFICATE"),
        width(&|r| r.location.len(), "LOCATION"),
        width(&|r| r.issuer.len(), "ISSUER"),
    );
    let mut s = String::new();
    let _ = writeln!(s, "{:<wc$}  {:<wl$}  {:<10}  {:<8}  {:<wi$}  FINDINGS", "CERTIFICATE", "LOCATION", "EXPIRES", "RESIDUAL", "ISSUER");
    for r in rows {
        let findings = if r.findings.is_empty() { "-".to_string() } else { r.findings.join("; ") };
        let _ = writeln!(s, "{:<wc$}  {:<wl$}  {:<10}  {:<8}  {:<wi$}  {}", r.certificate, r.location, r.expires, residual(r), r.issuer, findings);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cert: &str, days: i64, expires: &str) -> ExpiryRow {
        ExpiryRow { certificate: cert.into(), location: format!("m0:{cert}.crt"), expires: expires.into(), residual_days: days, issuer: "ca".into(), findings: vec![] }
    }

    #[test]
    fn residual_reads_as_years_days_or_expired() {
        let t = render(&[row("apiserver", 800, "2029-01-01"), row("etcdclient", 12, "2027-01-01"), row("ca", -3, "2026-12-01"), row("proxy", 0, "-")]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CERTIFICATE"), "{t}");
        assert!(lines[1].contains(" 2y "), "{t}");
        assert!(lines[2].contains(" 12d "), "{t}");
        assert!(lines[3].contains(" expired "), "{t}");
        assert!(lines[4].contains(" - "), "{t}");
    }

    #[test]
    fn rows_survive_json() {
        let rows = vec![row("apiserver", 800, "2029-01-01")];
        let text = serde_json::to_string(&rows).unwrap();
        assert_eq!(serde_json::from_str::<Vec<ExpiryRow>>(&text).unwrap(), rows);
    }
}
