//! Checks certificates against the catalogue: what `validate` reports about the API model's
//! certificateProfile, and what refresh will report about certificates found on nodes.
//!
//! Material that cannot be used at all (PEM that does not parse, a key that does not match
//! its certificate, a certificate not signed by the cluster CA) is an input error pointing
//! into the file. Material that parses but differs from what AKS Engine would issue for this
//! API model (subject, SANs, usages, expiry) is a finding: reported, not fatal.

use crate::diag::{InputError, SourceFile};
use crate::model::apimodel::{ApiModel, CertificateProfile};
use crate::pki::catalogue::{ApiModelField, CertEntry, CertKind, IssuerRef};
use crate::pki::inspect::{self, CertFacts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One difference between a certificate and what the catalogue says it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    /// Catalogue id, e.g. `apiserver`, `etcdpeer1`.
    pub certificate: String,
    /// Where it was found: an API model field or `node:/path`.
    pub location: String,
    pub message: String,
}

/// How close to expiry a certificate must be before `validate` warns.
pub const EXPIRY_WARNING: time::Duration = time::Duration::days(90);

/// Compares a parsed certificate with its catalogue entry. `ca` is the facts of the CA
/// that should have signed it (for the issuer name check).
pub fn compare(entry: &CertEntry, facts: &CertFacts, location: &str, now: time::OffsetDateTime) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |severity, message: String| {
        out.push(Finding { severity, certificate: entry.id(), location: location.to_string(), message })
    };
    if facts.subject_cn.as_deref() != Some(entry.common_name.as_str()) {
        push(
            Severity::Error,
            format!("subject CN is {:?}, expected {:?}", facts.subject_cn.as_deref().unwrap_or(""), entry.common_name),
        );
    }
    let want_o: Vec<String> = entry.organization.iter().cloned().collect();
    if facts.subject_o != want_o {
        push(Severity::Error, format!("subject O is {:?}, expected {:?}", facts.subject_o, want_o));
    }
    if facts.is_ca != entry.is_ca {
        push(Severity::Error, format!("basicConstraints CA is {}, expected {}", facts.is_ca, entry.is_ca));
    }
    let have_dns: BTreeSet<&str> = facts.dns_sans.iter().map(String::as_str).collect();
    let want_dns: BTreeSet<&str> = entry.dns_sans.iter().map(String::as_str).collect();
    for missing in want_dns.difference(&have_dns) {
        push(Severity::Error, format!("DNS SAN {missing} missing"));
    }
    for extra in have_dns.difference(&want_dns) {
        push(Severity::Warning, format!("DNS SAN {extra} present but not derived from the API model"));
    }
    let have_ip: BTreeSet<IpAddr> = facts.ip_sans.iter().copied().collect();
    let want_ip: BTreeSet<IpAddr> = entry.ip_sans.iter().copied().collect();
    for missing in want_ip.difference(&have_ip) {
        push(Severity::Error, format!("IP SAN {missing} missing"));
    }
    for extra in have_ip.difference(&want_ip) {
        push(Severity::Warning, format!("IP SAN {extra} present but not derived from the API model"));
    }
    let have_eku: BTreeSet<_> = facts.extended_usages.iter().copied().collect();
    let want_eku: BTreeSet<_> = entry.extended_usages.iter().copied().collect();
    if have_eku != want_eku {
        push(Severity::Error, format!("extended key usage is {have_eku:?}, expected {want_eku:?}"));
    }
    if facts.not_after <= now {
        push(Severity::Error, format!("expired on {}", facts.not_after.date()));
    } else if facts.not_after - now < EXPIRY_WARNING {
        let days = (facts.not_after - now).whole_days();
        push(Severity::Warning, format!("expires in {days} days, on {}", facts.not_after.date()));
    }
    out
}

/// The result of auditing an API model's certificateProfile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileAudit {
    /// (catalogue id, facts) for every certificate the API model carries.
    pub certificates: Vec<(String, CertFacts)>,
    pub findings: Vec<Finding>,
}

/// Audits `properties.certificateProfile` of an API model against the catalogue: unusable
/// material is an `InputError` pointing at the field; differences are findings.
pub fn audit_certificate_profile(
    model: &ApiModel,
    catalogue: &[CertEntry],
    now: time::OffsetDateTime,
) -> Result<ProfileAudit, InputError> {
    let src = &model.source;
    let Some(cp) = model.view.properties.certificate_profile.as_ref() else {
        return Ok(ProfileAudit {
            certificates: vec![],
            findings: vec![Finding {
                severity: Severity::Warning,
                certificate: "ca".into(),
                location: "properties.certificateProfile".into(),
                message: "the API model has no certificateProfile; certificates will be read from the nodes".into(),
            }],
        });
    };
    audit_profile_fields(cp, src, &["properties", "certificateProfile"], catalogue, now)
}

