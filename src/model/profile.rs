//! The desired state of a rotation: a profile says which certificates are in scope, when a
//! certificate is due (renew-before threshold, CA policies), what new material looks like
//! (validities, key algorithm and size, extra SANs) and how fast apply may go (master strategy,
//! agent parallelism, gate timeouts). Profiles are YAML files; three are shipped in `plans/`
//! and embedded in the binary so `--profile rotate-all` works without a file.
//!
//! Value checks live in the newtypes (`Duration`, `RsaKeySize`, `Parallelism`, `SanDnsName`,
//! `SanIp`, `Scope`) so serde_yaml reports the line of the bad value; checks that relate two
//! fields run after parsing and point at the field with `diag::yaml::locate_yaml_path`.

use crate::diag::yaml::{diagnostic_from_yaml, point_at_first_present, with_help};
use crate::diag::{InputError, SourceFile};
use crate::pki::KeySpec;
use crate::digest::Sha256Digest;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

/// Profiles shipped with certrotate, by name, with their YAML text.
pub const SHIPPED_PROFILES: &[(&str, &str)] = &[
    ("rotate-all", include_str!("../../plans/rotate-all.yaml")),
    ("renew-expiring", include_str!("../../plans/renew-expiring.yaml")),
    ("rotate-ca", include_str!("../../plans/rotate-ca.yaml")),
];

/// The desired state of a certificate rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "certrotate profile")]
pub struct Profile {
    /// Short name shown in plans. Defaults to the file name without its extension.
    #[serde(default)]
    pub name: String,
    /// What this profile is for, in a sentence or two, for the reviewer of a plan.
    #[serde(default)]
    pub description: String,
    /// A leaf certificate expiring within this duration is reissued. Default `90d`.
    #[serde(default = "defaults::renew_before")]
    pub renew_before: Duration,
    /// Validity of newly issued certificates.
    #[serde(default)]
    pub validity: Validity,
    /// Key algorithm and sizes of newly issued key pairs.
    #[serde(default)]
    pub key: KeyPolicy,
    /// When the cluster CA (`CN=ca`) is replaced. Default `{policy: keep}`.
    #[serde(default)]
    pub ca: CaPolicy,
    /// Whether leaves in scope are reissued only when due (default) or always.
    #[serde(default)]
    pub leaves: LeafPolicy,
    /// When the front-proxy CA is replaced and whether its client certificate is in scope.
    #[serde(default)]
    pub front_proxy: FrontProxyPolicy,
    /// Which certificates certrotate manages: `all` (default) or a list of catalogue ids.
    #[serde(default)]
    pub scope: Scope,
    /// Extra subject alternative names added to the apiserver certificate.
    #[serde(default)]
    pub extra_sans: ExtraSans,
    /// How masters are changed.
    #[serde(default)]
    pub masters: MasterRollout,
    /// How agents are changed.
    #[serde(default)]
    pub agents: AgentRollout,
    /// How long apply waits at each validation gate, and how often it looks.
    #[serde(default)]
    pub gates: Gates,
}

mod defaults {
    use super::{Duration, RsaKeySize};

    pub fn renew_before() -> Duration {
        Duration::days(90)
    }
    pub fn ca_validity() -> Duration {
        Duration::years(30)
    }
    pub fn leaf_validity() -> Duration {
        Duration::years(2)
    }
    pub fn front_proxy_ca_validity() -> Duration {
        Duration::years(30)
    }
    pub fn front_proxy_client_validity() -> Duration {
        Duration::years(2)
    }
    pub fn leaf_key_size() -> RsaKeySize {
        RsaKeySize(2048)
    }
    pub fn ca_key_size() -> RsaKeySize {
        RsaKeySize(4096)
    }
    pub fn gate_timeout() -> Duration {
        Duration::minutes(10)
    }
    pub fn gate_interval() -> Duration {
        Duration::seconds(5)
    }
    pub fn yes() -> bool {
        true
    }
}

/// Validity periods of newly issued certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Validity {
    /// The cluster CA. Default `30y` (what AKS Engine issues).
    #[serde(default = "defaults::ca_validity")]
    pub ca: Duration,
    /// Every leaf signed by the cluster CA. Default `2y`.
    #[serde(default = "defaults::leaf_validity")]
    pub leaf: Duration,
    /// The front-proxy CA (`CN=proxyClientCA`). Default `30y`.
    #[serde(default = "defaults::front_proxy_ca_validity")]
    pub front_proxy_ca: Duration,
    /// The front-proxy client (`CN=aggregator`). Default `2y`.
    #[serde(default = "defaults::front_proxy_client_validity")]
    pub front_proxy_client: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: defaults::ca_validity(),
            leaf: defaults::leaf_validity(),
            front_proxy_ca: defaults::front_proxy_ca_validity(),
            front_proxy_client: defaults::front_proxy_client_validity(),
        }
    }
}

/// Key algorithm and sizes of newly issued key pairs.
///
/// AKS Engine can only read RSA keys back from `apimodel.json`, so `ecdsa-p256` is accepted
/// only when every certificate in scope lives outside the API model (`proxy-ca`, `proxy`,
/// `kubeletserver`); anything else is refused when the profile is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyPolicy {
    /// `rsa` (default) or `ecdsa-p256`.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// RSA modulus size of leaf keys: 2048 (default), 3072 or 4096. Ignored for ECDSA.
    #[serde(default = "defaults::leaf_key_size")]
    pub size: RsaKeySize,
    /// RSA modulus size of CA keys: 4096 (default, what AKS Engine issues), 3072 or 2048.
    /// Ignored for ECDSA.
    #[serde(default = "defaults::ca_key_size")]
    pub ca_size: RsaKeySize,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { algorithm: KeyAlgorithm::Rsa, size: defaults::leaf_key_size(), ca_size: defaults::ca_key_size() }
    }
}

