//! The diff: what the nodes hold (the inventory refresh read) against what the profile wants,
//! per certificate per node, with the reason for every change and the drift noticed on the
//! way. Plain data in, plain data out: no sockets, no files.
//!
//! The order of decisions mirrors the trust structure of the cluster: first each CA (its
//! policy decides; a CA that changes forces `replace` on everything it signs, wherever a copy
//! lives: nodes, the API model, etcd), then each leaf, which is decided once for the whole
//! cluster (one certificate is issued and every holder gets it) and shown per holder with
//! that holder's own reasons.
//!
//! `diff_with` runs the parts in that order: `Cluster::observe` pairs nodes with what was
//! read, `Authorities::decide` settles the CAs, one `CertificateDiff` per catalogue entry
//! gives its copies' reasons, its verdict and its rows, and `node_findings` reports what the
//! nodes hold outside the catalogue.

use crate::model::inventory::{Inventory, NodeInventory, ObservedContent, ObservedFile};
use crate::model::profile::{CaPolicy, CertId, LeafPolicy, Profile};
use crate::model::topology::{Node, Role, Topology};
use crate::pki::audit;
use crate::pki::KeySpec;
use crate::pki::catalogue::{self, holds_key, ApiModelField, CertEntry, CertKind, FileSpec, IssuerRef, CERT_DIR};
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

