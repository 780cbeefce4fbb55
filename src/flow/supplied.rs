//! Certificates the operator supplies with `--certificate-profile` (aks-engine rotate-certs'
//! flag of that name: a JSON file in the shape of the API model's certificateProfile).
//!
//! Plan checks the file completely before it contacts the cluster, and records only its path
//! and digest; apply reads the file again, refuses it if its bytes changed since the plan, and
//! installs exactly that material. The certificates AKS Engine does not keep in the API model
//! (front-proxy pair, kubelet serving certificates) still follow the profile.

use crate::diag::{InputError, SourceFile};
use crate::model::apimodel::CertificateProfile;
use crate::model::topology::Topology;
use crate::pki::audit::{self, Severity};
use crate::pki::catalogue;
use crate::pki::inspect::CertFacts;
use crate::plan::file::{FileDigest, Finding, Sha256Digest};
use std::path::Path;

/// A checked certificate profile from the operator.
pub struct Supplied {
    /// (catalogue id, facts) of every certificate in the file.
    pub facts: Vec<(String, CertFacts)>,
    /// Where it is and the digest of its bytes, for the plan file.
    pub file: FileDigest,
    /// What is worth telling but does not stop the plan (expiring soon, extra SANs).
    pub findings: Vec<Finding>,
}

const HELP: &str = "supply every field of aks-engine's certificateProfile (caCertificate and caPrivateKey, apiServer, client, kubeConfig, \
etcdServer, etcdClient, and one etcdPeer pair per master), issued for this cluster; `certrotate validate --certificate-profile FILE` \
lists what is wrong, and planning without the flag lets certrotate issue the certificates";

/// Loads and checks `path` against the cluster the API model describes: every certificate the
/// API model keeps must be present, parse, match its key, chain to the supplied CA and carry
/// the names this cluster needs. Nothing is read from the cluster.
pub fn load(path: &Path, topo: &Topology, now: time::OffsetDateTime) -> miette::Result<Supplied> {
    let src = SourceFile::read(path, "certificate profile")?;
    check(&src, topo, now)
}

/// As [`load`], from the file's text already in memory (the fuzz target reads no files).
pub fn check(src: &SourceFile, topo: &Topology, now: time::OffsetDateTime) -> miette::Result<Supplied> {
    let path = src.path.as_path();
    let cat = catalogue::catalogue(topo);
    let cp = CertificateProfile::from_source(src)?;
    if cp.ca_certificate.is_none() || cp.ca_private_key.is_none() {
        let field = if cp.ca_certificate.is_none() { "caCertificate" } else { "caPrivateKey" };
        // A missing key is shown at its certificate; a missing certificate at the top.
        return Err(src
            .error_at_path(
                &["caCertificate"],
                format!("{field} is missing: aks-engine scale and upgrade sign new nodes' certificates with the CA kept in apimodel.json"),
                HELP,
            )
            .into());
    }
    let audit = audit::audit_profile_fields(&cp, src, &[], &cat, now)?;
    let errors: Vec<&audit::Finding> = audit.findings.iter().filter(|f| f.severity == Severity::Error).collect();
    if let Some(first) = errors.first() {
        let list: Vec<String> = errors.iter().map(|f| format!("{} ({}): {}", f.location, f.certificate, f.message)).collect();
        let field = first.location.split('[').next().unwrap_or(&first.location);
        let err: InputError = src.error_at_path(
            &[field],
            format!("the certificates you supplied cannot be installed on this cluster:\n  - {}", list.join("\n  - ")),
            HELP,
        );
        return Err(err.into());
    }
    let findings = audit
        .findings
        .iter()
        .map(|f| Finding {
            severity: crate::plan::file::Severity::Warning,
            code: "supplied-certificate".into(),
            node: None,
            path: Some(format!("{}#{}", path.display(), f.location)),
            message: format!("{} supplied: {}", f.certificate, f.message),
        })
        .collect();
    let file = FileDigest {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        digest: Sha256Digest::of_bytes(src.text.as_bytes()),
    };
    Ok(Supplied { facts: audit.certificates, file, findings })
}

/// Reads the file a plan recorded and checks its bytes are the ones planned with.
pub fn reload(recorded: &FileDigest) -> miette::Result<CertificateProfile> {
    let (cp, src) = CertificateProfile::load(&recorded.path)?;
    if Sha256Digest::of_bytes(src.text.as_bytes()) != recorded.digest {
        return Err(InputError::plain(
            &recorded.path,
            format!(
                "{} changed since the plan was made (the plan recorded digest {}); nothing was changed",
                recorded.path.display(),
                recorded.digest
            ),
            "put back the file the plan was made with, or make a new plan with `certrotate plan --certificate-profile FILE --out PLAN`",
        )
        .into());
    }
    Ok(cp)
}