impl KeyPolicy {
    /// The key to issue for a leaf certificate.
    pub fn leaf_key(&self) -> KeySpec {
        self.algorithm.spec(self.size)
    }

    /// The key to issue for a CA certificate.
    pub fn ca_key(&self) -> KeySpec {
        self.algorithm.spec(self.ca_size)
    }
}

/// Public-key algorithm of newly issued keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    Rsa,
    EcdsaP256,
}

impl KeyAlgorithm {
    fn spec(self, size: RsaKeySize) -> KeySpec {
        match (self, size.0) {
            (KeyAlgorithm::EcdsaP256, _) => KeySpec::EcdsaP256,
            (KeyAlgorithm::Rsa, 3072) => KeySpec::Rsa3072,
            (KeyAlgorithm::Rsa, 4096) => KeySpec::Rsa4096,
            (KeyAlgorithm::Rsa, _) => KeySpec::Rsa2048,
        }
    }
}

/// An RSA modulus size certrotate issues: 2048, 3072 or 4096 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "u32")]
pub struct RsaKeySize(u32);

impl RsaKeySize {
    pub const ALLOWED: [u32; 3] = [2048, 3072, 4096];

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for RsaKeySize {
    type Error = String;

    fn try_from(bits: i64) -> Result<Self, Self::Error> {
        if let Some(allowed) = Self::ALLOWED.into_iter().find(|&a| i64::from(a) == bits) {
            Ok(Self(allowed))
        } else if bits < 2048 {
            Err(with_help(
                format!("RSA {bits} is too weak: certrotate issues keys of 2048 bits or more"),
                "use 2048 (AKS Engine's leaf default), 3072 or 4096",
            ))
        } else {
            Err(with_help(
                format!("RSA key size {bits} is not supported"),
                "use 2048, 3072 or 4096",
            ))
        }
    }
}

impl From<RsaKeySize> for u32 {
    fn from(size: RsaKeySize) -> u32 {
        size.0
    }
}

impl JsonSchema for RsaKeySize {
    fn schema_name() -> Cow<'static, str> {
        "RsaKeySize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "RSA modulus size in bits.",
            "type": "integer",
            "enum": [2048, 3072, 4096]
        })
    }
}

/// When a CA is replaced. Deserialized by hand (see `CaPolicyFields`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(tag = "policy", rename_all = "camelCase", deny_unknown_fields)]
pub enum CaPolicy {
    /// Never replace the CA; leaves are reissued under the existing one (no API downtime).
    #[default]
    Keep,
    /// Replace the CA when it expires within `within`.
    RotateWhenExpiring {
        /// Replace the CA when its remaining validity is shorter than this.
        within: Duration,
    },
    /// Always replace the CA (what `aks-engine rotate-certs` does).
    Always,
}

impl CaPolicy {
    /// Whether this policy can ever replace the CA.
    pub fn may_rotate(&self) -> bool {
        !matches!(self, CaPolicy::Keep)
    }

    /// Whether a CA with `remaining` validity left must be replaced.
    pub fn requires_rotation(&self, remaining: std::time::Duration) -> bool {
        match self {
            CaPolicy::Keep => false,
            CaPolicy::RotateWhenExpiring { within } => remaining < within.as_std(),
            CaPolicy::Always => true,
        }
    }
}

/// When a leaf certificate in scope is reissued. Deserialized by hand (see `CaPolicyFields`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(tag = "policy", rename_all = "camelCase", deny_unknown_fields)]
pub enum LeafPolicy {
    /// Only when due: expired or expiring within `renewBefore`, signed by a CA being
    /// replaced, or not matching the catalogue (subject, SANs, usages) or the key policy.
    #[default]
    WhenDue,
    /// Every leaf in scope, due or not (after a suspected key compromise, or to match
    /// `aks-engine rotate-certs`, which reissues everything).
    Always,
}

/// What a CA `{policy: ..., within: ...}` mapping may hold. serde's internally tagged enums
/// ignore unknown fields next to unit variants and buffer their content, which loses the
/// line of a bad value; reading the fields into this struct from inside a map visitor keeps
/// `deny_unknown_fields` strict and lets serde_yaml point at the offending key or value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaPolicyFields {
    policy: CaPolicyName,
    #[serde(default)]
    within: Option<Duration>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum CaPolicyName {
    Keep,
    RotateWhenExpiring,
    Always,
}

/// What a leaf `{policy: ...}` mapping may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LeafPolicyFields {
    policy: LeafPolicyName,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum LeafPolicyName {
    WhenDue,
    Always,
}

/// Deserializes a policy enum from a mapping through `$fields` and `$convert`,
/// raising conversion errors inside the map visitor so they carry the mapping's location.
macro_rules! deserialize_policy {
    ($ty:ty, $fields:ty, $expecting:literal, $convert:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct PolicyVisitor;

                impl<'de> serde::de::Visitor<'de> for PolicyVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        let fields = <$fields>::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                        let convert: fn($fields) -> Result<$ty, String> = $convert;
                        convert(fields).map_err(serde::de::Error::custom)
                    }
                }

                deserializer.deserialize_map(PolicyVisitor)
            }
        }
    };
}

