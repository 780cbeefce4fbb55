//! The stand-in's private PKI, as an Azure Stack Hub stamp has one: a root that clients must be
//! given as a CA bundle, a server certificate for the ARM endpoint, and (for client-certificate
//! authentication) a service principal's certificate. Keys are written 0600 in 0700
//! directories, every file atomically.

use super::ArmError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The name an ASDK's ARM endpoint has; the server certificate carries it besides 127.0.0.1.
pub const ARM_HOST_NAME: &str = "management.local.azurestack.external";

/// Where the stand-in's TLS files live inside its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmTlsFiles {
    pub dir: PathBuf,
    /// The root, PEM: what clients pass as `--ca-bundle`.
    pub ca_bundle: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl ArmTlsFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_bundle: dir.join("arm-ca.crt"),
            ca_key: dir.join("arm-ca.key"),
            server_cert: dir.join("arm-server.crt"),
            server_key: dir.join("arm-server.key"),
        }
    }
}

/// A service principal's certificate and key (PEM; the key PKCS#1 as aks-engine's
/// `--private-key-path` takes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificateFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The certificate PEM, to register on the application.
    pub certificate_pem: String,
}

/// Creates the root and the server certificate (SANs 127.0.0.1, localhost and
/// [`ARM_HOST_NAME`]) in `dir`, replacing any earlier ones.
pub fn write_arm_tls(dir: &Path) -> Result<ArmTlsFiles, ArmError> {
    let fail = |reason: String| ArmError::TlsWrite { dir: dir.to_path_buf(), reason };
    make_private_dir(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    let files = ArmTlsFiles::in_dir(dir);

    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(|e| fail(format!("key generation failed: {e}")))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("AzureStackSelfSignedRootCert");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = now - Duration::hours(1);
    ca_params.not_after = now + Duration::days(3650);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| fail(format!("cannot sign the root: {e}")))?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate().map_err(|e| fail(format!("key generation failed: {e}")))?;
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = name(ARM_HOST_NAME);
    server_params.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::DnsName(ARM_HOST_NAME.try_into().map_err(|e| fail(format!("bad DNS name: {e}")))?),
        SanType::DnsName("adfs.local.azurestack.external".try_into().map_err(|e| fail(format!("bad DNS name: {e}")))?),
        SanType::DnsName("localhost".try_into().map_err(|e| fail(format!("bad DNS name: {e}")))?),
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    server_params.not_before = now - Duration::hours(1);
    server_params.not_after = now + Duration::days(825);
    let server_cert =
        server_params.signed_by(&server_key, &issuer).map_err(|e| fail(format!("cannot sign the server certificate: {e}")))?;

    write_atomic(&files.ca_key, ca_key.serialize_pem().as_bytes(), 0o600).map_err(|e| fail(e.to_string()))?;
    write_atomic(&files.server_key, server_key.serialize_pem().as_bytes(), 0o600).map_err(|e| fail(e.to_string()))?;
    write_atomic(&files.ca_bundle, ca_cert.pem().as_bytes(), 0o644).map_err(|e| fail(e.to_string()))?;
    write_atomic(&files.server_cert, server_cert.pem().as_bytes(), 0o644).map_err(|e| fail(e.to_string()))?;
    Ok(files)
}

/// Creates a self-signed RSA 2048 certificate for application `client_id` (what
/// `New-SelfSignedCertificate` makes for an Azure Stack service principal) and writes
/// `<client_id>.crt` and `<client_id>.key` (PKCS#1, 0600) into `dir`.
pub fn issue_client_certificate(dir: &Path, client_id: &str) -> Result<ClientCertificateFiles, ArmError> {
    let fail = |reason: String| ArmError::TlsWrite { dir: dir.to_path_buf(), reason };
    make_private_dir(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(|e| fail(format!("RSA key generation failed: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&format!("{client_id}-spn"));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).map_err(|e| fail(format!("cannot sign: {e}")))?;

    let pkcs1_pem = pkcs8_rsa_to_pkcs1_pem(key.serialized_der()).map_err(fail)?;
    let files = ClientCertificateFiles {
        certificate: dir.join(format!("{client_id}.crt")),
        private_key: dir.join(format!("{client_id}.key")),
        certificate_pem: cert.pem(),
    };
    write_atomic(&files.private_key, pkcs1_pem.as_bytes(), 0o600).map_err(|e| fail(e.to_string()))?;
    write_atomic(&files.certificate, files.certificate_pem.as_bytes(), 0o644).map_err(|e| fail(e.to_string()))?;
    Ok(files)
}

fn pkcs8_rsa_to_pkcs1_pem(pkcs8_der: &[u8]) -> Result<String, String> {
    use pkcs8::der::Decode;
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8_der).map_err(|e| format!("cannot read the PKCS#8 key: {e}"))?;
    pkcs8::der::pem::encode_string("RSA PRIVATE KEY", pkcs8::LineEnding::LF, info.private_key)
        .map_err(|e| format!("cannot encode the PKCS#1 key: {e}"))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes through a temporary file in the same directory, so readers see the old file or the
/// whole new one; the mode is set before any byte is written.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
