//! The cluster's PKI: the catalogue of certificates an AKS Engine cluster carries,
//! inspection of existing PEM material, and issuance of new material, both over the PEM,
//! key and name encodings in `encoding`.

pub mod audit;
pub mod catalogue;
pub mod encoding;
pub mod inspect;
pub mod issue;
pub mod proxycerts;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Key algorithm and size of a key pair certrotate issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeySpec {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcdsaP256,
}

/// X.509 extended key usages AKS Engine certificates carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExtendedUsage {
    ServerAuth,
    ClientAuth,
}

/// Everything needed to issue one certificate; derived from the catalogue and profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTemplate {
    pub common_name: String,
    pub organization: Option<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub is_ca: bool,
    pub extended_usages: Vec<ExtendedUsage>,
    pub key: KeySpec,
    /// Validity window. Normally `not_before` is the moment of issuance; the lab sets both
    /// in the past to make an already-expired cluster.
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

/// A certificate and its private key, both PEM. Keys are PKCS#1 for RSA (what AKS Engine
/// reads back) and SEC1 for ECDSA. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyCertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyCertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCertPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}