deserialize_policy!(
    CaPolicy,
    CaPolicyFields,
    "a CA policy: `{policy: keep}`, `{policy: rotateWhenExpiring, within: 1y}` or `{policy: always}`",
    |fields| match (fields.policy, fields.within) {
        (CaPolicyName::Keep, None) => Ok(CaPolicy::Keep),
        (CaPolicyName::Always, None) => Ok(CaPolicy::Always),
        (CaPolicyName::RotateWhenExpiring, Some(within)) => Ok(CaPolicy::RotateWhenExpiring { within }),
        (CaPolicyName::RotateWhenExpiring, None) => Err(with_help(
            "policy rotateWhenExpiring needs `within`: how close to expiry the CA is replaced",
            "add e.g. `within: 1y` to replace the CA once less than a year of validity is left",
        )),
        (name, Some(_)) => Err(with_help(
            format!(
                "`within` only applies to policy rotateWhenExpiring, not {}",
                if matches!(name, CaPolicyName::Keep) { "keep" } else { "always" }
            ),
            "remove `within`, or set `policy: rotateWhenExpiring`",
        )),
    }
);

deserialize_policy!(
    LeafPolicy,
    LeafPolicyFields,
    "a leaf policy: `{policy: whenDue}` or `{policy: always}`",
    |fields| Ok(match fields.policy {
        LeafPolicyName::WhenDue => LeafPolicy::WhenDue,
        LeafPolicyName::Always => LeafPolicy::Always,
    })
);

/// The front-proxy PKI (aggregation layer): its CA policy and whether its client is managed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FrontProxyPolicy {
    /// When the front-proxy CA (`proxy-ca`) is replaced. Default `{policy: keep}`.
    #[serde(default)]
    pub ca: CaPolicy,
    /// Whether the front-proxy client certificate (`proxy`) is in scope. Default `true`.
    /// `false` takes it out of scope even when `scope` is `all`.
    #[serde(default = "defaults::yes")]
    pub client: bool,
}

impl Default for FrontProxyPolicy {
    fn default() -> Self {
        Self { ca: CaPolicy::Keep, client: true }
    }
}

/// A certificate of the AKS Engine catalogue, as named in profiles and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum CertId {
    /// The cluster CA, `CN=ca`.
    #[serde(rename = "ca")]
    Ca,
    /// The apiserver serving certificate.
    #[serde(rename = "apiserver")]
    Apiserver,
    /// The node identity used by kubelets (`client.crt`).
    #[serde(rename = "client")]
    Client,
    /// The admin kubeconfig client certificate.
    #[serde(rename = "kubeconfig")]
    Kubeconfig,
    /// etcd's serving certificate.
    #[serde(rename = "etcdserver")]
    EtcdServer,
    /// The apiserver's client certificate towards etcd.
    #[serde(rename = "etcdclient")]
    EtcdClient,
    /// One peer certificate per master.
    #[serde(rename = "etcdpeer")]
    EtcdPeer,
    /// The front-proxy CA, `CN=proxyClientCA`.
    #[serde(rename = "proxy-ca")]
    ProxyCa,
    /// The front-proxy client, `CN=aggregator`.
    #[serde(rename = "proxy")]
    Proxy,
    /// The self-signed kubelet serving certificate of each node.
    #[serde(rename = "kubeletserver")]
    KubeletServer,
}

impl CertId {
    pub const ALL: [CertId; 10] = [
        CertId::Ca,
        CertId::Apiserver,
        CertId::Client,
        CertId::Kubeconfig,
        CertId::EtcdServer,
        CertId::EtcdClient,
        CertId::EtcdPeer,
        CertId::ProxyCa,
        CertId::Proxy,
        CertId::KubeletServer,
    ];

    /// The id as written in profiles and plans.
    pub fn as_str(self) -> &'static str {
        match self {
            CertId::Ca => "ca",
            CertId::Apiserver => "apiserver",
            CertId::Client => "client",
            CertId::Kubeconfig => "kubeconfig",
            CertId::EtcdServer => "etcdserver",
            CertId::EtcdClient => "etcdclient",
            CertId::EtcdPeer => "etcdpeer",
            CertId::ProxyCa => "proxy-ca",
            CertId::Proxy => "proxy",
            CertId::KubeletServer => "kubeletserver",
        }
    }

    /// Whether AKS Engine keeps this certificate in `apimodel.json` (and so must be able to
    /// parse its key, which it can only do for RSA).
    pub fn kept_in_apimodel(self) -> bool {
        !matches!(self, CertId::ProxyCa | CertId::Proxy | CertId::KubeletServer)
    }

    /// The CA that signs this certificate; `None` for CAs and self-signed certificates.
    pub fn signed_by(self) -> Option<CertId> {
        match self {
            CertId::Ca | CertId::ProxyCa | CertId::KubeletServer => None,
            CertId::Proxy => Some(CertId::ProxyCa),
            _ => Some(CertId::Ca),
        }
    }

    /// The profile id of a catalogue entry (every etcd peer is `etcdpeer`).
    pub fn of_kind(kind: &crate::pki::catalogue::CertKind) -> CertId {
        use crate::pki::catalogue::CertKind;
        match kind {
            CertKind::Ca => CertId::Ca,
            CertKind::Apiserver => CertId::Apiserver,
            CertKind::Client => CertId::Client,
            CertKind::Kubeconfig => CertId::Kubeconfig,
            CertKind::EtcdServer => CertId::EtcdServer,
            CertKind::EtcdClient => CertId::EtcdClient,
            CertKind::EtcdPeer(_) => CertId::EtcdPeer,
            CertKind::ProxyCa => CertId::ProxyCa,
            CertKind::Proxy => CertId::Proxy,
            CertKind::KubeletServer => CertId::KubeletServer,
        }
    }

    fn known_list() -> String {
        CertId::ALL.iter().map(|id| id.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for CertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CertId::ALL.into_iter().find(|id| id.as_str() == s).ok_or_else(|| {
            with_help(
                format!("`{s}` is not a certificate id"),
                format!("known ids: {}", CertId::known_list()),
            )
        })
    }
}

