//! PEM material on disk turned into what TLS needs: certificate chains, private keys, trust
//! roots, and the Kubernetes user a client certificate stands for (CN = user, O = groups).
//! Every file is read when asked, so a restart or reconnect picks up what is on disk now.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why PEM material could not be turned into TLS settings. Names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate; expected at least one -----BEGIN CERTIFICATE----- block")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable private key (PKCS#1, PKCS#8 or SEC1 PEM): {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("{path} holds a CA certificate rustls cannot use as a trust root: {reason}")]
    BadRoot { path: PathBuf, reason: String },
    #[error("TLS settings from {what} were rejected: {reason}")]
    Tls { what: String, reason: String },
}

/// The crypto provider the lab uses everywhere, chosen explicitly because the workspace
/// enables both ring and aws-lc-rs in rustls, which leaves no process-wide default.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process default so libraries that call `ClientConfig::builder()`
/// (kube-rs) work. Harmless when a default is already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| CredentialError::Read { path: path.to_owned(), source })
}

/// All certificates in a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(CredentialError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The first private key in a PEM file (which may also hold certificates, as
/// kubelet-client-current.pem does).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CredentialError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| CredentialError::NoKey { path: path.to_owned(), reason: e.to_string() })
}

/// A root store holding every certificate of a CA bundle file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, CredentialError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| CredentialError::BadRoot { path: path.to_owned(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// Client TLS settings trusting `ca_file`, presenting `cert_file`/`key_file` when given.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, CredentialError> {
    let roots = load_roots(ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CredentialError::Tls { what: ca_file.display().to_string(), reason: e.to_string() })?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_file, key_file)) => {
            let certs = load_certs(cert_file)?;
            let key = load_key(key_file)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| CredentialError::Tls {
                what: format!("{} and {}", cert_file.display(), key_file.display()),
                reason: e.to_string(),
            })
        }
    }
}

/// Who a verified client certificate says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Reads CN and O out of a (chain-verified) client certificate, as kube-apiserver's x509
/// authenticator does.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<CertIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(CertIdentity { user, groups })
}
