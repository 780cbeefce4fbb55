//! Which certificates a profile manages: the catalogue's certificate ids as profiles and
//! plans name them, and the `scope` setting (`all` or a list of ids).

use super::de::deserialize_from_scalar_text;
use crate::diag::yaml::with_help;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

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

/// One element of a `scope` list.
struct ScopeEntry(CertId);

impl TryFrom<String> for ScopeEntry {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse().map(ScopeEntry)
    }
}

deserialize_from_scalar_text!(ScopeEntry, "a certificate id");


#[cfg(test)]
mod tests {
    use super::*;

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
}