/// Which certificates a profile manages: `all`, or a non-empty list of catalogue ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    All,
    Only(Vec<CertId>),
}

impl Scope {
    pub fn contains(&self, id: CertId) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(ids) => ids.contains(&id),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Scope::All => serializer.serialize_str("all"),
            Scope::Only(ids) => ids.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScopeVisitor;

        impl<'de> serde::de::Visitor<'de> for ScopeVisitor {
            type Value = Scope;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "`all` or a list of certificate ids ({})", CertId::known_list())
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Scope, E> {
                if value == "all" {
                    return Ok(Scope::All);
                }
                let hint = match value.parse::<CertId>() {
                    Ok(id) => format!("write a list: `scope: [{id}]`, or `scope: all`"),
                    Err(_) => format!("write `scope: all` or a list of ids from: {}", CertId::known_list()),
                };
                Err(E::custom(with_help(format!("scope `{value}` is neither `all` nor a list"), hint)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scope, A::Error> {
                let mut ids: Vec<CertId> = Vec::new();
                while let Some(ScopeEntry(id)) = seq.next_element::<ScopeEntry>()? {
                    if ids.contains(&id) {
                        return Err(serde::de::Error::custom(with_help(
                            format!("`{id}` is listed twice in scope"),
                            "list each certificate id once",
                        )));
                    }
                    ids.push(id);
                }
                if ids.is_empty() {
                    return Err(serde::de::Error::custom(with_help(
                        "scope is an empty list, so the profile would manage nothing",
                        "list the certificate ids to manage, or write `scope: all`",
                    )));
                }
                Ok(Scope::Only(ids))
            }
        }

        deserializer.deserialize_any(ScopeVisitor)
    }
}

impl JsonSchema for Scope {
    fn schema_name() -> Cow<'static, str> {
        "Scope".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let id = generator.subschema_for::<CertId>();
        json_schema!({
            "description": "Which certificates are managed: `all`, or a list of catalogue ids.",
            "oneOf": [
                { "type": "string", "const": "all" },
                { "type": "array", "items": id, "minItems": 1, "uniqueItems": true }
            ]
        })
    }
}

/// Extra subject alternative names for the apiserver certificate, added after the ones
/// AKS Engine computes from the API model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraSans {
    /// DNS names, e.g. `api.contoso.local`.
    #[serde(default)]
    pub dns: Vec<SanDnsName>,
    /// IPv4 or IPv6 addresses.
    #[serde(default)]
    pub ips: Vec<SanIp>,
}

/// A DNS name fit for a certificate SAN: dot-separated labels of letters, digits and
/// hyphens (a leading `*.` wildcard is allowed), at most 253 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct SanDnsName(String);

impl SanDnsName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SanDnsName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let advice = "write a host name such as `api.contoso.local`: labels of letters, digits and hyphens separated by dots";
        if name.is_empty() || name.len() > 253 {
            return Err(with_help(format!("`{name}` is not a DNS name (it must be 1 to 253 characters)"), advice));
        }
        if name.parse::<IpAddr>().is_ok() {
            return Err(with_help(
                format!("`{name}` is an IP address, not a DNS name"),
                "move it to `extraSans.ips`",
            ));
        }
        let body = name.strip_prefix("*.").unwrap_or(&name);
        for label in body.split('.') {
            let valid = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !valid {
                return Err(with_help(format!("`{name}` is not a valid DNS name (bad label `{label}`)"), advice));
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }
}

impl From<SanDnsName> for String {
    fn from(name: SanDnsName) -> String {
        name.0
    }
}

impl JsonSchema for SanDnsName {
    fn schema_name() -> Cow<'static, str> {
        "SanDnsName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A DNS name for a subject alternative name; a leading `*.` wildcard is allowed.",
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": "^(\\*\\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
        })
    }
}

/// An IP address for a certificate SAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct SanIp(pub IpAddr);

impl TryFrom<String> for SanIp {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.trim().parse::<IpAddr>().map(SanIp).map_err(|_| {
            with_help(
                format!("`{text}` is not an IP address"),
                "write an IPv4 address such as 10.255.255.15 or an IPv6 address such as fd00::15; host names go in `extraSans.dns`",
            )
        })
    }
}

impl From<SanIp> for String {
    fn from(ip: SanIp) -> String {
        ip.0.to_string()
    }
}

impl JsonSchema for SanIp {
    fn schema_name() -> Cow<'static, str> {
        "SanIp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An IPv4 or IPv6 address.",
            "type": "string",
            "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }]
        })
    }
}

