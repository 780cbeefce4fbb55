//! The diff: what the nodes hold (the inventory refresh read) against what the profile wants,
//! per certificate per node, with the reason for every change and the drift noticed on the
//! way. Plain data in, plain data out: no sockets, no files.
//!
//! The order of decisions mirrors the trust structure of the cluster: first each CA (its
//! policy decides; a CA that changes forces `replace` on everything it signs, wherever a copy
//! lives: nodes, the API model, etcd), then each leaf, which is decided once for the whole
//! cluster (one certificate is issued and every holder gets it) and shown per holder with
//! that holder's own reasons.

use crate::model::inventory::{Inventory, NodeInventory, ObservedContent, ObservedFile};
use crate::model::profile::{CaPolicy, CertId, KeyAlgorithm, LeafPolicy, Profile};
use crate::model::topology::{Node, Role, Topology};
use crate::pki::audit;
use crate::pki::catalogue::{holds_key, ApiModelField, CertEntry, CertKind, IssuerRef, CERT_DIR};
use crate::pki::inspect::{self, CertFacts};
use crate::plan::file::{
    AttrValue, CertificateChange, ChangeAction, ChangeTarget, Finding, NodeRole, Reason, ReasonCode, Severity,
    TargetChanges,
};
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Everything the diff reads. `apimodel_certificates` is what `audit::audit_certificate_profile`
/// found in the API model (catalogue id, facts); `None` when the API model was not audited.
#[derive(Debug, Clone, Copy)]
pub struct DiffInput<'a> {
    pub topology: &'a Topology,
    pub catalogue: &'a [CertEntry],
    pub inventory: &'a Inventory,
    pub apimodel_certificates: Option<&'a [(String, CertFacts)]>,
    pub profile: &'a Profile,
    pub now: OffsetDateTime,
    /// Certificates the operator supplied with `--certificate-profile` (catalogue id, facts):
    /// for those, the desired state is exactly that certificate, whatever the profile's
    /// policies say. `None` when certrotate issues everything.
    pub supplied: Option<&'a [(String, CertFacts)]>,
}

/// The decision about one catalogue certificate, cluster-wide.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertDecision {
    /// Catalogue id: `apiserver`, `etcdpeer1`, `kubeletserver` (per node: see `holders`).
    pub id: String,
    pub kind: CertKind,
    pub action: ChangeAction,
    /// Nodes that receive the new material (observed holders only).
    pub holders: Vec<String>,
    /// Why, summarised over every copy.
    pub reasons: Vec<Reason>,
}

/// A certificate already expired on a node, which makes API-level checks impossible before
/// rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpiredCopy {
    pub node: String,
    pub certificate: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// The result of diffing: per-target changes in the saved-plan vocabulary, findings, and the
/// cluster-wide decisions the graph builder needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub profile_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    /// Nodes in topology order (masters, then agents), then the API model, then etcd.
    pub changes: Vec<TargetChanges>,
    pub findings: Vec<Finding>,
    /// One decision per catalogue certificate (kubelet serving certificates: one per node).
    pub decisions: Vec<CertDecision>,
    /// Certificates the API depends on (apiserver, client, admin kubeconfig, etcd) that have
    /// already expired on some node.
    pub expired: Vec<ExpiredCopy>,
    /// Nodes where kubelet-client-current.pem exists and must go because the CA changes.
    pub kubelet_client_current_removals: Vec<String>,
    /// Whether the apiserver ends up with another key pair (see `apiserver_key_changes`).
    pub apiserver_new_key: bool,
}

impl Diff {
    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.decisions.iter().any(|d| d.action != ChangeAction::Noop)
    }

    pub fn decision(&self, id: &str) -> Option<&CertDecision> {
        self.decisions.iter().find(|d| d.id == id)
    }

    fn action_of(&self, id: &str) -> ChangeAction {
        self.decision(id).map(|d| d.action).unwrap_or(ChangeAction::Noop)
    }

    /// Whether the cluster CA is replaced (or created), so trust changes everywhere.
    pub fn cluster_ca_changes(&self) -> bool {
        self.action_of("ca") != ChangeAction::Noop
    }

    /// Whether the front-proxy pair changes (CA or client).
    pub fn front_proxy_changes(&self) -> bool {
        self.action_of("proxy-ca") != ChangeAction::Noop || self.action_of("proxy") != ChangeAction::Noop
    }

    /// Whether the apiserver's certificate changes at all.
    pub fn apiserver_cert_changes(&self) -> bool {
        self.action_of("apiserver") != ChangeAction::Noop
    }

    /// Whether the apiserver gets a new key pair; service-account tokens are signed with it. A
    /// reissue under the kept CA keeps the key (as `kubeadm certs renew` does), so tokens stay
    /// valid while masters restart one at a time.
    /// A supplied apiserver certificate brings its own key, which may differ.
    pub fn apiserver_key_changes(&self) -> bool {
        self.apiserver_new_key
    }

    /// Whether the cluster is past the point where its API can be used before rotation.
    pub fn cluster_expired(&self) -> bool {
        !self.expired.is_empty()
    }

    /// Catalogue ids that change on `node`, excluding the front-proxy pair (rotated in its
    /// own phase).
    pub fn changed_on(&self, node: &str) -> Vec<String> {
        self.decisions
            .iter()
            .filter(|d| d.action != ChangeAction::Noop && d.holders.iter().any(|h| h == node))
            .map(|d| d.id.clone())
            .collect()
    }

    /// Whether `node` gets anything new outside the front-proxy phase.
    pub fn node_changes(&self, node: &str) -> bool {
        self.changed_on(node).iter().any(|id| id != "proxy" && id != "proxy-ca")
    }

    /// Whether any certificate kept in the API model changes.
    pub fn apimodel_changes(&self) -> bool {
        self.changes
            .iter()
            .filter(|t| t.target == ChangeTarget::ApiModel {})
            .flat_map(|t| &t.certificates)
            .any(|c| c.action != ChangeAction::Noop)
    }
}

/// `diff_with` without the API model's certificateProfile.
pub fn diff(topo: &Topology, catalogue: &[CertEntry], inventory: &Inventory, profile: &Profile, now: OffsetDateTime) -> Diff {
    diff_with(DiffInput { topology: topo, catalogue, inventory, apimodel_certificates: None, profile, now, supplied: None })
}

