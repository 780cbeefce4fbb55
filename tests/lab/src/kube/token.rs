//! Service-account tokens: legacy (secret-based) JWTs signed RS256 with the apiserver's key,
//! as kube-apiserver and kube-controller-manager do on an AKS Engine cluster where
//! `--service-account-key-file` and `--service-account-private-key-file` are both
//! apiserver.key. A token verifies only against the key that signed it, which is what makes
//! a pod "not Ready until rolled out" after the key changes.

use aws_lc_rs::signature::KeyPair;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};

/// The issuer legacy service-account tokens carry.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Why the signing key could not be loaded, or a token not verified.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the service-account key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the service-account key {path} is not an RSA private key in PEM (PKCS#1 or PKCS#8): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("token rejected: {0}")]
    Invalid(String),
}

/// The claims of a legacy service-account token, with the claim names Kubernetes uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountClaims {
    pub iss: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

impl ServiceAccountClaims {
    pub fn new(namespace: &str, service_account: &str, uid: &str, secret_name: &str) -> Self {
        Self {
            iss: LEGACY_ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            namespace: namespace.to_owned(),
            secret_name: secret_name.to_owned(),
            service_account_name: service_account.to_owned(),
            service_account_uid: uid.to_owned(),
        }
    }
}

/// Signs and verifies service-account tokens with one RSA key pair. `Debug` shows only the
/// key id.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Loads the signing key from a PEM file (apiserver.key on AKS Engine masters).
    pub fn from_key_file(path: &Path) -> Result<Self, TokenError> {
        let pem = std::fs::read(path).map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
        Self::from_key_pem(&pem).map_err(|reason| TokenError::BadKey { path: path.to_owned(), reason })
    }

    /// Loads the signing key from PEM text.
    pub fn from_key_pem(pem: &[u8]) -> Result<Self, String> {
        let encoding = EncodingKey::from_rsa_pem(pem).map_err(|e| e.to_string())?;
        let key_pair = aws_lc_rs::signature::RsaKeyPair::from_der(encoding.inner()).map_err(|e| e.to_string())?;
        let public_der = key_pair.public_key().as_ref().to_vec();
        // kube-apiserver derives `kid` from a hash of the public key; so do we, which makes
        // the key a token was signed with visible without verifying it.
        let key_id = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&public_der));
        Ok(Self { encoding, decoding: DecodingKey::from_rsa_der(&public_der), key_id })
    }

    /// A fingerprint of the public key (the `kid` header of tokens it signs).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs a token for these claims.
    pub fn sign(&self, claims: &ServiceAccountClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verifies a token's signature and issuer; legacy tokens carry no expiry.
    pub fn verify(&self, token: &str) -> Result<ServiceAccountClaims, TokenError> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&[LEGACY_ISSUER]);
        jsonwebtoken::decode::<ServiceAccountClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}