/// How masters are changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MasterRollout {
    /// `rolling` (default): one master at a time, gated, so etcd keeps quorum and the API
    /// stays up when the CA is kept. `all-at-once`: every master together, as
    /// `aks-engine rotate-certs` does. A new cluster CA can only go to all masters together
    /// (masters trusting different CAs cannot reach each other or etcd), so `ca: always`
    /// requires `all-at-once`, and a run in which `rotateWhenExpiring` replaces the CA
    /// changes masters all at once whatever this says; the plan states it.
    #[serde(default)]
    pub strategy: MasterStrategy,
}

/// Order in which masters are changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MasterStrategy {
    #[default]
    Rolling,
    AllAtOnce,
}

/// How agents are changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentRollout {
    /// How many agents are changed at the same time (at least 1). Default 1.
    #[serde(default)]
    pub parallelism: Parallelism,
}

/// A number of nodes changed at the same time; at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "u32")]
pub struct Parallelism(u32);

impl Parallelism {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Parallelism {
    fn default() -> Self {
        Self(1)
    }
}

impl TryFrom<i64> for Parallelism {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, Self::Error> {
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(Self(n)),
            _ => Err(with_help(
                format!("parallelism {n} would change no agent at all"),
                "use 1 to change agents one at a time, or a larger number to change that many together",
            )),
        }
    }
}

impl From<Parallelism> for u32 {
    fn from(p: Parallelism) -> u32 {
        p.0
    }
}

impl JsonSchema for Parallelism {
    fn schema_name() -> Cow<'static, str> {
        "Parallelism".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How many nodes are changed at the same time.",
            "type": "integer",
            "minimum": 1,
            "maximum": u32::MAX
        })
    }
}

/// The validation gates apply passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GateKind {
    /// Every etcd member is healthy and the cluster has quorum.
    EtcdHealthy,
    /// The apiserver presents the newly issued certificate.
    ApiserverServesNewCert,
    /// Every node reports Ready.
    NodesReady,
    /// kube-apiserver, kube-controller-manager, kube-scheduler and kube-addon-manager pods are Ready.
    ControlPlanePodsReady,
    /// Every pod in kube-system is Ready.
    KubeSystemReady,
}

impl GateKind {
    pub const ALL: [GateKind; 5] = [
        GateKind::EtcdHealthy,
        GateKind::ApiserverServesNewCert,
        GateKind::NodesReady,
        GateKind::ControlPlanePodsReady,
        GateKind::KubeSystemReady,
    ];

    /// The gate's name as written in profiles and plans.
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::EtcdHealthy => "etcdHealthy",
            GateKind::ApiserverServesNewCert => "apiserverServesNewCert",
            GateKind::NodesReady => "nodesReady",
            GateKind::ControlPlanePodsReady => "controlPlanePodsReady",
            GateKind::KubeSystemReady => "kubeSystemReady",
        }
    }
}

/// Gate timings: defaults for every gate and optional overrides per gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gates {
    /// How long a gate waits before it fails. Default `10m`.
    #[serde(default = "defaults::gate_timeout")]
    pub timeout: Duration,
    /// How often a gate checks. Default `5s`.
    #[serde(default = "defaults::gate_interval")]
    pub interval: Duration,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub etcd_healthy: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub apiserver_serves_new_cert: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub nodes_ready: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub control_plane_pods_ready: GateOverride,
    #[serde(default, skip_serializing_if = "GateOverride::is_empty")]
    pub kube_system_ready: GateOverride,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            timeout: defaults::gate_timeout(),
            interval: defaults::gate_interval(),
            etcd_healthy: GateOverride::default(),
            apiserver_serves_new_cert: GateOverride::default(),
            nodes_ready: GateOverride::default(),
            control_plane_pods_ready: GateOverride::default(),
            kube_system_ready: GateOverride::default(),
        }
    }
}

/// Timings of one gate, after overrides are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateTiming {
    pub timeout: Duration,
    pub interval: Duration,
}

impl Gates {
    pub fn override_for(&self, gate: GateKind) -> &GateOverride {
        match gate {
            GateKind::EtcdHealthy => &self.etcd_healthy,
            GateKind::ApiserverServesNewCert => &self.apiserver_serves_new_cert,
            GateKind::NodesReady => &self.nodes_ready,
            GateKind::ControlPlanePodsReady => &self.control_plane_pods_ready,
            GateKind::KubeSystemReady => &self.kube_system_ready,
        }
    }

    /// The timeout and interval a gate runs with.
    pub fn timing(&self, gate: GateKind) -> GateTiming {
        let over = self.override_for(gate);
        GateTiming {
            timeout: over.timeout.unwrap_or(self.timeout),
            interval: over.interval.unwrap_or(self.interval),
        }
    }
}

/// Per-gate timings; an absent value falls back to `gates.timeout` / `gates.interval`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GateOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

impl GateOverride {
    pub fn is_empty(&self) -> bool {
        self.timeout.is_none() && self.interval.is_none()
    }
}

/// A positive span of time written as a sequence of `<number><unit>` parts, units
/// `y` (365 days), `d`, `h`, `m` (minutes) and `s`: `90d`, `2y`, `1h30m`. Whole seconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Duration {
    seconds: u64,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;

