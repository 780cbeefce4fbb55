//! The saved plan: the artifact `plan --out FILE` writes and `apply FILE` executes, reviewed
//! in between by a person who did not make it. It records what was observed (as digests),
//! what will change and why (before/after attributes per certificate per node), the graph of
//! actions and gates apply will walk, and a digest over all of it, so a plan edited after it
//! was written is refused. It never holds a private key or a secret: keys appear only as
//! public-key fingerprints, and writing refuses text that looks like key material.
//!
//! The types are plain data with public fields: the diff and graph code fills them in.

use crate::diag::yaml::{locate_yaml_path, yaml_diagnostic};
use crate::diag::{InputError, SourceFile};
use crate::digest::sealing_digest;
use crate::model::profile::{CertId, Duration, Profile};
pub use crate::plan::step::{Step, StepKind};
use miette::Diagnostic;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use thiserror::Error;

/// `Sha256Digest` lives in `crate::digest`; re-exported so existing `plan::file` imports resolve.
pub use crate::digest::Sha256Digest;

/// The plan format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

/// A saved plan. Field order is the order a reviewer reads the YAML in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "certrotate saved plan")]
pub struct PlanFile {
    /// Version of this file format; this build reads and writes 2 (typed steps: phase,
    /// scope and parameters).
    pub format_version: u32,
    /// certrotate version that wrote the plan.
    pub tool_version: String,
    /// When the plan was made (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: time::OffsetDateTime,
    /// The cluster the plan was made for.
    pub cluster: ClusterIdentity,
    /// The desired state the plan was computed from, in full.
    pub profile: Profile,
    /// `Profile::digest()` of `profile`.
    pub profile_digest: Sha256Digest,
    /// The certificates the operator supplied (`--certificate-profile`): the file and the
    /// digest of its bytes. Apply reads the material from that file again and refuses it if
    /// it changed; the plan itself holds no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplied_certificates: Option<FileDigest>,
    /// Digests of everything read from the cluster, so apply can tell whether it changed.
    pub observed: Observed,
    /// What changes, per target (node, API model, etcd), per certificate.
    pub changes: Vec<TargetChanges>,
    /// Problems found while observing (drift between nodes, unexpected files, ...).
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// The actions and gates apply walks, in dependency order.
    pub graph: ActionGraph,
    /// Counts of changes, steps and findings.
    pub summary: Summary,
    /// How long the Kubernetes API is expected to be unavailable during apply.
    pub expected_api_downtime: ApiDowntime,
    /// sha256 over the canonical JSON of every other field; set by `seal()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Sha256Digest>,
}

/// The cluster a plan belongs to, as read from the API model and its neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterIdentity {
    pub dns_prefix: String,
    pub location: String,
    /// The 8-digit suffix of VM names (`k8s-master-<nameSuffix>-0`).
    pub name_suffix: String,
    pub apiserver_fqdn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// The API model the plan was made from and the sha256 of its bytes.
    pub api_model: FileDigest,
}

/// A local file and the sha256 of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileDigest {
    pub path: PathBuf,
    pub digest: Sha256Digest,
}

/// Digests of everything observed on the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Observed {
    /// Per node, per file path.
    pub nodes: Vec<ObservedNode>,
    /// Per etcd key (the front-proxy material under `/proxycerts/`).
    #[serde(default)]
    pub etcd: BTreeMap<String, ObservedItem>,
}

/// What was found on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObservedNode {
    /// Node (VM) name.
    pub node: String,
    pub role: NodeRole,
    /// Absolute path on the node → what it held.
    pub files: BTreeMap<String, ObservedItem>,
}

/// Role of a node in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeRole {
    Master,
    Agent,
}

/// What one observed path held. Private keys are recorded by the fingerprint of their public
/// key only: the plan can tell a key changed without carrying anything secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum ObservedItem {
    /// Non-secret content (certificate, kubeconfig without embedded keys): sha256 of the bytes.
    Content { digest: Sha256Digest },
    /// A private key: sha256 of the DER SubjectPublicKeyInfo of its public half, the same
    /// fingerprint a certificate's public key has, so key-matches-cert is visible.
    PrivateKey { public_key_fingerprint: Sha256Digest },
    /// The path did not exist. (An empty struct variant, not a unit one: serde ignores
    /// unknown fields beside unit variants of tagged enums, and a plan must not carry
    /// anything its digest does not cover.)
    Missing {},
    /// The path existed but could not be read; `reason` says why.
    Unreadable { reason: String },
}