/// The id the saved plan uses for a catalogue kind.
pub fn cert_id(kind: CertKind) -> CertId {
    CertId::of_kind(&kind)
}

/// The two CAs, decided by their policies. Kubelet serving certificates carry CA:TRUE too
/// (openssl's defaults), but they sign nothing and are decided like leaves.
fn is_authority(kind: CertKind) -> bool {
    matches!(kind, CertKind::Ca | CertKind::ProxyCa)
}

fn reason(code: ReasonCode, message: impl Into<String>) -> Reason {
    Reason { code, message: message.into() }
}

fn finding(severity: Severity, code: &str, node: Option<&str>, path: Option<&str>, message: impl Into<String>) -> Finding {
    Finding {
        severity,
        code: code.into(),
        node: node.map(str::to_string),
        path: path.map(str::to_string),
        message: message.into(),
    }
}

/// "in 12 days", "in 3 hours", or "3 days ago" for a moment relative to now.
fn relative(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let span = at - now;
    let (abs, past) = if span.is_negative() { (-span, true) } else { (span, false) };
    let text = if abs.whole_days() >= 1 {
        format!("{} days", abs.whole_days())
    } else if abs.whole_hours() >= 1 {
        format!("{} hours", abs.whole_hours())
    } else {
        format!("{} minutes", abs.whole_minutes().max(1))
    };
    if past {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn fingerprint(hex: &str) -> String {
    format!("sha256:{hex}")
}

/// The first 12 hex digits, enough to tell certificates apart in a message. Refresh data is
/// input: a short or non-ASCII value is shown whole rather than sliced.
fn short_fingerprint(hex: &str) -> String {
    fingerprint(hex.get(..12).unwrap_or(hex))
}

/// Attributes of an existing certificate, as plan output shows them.
pub fn attributes(facts: &CertFacts, issuer_fingerprint: Option<&str>) -> BTreeMap<String, AttrValue> {
    let mut out = BTreeMap::new();
    out.insert("subject".into(), AttrValue::Text(facts.subject.clone()));
    out.insert("issuer".into(), AttrValue::Text(facts.issuer.clone()));
    if let Some(fp) = issuer_fingerprint {
        out.insert("issuerFingerprint".into(), AttrValue::Text(fingerprint(fp)));
    }
    out.insert("notAfter".into(), AttrValue::Text(rfc3339(facts.not_after)));
    out.insert("dnsSans".into(), AttrValue::List(facts.dns_sans.clone()));
    out.insert("ipSans".into(), AttrValue::List(facts.ip_sans.iter().map(|i| i.to_string()).collect()));
    out.insert("key".into(), AttrValue::Text(format!("{} {}", facts.key_algorithm, facts.key_bits)));
    out.insert("publicKey".into(), AttrValue::Text(fingerprint(&facts.public_key_sha256)));
    out.insert("fingerprint".into(), AttrValue::Text(fingerprint(&facts.sha256_fingerprint)));
    out.insert("serial".into(), AttrValue::Text(facts.serial.clone()));
    out
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn subject_of(entry: &CertEntry) -> String {
    match &entry.organization {
        Some(o) => format!("CN={},O={}", entry.common_name, o),
        None => format!("CN={}", entry.common_name),
    }
}

fn key_text(spec: crate::pki::KeySpec) -> String {
    match spec {
        crate::pki::KeySpec::Rsa2048 => "RSA 2048".into(),
        crate::pki::KeySpec::Rsa3072 => "RSA 3072".into(),
        crate::pki::KeySpec::Rsa4096 => "RSA 4096".into(),
        crate::pki::KeySpec::EcdsaP256 => "ECDSA P-256 256".into(),
    }
}

/// The entry as the profile wants it: the apiserver also names the profile's extra SANs.
fn desired_entry(entry: &CertEntry, profile: &Profile) -> CertEntry {
    let mut e = entry.clone();
    if entry.kind == CertKind::Apiserver {
        for name in &profile.extra_sans.dns {
            if !e.dns_sans.iter().any(|d| d == name.as_str()) {
                e.dns_sans.push(name.as_str().to_string());
            }
        }
        for ip in &profile.extra_sans.ips {
            if !e.ip_sans.contains(&ip.0) {
                e.ip_sans.push(ip.0);
            }
        }
    }
    e
}

/// One copy of a certificate on one node, as observed.
struct Copy<'a> {
    node: &'a Node,
    cert: Option<&'a ObservedFile>,
    key: Option<&'a ObservedFile>,
}

impl Copy<'_> {
    fn cert_facts(&self) -> Option<(&CertFacts, &str)> {
        match self.cert.map(|f| &f.content) {
            Some(ObservedContent::Certificate { facts, pem }) => Some((facts, pem.as_str())),
            _ => None,
        }
    }
}

/// A CA as observed: its facts and PEM, taken from the first master that holds a readable copy.
struct ObservedCa {
    facts: CertFacts,
    pem: String,
}

fn observed_ca(nodes: &[(&Node, &NodeInventory)], path: &str) -> Option<ObservedCa> {
    let mut ordered: Vec<&(&Node, &NodeInventory)> = nodes.iter().filter(|(n, _)| n.role == Role::Master).collect();
    ordered.extend(nodes.iter().filter(|(n, _)| n.role == Role::Agent));
    ordered.into_iter().find_map(|(_, inv)| match inv.file(path).map(|f| &f.content) {
        Some(ObservedContent::Certificate { facts, pem }) => Some(ObservedCa { facts: (**facts).clone(), pem: pem.clone() }),
        _ => None,
    })
}

fn ca_policy_reason(policy: &CaPolicy, facts: Option<&CertFacts>, now: OffsetDateTime, what: &str) -> Option<Reason> {
    let Some(facts) = facts else {
        return Some(reason(ReasonCode::Missing, format!("{what} missing on every node")));
    };
    // An expired CA has no time left: a negative span counts as zero.
    let remaining = std::time::Duration::try_from(facts.not_after - now).unwrap_or_default();
    match policy {
        CaPolicy::Keep => None,
        CaPolicy::Always => Some(reason(ReasonCode::CaPolicy, format!("{what} rotation requested (policy: always)"))),
        CaPolicy::RotateWhenExpiring { within } => policy.requires_rotation(remaining).then(|| {
            reason(
                ReasonCode::CaPolicy,
                format!("{what} expires {} < rotateWhenExpiring within {within}", relative(facts.not_after, now)),
            )
        }),
    }
}

/// Reasons a present copy of a leaf is due, from its own content.
fn own_reasons(
    entry: &CertEntry,
    desired: &CertEntry,
    facts: &CertFacts,
    location: &str,
    profile: &Profile,
    now: OffsetDateTime,
    warnings: &mut Vec<String>,
) -> Vec<Reason> {
    let mut out = Vec::new();
    if facts.not_after <= now {
        out.push(reason(
            ReasonCode::Expired,
            format!("expired {} ({})", relative(facts.not_after, now), facts.not_after.date()),
        ));
    } else if facts.expires_within(now, profile.renew_before.as_std()) {
        out.push(reason(
            ReasonCode::ExpiresSoon,
            format!("expires {} < renew-before {}", relative(facts.not_after, now), profile.renew_before),
        ));
    }
    for f in audit::compare(desired, facts, location, now) {
        let m = f.message.as_str();
        let code = if m.starts_with("expired") || m.starts_with("expires in") {
            continue;
        } else if m.contains("SAN") && m.ends_with("missing") {
            ReasonCode::SanMismatch
        } else if m.starts_with("subject") {
            ReasonCode::SubjectMismatch
        } else if m.starts_with("extended key usage") || m.starts_with("basicConstraints") {
            ReasonCode::UsageMismatch
        } else {
            // Extra SANs and the like: worth a finding, not a new certificate.
            warnings.push(m.to_string());
            continue;
        };
        out.push(reason(code, m.to_string()));
    }
    if !is_authority(entry.kind) {
        let want = profile.key_for(cert_id(entry.kind));
        let weaker_or_other = match profile.key.algorithm {
            KeyAlgorithm::Rsa => facts.key_algorithm != "RSA" || facts.key_bits < profile.key.size.bits(),
            KeyAlgorithm::EcdsaP256 => facts.key_algorithm != "ECDSA P-256",
        };
        if weaker_or_other {
            out.push(reason(
                ReasonCode::KeySpecChanged,
                format!("key is {} {}, profile wants {}", facts.key_algorithm, facts.key_bits, key_text(want)),
            ));
        }
    }
    out
}

fn push_unique(reasons: &mut Vec<Reason>, r: Reason) {
    if !reasons.iter().any(|x| x.code == r.code && x.message == r.message) {
        reasons.push(r);
    }
}

fn node_role(node: &Node) -> NodeRole {
    match node.role {
        Role::Master => NodeRole::Master,
        Role::Agent => NodeRole::Agent,
    }
}

fn apimodel_location(field: &ApiModelField) -> String {
    match field {
        ApiModelField::Pair { cert, .. } => format!("/properties/certificateProfile/{cert}"),
        ApiModelField::PeerIndex(i) => format!("/properties/certificateProfile/etcdPeerCertificates/{i}"),
    }
}

/// Certificates whose expiry takes the API (or etcd under it) out of service.
fn api_critical(kind: CertKind) -> bool {
    matches!(
        kind,
        CertKind::Apiserver
            | CertKind::Client
            | CertKind::Kubeconfig
            | CertKind::EtcdServer
            | CertKind::EtcdClient
            | CertKind::EtcdPeer(_)
            | CertKind::Ca
    )
}

/// Computes the diff.
pub fn diff_with(input: DiffInput<'_>) -> Diff {
    let DiffInput { topology: topo, catalogue, inventory, apimodel_certificates, profile, now, supplied } = input;
    let supplied_facts = |id: &str| supplied.and_then(|s| s.iter().find(|(i, _)| i == id).map(|(_, f)| f));
    let mut findings: Vec<Finding> = Vec::new();

    // Which topology nodes were observed; the others are named so the plan cannot look complete.
    let mut observed: Vec<(&Node, &NodeInventory)> = Vec::new();
    for node in topo.nodes() {
        if let Some(inv) = inventory.node(&node.name) {
            observed.push((node, inv));
        } else if let Some(u) = inventory.unreachable.iter().find(|u| u.node == node.name) {
            findings.push(finding(
                Severity::Error,
                "unreachable-node",
                Some(&node.name),
                None,
                format!("{} could not be read over SSH: {}; its certificates are not planned", node.name, u.error),
            ));
        } else {
            findings.push(finding(
                Severity::Error,
                "node-not-observed",
                Some(&node.name),
                None,
                format!("{} is in the API model but refresh returned nothing for it; its certificates are not planned", node.name),
            ));
        }
    }
    for inv in &inventory.nodes {
        if topo.node(&inv.node).is_none() {
            findings.push(finding(
                Severity::Warning,
                "unknown-node",
                Some(&inv.node),
                None,
                format!("{} was read but is not in the API model (added by scale without updating apimodel.json?)", inv.node),
            ));
        }
    }
    let inv_of = |name: &str| observed.iter().find(|(n, _)| n.name == name).map(|(_, i)| *i);

    let cluster_ca = observed_ca(&observed, &format!("{CERT_DIR}/ca.crt"));
    let proxy_ca = observed_ca(&observed, &format!("{CERT_DIR}/proxy-ca.crt"));
    let apimodel_facts = |id: &str| apimodel_certificates.and_then(|c| c.iter().find(|(i, _)| i == id).map(|(_, f)| f));

    // CA decisions come first: everything below depends on them.
    let ca_decision = |id: CertId, policy: &CaPolicy, ca: Option<&ObservedCa>, what: &str| -> Option<Reason> {
        if !profile.in_scope(id) {
            return None;
        }
        ca_policy_reason(policy, ca.map(|c| &c.facts), now, what)
    };
    let cluster_ca_reason = match supplied_facts("ca") {
        // The operator's CA is the desired one: it replaces the cluster CA unless the nodes
        // already trust exactly it, whatever the profile's CA policy says.
        Some(want) => match &cluster_ca {
            Some(ca) if ca.facts.sha256_fingerprint == want.sha256_fingerprint => None,
            _ => Some(reason(
                ReasonCode::Supplied,
                format!("the certificate profile you supplied holds another cluster CA ({})", short_fingerprint(&want.sha256_fingerprint)),
            )),
        },
        None => ca_decision(CertId::Ca, &profile.ca, cluster_ca.as_ref(), "cluster CA"),
    };
    let mut proxy_ca_reason = ca_decision(CertId::ProxyCa, &profile.front_proxy.ca, proxy_ca.as_ref(), "front-proxy CA");
    if let Some(ca) = &cluster_ca {
        if ca.facts.not_after <= now && cluster_ca_reason.is_none() {
            findings.push(finding(
                Severity::Error,
                "ca-expired-and-kept",
                None,
                Some(&format!("{CERT_DIR}/ca.crt")),
                format!(
                    "the cluster CA expired on {}; leaves reissued under it will not be trusted: use a profile that replaces it (rotate-ca or rotate-all)",
                    ca.facts.not_after.date()
                ),
            ));
        }
    }

    // Whether the front-proxy client is due on its own decides whether its CA must go too:
    // the front-proxy CA's key is not kept anywhere, so a new client needs a new CA.
    let proxy_entry = catalogue.iter().find(|e| e.kind == CertKind::Proxy);
    if proxy_ca_reason.is_none() && profile.in_scope(CertId::Proxy) {
        if let Some(entry) = proxy_entry {
            let desired = desired_entry(entry, profile);
            let mut scratch = Vec::new();
            let mut fingerprints = std::collections::BTreeSet::new();
            let mut due = false;
            for inv in entry.holders.iter().filter_map(|h| inv_of(h)) {
                let key_public = entry.key_file.as_ref().and_then(|k| match inv.file(&k.path).map(|f| &f.content) {
                    Some(ObservedContent::PrivateKey { public_key_sha256, .. }) => Some(public_key_sha256.as_str()),
                    _ => None,
                });
                due |= match inv.file(&entry.cert_file.path).map(|f| &f.content) {
                    Some(ObservedContent::Certificate { facts, pem }) => {
                        fingerprints.insert(facts.sha256_fingerprint.clone());
                        profile.leaves == LeafPolicy::Always
                            || !own_reasons(entry, &desired, facts, "", profile, now, &mut scratch).is_empty()
                            || key_public != Some(facts.public_key_sha256.as_str())
                            || proxy_ca.as_ref().is_none_or(|ca| !matches!(inspect::chains_to(pem, &ca.pem), Ok(true)))
                    }
                    _ => true,
                };
            }
            // Masters holding different front-proxy clients need one new client too.
            due |= fingerprints.len() > 1;
            if due {
                if profile.in_scope(CertId::ProxyCa) {
                    proxy_ca_reason = Some(reason(
                        ReasonCode::DependsOnChange,
                        "the front-proxy client is due and the front-proxy CA's key is kept on no node (AKS Engine discards it), so a new client needs a new front-proxy CA",
                    ));
                } else {
                    findings.push(finding(
                        Severity::Error,
                        "front-proxy-ca-key-unavailable",
                        None,
                        Some(&entry.cert_file.path),
                        "the front-proxy client is due, but its CA's key is kept on no node and proxy-ca is out of scope: add proxy-ca to scope so both are replaced",
                    ));
                }
            }
        }
    }

    let mut decisions: Vec<CertDecision> = Vec::new();
    let mut node_changes: BTreeMap<String, Vec<CertificateChange>> = BTreeMap::new();
    let mut apimodel_changes: Vec<CertificateChange> = Vec::new();
    let mut etcd_changes: Vec<CertificateChange> = Vec::new();
    let mut expired: Vec<ExpiredCopy> = Vec::new();

    for entry in catalogue {
        let id = cert_id(entry.kind);
        let desired = desired_entry(entry, profile);
        let supplied_here = supplied_facts(&entry.id());
        let supplied_cert = supplied_here.filter(|_| !is_authority(entry.kind));
        // What the operator supplied is wanted whatever the profile's scope says.
        let in_scope = profile.in_scope(id) || supplied_here.is_some();
        let (signer, signer_reason): (Option<&ObservedCa>, Option<&Reason>) = match entry.issuer {
            IssuerRef::ClusterCa => (cluster_ca.as_ref(), cluster_ca_reason.as_ref()),
            IssuerRef::FrontProxyCa => (proxy_ca.as_ref(), proxy_ca_reason.as_ref()),
            IssuerRef::SelfSigned => (None, None),
        };
        let own_ca_reason = match entry.kind {
            CertKind::Ca => cluster_ca_reason.as_ref(),
            CertKind::ProxyCa => proxy_ca_reason.as_ref(),
            _ => None,
        };

        let copies: Vec<Copy<'_>> = entry
            .holders
            .iter()
            .filter_map(|h| observed.iter().find(|(n, _)| &n.name == h))
            .map(|(node, inv)| Copy {
                node,
                cert: inv.file(&entry.cert_file.path),
                key: entry.key_file.as_ref().filter(|_| holds_key(entry, node)).and_then(|k| inv.file(&k.path)),
            })
            .collect();

        // Reference copy for drift: the API model's, else the first holder's.
        let reference_fp: Option<String> = apimodel_facts(&entry.id())
            .map(|f| f.sha256_fingerprint.clone())
            .or_else(|| copies.iter().find_map(|c| c.cert_facts().map(|(f, _)| f.sha256_fingerprint.clone())));

        let mut per_copy: Vec<(Vec<Reason>, bool)> = Vec::new(); // (own reasons, missing)
        for copy in &copies {
            let node = &copy.node.name;
            let path = &entry.cert_file.path;
            let mut reasons = Vec::new();
            let mut missing = false;
            match copy.cert.map(|f| &f.content) {
                None | Some(ObservedContent::Missing) => {
                    missing = true;
                    reasons.push(reason(ReasonCode::Missing, format!("{path} missing")));
                }
                Some(ObservedContent::Unparseable { error }) => {
                    reasons.push(reason(ReasonCode::Missing, format!("{path} unreadable: {error}")));
                    findings.push(finding(Severity::Error, "unreadable-certificate", Some(node), Some(path), error.clone()));
                }
                Some(ObservedContent::PrivateKey { .. }) => {
                    reasons.push(reason(ReasonCode::Missing, format!("{path} holds a private key, not a certificate")));
                }
                Some(ObservedContent::Certificate { facts, pem }) => {
                    let mut warnings = Vec::new();
                    if !is_authority(entry.kind) {
                        reasons.extend(own_reasons(entry, &desired, facts, path, profile, now, &mut warnings));
                    } else {
                        for f in audit::compare(&desired, facts, path, now) {
                            if !f.message.starts_with("expire") {
                                warnings.push(f.message);
                            }
                        }
                    }
                    for w in warnings {
                        findings.push(finding(Severity::Warning, "catalogue-mismatch", Some(node), Some(path), format!("{}: {w}", entry.id())));
                    }
                    if facts.not_after <= now && api_critical(entry.kind) {
                        expired.push(ExpiredCopy { node: node.clone(), certificate: entry.id(), not_after: facts.not_after });
                    }
                    if let Some(ca) = signer {
                        if matches!(inspect::chains_to(pem, &ca.pem), Ok(false) | Err(_)) {
                            let ca_path = if entry.issuer == IssuerRef::FrontProxyCa { "proxy-ca.crt" } else { "ca.crt" };
                            reasons.push(reason(
                                ReasonCode::NotSignedByCa,
                                format!("not signed by the CA in {ca_path} ({})", short_fingerprint(&ca.facts.sha256_fingerprint)),
                            ));
                            if matches!(entry.kind, CertKind::EtcdPeer(_)) {
                                findings.push(finding(
                                    Severity::Error,
                                    "etcd-peer-ca-mismatch",
                                    Some(node),
                                    Some(path),
                                    format!(
                                        "{} is not signed by the cluster CA the other members trust: etcd peers from different CAs cannot form a quorum",
                                        entry.id()
                                    ),
                                ));
                            }
                        }
                    }
                    if entry.kind == CertKind::KubeletServer && facts.issuer != facts.subject {
                        findings.push(finding(
                            Severity::Info,
                            "kubelet-server-not-self-signed",
                            Some(node),
                            Some(path),
                            format!("kubeletserver.crt is issued by {}, AKS Engine makes it self-signed", facts.issuer),
                        ));
                    }
                    if let Some(fp) = &reference_fp {
                        if *fp != facts.sha256_fingerprint && copies.len() + usize::from(apimodel_facts(&entry.id()).is_some()) > 1 {
                            let against = if apimodel_facts(&entry.id()).is_some() { "the API model's copy" } else { "the copy on the first holder" };
                            reasons.push(reason(ReasonCode::DriftBetweenNodes, format!("differs from {against}")));
                            findings.push(finding(
                                Severity::Warning,
                                "drift-between-nodes",
                                Some(node),
                                Some(path),
                                format!("{} on {node} differs from {against} (fingerprint {})", entry.id(), short_fingerprint(&facts.sha256_fingerprint)),
                            ));
                        }
                    }
                    // Key file: present, and the same key pair as the certificate.
                    if let Some(key_spec) = entry.key_file.as_ref().filter(|_| holds_key(entry, copy.node)) {
                        match copy.key.map(|k| &k.content) {
                            Some(ObservedContent::PrivateKey { public_key_sha256, .. }) => {
                                if *public_key_sha256 != facts.public_key_sha256 {
                                    reasons.push(reason(ReasonCode::KeyMismatch, format!("{} does not belong to the certificate", key_spec.path)));
                                    findings.push(finding(
                                        Severity::Error,
                                        "key-mismatch",
                                        Some(node),
                                        Some(&key_spec.path),
                                        format!(
                                            "{} holds a key whose public half ({}) is not the certificate's ({})",
                                            key_spec.path,
                                            short_fingerprint(public_key_sha256),
                                            short_fingerprint(&facts.public_key_sha256)
                                        ),
                                    ));
                                }
                            }
                            None | Some(ObservedContent::Missing) => {
                                reasons.push(reason(ReasonCode::Missing, format!("{} missing", key_spec.path)));
                            }
                            Some(_) => {
                                reasons.push(reason(ReasonCode::Missing, format!("{} is not a readable private key", key_spec.path)));
                            }
                        }
                    }
                }
            }
            // Ownership and modes are findings: install rewrites them, but only if the cert changes.
            let specs = std::iter::once((&entry.cert_file, copy.cert)).chain(
                entry.key_file.as_ref().filter(|_| holds_key(entry, copy.node)).map(|k| (k, copy.key)),
            );
            for (spec, file) in specs {
                let Some(file) = file.filter(|f| !matches!(f.content, ObservedContent::Missing)) else { continue };
                if file.owner != spec.owner || file.group != spec.group {
                    findings.push(finding(
                        Severity::Warning,
                        "wrong-owner",
                        Some(node),
                        Some(&spec.path),
                        format!("{} is owned by {}:{}, expected {}:{}", spec.path, file.owner, file.group, spec.owner, spec.group),
                    ));
                }
                if file.mode & 0o7777 != spec.mode {
                    findings.push(finding(
                        Severity::Warning,
                        "wrong-mode",
                        Some(node),
                        Some(&spec.path),
                        format!("{} has mode {:04o}, expected {:04o}", spec.path, file.mode & 0o7777, spec.mode),
                    ));
                }
            }
            per_copy.push((reasons, missing));
        }

        // The API model's copy, for certificates it keeps.
        let apimodel_copy = entry.apimodel_field.as_ref().map(|field| {
            let location = apimodel_location(field);
            let mut reasons = Vec::new();
            let facts = apimodel_facts(&entry.id());
            match facts {
                Some(f) => {
                    let mut warnings = Vec::new();
                    if !is_authority(entry.kind) {
                        reasons.extend(own_reasons(entry, &desired, f, &location, profile, now, &mut warnings));
                    }
                    let node_fps: Vec<&str> =
                        copies.iter().filter_map(|c| c.cert_facts().map(|(f, _)| f.sha256_fingerprint.as_str())).collect();
                    if !node_fps.is_empty() && !node_fps.contains(&f.sha256_fingerprint.as_str()) {
                        reasons.push(reason(ReasonCode::ApiModelDiffers, "the API model's certificateProfile holds a different certificate than the nodes"));
                        findings.push(finding(
                            Severity::Warning,
                            "apimodel-differs",
                            None,
                            Some(&location),
                            format!(
                                "apimodel.json {location} ({}) is not the certificate the nodes hold: aks-engine upgrade or scale would install it",
                                short_fingerprint(&f.sha256_fingerprint)
                            ),
                        ));
                    }
                }
                None if apimodel_certificates.is_some() => {
                    reasons.push(reason(ReasonCode::Missing, format!("{location} missing from the API model")));
                }
                None => {}
            }
            (location, facts, reasons)
        });

        // The cluster-wide decision.
        let mut all_reasons: Vec<Reason> = Vec::new();
        for (reasons, _) in &per_copy {
            for r in reasons {
                push_unique(&mut all_reasons, r.clone());
            }
        }
        if let Some((_, _, reasons)) = &apimodel_copy {
            for r in reasons {
                push_unique(&mut all_reasons, r.clone());
            }
        }
        let nothing_observed = per_copy.iter().all(|(_, missing)| *missing) && apimodel_copy.as_ref().is_none_or(|(_, f, _)| f.is_none());
        let action = if !in_scope {
            ChangeAction::Noop
        } else if let Some(r) = own_ca_reason {
            all_reasons.insert(0, r.clone());
            if nothing_observed { ChangeAction::Create } else { ChangeAction::Replace }
        } else if signer_reason.is_some() {
            let what = if entry.issuer == IssuerRef::FrontProxyCa { "front-proxy CA" } else { "cluster CA" };
            all_reasons.insert(0, reason(ReasonCode::SignerReplaced, format!("signed by the {what}, which is being replaced")));
            ChangeAction::Replace
        } else if is_authority(entry.kind) {
            ChangeAction::Noop
        } else if let Some(want) = supplied_cert {
            // Exactly the supplied certificate is wanted: installed where a node or the API
            // model holds anything else, or where its key is missing or wrong.
            let other = |f: &CertFacts| f.sha256_fingerprint != want.sha256_fingerprint;
            let on_nodes = copies.iter().any(|c| c.cert_facts().is_none_or(|(f, _)| other(f)));
            let in_model = apimodel_copy.as_ref().is_some_and(|(_, f, _)| f.is_none_or(other));
            let broken_key = per_copy.iter().flat_map(|(r, _)| r).any(|r| matches!(r.code, ReasonCode::KeyMismatch | ReasonCode::Missing));
            if on_nodes || in_model || broken_key {
                all_reasons.insert(
                    0,
                    reason(
                        ReasonCode::Supplied,
                        format!("the certificate profile you supplied holds another certificate ({})", short_fingerprint(&want.sha256_fingerprint)),
                    ),
                );
                if nothing_observed { ChangeAction::Create } else { ChangeAction::Reissue }
            } else {
                ChangeAction::Noop
            }
        } else if profile.leaves == LeafPolicy::Always {
            // No ReasonCode names the leaf policy; CaPolicy is the closest ("the profile says so").
            all_reasons.insert(0, reason(ReasonCode::CaPolicy, "the profile reissues every certificate in scope (leaves: always)"));
            if nothing_observed { ChangeAction::Create } else { ChangeAction::Reissue }
        } else if !all_reasons.is_empty() {
            if nothing_observed { ChangeAction::Create } else { ChangeAction::Reissue }
        } else {
            ChangeAction::Noop
        };
        if !in_scope {
            let due: Vec<&Reason> = all_reasons.iter().filter(|r| matches!(r.code, ReasonCode::Expired | ReasonCode::ExpiresSoon)).collect();
            if let Some(r) = due.first() {
                findings.push(finding(
                    Severity::Warning,
                    "due-but-out-of-scope",
                    None,
                    Some(&entry.cert_file.path),
                    format!("{} {} but is not in this profile's scope", entry.id(), r.message),
                ));
            }
        }

        // What plan can already tell about the material apply installs.
        let known_after = KnownAfter {
            exact: supplied_here,
            exact_issuer: match entry.issuer {
                IssuerRef::ClusterCa => supplied_facts("ca").map(|f| f.sha256_fingerprint.clone()),
                _ => None,
            },
            // A reissue under the kept CA keeps the apiserver key of the API model (see
            // `Diff::apiserver_key_changes`).
            kept_public_key: (entry.kind == CertKind::Apiserver && action == ChangeAction::Reissue)
                .then(|| apimodel_facts("apiserver").map(|f| f.public_key_sha256.clone()))
                .flatten(),
        };
        let holder_names: Vec<String> = copies.iter().map(|c| c.node.name.clone()).collect();
        let summary_reason = all_reasons.first().cloned();
        let per_target_reasons = |own: &[Reason], missing: bool| -> (ChangeAction, Vec<Reason>) {
            if action == ChangeAction::Noop {
                let r = if in_scope {
                    reason(ReasonCode::UpToDate, "valid and matches the catalogue and the profile")
                } else {
                    reason(ReasonCode::OutOfScope, "not managed under this profile")
                };
                return (ChangeAction::Noop, vec![r]);
            }
            let mut reasons: Vec<Reason> = Vec::new();
            if let Some(r) = own_ca_reason {
                reasons.push(r.clone());
            } else if matches!(action, ChangeAction::Replace) {
                if let Some(r) = all_reasons.iter().find(|r| r.code == ReasonCode::SignerReplaced) {
                    reasons.push(r.clone());
                }
            } else if profile.leaves == LeafPolicy::Always || supplied_cert.is_some() {
                reasons.push(all_reasons[0].clone());
            }
            for r in own {
                push_unique(&mut reasons, r.clone());
            }
            if reasons.is_empty() {
                if let Some(s) = &summary_reason {
                    reasons.push(reason(
                        ReasonCode::DependsOnChange,
                        format!("one {} is shared by {} holders and is reissued: {}", entry.id(), holder_names.len(), s.message),
                    ));
                }
            }
            let per_action = if missing && action != ChangeAction::Replace { ChangeAction::Create } else { action };
            (per_action, reasons)
        };

        for (copy, (own, missing)) in copies.iter().zip(&per_copy) {
            let (a, reasons) = per_target_reasons(own, *missing);
            let issuer_fp = signer.map(|c| c.facts.sha256_fingerprint.as_str());
            let before = copy.cert_facts().map(|(f, _)| attributes(f, issuer_fp)).unwrap_or_default();
            let after = after_attributes(entry, &desired, a, profile, now, signer, signer_reason.is_some() || own_ca_reason.is_some(), &known_after);
            node_changes.entry(copy.node.name.clone()).or_default().push(CertificateChange {
                certificate: id,
                location: entry.cert_file.path.clone(),
                action: a,
                reasons,
                before,
                after,
            });
        }

        // The admin kubeconfig embeds the kubeconfig certificate and the CA.
        if entry.kind == CertKind::Kubeconfig {
            let ca_changes = cluster_ca_reason.is_some();
            for copy in &copies {
                let Some(inv) = inv_of(&copy.node.name) else { continue };
                let path = format!("/home/{}/.kube/config", topo.admin_username);
                let Some(kc) = inv.kubeconfigs.iter().find(|k| k.path == path) else { continue };
                if let (Some((facts, _)), Some(embedded)) = (copy.cert_facts(), kc.client_certificate.as_deref()) {
                    if let Some(sha) = embedded.strip_prefix("embedded:") {
                        if sha != facts.sha256_fingerprint {
                            findings.push(finding(
                                Severity::Warning,
                                "kubeconfig-differs",
                                Some(&copy.node.name),
                                Some(&path),
                                format!("{path} embeds a client certificate other than kubectlClient.crt"),
                            ));
                        }
                    }
                }
                if action != ChangeAction::Noop || ca_changes {
                    let a = if action == ChangeAction::Noop { ChangeAction::Replace } else { action };
                    let why = if ca_changes { "embeds the cluster CA, which is being replaced" } else { "embeds the kubeconfig certificate, which is reissued" };
                    node_changes.entry(copy.node.name.clone()).or_default().push(CertificateChange {
                        certificate: id,
                        location: path,
                        action: a,
                        reasons: vec![reason(ReasonCode::DependsOnChange, why)],
                        before: BTreeMap::new(),
                        after: BTreeMap::new(),
                    });
                }
            }
        }

        if let Some((location, facts, own)) = &apimodel_copy {
            if facts.is_some() || apimodel_certificates.is_some() {
                let (a, reasons) = per_target_reasons(own, facts.is_none());
                let issuer_fp = signer.map(|c| c.facts.sha256_fingerprint.as_str());
                apimodel_changes.push(CertificateChange {
                    certificate: id,
                    location: location.clone(),
                    action: a,
                    reasons,
                    before: facts.map(|f| attributes(f, issuer_fp)).unwrap_or_default(),
                    after: after_attributes(entry, &desired, a, profile, now, signer, signer_reason.is_some() || own_ca_reason.is_some(), &known_after),
                });
            }
        }

        // Front-proxy material in etcd: compared with the files on every master.
        if !entry.etcd_keys.is_empty() {
            let etcd = observed.iter().filter(|(n, _)| n.role == Role::Master).find_map(|(_, inv)| inv.etcd_proxy.as_ref());
            if let Some(state) = etcd {
                let etcd_fp = if entry.kind == CertKind::ProxyCa { &state.ca_sha256 } else { &state.client_cert_sha256 };
                for copy in &copies {
                    if let (Some((facts, _)), Some(fp)) = (copy.cert_facts(), etcd_fp) {
                        if *fp != facts.sha256_fingerprint {
                            findings.push(finding(
                                Severity::Warning,
                                "front-proxy-etcd-differs",
                                Some(&copy.node.name),
                                Some(&entry.cert_file.path),
                                format!("{} on {} differs from {} in etcd", entry.cert_file.path, copy.node.name, entry.etcd_keys[0]),
                            ));
                        }
                    }
                    if entry.kind == CertKind::Proxy {
                        if let (Some(ObservedContent::PrivateKey { public_key_sha256, .. }), Some(fp)) =
                            (copy.key.map(|k| &k.content), &state.client_key_public_sha256)
                        {
                            if public_key_sha256 != fp {
                                findings.push(finding(
                                    Severity::Warning,
                                    "front-proxy-etcd-differs",
                                    Some(&copy.node.name),
                                    Some(&format!("{CERT_DIR}/proxy.key")),
                                    format!("proxy.key on {} is not the key in etcd {}", copy.node.name, crate::pki::catalogue::ETCD_PROXY_KEY_KEY),
                                ));
                            }
                        }
                    }
                }
                let (a, reasons) = per_target_reasons(&[], etcd_fp.is_none());
                let mut before = BTreeMap::new();
                if let Some(fp) = etcd_fp {
                    before.insert("fingerprint".into(), AttrValue::Text(fingerprint(fp)));
                }
                let mut after = BTreeMap::new();
                if a != ChangeAction::Noop {
                    after.insert("fingerprint".into(), AttrValue::Unknown);
                }
                etcd_changes.push(CertificateChange {
                    certificate: id,
                    location: entry.etcd_keys[0].clone(),
                    action: a,
                    reasons,
                    before,
                    after,
                });
            }
        }

        let decision_id = if entry.kind == CertKind::KubeletServer {
            format!("kubeletserver:{}", entry.holders.first().map(String::as_str).unwrap_or(""))
        } else {
            entry.id()
        };
        decisions.push(CertDecision { id: decision_id, kind: entry.kind, action, holders: holder_names, reasons: all_reasons });
    }

    // Node-level observations outside the catalogue.
    let mut removals = Vec::new();
    for (node, inv) in &observed {
        for path in &inv.unexpected_files {
            findings.push(finding(
                Severity::Info,
                "unexpected-file",
                Some(&node.name),
                Some(path),
                format!("{path} is not a file AKS Engine writes; it is backed up with the directory and left in place"),
            ));
        }
        // kubelet prefers its rotated pem over client.crt: it must go whenever client.crt is
        // renewed, or kubelet keeps the old (possibly expired, or foreign-CA) identity.
        let client_renewed = decisions.iter().any(|d| d.id == "client" && d.action != ChangeAction::Noop && d.holders.contains(&node.name));
        if inv.kubelet_client_current && (cluster_ca_reason.is_some() || client_renewed) {
            removals.push(node.name.clone());
            let why = if cluster_ca_reason.is_some() {
                "kubelet-client-current.pem was issued under the old CA and is removed so kubelet uses client.crt"
            } else {
                "kubelet-client-current.pem would keep kubelet on its old client certificate; it is removed so kubelet uses the renewed client.crt"
            };
            findings.push(finding(
                Severity::Info,
                "kubelet-client-current-removal",
                Some(&node.name),
                Some(crate::pki::catalogue::KUBELET_CLIENT_CURRENT),
                why,
            ));
        }
        let kubelet_kc = inv.kubeconfigs.iter().find(|k| k.path == crate::pki::catalogue::KUBELET_KUBECONFIG);
        if let Some(kc) = kubelet_kc {
            let expect = [
                (kc.certificate_authority.as_deref(), format!("{CERT_DIR}/ca.crt")),
                (kc.client_certificate.as_deref(), format!("{CERT_DIR}/client.crt")),
                (kc.client_key.as_deref(), format!("{CERT_DIR}/client.key")),
            ];
            for (have, want) in expect {
                if have != Some(want.as_str()) {
                    findings.push(finding(
                        Severity::Warning,
                        "kubelet-kubeconfig-reference",
                        Some(&node.name),
                        Some(crate::pki::catalogue::KUBELET_KUBECONFIG),
                        format!("kubelet's kubeconfig refers to {} instead of {want}: the new certificates would not be used", have.unwrap_or("nothing")),
                    ));
                }
            }
        }
    }
    if !expired.is_empty() {
        let list: Vec<String> = {
            let mut ids: Vec<String> = expired.iter().map(|e| e.certificate.clone()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        findings.push(finding(
            Severity::Warning,
            "cluster-expired",
            None,
            None,
            format!(
                "already expired: {}; the Kubernetes API cannot be used before rotation, so checks before it run over SSH",
                list.join(", ")
            ),
        ));
    }

    let mut changes: Vec<TargetChanges> = Vec::new();
    for (node, _) in &observed {
        if let Some(certs) = node_changes.remove(&node.name) {
            changes.push(TargetChanges { target: ChangeTarget::Node { name: node.name.clone(), role: node_role(node) }, certificates: certs });
        }
    }
    if !apimodel_changes.is_empty() {
        changes.push(TargetChanges { target: ChangeTarget::ApiModel {}, certificates: apimodel_changes });
    }
    if !etcd_changes.is_empty() {
        changes.push(TargetChanges { target: ChangeTarget::Etcd {}, certificates: etcd_changes });
    }

    let apiserver_new_key = match decisions.iter().find(|d| d.id == "apiserver").map(|d| d.action) {
        Some(ChangeAction::Replace | ChangeAction::Create) => true,
        // Certrotate reissues with the API model's key; a supplied certificate brings its own.
        Some(ChangeAction::Reissue) => supplied_facts("apiserver")
            .is_some_and(|want| apimodel_facts("apiserver").is_none_or(|have| have.public_key_sha256 != want.public_key_sha256)),
        _ => false,
    };

    Diff {
        profile_name: profile.name.clone(),
        now,
        changes,
        findings,
        decisions,
        expired,
        kubelet_client_current_removals: removals,
        apiserver_new_key,
    }
}

/// What plan already knows about a certificate apply will install.
#[derive(Default)]
struct KnownAfter<'a> {
    /// The very certificate (supplied by the operator).
    exact: Option<&'a CertFacts>,
    /// Fingerprint of the supplied CA that signs it.
    exact_issuer: Option<String>,
    /// Public-key fingerprint of a key that is kept.
    kept_public_key: Option<String>,
}

/// Attributes after apply: what the profile decides is known now, what only issuance decides
/// (serial, fingerprints, the new CA's identity) is `Unknown`.
fn after_attributes(
    entry: &CertEntry,
    desired: &CertEntry,
    action: ChangeAction,
    profile: &Profile,
    now: OffsetDateTime,
    signer: Option<&ObservedCa>,
    signer_changes: bool,
    known: &KnownAfter<'_>,
) -> BTreeMap<String, AttrValue> {
    let mut out = BTreeMap::new();
    if action == ChangeAction::Noop {
        return out;
    }
    if let Some(facts) = known.exact {
        let issuer_fp = known.exact_issuer.clone().or_else(|| signer.filter(|_| !signer_changes).map(|c| c.facts.sha256_fingerprint.clone()));
        return attributes(facts, issuer_fp.as_deref());
    }
    let id = cert_id(entry.kind);
    let validity = profile.validity_for(id);
    out.insert("subject".into(), AttrValue::Text(subject_of(desired)));
    let issuer = match entry.issuer {
        IssuerRef::SelfSigned => subject_of(desired),
        IssuerRef::ClusterCa => "CN=ca".into(),
        IssuerRef::FrontProxyCa => "CN=proxyClientCA".into(),
    };
    out.insert("issuer".into(), AttrValue::Text(issuer));
    match (signer, signer_changes && entry.issuer != IssuerRef::SelfSigned) {
        (Some(ca), false) => {
            out.insert("issuerFingerprint".into(), AttrValue::Text(fingerprint(&ca.facts.sha256_fingerprint)));
        }
        (Some(_), true) | (None, true) => {
            out.insert("issuerFingerprint".into(), AttrValue::Unknown);
        }
        (None, false) => {}
    }
    let not_after = now.checked_add(validity.as_time()).map(|t| format!("{} (apply time + {validity})", t.date())).unwrap_or_default();
    out.insert("notAfter".into(), AttrValue::Text(not_after));
    out.insert("dnsSans".into(), AttrValue::List(desired.dns_sans.clone()));
    out.insert("ipSans".into(), AttrValue::List(desired.ip_sans.iter().map(|i| i.to_string()).collect()));
    out.insert("key".into(), AttrValue::Text(key_text(profile.key_for(id))));
    out.insert(
        "publicKey".into(),
        known.kept_public_key.as_deref().map(|k| AttrValue::Text(fingerprint(k))).unwrap_or(AttrValue::Unknown),
    );
    out.insert("fingerprint".into(), AttrValue::Unknown);
    out.insert("serial".into(), AttrValue::Unknown);
    out
}