impl Duration {
    /// A duration of `seconds`; `None` for zero, which no setting accepts.
    pub fn from_secs(seconds: u64) -> Option<Self> {
        (seconds > 0).then_some(Self { seconds })
    }
    pub const fn seconds(n: u64) -> Self {
        Self { seconds: n }
    }
    pub const fn minutes(n: u64) -> Self {
        Self { seconds: n * MINUTE }
    }
    pub const fn days(n: u64) -> Self {
        Self { seconds: n * DAY }
    }
    pub const fn years(n: u64) -> Self {
        Self { seconds: n * YEAR }
    }
    pub fn as_secs(self) -> u64 {
        self.seconds
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
    /// For arithmetic with `time::OffsetDateTime` (validity windows).
    pub fn as_time(self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.seconds).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.seconds;
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("y", YEAR), ("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1)] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({self})")
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let spelled = text.trim();
        let units_help = "write a positive number followed by a unit: y (365 days), d, h, m (minutes) or s, e.g. `90d`, `2y`, `1h30m`";
        if spelled.starts_with('-') {
            return Err(with_help(format!("negative duration `{spelled}`: a time span must be positive"), units_help));
        }
        if spelled.is_empty() {
            return Err(with_help("empty duration", units_help));
        }
        let mut seconds: u64 = 0;
        let mut digits = String::new();
        let mut saw_part = false;
        for c in spelled.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if c.is_whitespace() && digits.is_empty() {
                continue;
            }
            let size = match c {
                'y' => YEAR,
                'd' => DAY,
                'h' => HOUR,
                'm' => MINUTE,
                's' => 1,
                _ => {
                    return Err(with_help(format!("`{spelled}` is not a duration (unexpected `{c}`)"), units_help));
                }
            };
            if digits.is_empty() {
                return Err(with_help(format!("`{spelled}` is not a duration (unit `{c}` has no number)"), units_help));
            }
            let part = digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(size))
                .and_then(|n| n.checked_add(seconds));
            seconds = part.ok_or_else(|| with_help(format!("duration `{spelled}` is too large"), units_help))?;
            digits.clear();
            saw_part = true;
        }
        if !digits.is_empty() || !saw_part {
            return Err(with_help(format!("`{spelled}` has no unit"), units_help));
        }
        if seconds == 0 {
            return Err(with_help(
                format!("zero duration `{spelled}`: a time span must be positive"),
                units_help,
            ));
        }
        Ok(Self { seconds })
    }
}

impl TryFrom<String> for Duration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        d.to_string()
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A positive span of time: number-unit parts with units y (365 days), d, h, m (minutes), s; e.g. `90d`, `2y`, `1h30m`.",
            "type": "string",
            "pattern": "^([0-9]+[ydhms])+$"
        })
    }
}

/// Deserializes a value written as a scalar through `TryFrom<String>`, raising the error
/// inside the visitor. serde's `try_from` attribute converts after the deserializer has
/// returned, and serde_yaml then blames the enclosing mapping; failing in `visit_*` makes it
/// report the line and column of the offending value itself.
macro_rules! deserialize_from_scalar_text {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TextVisitor;

                impl serde::de::Visitor<'_> for TextVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        <$ty>::try_from(v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }

                deserializer.deserialize_any(TextVisitor)
            }
        }
    };
}

/// As `deserialize_from_scalar_text`, for values written as integers (`TryFrom<i64>`).
macro_rules! deserialize_from_integer {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct IntegerVisitor;

                impl serde::de::Visitor<'_> for IntegerVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        <$ty>::try_from(v).map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        <$ty>::try_from(i64::try_from(v).unwrap_or(i64::MAX)).map_err(E::custom)
                    }
                }

                deserializer.deserialize_any(IntegerVisitor)
            }
        }
    };
}

deserialize_from_scalar_text!(Duration, "a duration such as `90d`, `2y` or `10m`");
deserialize_from_scalar_text!(SanDnsName, "a DNS name");
deserialize_from_scalar_text!(SanIp, "an IP address");
deserialize_from_scalar_text!(ScopeEntry, "a certificate id");
deserialize_from_integer!(RsaKeySize, "an RSA key size in bits (2048, 3072 or 4096)");
deserialize_from_integer!(Parallelism, "a whole number of nodes, at least 1");

/// One element of a `scope` list.
struct ScopeEntry(CertId);

impl TryFrom<String> for ScopeEntry {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse().map(ScopeEntry)
    }
}

