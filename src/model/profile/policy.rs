//! What new material looks like and when a certificate is replaced: validities, the key
//! algorithm and sizes, the CA policies (cluster CA and front-proxy CA) and the leaf policy.
//! The policies are read by hand from their `{policy: ...}` mappings so that serde_yaml
//! points at the offending key or value.

use super::de::deserialize_from_integer;
use super::Duration;
use crate::diag::yaml::with_help;
use crate::pki::KeySpec;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Days generateproxycerts.sh (AKS Engine) makes both front-proxy certificates valid for.
pub const AKS_ENGINE_FRONT_PROXY_DAYS: u64 = 262824;

mod defaults {
    use super::{Duration, RsaKeySize};

    pub fn ca_validity() -> Duration {
        Duration::years(30)
    }
    pub fn leaf_validity() -> Duration {
        Duration::years(2)
    }
    /// generateproxycerts.sh gives both front-proxy certificates `-days 262824` (262824 hours
    /// would be 30 years; the script says days, so about 720 years).
    pub fn front_proxy_ca_validity() -> Duration {
        Duration::days(super::AKS_ENGINE_FRONT_PROXY_DAYS)
    }
    pub fn front_proxy_client_validity() -> Duration {
        Duration::days(super::AKS_ENGINE_FRONT_PROXY_DAYS)
    }
    pub fn leaf_key_size() -> RsaKeySize {
        RsaKeySize(2048)
    }
    pub fn ca_key_size() -> RsaKeySize {
        RsaKeySize(4096)
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
    /// The front-proxy CA (`CN=proxyClientCA`). Default `262824d`, what AKS Engine's
    /// generateproxycerts.sh gives it.
    #[serde(default = "defaults::front_proxy_ca_validity")]
    pub front_proxy_ca: Duration,
    /// The front-proxy client (`CN=aggregator`). Default `262824d`, what AKS Engine's
    /// generateproxycerts.sh gives it.
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

    /// This algorithm with an RSA modulus of `size` (ECDSA keys have one size).
    pub fn with_size(&self, size: RsaKeySize) -> KeySpec {
        self.algorithm.spec(size)
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
    /// RSA modulus size of the front-proxy CA and client keys. Default: `key.caSize` for the
    /// CA and `key.size` for the client. AKS Engine's generate-proxy-certs.sh makes both 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<RsaKeySize>,
}

impl Default for FrontProxyPolicy {
    fn default() -> Self {
        Self { ca: CaPolicy::Keep, client: true, key_size: None }
    }
}

deserialize_from_integer!(RsaKeySize, "an RSA key size in bits (2048, 3072 or 4096)");