fn rsa_bits(spec: KeySpec) -> u32 {
    match spec {
        KeySpec::Rsa3072 => 3072,
        KeySpec::Rsa4096 => 4096,
        KeySpec::Rsa2048 | KeySpec::EcdsaP256 => 2048,
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
        let weaker_or_other = match want {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => facts.key_algorithm != "RSA" || facts.key_bits < rsa_bits(want),
            KeySpec::EcdsaP256 => facts.key_algorithm != "ECDSA P-256",
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

/// Computes the diff, in the order trust flows: which nodes were read, then the two CAs,
/// then every catalogue certificate in turn, then what the nodes hold outside the catalogue.
pub fn diff_with(input: DiffInput<'_>) -> Diff {
    let mut findings: Vec<Finding> = Vec::new();
    let cluster = Cluster::observe(input, &mut findings);
    let authorities = Authorities::decide(&cluster, &mut findings);
    let mut rows = Rows::default();
    for entry in input.catalogue {
        CertificateDiff::new(&cluster, &authorities, entry).diff_into(&mut rows, &mut findings);
    }
    let removals = node_findings(&cluster, &rows.decisions, authorities.cluster_ca_reason.is_some(), &mut findings);
    cluster_expired_finding(&rows.expired, &mut findings);
    let apiserver_new_key = apiserver_gets_new_key(&cluster, &rows.decisions);
    let Rows { decisions, node_changes, apimodel_changes, etcd_changes, expired } = rows;

    Diff {
        profile_name: input.profile.name.clone(),
        now: input.now,
        changes: target_changes(&cluster, node_changes, apimodel_changes, etcd_changes),
        findings,
        decisions,
        expired,
        kubelet_client_current_removals: removals,
        apiserver_new_key,
    }
}

/// What every part of the diff reads: the inputs, and the topology nodes refresh returned,
/// paired with what they hold. Built once so that no part looks a node up its own way.
struct Cluster<'a> {
    input: DiffInput<'a>,
    /// Observed topology nodes, in topology order (masters, then agents).
    nodes: Vec<(&'a Node, &'a NodeInventory)>,
}

impl<'a> Cluster<'a> {
    /// Pairs the topology's nodes with what refresh read. A node not read, and a node read but
    /// not in the API model, is a finding, so the plan cannot look more complete than it is.
    fn observe(input: DiffInput<'a>, findings: &mut Vec<Finding>) -> Self {
        let (topo, inventory) = (input.topology, input.inventory);
        let mut nodes: Vec<(&Node, &NodeInventory)> = Vec::new();
        for node in topo.nodes() {
            if let Some(inv) = inventory.node(&node.name) {
                nodes.push((node, inv));
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
        Self { input, nodes }
    }

    fn inventory_of(&self, name: &str) -> Option<&'a NodeInventory> {
        self.nodes.iter().find(|(n, _)| n.name == name).map(|(_, i)| *i)
    }

    /// The certificate the operator supplied for catalogue id `id`, if any.
    fn supplied_facts(&self, id: &str) -> Option<&'a CertFacts> {
        self.input.supplied.and_then(|s| s.iter().find(|(i, _)| i == id).map(|(_, f)| f))
    }

    /// The API model's copy of catalogue id `id`, if the API model was audited and holds one.
    fn apimodel_facts(&self, id: &str) -> Option<&'a CertFacts> {
        self.input.apimodel_certificates.and_then(|c| c.iter().find(|(i, _)| i == id).map(|(_, f)| f))
    }
}

/// The two CAs as observed, and why each is replaced (`None`: kept). Decided before any
/// leaf, because a CA that changes forces `replace` on everything it signs.
struct Authorities {
    cluster_ca: Option<ObservedCa>,
    proxy_ca: Option<ObservedCa>,
    cluster_ca_reason: Option<Reason>,
    proxy_ca_reason: Option<Reason>,
}

impl Authorities {
    fn decide(cluster: &Cluster<'_>, findings: &mut Vec<Finding>) -> Self {
        let DiffInput { profile, now, .. } = cluster.input;
        let cluster_ca = observed_ca(&cluster.nodes, &format!("{CERT_DIR}/ca.crt"));
        let proxy_ca = observed_ca(&cluster.nodes, &format!("{CERT_DIR}/proxy-ca.crt"));
        let cluster_ca_reason = match cluster.supplied_facts("ca") {
            // The operator's CA is the desired one: it replaces the cluster CA unless the nodes
            // already trust exactly it, whatever the profile's CA policy says.
            Some(want) => match &cluster_ca {
                Some(ca) if ca.facts.sha256_fingerprint == want.sha256_fingerprint => None,
                _ => Some(reason(
                    ReasonCode::Supplied,
                    format!("the certificate profile you supplied holds another cluster CA ({})", short_fingerprint(&want.sha256_fingerprint)),
                )),
            },
            None => scoped_ca_policy_reason(profile, CertId::Ca, &profile.ca, cluster_ca.as_ref(), now, "cluster CA"),
        };
        let mut proxy_ca_reason =
            scoped_ca_policy_reason(profile, CertId::ProxyCa, &profile.front_proxy.ca, proxy_ca.as_ref(), now, "front-proxy CA");
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
        if proxy_ca_reason.is_none() {
            proxy_ca_reason = front_proxy_client_forces_new_ca(cluster, proxy_ca.as_ref(), findings);
        }
        Self { cluster_ca, proxy_ca, cluster_ca_reason, proxy_ca_reason }
    }
}

/// The CA policy's reason to replace CA `id`, when `id` is in scope.
fn scoped_ca_policy_reason(
    profile: &Profile,
    id: CertId,
    policy: &CaPolicy,
    ca: Option<&ObservedCa>,
    now: OffsetDateTime,
    what: &str,
) -> Option<Reason> {
    if !profile.in_scope(id) {
        return None;
    }
    ca_policy_reason(policy, ca.map(|c| &c.facts), now, what)
}

/// Whether the front-proxy client is due on its own decides whether its CA must go too:
/// the front-proxy CA's key is not kept anywhere, so a new client needs a new CA. Returns
/// the reason to replace the CA; when proxy-ca is out of scope, a finding says why the
/// client cannot be renewed instead.
fn front_proxy_client_forces_new_ca(
    cluster: &Cluster<'_>,
    proxy_ca: Option<&ObservedCa>,
    findings: &mut Vec<Finding>,
) -> Option<Reason> {
    let profile = cluster.input.profile;
    if !profile.in_scope(CertId::Proxy) {
        return None;
    }
    let entry = cluster.input.catalogue.iter().find(|e| e.kind == CertKind::Proxy)?;
    if !front_proxy_client_due(cluster, entry, proxy_ca) {
        return None;
    }
    if profile.in_scope(CertId::ProxyCa) {
        return Some(reason(
            ReasonCode::DependsOnChange,
            "the front-proxy client is due and the front-proxy CA's key is kept on no node (AKS Engine discards it), so a new client needs a new front-proxy CA",
        ));
    }
    findings.push(finding(
        Severity::Error,
        "front-proxy-ca-key-unavailable",
        None,
        Some(&entry.cert_file.path),
        "the front-proxy client is due, but its CA's key is kept on no node and proxy-ca is out of scope: add proxy-ca to scope so both are replaced",
    ));
    None
}

/// Whether any master's front-proxy client is due (by the leaf rules, a key that is not its
/// own, or a signature not by the front-proxy CA), or the masters hold different clients.
fn front_proxy_client_due(cluster: &Cluster<'_>, entry: &CertEntry, proxy_ca: Option<&ObservedCa>) -> bool {
    let DiffInput { profile, now, .. } = cluster.input;
    let desired = desired_entry(entry, profile);
    let mut scratch = Vec::new();
    let mut fingerprints = std::collections::BTreeSet::new();
    let mut due = false;
    for inv in entry.holders.iter().filter_map(|h| cluster.inventory_of(h)) {
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
                    || proxy_ca.is_none_or(|ca| !matches!(inspect::chains_to(pem, &ca.pem), Ok(true)))
            }
            _ => true,
        };
    }
    // Masters holding different front-proxy clients need one new client too.
    due || fingerprints.len() > 1
}

/// What the per-certificate parts produce, gathered in catalogue order.
#[derive(Default)]
struct Rows {
    decisions: Vec<CertDecision>,
    /// Per node name; put in topology order by `target_changes`.
    node_changes: BTreeMap<String, Vec<CertificateChange>>,
    apimodel_changes: Vec<CertificateChange>,
    etcd_changes: Vec<CertificateChange>,
    expired: Vec<ExpiredCopy>,
}

/// The reasons one copy on one node gives for a change, and whether the copy is missing.
struct CopyReasons {
    reasons: Vec<Reason>,
    missing: bool,
}

/// The API model's copy of a certificate it keeps: where it lives, what it is (if present)
/// and the reasons it gives.
struct ApiModelCopy<'a> {
    location: String,
    facts: Option<&'a CertFacts>,
    reasons: Vec<Reason>,
}

/// The cluster-wide decision about one certificate: one action for every holder (one
/// certificate is issued and every holder gets it), and every reason gathered over its
/// copies; the first is the one that decided.
struct Verdict {
    action: ChangeAction,
    reasons: Vec<Reason>,
}