/// Audits a certificateProfile object found in `src` under the key path `base` (the API
/// model's, or an `--certificate-profile` file's top level).
pub fn audit_profile_fields(
    cp: &CertificateProfile,
    src: &SourceFile,
    base: &[&str],
    catalogue: &[CertEntry],
    now: time::OffsetDateTime,
) -> Result<ProfileAudit, InputError> {
    let mut audit = ProfileAudit::default();
    let field_path = |field: &str| -> Vec<String> { base.iter().map(|s| s.to_string()).chain([field.to_string()]).collect() };
    let err_at = |field: &str, message: String, help: &str| {
        let path = field_path(field);
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        src.error_at_path(&keys, message, help)
    };

    let (ca_cert, ca_key) = cp.pair("caCertificate");
    let Some(ca_pem) = ca_cert else {
        audit.findings.push(Finding {
            severity: Severity::Warning,
            certificate: "ca".into(),
            location: "caCertificate".into(),
            message: "no caCertificate; the cluster CA will be read from the nodes".into(),
        });
        return Ok(audit);
    };
    let ca_facts = inspect::parse_cert_pem(ca_pem).map_err(|e| {
        err_at("caCertificate", format!("caCertificate does not parse: {e}"), "restore the PEM from a backup of apimodel.json")
    })?;
    if let Some(key) = ca_key {
        check_key(key, ca_pem, "caPrivateKey", "caCertificate", &err_at)?;
    }

    for entry in catalogue {
        let Some(apimodel_field) = &entry.apimodel_field else { continue };
        let (cert_pem, key_pem) = apimodel_field.read(cp);
        let (field, key_field) = match apimodel_field {
            ApiModelField::Pair { cert, key } => (cert.clone(), key.clone()),
            ApiModelField::PeerIndex(_) => ("etcdPeerCertificates".to_string(), "etcdPeerPrivateKeys".to_string()),
        };
        let location = match &entry.apimodel_field {
            Some(ApiModelField::PeerIndex(i)) => format!("{field}[{i}]"),
            _ => field.clone(),
        };
        let Some(cert_pem) = cert_pem else {
            audit.findings.push(Finding {
                severity: Severity::Error,
                certificate: entry.id(),
                location,
                message: "missing from the certificateProfile".into(),
            });
            continue;
        };
        let facts = if entry.kind == CertKind::Ca {
            ca_facts.clone()
        } else {
            let facts = inspect::parse_cert_pem(cert_pem).map_err(|e| {
                err_at(&field, format!("{location} does not parse: {e}"), "restore the PEM from a backup of apimodel.json")
            })?;
            if entry.issuer == IssuerRef::ClusterCa {
                let chains = inspect::chains_to(cert_pem, ca_pem).map_err(|e| {
                    err_at(&field, format!("{location}: cannot check its signature: {e}"), "restore the PEM from a backup")
                })?;
                if !chains {
                    return Err(err_at(
                        &field,
                        format!("{location} is not signed by the API model's caCertificate ({})", ca_facts.subject),
                        "the certificateProfile mixes material from two CAs; restore a consistent apimodel.json, \
                         or let certrotate reissue these certificates with `plan --profile rotate-all`",
                    ));
                }
            }
            if let Some(key) = key_pem {
                check_key(key, cert_pem, &key_field, &location, &err_at)?;
            } else {
                audit.findings.push(Finding {
                    severity: Severity::Error,
                    certificate: entry.id(),
                    location: key_field.clone(),
                    message: "private key missing from the certificateProfile".into(),
                });
            }
            facts
        };
        audit.findings.extend(compare(entry, &facts, &location, now));
        audit.certificates.push((entry.id(), facts));
    }
    Ok(audit)
}

fn check_key(
    key_pem: &str,
    cert_pem: &str,
    key_field: &str,
    cert_location: &str,
    err_at: &dyn Fn(&str, String, &str) -> InputError,
) -> Result<(), InputError> {
    let matches = inspect::key_matches_cert(key_pem, cert_pem).map_err(|e| {
        err_at(key_field, format!("{key_field} does not parse: {e}"), "restore the PEM private key from a backup of apimodel.json")
    })?;
    if !matches {
        // A key of another algorithm than the certificate's is the likelier mistake to name.
        if let (Ok(key), Ok(cert)) = (crate::pki::encoding::parse_key_pem(key_pem), inspect::parse_cert_pem(cert_pem)) {
            if key.algorithm != cert.key_algorithm {
                return Err(err_at(
                    key_field,
                    format!("{key_field} is an {} key, but {cert_location} holds an {} public key", key.algorithm, cert.key_algorithm),
                    "put back the private key of this certificate (AKS Engine issues RSA keys); restore both from the same backup",
                ));
            }
        }
        return Err(err_at(
            key_field,
            format!("{key_field} does not belong to {cert_location}"),
            "the key and the certificate come from different pairs; restore both from the same backup",
        ));
    }
    Ok(())
}