/// The changes to one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetChanges {
    pub target: ChangeTarget,
    pub certificates: Vec<CertificateChange>,
}

/// Where a certificate lives: a node, the API model, or etcd (front-proxy material).
/// `ApiModel {}` and `Etcd {}` are empty struct variants for the reason `ObservedItem::Missing`
/// is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum ChangeTarget {
    Node { name: String, role: NodeRole },
    ApiModel {},
    Etcd {},
}

/// What happens to one certificate on one target, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateChange {
    pub certificate: CertId,
    /// Where the material lives in the target: a file path on a node, a JSON pointer into the
    /// API model (`/properties/certificateProfile/etcdPeerCertificates/1`) or an etcd key.
    pub location: String,
    pub action: ChangeAction,
    /// Why this action: at least one reason unless the action is `noop`.
    #[serde(default)]
    pub reasons: Vec<Reason>,
    /// Attributes now (subject, issuer, notAfter, sans, keyAlgorithm, fingerprint, ...).
    #[serde(default)]
    pub before: BTreeMap<String, AttrValue>,
    /// Attributes after apply; values only known once apply issues them are `{known: false}`.
    #[serde(default)]
    pub after: BTreeMap<String, AttrValue>,
}

/// What happens to a certificate. Terraform's markers: ` ` noop, `~` reissue, `-/+` replace,
/// `+` create, `-` delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ChangeAction {
    /// Nothing to do.
    Noop,
    /// New key and certificate under the same CA: trust is unchanged, no API downtime.
    Reissue,
    /// Replaced together with its trust root (a new CA, or anything signed by one): every
    /// party that trusts it must change at the same time.
    Replace,
    /// The certificate is missing and will be created.
    Create,
    /// The file is obsolete and will be removed (after its backup).
    Delete,
}

impl ChangeAction {
    /// The marker plan output shows beside the certificate.
    pub fn marker(self) -> &'static str {
        match self {
            ChangeAction::Noop => " ",
            ChangeAction::Reissue => "~",
            ChangeAction::Replace => "-/+",
            ChangeAction::Create => "+",
            ChangeAction::Delete => "-",
        }
    }
}

/// One reason for a change: a stable code for machines and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
}

/// Why a certificate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonCode {
    /// Already expired.
    Expired,
    /// Expires within the profile's renewBefore.
    ExpiresSoon,
    /// The CA policy says so (`always`, or `rotateWhenExpiring` and the CA is due).
    CaPolicy,
    /// Its signing CA is being replaced.
    SignerReplaced,
    /// The file is missing.
    Missing,
    /// It does not chain to the CA the cluster trusts.
    NotSignedByCa,
    /// The private key does not match the certificate.
    KeyMismatch,
    /// Subject alternative names differ from what the catalogue computes.
    SanMismatch,
    /// Subject differs from the catalogue.
    SubjectMismatch,
    /// Key usages differ from the catalogue.
    UsageMismatch,
    /// Key algorithm or size differs from the profile.
    KeySpecChanged,
    /// Nodes hold different copies of material that should be identical.
    DriftBetweenNodes,
    /// The API model's copy differs from what the nodes hold.
    ApiModelDiffers,
    /// Follows another change (the admin kubeconfig embeds the new client certificate, ...).
    DependsOnChange,
    /// Nothing to do: valid, matches the catalogue and the profile.
    UpToDate,
    /// Not managed under this profile's scope.
    OutOfScope,
    /// The operator supplied another certificate (`--certificate-profile`).
    Supplied,
}

/// An attribute value in `before`/`after`. `Unknown` is a value only apply will know (the
/// serial or fingerprint of a certificate not issued yet), written `{known: false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AttrRepr", into = "AttrRepr")]
pub enum AttrValue {
    Unknown,
    Flag(bool),
    Integer(i64),
    Text(String),
    List(Vec<String>),
}