/// One catalogue certificate being diffed: what the profile wants of it, who signs it, and
/// the copies the nodes hold. `diff_into` runs its parts in order: each copy's reasons, the
/// API model's copy, the verdict, then the rows per node, API model and etcd.
struct CertificateDiff<'a> {
    cluster: &'a Cluster<'a>,
    authorities: &'a Authorities,
    entry: &'a CertEntry,
    id: CertId,
    /// The entry as the profile wants it (the apiserver with the profile's extra SANs).
    desired: CertEntry,
    /// What the operator supplied for this entry, CA or leaf.
    supplied_here: Option<&'a CertFacts>,
    /// What the operator supplied for this entry when it is a leaf.
    supplied_cert: Option<&'a CertFacts>,
    /// In the profile's scope, or supplied (wanted whatever the scope says).
    in_scope: bool,
    signer: Option<&'a ObservedCa>,
    /// Why the signing CA is replaced, if it is.
    signer_reason: Option<&'a Reason>,
    /// Why this certificate, being a CA, is replaced, if it is.
    own_ca_reason: Option<&'a Reason>,
    copies: Vec<Copy<'a>>,
}

impl<'a> CertificateDiff<'a> {
    fn new(cluster: &'a Cluster<'a>, authorities: &'a Authorities, entry: &'a CertEntry) -> Self {
        let profile = cluster.input.profile;
        let id = cert_id(entry.kind);
        let supplied_here = cluster.supplied_facts(&entry.id());
        let (signer, signer_reason) = match entry.issuer {
            IssuerRef::ClusterCa => (authorities.cluster_ca.as_ref(), authorities.cluster_ca_reason.as_ref()),
            IssuerRef::FrontProxyCa => (authorities.proxy_ca.as_ref(), authorities.proxy_ca_reason.as_ref()),
            IssuerRef::SelfSigned => (None, None),
        };
        let own_ca_reason = match entry.kind {
            CertKind::Ca => authorities.cluster_ca_reason.as_ref(),
            CertKind::ProxyCa => authorities.proxy_ca_reason.as_ref(),
            _ => None,
        };
        let copies = entry
            .holders
            .iter()
            .filter_map(|h| cluster.nodes.iter().find(|(n, _)| &n.name == h))
            .map(|(node, inv)| Copy {
                node,
                cert: inv.file(&entry.cert_file.path),
                key: entry.key_file.as_ref().filter(|_| holds_key(entry, node)).and_then(|k| inv.file(&k.path)),
            })
            .collect();
        Self {
            cluster,
            authorities,
            entry,
            id,
            desired: desired_entry(entry, profile),
            supplied_here,
            supplied_cert: supplied_here.filter(|_| !is_authority(entry.kind)),
            in_scope: profile.in_scope(id) || supplied_here.is_some(),
            signer,
            signer_reason,
            own_ca_reason,
            copies,
        }
    }

    fn diff_into(&self, rows: &mut Rows, findings: &mut Vec<Finding>) {
        let reference_fp = self.reference_fingerprint();
        let mut per_copy: Vec<CopyReasons> = Vec::new();
        for copy in &self.copies {
            per_copy.push(self.copy_reasons(copy, reference_fp.as_deref(), findings, &mut rows.expired));
        }
        let apimodel_copy = self.apimodel_copy(findings);
        if let Some(form) = self.etcd_form(findings) {
            per_copy.push(form);
        }
        let verdict = self.decide(&per_copy, apimodel_copy.as_ref());
        self.out_of_scope_finding(&verdict, findings);
        self.front_proxy_issuance_finding(&verdict, findings);
        let known = self.known_after(verdict.action);
        self.node_rows(&verdict, &per_copy, &known, rows);
        if self.entry.kind == CertKind::Kubeconfig {
            self.admin_kubeconfig_rows(&verdict, rows, findings);
        }
        if let Some(copy) = &apimodel_copy {
            self.apimodel_row(&verdict, copy, &known, rows);
        }
        if !self.entry.etcd_keys.is_empty() {
            self.etcd_row(&verdict, rows, findings);
        }
        rows.decisions.push(self.decision(verdict));
    }