impl Profile {
    /// Loads a shipped profile by name (`rotate-all`, `renew-expiring`, `rotate-ca`) or a
    /// profile file by path. A path that names an existing file wins over a shipped name.
    pub fn load(name_or_path: &str) -> Result<Profile, InputError> {
        let path = Path::new(name_or_path);
        if path.is_file() {
            return Self::from_source(&SourceFile::read(path, "profile")?);
        }
        if let Some(source) = Self::shipped_source(name_or_path) {
            return Self::from_source(&source);
        }
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.ends_with(".yaml")
            || name_or_path.ends_with(".yml");
        if looks_like_path {
            // Reading reports the operating system's reason (missing, permission denied).
            let source = SourceFile::read(path, "profile")?;
            return Self::from_source(&source);
        }
        Err(InputError::plain(
            path,
            format!("`{name_or_path}` is neither a shipped profile nor a profile file"),
            format!(
                "use one of the shipped profiles ({}) or the path of a profile YAML file",
                Self::shipped_names().collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// Names of the profiles built into certrotate.
    pub fn shipped_names() -> impl Iterator<Item = &'static str> {
        SHIPPED_PROFILES.iter().map(|(name, _)| *name)
    }

    /// The text of a shipped profile, labelled with its path in the source tree.
    pub fn shipped_source(name: &str) -> Option<SourceFile> {
        SHIPPED_PROFILES
            .iter()
            .find(|(shipped, _)| *shipped == name)
            .map(|(shipped, text)| SourceFile::from_text(format!("plans/{shipped}.yaml"), *text))
    }

    /// Parses and checks a profile. The name defaults to the file stem.
    pub fn from_source(source: &SourceFile) -> Result<Profile, InputError> {
        let only_comments = source.text.lines().all(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with('#') || line == "---"
        });
        if only_comments {
            return Err(source.error_at(
                0..0,
                "the profile is empty",
                "write at least `name:` and the settings that differ from the defaults, or use a shipped profile (rotate-all, renew-expiring, rotate-ca)",
            ));
        }
        let mut profile: Profile = serde_yaml::from_str(&source.text).map_err(|err| diagnostic_from_yaml(source, &err))?;
        if profile.name.trim().is_empty() {
            profile.name = source
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "profile".to_string());
        }
        profile.check(source)?;
        Ok(profile)
    }

    /// Whether certrotate manages `id` under this profile.
    pub fn in_scope(&self, id: CertId) -> bool {
        if id == CertId::Proxy && !self.front_proxy.client {
            return false;
        }
        self.scope.contains(id)
    }

    /// The managed certificates, in catalogue order.
    pub fn certificates_in_scope(&self) -> Vec<CertId> {
        CertId::ALL.into_iter().filter(|id| self.in_scope(*id)).collect()
    }

    /// The policy that governs `ca` (for the cluster CA) or `proxy-ca`; `None` for leaves.
    pub fn ca_policy_for(&self, id: CertId) -> Option<&CaPolicy> {
        match id {
            CertId::Ca => Some(&self.ca),
            CertId::ProxyCa => Some(&self.front_proxy.ca),
            _ => None,
        }
    }

    /// Validity of a newly issued certificate of kind `id`.
    pub fn validity_for(&self, id: CertId) -> Duration {
        match id {
            CertId::Ca => self.validity.ca,
            CertId::ProxyCa => self.validity.front_proxy_ca,
            CertId::Proxy => self.validity.front_proxy_client,
            _ => self.validity.leaf,
        }
    }

    /// The key to issue for a certificate of kind `id`.
    pub fn key_for(&self, id: CertId) -> KeySpec {
        match id {
            CertId::Ca | CertId::ProxyCa => self.key.ca_key(),
            _ => self.key.leaf_key(),
        }
    }

    /// sha256 of the profile's canonical JSON (sorted keys, no whitespace): two profiles
    /// that mean the same thing have the same digest whatever their YAML looked like.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of_canonical_json(self)
    }

    /// The JSON Schema of profile files.
    pub fn json_schema_document() -> Schema {
        schemars::schema_for!(Profile)
    }