/// How `AttrValue` looks on the wire.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum AttrRepr {
    Unknown(UnknownMarker),
    Flag(bool),
    Integer(i64),
    Text(String),
    List(Vec<String>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnknownMarker {
    known: bool,
}

impl TryFrom<AttrRepr> for AttrValue {
    type Error = String;

    fn try_from(repr: AttrRepr) -> Result<Self, String> {
        Ok(match repr {
            AttrRepr::Unknown(UnknownMarker { known: false }) => AttrValue::Unknown,
            AttrRepr::Unknown(UnknownMarker { known: true }) => {
                return Err("an attribute written as a map must be `{known: false}` (a value known only at apply)".into())
            }
            AttrRepr::Flag(b) => AttrValue::Flag(b),
            AttrRepr::Integer(n) => AttrValue::Integer(n),
            AttrRepr::Text(s) => AttrValue::Text(s),
            AttrRepr::List(v) => AttrValue::List(v),
        })
    }
}

impl From<AttrValue> for AttrRepr {
    fn from(value: AttrValue) -> Self {
        match value {
            AttrValue::Unknown => AttrRepr::Unknown(UnknownMarker { known: false }),
            AttrValue::Flag(b) => AttrRepr::Flag(b),
            AttrValue::Integer(n) => AttrRepr::Integer(n),
            AttrValue::Text(s) => AttrRepr::Text(s),
            AttrValue::List(v) => AttrRepr::List(v),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Text(s.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Text(s)
    }
}

impl JsonSchema for AttrValue {
    fn schema_name() -> Cow<'static, str> {
        "AttrValue".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An attribute value; `{known: false}` marks a value known only at apply.",
            "anyOf": [
                {
                    "type": "object",
                    "properties": { "known": { "const": false } },
                    "required": ["known"],
                    "additionalProperties": false
                },
                { "type": "boolean" },
                { "type": "integer" },
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// Something noticed while observing that a reviewer should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    /// Stable kebab-case code, e.g. `drift-between-nodes`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// The steps apply walks: actions and gates, and which must finish before which.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActionGraph {
    /// In an order apply may run them one by one.
    pub steps: Vec<Step>,
    pub edges: Vec<GraphEdge>,
}

/// `from` must finish before `to` starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
}

/// Counts shown on the plan's summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Summary {
    pub noop: u32,
    pub reissue: u32,
    pub replace: u32,
    pub create: u32,
    pub delete: u32,
    pub actions: u32,
    pub gates: u32,
    pub errors: u32,
    pub warnings: u32,
}

impl Summary {
    /// Counts what `changes`, `graph` and `findings` hold.
    pub fn tally(changes: &[TargetChanges], graph: &ActionGraph, findings: &[Finding]) -> Self {
        let mut summary = Summary::default();
        for change in changes.iter().flat_map(|t| &t.certificates) {
            let counter = match change.action {
                ChangeAction::Noop => &mut summary.noop,
                ChangeAction::Reissue => &mut summary.reissue,
                ChangeAction::Replace => &mut summary.replace,
                ChangeAction::Create => &mut summary.create,
                ChangeAction::Delete => &mut summary.delete,
            };
            *counter += 1;
        }
        for step in &graph.steps {
            match step.kind {
                StepKind::Action => summary.actions += 1,
                StepKind::Gate => summary.gates += 1,
            }
        }
        for finding in findings {
            match finding.severity {
                Severity::Error => summary.errors += 1,
                Severity::Warning => summary.warnings += 1,
                Severity::Info => {}
            }
        }
        summary
    }

    /// Whether applying the plan would change anything.
    pub fn has_changes(&self) -> bool {
        self.reissue + self.replace + self.create + self.delete > 0
    }
}

/// Expected unavailability of the Kubernetes API while the plan is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiDowntime {
    pub kind: DowntimeKind,
    /// Estimated length of the outage, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Duration>,
    /// Why, in a sentence for the change-review board.
    pub explanation: String,
}

impl Default for ApiDowntime {
    fn default() -> Self {
        Self { kind: DowntimeKind::None, estimate: None, explanation: "no control-plane certificate changes".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DowntimeKind {
    /// The API stays up throughout.
    None,
    /// Masters restart one at a time behind the load balancer; the API stays reachable but
    /// individual requests may fail while a master restarts.
    Rolling,
    /// Every master restarts together: the API is down for `estimate`.
    Outage,
}

/// Why a plan could not be written.
#[derive(Debug, Error, Diagnostic)]
pub enum PlanWriteError {
    #[error("the plan is not sealed: its digest is missing or does not match its content")]
    #[diagnostic(help("call PlanFile::seal() after the last change and before writing"))]
    NotSealed,
    #[error("refusing to write the plan: it contains what looks like {0}")]
    #[diagnostic(help("this is a bug in certrotate: plans must hold fingerprints, never keys or secrets; please report it"))]
    SecretDetected(&'static str),
    #[error("cannot write the plan to {path}: {source}")]
    #[diagnostic(help("check that the directory exists and is writable"))]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot serialize the plan: {0}")]
    Serialize(#[from] serde_yaml::Error),
}

const PLAN_HEADER: &str = "\
# certrotate saved plan. Review it with `certrotate show FILE`; apply it with
# `certrotate apply FILE`. Do not edit: the digest at the end detects any change.
";

impl PlanFile {
    /// A plan for `cluster` under `profile` with nothing observed or planned yet; the diff
    /// and graph code fill in the rest, then `seal()`.
    pub fn new(cluster: ClusterIdentity, profile: Profile) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            format_version: FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: now.replace_nanosecond(0).unwrap_or(now),
            cluster,
            profile_digest: profile.digest(),
            profile,
            supplied_certificates: None,
            observed: Observed::default(),
            changes: Vec::new(),
            findings: Vec::new(),
            graph: ActionGraph::default(),
            summary: Summary::default(),
            expected_api_downtime: ApiDowntime::default(),
            digest: None,
        }
    }

    /// The digest of every field but `digest`.
    pub fn compute_digest(&self) -> Sha256Digest {
        sealing_digest(self, "digest")
    }

    /// Records the digest of the plan's content; call after the last change.
    pub fn seal(&mut self) {
        self.digest = Some(self.compute_digest());
    }

    /// Whether the recorded digest matches the content.
    pub fn is_sealed(&self) -> bool {
        self.digest.as_ref() == Some(&self.compute_digest())
    }

    /// The YAML text `write_atomic` writes.
    pub fn to_yaml(&self) -> Result<String, PlanWriteError> {
        Ok(format!("{PLAN_HEADER}{}", serde_yaml::to_string(self)?))
    }

    /// Writes the sealed plan as YAML, mode 0600, through a temporary file in the same
    /// directory renamed over `path`, so a reader never sees half a plan.
    pub fn write_atomic(&self, path: &Path) -> Result<(), PlanWriteError> {
        if !self.is_sealed() {
            return Err(PlanWriteError::NotSealed);
        }
        let text = self.to_yaml()?;
        if let Some(what) = find_secret(&text) {
            return Err(PlanWriteError::SecretDetected(what));
        }
        let io = |source| PlanWriteError::Io { path: path.to_path_buf(), source };
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        // tempfile creates the file 0600 and removes it if we fail before persisting.
        let mut temp = tempfile::Builder::new().prefix(".certrotate-plan").tempfile_in(dir).map_err(io)?;
        temp.write_all(text.as_bytes()).map_err(io)?;
        temp.as_file().sync_all().map_err(io)?;
        temp.persist(path).map_err(|e| io(e.error))?;
        // The rename is durable only once the directory entry is on disk.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Reads a saved plan and refuses it unless its format is known, its digest matches its
    /// content, its profile digest matches its profile, its summary matches what it counts
    /// and its graph is well formed.
    pub fn read(path: &Path) -> Result<PlanFile, InputError> {
        let source = SourceFile::read(path, "saved plan")?;
        Self::from_source(&source)
    }

    /// As `read`, from text already in memory.
    pub fn from_source(source: &SourceFile) -> Result<PlanFile, InputError> {
        let remake = "make a new plan with `certrotate plan --out FILE`, review it, and apply that";
        let raw: serde_yaml::Value = serde_yaml::from_str(&source.text)
            .map_err(|e| source.yaml_error(&e, "the saved plan is not valid YAML", remake))?;
        let version = raw.get("formatVersion").ok_or_else(|| {
            source.error_at(
                0..0,
                "this is not a certrotate plan: it has no formatVersion",
                "pass a file written by `certrotate plan --out FILE`",
            )
        })?;
        if version.as_u64() != Some(u64::from(FORMAT_VERSION)) {
            let written_by = raw.get("toolVersion").and_then(|v| v.as_str()).unwrap_or("an unknown version");
            return Err(error_at_top_level_key(
                source,
                "formatVersion",
                format!(
                    "plan format {} (written by certrotate {written_by}) cannot be read by certrotate {}, which reads format {FORMAT_VERSION}",
                    serde_yaml::to_string(version).unwrap_or_default().trim(),
                    env!("CARGO_PKG_VERSION")
                ),
                format!("apply it with the certrotate version that wrote it, or {remake}"),
            ));
        }
        let plan: PlanFile = serde_yaml::from_str(&source.text)
            .map_err(|e| yaml_diagnostic(source, &e, "the saved plan is malformed", |_| remake.to_string()))?;

        let Some(recorded) = &plan.digest else {
            return Err(source.error_at(
                0..0,
                "the saved plan has no digest, so certrotate cannot tell whether it was changed after it was written",
                format!("do not apply it; {remake}"),
            ));
        };
        let actual = plan.compute_digest();
        if *recorded != actual {
            return Err(error_at_top_level_key(
                source,
                "digest",
                format!(
                    "the plan {} was modified after it was written: it records digest {} but its content hashes to {}",
                    source.path.display(),
                    recorded.short(),
                    actual.short()
                ),
                format!("do not apply it; {remake}"),
            ));
        }
        if plan.profile_digest != plan.profile.digest() {
            return Err(error_at_top_level_key(
                source,
                "profileDigest",
                "the plan's profileDigest does not match the profile it contains",
                format!("do not apply it; {remake}"),
            ));
        }
        if plan.summary != Summary::tally(&plan.changes, &plan.graph, &plan.findings) {
            return Err(error_at_top_level_key(
                source,
                "summary",
                "the plan's summary does not count what its changes, graph and findings hold",
                format!("do not apply it; {remake}"),
            ));
        }
        plan.graph.check().map_err(|problem| {
            error_at_top_level_key(source, "graph", format!("the plan's action graph is not usable: {problem}"), remake)
        })?;
        Ok(plan)
    }

    /// The JSON Schema of saved plans.
    pub fn json_schema_document() -> Schema {
        schemars::schema_for!(PlanFile)
    }
}

/// An error pointing at a top-level key of the plan (`digest` also names nested values, so
/// a plain text search would find the wrong one).
fn error_at_top_level_key(
    source: &SourceFile,
    key: &str,
    message: impl Into<String>,
    help: impl Into<String>,
) -> InputError {
    let range = locate_yaml_path(&source.text, &[key]).unwrap_or(0..0);
    source.error_at(range, message, help)
}

impl ActionGraph {
    /// Checks that ids are unique, every step is consistent in itself (a gate has its
    /// settings, a node step its target), edges name existing steps and the graph has no
    /// cycle; returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let mut index = std::collections::HashMap::new();
        let mut graph = petgraph::graph::DiGraph::<&str, ()>::new();
        for step in &self.steps {
            if index.insert(step.id.as_str(), graph.add_node(step.id.as_str())).is_some() {
                return Err(format!("step id `{}` is used twice", step.id));
            }
            step.check()?;
        }
        let mut seen = HashSet::new();
        for edge in &self.edges {
            let (Some(&from), Some(&to)) = (index.get(edge.from.as_str()), index.get(edge.to.as_str())) else {
                return Err(format!("edge {} → {} names a step that does not exist", edge.from, edge.to));
            };
            if seen.insert((from, to)) {
                graph.add_edge(from, to, ());
            }
        }
        petgraph::algo::toposort(&graph, None)
            .map(|_| ())
            .map_err(|cycle| format!("the steps form a cycle through `{}`", graph[cycle.node_id()]))
    }
}

static SECRET_PATTERNS: LazyLock<Vec<(&'static str, regex::Regex)>> = LazyLock::new(|| {
    let pattern = |what, re: &str| (what, regex::Regex::new(re).expect("secret pattern compiles"));
    vec![
        pattern("a PEM private key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
        // Base64 DER without PEM armour: PKCS#1 RSA (version 0, then the modulus) and PKCS#8.
        // The three characters after `MII` encode the length; `IBAA`/`IBAD` is version 0.
        pattern("a base64 RSA private key", r"MII[A-Za-z0-9+/]{3}IBAAK"),
        pattern("a base64 PKCS#8 private key", r"MII[A-Za-z0-9+/]{3}IBADAN"),
        pattern("a base64 EC private key", r"MHcCAQEEI"),
        // A JWT (an Azure AD access token, a service-account token): header and claims are
        // base64url JSON objects, so both start with `eyJ`.
        pattern("a bearer token (JWT)", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."),
        pattern(
            "a client secret or password",
            r#"(?i)["']?(?:client[_-]?secret|admin[_-]?password|password|secret)["']?\s*[:=]\s*["']?[^\s"',}{]{4,}"#,
        ),
    ]
});

/// Whether `text` holds what looks like a private key (PEM or bare base64 DER) or a client
/// secret or password assigned to a field. Used before a plan is written and by tests that
/// prove no secret reaches a plan.
pub fn contains_secret(text: &str) -> bool {
    find_secret(text).is_some()
}

/// What kind of secret `text` holds, if any (never the secret itself).
pub fn find_secret(text: &str) -> Option<&'static str> {
    SECRET_PATTERNS.iter().find(|(_, re)| re.is_match(text)).map(|(what, _)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_scan_tells_keys_and_secrets_from_fingerprints() {
        assert!(contains_secret("x\n-----BEGIN RSA PRIVATE KEY-----\nMIIE"));
        assert!(contains_secret("-----BEGIN PRIVATE KEY-----"));
        assert!(contains_secret("-----BEGIN EC PRIVATE KEY-----"));
        assert!(contains_secret("key: MIIEpAIBAAKCAQEAx3"));
        assert!(contains_secret("MIIG4wIBAAKCAYEAx3"));
        assert!(contains_secret("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"));
        assert!(contains_secret(r#""clientSecret": "s3cr3t-value""#));
        assert!(contains_secret("client_secret: abcd1234"));
        assert!(contains_secret("Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQ.c2ln"));
        assert!(!contains_secret("publicKeyFingerprint: sha256:00ff"));
        assert!(!contains_secret("-----BEGIN CERTIFICATE-----\nMIIFazCCA1OgAwIBAgIUb"));
        assert!(!contains_secret("message: the clientSecret comes from AZURE_CLIENT_SECRET"));
    }

    #[test]
    fn graph_check_finds_cycles_and_dangling_edges() {
        let step = |id: &str| Step {
            id: id.into(),
            kind: StepKind::Action,
            operation: crate::plan::step::Operation::Cleanup,
            phase: crate::plan::step::Phase::Finish,
            scope: crate::plan::step::Scope::Cluster,
            target: None,
            description: String::new(),
            params: Default::default(),
            requires: Vec::new(),
            gate: None,
        };
        let edge = |a: &str, b: &str| GraphEdge { from: a.into(), to: b.into() };
        let mut graph = ActionGraph { steps: vec![step("a"), step("b")], edges: vec![edge("a", "b")] };
        assert!(graph.check().is_ok());
        graph.edges.push(edge("b", "a"));
        assert!(graph.check().unwrap_err().contains("cycle"));
        graph.edges = vec![edge("a", "c")];
        assert!(graph.check().unwrap_err().contains("does not exist"));
    }
}