    fn profile(&self) -> &'a Profile {
        self.cluster.input.profile
    }

    fn now(&self) -> OffsetDateTime {
        self.cluster.input.now
    }

    /// Whether the key file belongs on `node` (some certificates' keys stay on masters).
    fn key_file_on(&self, node: &Node) -> Option<&'a FileSpec> {
        self.entry.key_file.as_ref().filter(|_| holds_key(self.entry, node))
    }

    /// The copy others are compared with for drift: the API model's, else the first holder's.
    fn reference_fingerprint(&self) -> Option<String> {
        self.cluster
            .apimodel_facts(&self.entry.id())
            .map(|f| f.sha256_fingerprint.clone())
            .or_else(|| self.copies.iter().find_map(|c| c.cert_facts().map(|(f, _)| f.sha256_fingerprint.clone())))
    }

    /// What one copy on one node says about the certificate: why it is due, and the findings
    /// it raises on the way (drift, wrong key, wrong owner or mode, ...).
    fn copy_reasons(
        &self,
        copy: &Copy<'_>,
        reference_fp: Option<&str>,
        findings: &mut Vec<Finding>,
        expired: &mut Vec<ExpiredCopy>,
    ) -> CopyReasons {
        let node = &copy.node.name;
        let path = &self.entry.cert_file.path;
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
                self.catalogue_reasons(copy, facts, &mut reasons, findings);
                if facts.not_after <= self.now() && api_critical(self.entry.kind) {
                    expired.push(ExpiredCopy { node: node.clone(), certificate: self.entry.id(), not_after: facts.not_after });
                }
                self.signer_reasons(copy, pem, &mut reasons, findings);
                if self.entry.kind == CertKind::KubeletServer && facts.issuer != facts.subject {
                    findings.push(finding(
                        Severity::Info,
                        "kubelet-server-not-self-signed",
                        Some(node),
                        Some(path),
                        format!("kubeletserver.crt is issued by {}, AKS Engine makes it self-signed", facts.issuer),
                    ));
                }
                self.drift_reasons(copy, facts, reference_fp, &mut reasons, findings);
                self.key_file_reasons(copy, facts, &mut reasons, findings);
            }
        }
        self.ownership_findings(copy, findings);
        CopyReasons { reasons, missing }
    }

    /// A leaf's own reasons (expiry, catalogue, key policy); for a CA, its differences from
    /// the catalogue only, which are findings: a CA is replaced by its policy, not by them.
    fn catalogue_reasons(&self, copy: &Copy<'_>, facts: &CertFacts, reasons: &mut Vec<Reason>, findings: &mut Vec<Finding>) {
        let (entry, path) = (self.entry, &self.entry.cert_file.path);
        let mut warnings = Vec::new();
        if !is_authority(entry.kind) {
            reasons.extend(own_reasons(entry, &self.desired, facts, path, self.profile(), self.now(), &mut warnings));
        } else {
            for f in audit::compare(&self.desired, facts, path, self.now()) {
                if !f.message.starts_with("expire") {
                    warnings.push(f.message);
                }
            }
        }
        for w in warnings {
            findings.push(finding(Severity::Warning, "catalogue-mismatch", Some(&copy.node.name), Some(path), format!("{}: {w}", entry.id())));
        }
    }

    /// A copy not signed by the CA the nodes hold is due; an etcd peer from another CA also
    /// breaks quorum, which a reviewer must hear about.
    fn signer_reasons(&self, copy: &Copy<'_>, pem: &str, reasons: &mut Vec<Reason>, findings: &mut Vec<Finding>) {
        let Some(ca) = self.signer else { return };
        if !matches!(inspect::chains_to(pem, &ca.pem), Ok(false) | Err(_)) {
            return;
        }
        let entry = self.entry;
        let ca_path = if entry.issuer == IssuerRef::FrontProxyCa { "proxy-ca.crt" } else { "ca.crt" };
        reasons.push(reason(
            ReasonCode::NotSignedByCa,
            format!("not signed by the CA in {ca_path} ({})", short_fingerprint(&ca.facts.sha256_fingerprint)),
        ));
        if matches!(entry.kind, CertKind::EtcdPeer(_)) {
            findings.push(finding(
                Severity::Error,
                "etcd-peer-ca-mismatch",
                Some(&copy.node.name),
                Some(&entry.cert_file.path),
                format!(
                    "{} is not signed by the cluster CA the other members trust: etcd peers from different CAs cannot form a quorum",
                    entry.id()
                ),
            ));
        }
    }

    /// A copy that differs from the reference copy is due: one certificate serves every holder.
    fn drift_reasons(
        &self,
        copy: &Copy<'_>,
        facts: &CertFacts,
        reference_fp: Option<&str>,
        reasons: &mut Vec<Reason>,
        findings: &mut Vec<Finding>,
    ) {
        let Some(fp) = reference_fp else { return };
        let entry = self.entry;
        let node = &copy.node.name;
        let in_apimodel = self.cluster.apimodel_facts(&entry.id()).is_some();
        if fp != facts.sha256_fingerprint && self.copies.len() + usize::from(in_apimodel) > 1 {
            let against = if in_apimodel { "the API model's copy" } else { "the copy on the first holder" };
            reasons.push(reason(ReasonCode::DriftBetweenNodes, format!("differs from {against}")));
            findings.push(finding(
                Severity::Warning,
                "drift-between-nodes",
                Some(node),
                Some(&entry.cert_file.path),
                format!("{} on {node} differs from {against} (fingerprint {})", entry.id(), short_fingerprint(&facts.sha256_fingerprint)),
            ));
        }
    }

    /// Key file: present, and the same key pair as the certificate.
    fn key_file_reasons(&self, copy: &Copy<'_>, facts: &CertFacts, reasons: &mut Vec<Reason>, findings: &mut Vec<Finding>) {
        let Some(key_spec) = self.key_file_on(copy.node) else { return };
        match copy.key.map(|k| &k.content) {
            Some(ObservedContent::PrivateKey { public_key_sha256, .. }) => {
                if *public_key_sha256 != facts.public_key_sha256 {
                    reasons.push(reason(ReasonCode::KeyMismatch, format!("{} does not belong to the certificate", key_spec.path)));
                    findings.push(finding(
                        Severity::Error,
                        "key-mismatch",
                        Some(&copy.node.name),
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
            Some(other) => {
                let why = match other {
                    ObservedContent::Unparseable { error } => error.clone(),
                    _ => "a certificate, not a private key".into(),
                };
                reasons.push(reason(ReasonCode::Missing, format!("{} is not a readable private key", key_spec.path)));
                findings.push(finding(Severity::Error, "unreadable-key", Some(&copy.node.name), Some(&key_spec.path), format!("{}: {why}", key_spec.path)));
            }
        }
    }

    /// Ownership and modes are findings: install rewrites them, but only if the cert changes.
    fn ownership_findings(&self, copy: &Copy<'_>, findings: &mut Vec<Finding>) {
        let node = &copy.node.name;
        let specs = std::iter::once((&self.entry.cert_file, copy.cert))
            .chain(self.key_file_on(copy.node).map(|k| (k, copy.key)));
        for (spec, file) in specs {
            // Nothing to say of a file that is not there, or not a file (no owner was read).
            let Some(file) = file.filter(|f| !matches!(f.content, ObservedContent::Missing) && !f.owner.is_empty()) else { continue };
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
    }

    /// The API model's copy, for certificates it keeps: its own reasons, and whether it is the
    /// certificate the nodes hold (`aks-engine upgrade` and `scale` install what it holds).
    fn apimodel_copy(&self, findings: &mut Vec<Finding>) -> Option<ApiModelCopy<'a>> {
        let field = self.entry.apimodel_field.as_ref()?;
        let location = apimodel_location(field);
        let mut reasons = Vec::new();
        let facts = self.cluster.apimodel_facts(&self.entry.id());
        match facts {
            Some(f) => {
                let mut warnings = Vec::new();
                if !is_authority(self.entry.kind) {
                    reasons.extend(own_reasons(self.entry, &self.desired, f, &location, self.profile(), self.now(), &mut warnings));
                }
                let node_fps: Vec<&str> =
                    self.copies.iter().filter_map(|c| c.cert_facts().map(|(f, _)| f.sha256_fingerprint.as_str())).collect();
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
            None if self.cluster.input.apimodel_certificates.is_some() => {
                reasons.push(reason(ReasonCode::Missing, format!("{location} missing from the API model")));
            }
            None => {}
        }
        Some(ApiModelCopy { location, facts, reasons })
    }

    /// One action for the whole cluster, from the first rule that applies: out of scope, its
    /// own CA policy, a replaced signer, the operator's certificate, the leaf policy, then the
    /// copies' own reasons.
    fn decide(&self, per_copy: &[CopyReasons], apimodel_copy: Option<&ApiModelCopy<'_>>) -> Verdict {
        let mut all_reasons: Vec<Reason> = Vec::new();
        for copy in per_copy {
            for r in &copy.reasons {
                push_unique(&mut all_reasons, r.clone());
            }
        }
        if let Some(copy) = apimodel_copy {
            for r in &copy.reasons {
                push_unique(&mut all_reasons, r.clone());
            }
        }
        let nothing_observed = per_copy.iter().all(|c| c.missing) && apimodel_copy.is_none_or(|c| c.facts.is_none());
        let action = if !self.in_scope {
            ChangeAction::Noop
        } else if let Some(r) = self.own_ca_reason {
            all_reasons.insert(0, r.clone());
            if nothing_observed { ChangeAction::Create } else { ChangeAction::Replace }
        } else if self.signer_reason.is_some() {
            let what = if self.entry.issuer == IssuerRef::FrontProxyCa { "front-proxy CA" } else { "cluster CA" };
            all_reasons.insert(0, reason(ReasonCode::SignerReplaced, format!("signed by the {what}, which is being replaced")));
            ChangeAction::Replace
        } else if is_authority(self.entry.kind) {
            ChangeAction::Noop
        } else if let Some(want) = self.supplied_cert {
            if self.differs_from_supplied(want, per_copy, apimodel_copy) {
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
        } else if self.profile().leaves == LeafPolicy::Always {
            // No ReasonCode names the leaf policy; CaPolicy is the closest ("the profile says so").
            all_reasons.insert(0, reason(ReasonCode::CaPolicy, "the profile reissues every certificate in scope (leaves: always)"));
            if nothing_observed { ChangeAction::Create } else { ChangeAction::Reissue }
        } else if !all_reasons.is_empty() {
            if nothing_observed { ChangeAction::Create } else { ChangeAction::Reissue }
        } else {
            ChangeAction::Noop
        };
        Verdict { action, reasons: all_reasons }
    }

    /// Exactly the supplied certificate is wanted: it is installed where a node or the API
    /// model holds anything else, or where its key is missing or wrong.
    fn differs_from_supplied(&self, want: &CertFacts, per_copy: &[CopyReasons], apimodel_copy: Option<&ApiModelCopy<'_>>) -> bool {
        let other = |f: &CertFacts| f.sha256_fingerprint != want.sha256_fingerprint;
        let on_nodes = self.copies.iter().any(|c| c.cert_facts().is_none_or(|(f, _)| other(f)));
        let in_model = apimodel_copy.is_some_and(|c| c.facts.is_none_or(other));
        let broken_key = per_copy.iter().flat_map(|c| &c.reasons).any(|r| matches!(r.code, ReasonCode::KeyMismatch | ReasonCode::Missing));
        on_nodes || in_model || broken_key
    }

    /// A certificate out of scope is left alone even when it is due; the reviewer is told.
    fn out_of_scope_finding(&self, verdict: &Verdict, findings: &mut Vec<Finding>) {
        if self.in_scope {
            return;
        }
        let due: Vec<&Reason> = verdict.reasons.iter().filter(|r| matches!(r.code, ReasonCode::Expired | ReasonCode::ExpiresSoon)).collect();
        if let Some(r) = due.first() {
            findings.push(finding(
                Severity::Warning,
                "due-but-out-of-scope",
                None,
                Some(&self.entry.cert_file.path),
                format!("{} {} but is not in this profile's scope", self.entry.id(), r.message),
            ));
        }
    }

    /// What plan can already tell about the material apply installs.
    fn known_after(&self, action: ChangeAction) -> KnownAfter<'a> {
        let entry = self.entry;
        KnownAfter {
            exact: self.supplied_here,
            exact_issuer: match entry.issuer {
                IssuerRef::ClusterCa => self.cluster.supplied_facts("ca").map(|f| f.sha256_fingerprint.clone()),
                _ => None,
            },
            // A reissue under the kept CA keeps the apiserver key of the API model (see
            // `Diff::apiserver_key_changes`).
            kept_public_key: (entry.kind == CertKind::Apiserver && action == ChangeAction::Reissue)
                .then(|| self.cluster.apimodel_facts("apiserver").map(|f| f.public_key_sha256.clone()))
                .flatten(),
        }
    }

    /// The action and reasons one target (a node, the API model, etcd) shows, given its own
    /// reasons: the deciding reason first, then its own, and for a holder with none of its
    /// own, that it shares the certificate being reissued.
    fn target_reasons(&self, verdict: &Verdict, own: &[Reason], missing: bool) -> (ChangeAction, Vec<Reason>) {
        let action = verdict.action;
        if action == ChangeAction::Noop {
            let r = if self.in_scope {
                reason(ReasonCode::UpToDate, "valid and matches the catalogue and the profile")
            } else {
                reason(ReasonCode::OutOfScope, "not managed under this profile")
            };
            return (ChangeAction::Noop, vec![r]);
        }
        let mut reasons: Vec<Reason> = Vec::new();
        if let Some(r) = self.own_ca_reason {
            reasons.push(r.clone());
        } else if matches!(action, ChangeAction::Replace) {
            if let Some(r) = verdict.reasons.iter().find(|r| r.code == ReasonCode::SignerReplaced) {
                reasons.push(r.clone());
            }
        } else if self.profile().leaves == LeafPolicy::Always || self.supplied_cert.is_some() {
            reasons.push(verdict.reasons[0].clone());
        }
        for r in own {
            push_unique(&mut reasons, r.clone());
        }
        if reasons.is_empty() {
            if let Some(s) = verdict.reasons.first() {
                reasons.push(reason(
                    ReasonCode::DependsOnChange,
                    format!("one {} is shared by {} holders and is reissued: {}", self.entry.id(), self.copies.len(), s.message),
                ));
            }
        }
        let per_action = if missing && action != ChangeAction::Replace { ChangeAction::Create } else { action };
        (per_action, reasons)
    }

    /// Attributes after apply for a target whose action is `action`.
    fn after(&self, action: ChangeAction, known: &KnownAfter<'_>) -> BTreeMap<String, AttrValue> {
        let signer_changes = self.signer_reason.is_some() || self.own_ca_reason.is_some();
        after_attributes(self.entry, &self.desired, action, self.profile(), self.now(), self.signer, signer_changes, known)
    }

    /// One row per holder: the certificate file on that node.
    fn node_rows(&self, verdict: &Verdict, per_copy: &[CopyReasons], known: &KnownAfter<'_>, rows: &mut Rows) {
        for (copy, own) in self.copies.iter().zip(per_copy) {
            let (a, reasons) = self.target_reasons(verdict, &own.reasons, own.missing);
            let issuer_fp = self.signer.map(|c| c.facts.sha256_fingerprint.as_str());
            let before = copy.cert_facts().map(|(f, _)| attributes(f, issuer_fp)).unwrap_or_default();
            let after = self.after(a, known);
            rows.node_changes.entry(copy.node.name.clone()).or_default().push(CertificateChange {
                certificate: self.id,
                location: self.entry.cert_file.path.clone(),
                action: a,
                reasons,
                before,
                after,
            });
        }
    }

    /// The admin kubeconfig embeds the kubeconfig certificate and the CA: it changes with
    /// either, and one that embeds another certificate is a finding.
    fn admin_kubeconfig_rows(&self, verdict: &Verdict, rows: &mut Rows, findings: &mut Vec<Finding>) {
        let ca_changes = self.authorities.cluster_ca_reason.is_some();
        let action = verdict.action;
        for copy in &self.copies {
            let Some(inv) = self.cluster.inventory_of(&copy.node.name) else { continue };
            let path = format!("/home/{}/.kube/config", self.cluster.input.topology.admin_username);
            let Some(kc) = inv.kubeconfigs.iter().find(|k| k.path == path) else { continue };
            // The certificate is read from this kubeconfig (the copy); its key sits beside it.
            if let (Some((facts, _)), Some(embedded)) = (copy.cert_facts(), kc.client_key.as_deref()) {
                if let Some(sha) = embedded.strip_prefix("embedded:") {
                    if sha != facts.public_key_sha256 {
                        findings.push(finding(
                            Severity::Warning,
                            "kubeconfig-key-mismatch",
                            Some(&copy.node.name),
                            Some(&path),
                            format!("{path} embeds a client key that does not belong to its client certificate"),
                        ));
                    }
                }
            }
            // The copy's own row already stands for the kubeconfig when its certificate changes.
            if action == ChangeAction::Noop && ca_changes {
                let a = if action == ChangeAction::Noop { ChangeAction::Replace } else { action };
                let why = if ca_changes { "embeds the cluster CA, which is being replaced" } else { "embeds the kubeconfig certificate, which is reissued" };
                rows.node_changes.entry(copy.node.name.clone()).or_default().push(CertificateChange {
                    certificate: self.id,
                    location: path,
                    action: a,
                    reasons: vec![reason(ReasonCode::DependsOnChange, why)],
                    before: BTreeMap::new(),
                    after: BTreeMap::new(),
                });
            }
        }
    }

    /// The row for the API model's copy: shown when it holds one, or when it was audited and
    /// lacks one.
    fn apimodel_row(&self, verdict: &Verdict, copy: &ApiModelCopy<'_>, known: &KnownAfter<'_>, rows: &mut Rows) {
        if copy.facts.is_none() && self.cluster.input.apimodel_certificates.is_none() {
            return;
        }
        let (a, reasons) = self.target_reasons(verdict, &copy.reasons, copy.facts.is_none());
        let issuer_fp = self.signer.map(|c| c.facts.sha256_fingerprint.as_str());
        rows.apimodel_changes.push(CertificateChange {
            certificate: self.id,
            location: copy.location.clone(),
            action: a,
            reasons,
            before: copy.facts.map(|f| attributes(f, issuer_fp)).unwrap_or_default(),
            after: self.after(a, known),
        });
    }

    /// Where the plan issues a front-proxy certificate, how it differs from the one AKS
    /// Engine's generateproxycerts.sh makes (openssl: RSA 2048, 262824 days, the client an
    /// X.509 v1 certificate with serial 02 and no extensions), and why.
    fn front_proxy_issuance_finding(&self, verdict: &Verdict, findings: &mut Vec<Finding>) {
        use crate::model::profile::AKS_ENGINE_FRONT_PROXY_DAYS;
        let kind = self.entry.kind;
        if !matches!(kind, CertKind::Proxy | CertKind::ProxyCa) || verdict.action == ChangeAction::Noop || self.supplied_here.is_some() {
            return;
        }
        let profile = self.profile();
        let id = cert_id(kind);
        let mut differences = Vec::new();
        let validity = profile.validity_for(id);
        let aks_validity = crate::model::profile::Duration::days(AKS_ENGINE_FRONT_PROXY_DAYS);
        if validity != aks_validity {
            differences.push(format!("valid {validity} as the profile asks, where AKS Engine gives {AKS_ENGINE_FRONT_PROXY_DAYS} days"));
        }
        let key = profile.key_for(id);
        if key != crate::pki::KeySpec::Rsa2048 {
            differences.push(format!("a {} key as the profile asks, where AKS Engine's openssl genrsa makes RSA 2048", key_text(key)));
        }
        if kind == CertKind::Proxy {
            differences.push(
                "X.509 v3 without extensions, where openssl x509 -req makes v1 (rcgen writes only v3; without extensions both \
                 say the same to kube-apiserver and aggregated API servers)"
                    .into(),
            );
            differences.push("a random serial, where AKS Engine always uses 02 (serials must differ under a CA that is kept)".into());
        }
        findings.push(finding(
            Severity::Info,
            "front-proxy-differs-from-aks-engine",
            None,
            Some(&self.entry.cert_file.path),
            format!("the new {} is {}", self.entry.id(), differences.join("; ")),
        ));
    }

    /// Values under /proxycerts that are not in AKS Engine's form (`pki::proxycerts`): a
    /// finding for each, on the certificate it holds, and a reason on the front-proxy client,
    /// whose reissue rewrites all three values (putFrontProxyInEtcd repairs the CA in place
    /// when it is kept).
    fn etcd_form(&self, findings: &mut Vec<Finding>) -> Option<CopyReasons> {
        let state = self.cluster.nodes.iter().filter(|(n, _)| n.role == Role::Master).find_map(|(_, inv)| inv.etcd_proxy.as_ref())?;
        for key in state.wrong_form.iter().filter(|k| self.entry.etcd_keys.contains(k)) {
            findings.push(finding(
                Severity::Error,
                "front-proxy-etcd-form",
                None,
                Some(key),
                format!(
                    "{key} is stored without AKS Engine's leading space: a master AKS Engine provisions or upgrades reads it back \
                     (sed '1s/\\s//') as a PEM it cannot load"
                ),
            ));
        }
        if self.entry.kind != CertKind::Proxy || state.wrong_form.is_empty() {
            return None;
        }
        let reason = reason(
            ReasonCode::Missing,
            format!("{} not stored in the form AKS Engine reads back; rewritten in it", state.wrong_form.join(", ")),
        );
        Some(CopyReasons { reasons: vec![reason], missing: false })
    }

    /// Front-proxy material in etcd: compared with the files on every master, and one row
    /// for the etcd key when a master could read it.
    fn etcd_row(&self, verdict: &Verdict, rows: &mut Rows, findings: &mut Vec<Finding>) {
        let entry = self.entry;
        let etcd = self.cluster.nodes.iter().filter(|(n, _)| n.role == Role::Master).find_map(|(_, inv)| inv.etcd_proxy.as_ref());
        let Some(state) = etcd else { return };
        let etcd_fp = if entry.kind == CertKind::ProxyCa { &state.ca_sha256 } else { &state.client_cert_sha256 };
        for copy in &self.copies {
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
        let (a, reasons) = self.target_reasons(verdict, &[], etcd_fp.is_none());
        let mut before = BTreeMap::new();
        if let Some(fp) = etcd_fp {
            before.insert("fingerprint".into(), AttrValue::Text(fingerprint(fp)));
        }
        let mut after = BTreeMap::new();
        if a != ChangeAction::Noop {
            after.insert("fingerprint".into(), AttrValue::Unknown);
        }
        rows.etcd_changes.push(CertificateChange {
            certificate: self.id,
            location: entry.etcd_keys[0].clone(),
            action: a,
            reasons,
            before,
            after,
        });
    }

    /// The decision the graph builder reads; kubelet serving certificates are one per node.
    fn decision(&self, verdict: Verdict) -> CertDecision {
        let entry = self.entry;
        let id = catalogue::plan_id(entry);
        let holders = self.copies.iter().map(|c| c.node.name.clone()).collect();
        CertDecision { id, kind: entry.kind, action: verdict.action, holders, reasons: verdict.reasons }
    }
}

/// What the nodes hold outside the catalogue: files AKS Engine does not write, kubelet's
/// rotated client certificate and kubelet's kubeconfig. Returns the nodes whose
/// kubelet-client-current.pem apply removes.
fn node_findings(cluster: &Cluster<'_>, decisions: &[CertDecision], cluster_ca_changes: bool, findings: &mut Vec<Finding>) -> Vec<String> {
    let mut removals = Vec::new();
    for (node, inv) in &cluster.nodes {
        for path in &inv.unexpected_files {
            findings.push(finding(
                Severity::Info,
                "unexpected-file",
                Some(&node.name),
                Some(path),
                format!("{path} is not a file AKS Engine writes; it is backed up with the directory and left in place"),
            ));
        }
        for link in &inv.symlinks {
            findings.push(finding(
                Severity::Warning,
                "symlink",
                Some(&node.name),
                Some(&link.path),
                format!(
                    "{} is a symbolic link to {}: certrotate reads what it points to, and an install replaces the link with a file (what it points to is left as it is)",
                    link.path, link.target
                ),
            ));
        }
        if kubelet_client_current_goes(node, inv, decisions, cluster_ca_changes, findings) {
            removals.push(node.name.clone());
        }
        kubelet_kubeconfig_findings(node, inv, findings);
    }
    removals
}

/// kubelet prefers its rotated pem over client.crt: it must go whenever client.crt is
/// renewed, or kubelet keeps the old (possibly expired, or foreign-CA) identity.
fn kubelet_client_current_goes(
    node: &Node,
    inv: &NodeInventory,
    decisions: &[CertDecision],
    cluster_ca_changes: bool,
    findings: &mut Vec<Finding>,
) -> bool {
    let client_renewed = decisions.iter().any(|d| d.id == "client" && d.action != ChangeAction::Noop && d.holders.contains(&node.name));
    if !(inv.kubelet_client_current && (cluster_ca_changes || client_renewed)) {
        return false;
    }
    let why = if cluster_ca_changes {
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
    true
}

/// kubelet's kubeconfig must refer to the files apply installs, or the new certificates
/// would not be used.
fn kubelet_kubeconfig_findings(node: &Node, inv: &NodeInventory, findings: &mut Vec<Finding>) {
    let Some(kc) = inv.kubeconfigs.iter().find(|k| k.path == crate::pki::catalogue::KUBELET_KUBECONFIG) else { return };
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

/// An expired cluster cannot be checked through its API before rotation; the plan says so
/// once, naming what expired.
fn cluster_expired_finding(expired: &[ExpiredCopy], findings: &mut Vec<Finding>) {
    if expired.is_empty() {
        return;
    }
    let mut ids: Vec<String> = expired.iter().map(|e| e.certificate.clone()).collect();
    ids.sort();
    ids.dedup();
    findings.push(finding(
        Severity::Warning,
        "cluster-expired",
        None,
        None,
        format!(
            "already expired: {}; the Kubernetes API cannot be used before rotation, so checks before it run over SSH",
            ids.join(", ")
        ),
    ));
}

/// The rows per target, in the order plan output shows them: nodes in topology order, then
/// the API model, then etcd.
fn target_changes(
    cluster: &Cluster<'_>,
    mut node_changes: BTreeMap<String, Vec<CertificateChange>>,
    apimodel_changes: Vec<CertificateChange>,
    etcd_changes: Vec<CertificateChange>,
) -> Vec<TargetChanges> {
    let mut changes: Vec<TargetChanges> = Vec::new();
    for (node, _) in &cluster.nodes {
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
    changes
}

/// Whether the apiserver ends up with another key pair (see `Diff::apiserver_key_changes`).
fn apiserver_gets_new_key(cluster: &Cluster<'_>, decisions: &[CertDecision]) -> bool {
    match decisions.iter().find(|d| d.id == "apiserver").map(|d| d.action) {
        Some(ChangeAction::Replace | ChangeAction::Create) => true,
        // Certrotate reissues with the API model's key; a supplied certificate brings its own.
        Some(ChangeAction::Reissue) => cluster.supplied_facts("apiserver").is_some_and(|want| {
            cluster.apimodel_facts("apiserver").is_none_or(|have| have.public_key_sha256 != want.public_key_sha256)
        }),
        _ => false,
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