    /// Checks that relate several fields; each error points at the field to change.
    fn check(&self, source: &SourceFile) -> Result<(), InputError> {
        let at = |paths: &[&[&str]], message: String, help: String| -> InputError {
            point_at_first_present(source, paths, message, help)
        };

        if self.validity.leaf > self.validity.ca {
            return Err(at(
                &[&["validity", "leaf"], &["validity", "ca"]],
                format!(
                    "leaf validity {} is longer than the CA validity {}: leaves would outlive the CA that signs them",
                    self.validity.leaf, self.validity.ca
                ),
                "shorten validity.leaf or lengthen validity.ca".into(),
            ));
        }
        if self.validity.front_proxy_client > self.validity.front_proxy_ca {
            return Err(at(
                &[&["validity", "frontProxyClient"], &["validity", "frontProxyCa"]],
                format!(
                    "front-proxy client validity {} is longer than the front-proxy CA validity {}",
                    self.validity.front_proxy_client, self.validity.front_proxy_ca
                ),
                "shorten validity.frontProxyClient or lengthen validity.frontProxyCa".into(),
            ));
        }

        let leaf_validities = [
            ("validity.leaf", "leaf", self.validity.leaf, true),
            ("validity.frontProxyClient", "frontProxyClient", self.validity.front_proxy_client, self.in_scope(CertId::Proxy)),
        ];
        for (setting, key, validity, relevant) in leaf_validities {
            if relevant && self.renew_before >= validity {
                return Err(at(
                    &[&["renewBefore"], &["validity", key]],
                    format!(
                        "renewBefore {} is not shorter than {setting} {validity}: every new certificate would be due for renewal the moment it is issued",
                        self.renew_before
                    ),
                    format!("make renewBefore shorter than {setting} (e.g. a few months against years)"),
                ));
            }
        }

        let ca_policies = [
            (CertId::Ca, &self.ca, &["ca"][..], self.validity.ca, "validity.ca"),
            (CertId::ProxyCa, &self.front_proxy.ca, &["frontProxy", "ca"][..], self.validity.front_proxy_ca, "validity.frontProxyCa"),
        ];
        for (ca, policy, path, validity, validity_setting) in ca_policies {
            let within_path: Vec<&str> = path.iter().copied().chain(["within"]).collect();
            let policy_path: Vec<&str> = path.iter().copied().chain(["policy"]).collect();
            if let CaPolicy::RotateWhenExpiring { within } = policy {
                if *within >= validity {
                    return Err(at(
                        &[&within_path],
                        format!(
                            "the {ca} policy rotates within {within} of expiry, but a new {ca} is only valid for {validity}: it would be replaced on every run"
                        ),
                        format!("make `within` shorter than {validity_setting}"),
                    ));
                }
            }
            if policy.may_rotate() && !self.in_scope(ca) {
                return Err(at(
                    &[&policy_path, &["scope"]],
                    format!("the {ca} policy may replace `{ca}`, but `{ca}` is not in scope"),
                    format!("add `{ca}` to scope, or set the policy to `keep`"),
                ));
            }
            if policy.may_rotate() {
                let missing: Vec<&str> = CertId::ALL
                    .into_iter()
                    .filter(|id| id.signed_by() == Some(ca) && !self.in_scope(*id))
                    .map(CertId::as_str)
                    .collect();
                if !missing.is_empty() {
                    let (paths, help): (Vec<&[&str]>, String) = if ca == CertId::ProxyCa && missing == ["proxy"] && !self.front_proxy.client {
                        (vec![&["frontProxy", "client"][..]], "set frontProxy.client to true, or the front-proxy CA policy to `keep`".into())
                    } else {
                        (vec![&["scope"][..], &policy_path[..]], format!("add {} to scope, or set the {ca} policy to `keep`", missing.join(", ")))
                    };
                    return Err(at(
                        &paths,
                        format!(
                            "replacing `{ca}` invalidates every certificate it signs, but {} would be left signed by the old CA",
                            missing.join(", ")
                        ),
                        help,
                    ));
                }
            }
        }

        if let Scope::Only(ids) = &self.scope {
            if ids.contains(&CertId::Proxy) && !self.front_proxy.client {
                return Err(at(
                    &[&["frontProxy", "client"]],
                    "scope lists `proxy`, but frontProxy.client is false, which takes it out of scope".into(),
                    "remove `proxy` from scope, or set frontProxy.client to true".into(),
                ));
            }
        }

        if self.key.algorithm == KeyAlgorithm::EcdsaP256 {
            let held: Vec<&str> = self
                .certificates_in_scope()
                .into_iter()
                .filter(|id| id.kept_in_apimodel())
                .map(CertId::as_str)
                .collect();
            if !held.is_empty() {
                return Err(at(
                    &[&["key", "algorithm"]],
                    format!(
                        "ecdsa-p256 keys cannot be used for {}: AKS Engine keeps them in apimodel.json and can only read RSA keys there, so `aks-engine upgrade` and `scale` would fail afterwards",
                        held.join(", ")
                    ),
                    "use `algorithm: rsa`, or limit scope to certificates kept outside the API model: proxy-ca, proxy, kubeletserver".into(),
                ));
            }
        }

        if self.ca == CaPolicy::Always && self.masters.strategy == MasterStrategy::Rolling {
            return Err(at(
                &[&["masters", "strategy"], &["ca", "policy"]],
                "a new cluster CA cannot be rolled out one master at a time: masters trusting different CAs cannot talk to each other or to etcd".into(),
                "set masters.strategy to `all-at-once` (the API is down while masters restart), or keep the CA with `ca: {policy: keep}`".into(),
            ));
        }

        for gate in GateKind::ALL {
            let timing = self.gates.timing(gate);
            if timing.interval >= timing.timeout {
                let over = self.gates.override_for(gate);
                let paths: Vec<Vec<&str>> = match (over.interval.is_some(), over.timeout.is_some()) {
                    (true, _) => vec![vec!["gates", gate.as_str(), "interval"]],
                    (false, true) => vec![vec!["gates", gate.as_str(), "timeout"]],
                    (false, false) => vec![vec!["gates", "interval"], vec!["gates", "timeout"]],
                };
                let paths: Vec<&[&str]> = paths.iter().map(Vec::as_slice).collect();
                return Err(at(
                    &paths,
                    format!(
                        "gate {} checks every {} but gives up after {}: it would check at most once",
                        gate.as_str(),
                        timing.interval,
                        timing.timeout
                    ),
                    "make the interval shorter than the timeout".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        let cases = [("90d", 90 * DAY), ("2y", 2 * YEAR), ("1h30m", HOUR + 30 * MINUTE), ("5s", 5), ("24h", DAY)];
        for (text, seconds) in cases {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_secs(), seconds, "{text}");
        }
        assert_eq!(Duration::days(400).to_string(), "1y35d");
        assert_eq!("24h".parse::<Duration>().unwrap().to_string(), "1d");
    }

    #[test]
    fn durations_reject_nonsense() {
        for bad in ["-3d", "0d", "0s", "", "d", "10", "3w", "1y-2d", "99999999999999999999y"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ids_agree_with_the_catalogue() {
        use crate::pki::catalogue::{CertKind, SCOPE_IDS};
        let ours: Vec<&str> = CertId::ALL.iter().map(|id| id.as_str()).collect();
        assert_eq!(ours, SCOPE_IDS);
        let kinds = [
            CertKind::Ca,
            CertKind::Apiserver,
            CertKind::Client,
            CertKind::Kubeconfig,
            CertKind::EtcdServer,
            CertKind::EtcdClient,
            CertKind::EtcdPeer(2),
            CertKind::ProxyCa,
            CertKind::Proxy,
            CertKind::KubeletServer,
        ];
        for kind in kinds {
            assert_eq!(CertId::of_kind(&kind).as_str(), kind.scope_id());
        }
    }

    #[test]
    fn scope_resolution_honours_front_proxy_client() {
        let mut p: Profile = serde_yaml::from_str("name: x\n").unwrap();
        assert!(p.in_scope(CertId::Proxy));
        p.front_proxy.client = false;
        assert!(!p.in_scope(CertId::Proxy));
        assert_eq!(p.certificates_in_scope().len(), 9);
    }
}
