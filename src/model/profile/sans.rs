//! Extra subject alternative names for the apiserver certificate: DNS names and IP
//! addresses, each checked when the profile is read.

use super::de::deserialize_from_scalar_text;
use crate::diag::yaml::with_help;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::IpAddr;

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

deserialize_from_scalar_text!(SanDnsName, "a DNS name");
deserialize_from_scalar_text!(SanIp, "an IP address");
