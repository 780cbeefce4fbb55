//! Issuance of new key pairs and certificates shaped exactly like the ones AKS Engine makes
//! (its `pkg/helpers/pki.go`), so that the cluster, and `aks-engine upgrade|scale` after us,
//! cannot tell ours from its own.
//!
//! What AKS Engine does and we copy: subject is just CN (with O before it when given, Go's
//! RDN order); KeyUsage digitalSignature|keyEncipherment (+keyCertSign and CA:TRUE for the
//! CA; CA:FALSE for leaves); a random positive serial below 2^128; SHA-256 signatures; SANs
//! in template order, DNS names before IP addresses (Go writes them in that order). RSA keys
//! leave this module as PKCS#1 PEM laid out byte for byte as Go's `pem.Encode` does, because
//! AKS Engine can only read PKCS#1 RSA keys back from `apimodel.json`.
//!
//! One exception, the front-proxy client: AKS Engine makes it with `openssl x509 -req` in
//! generateproxycerts.sh, an X.509 v1 certificate without any extension. A leaf whose template
//! asks for no extended usage and no SAN is issued that way here: no key usage, no basic
//! constraints, no key identifiers. rcgen always writes version 3, which with no extensions
//! carries nothing a v1 certificate does not, so kube-apiserver and aggregated API servers
//! (Go's crypto/x509) treat the two alike; the plan says so where it issues one.
//!
//! Key generation (RSA above all) dominates the cost of a rotation's PKI, so [`issue_all`]
//! and [`generate_keys`] spread it over the machine's cores.

use super::encoding::{
    parse_key_pem, private_key_der, rfc4514_name, single_certificate_der, EcPrivateKey, KeyEncoding,
    LABEL_EC_PRIVATE_KEY, LABEL_PKCS8_PRIVATE_KEY, LABEL_RSA_PRIVATE_KEY, OID_CURVE_P256, OID_CURVE_P384,
    OID_EC_PUBLIC_KEY, OID_RSA_ENCRYPTION,
};
use super::{CertTemplate, ExtendedUsage, KeyCertPair, KeySpec};
use pkcs8::der::asn1::AnyRef;
use pkcs8::der::zeroize::Zeroizing;
use pkcs8::der::{Decode, Encode};
use pkcs8::PrivateKeyInfo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Why issuing failed. Messages name the certificate and the cause; they never carry key
/// material (the underlying library errors we wrap are generic descriptions, not data).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("could not generate a {spec:?} key: {reason}")]
    KeyGeneration { spec: KeySpec, reason: String },

    #[error("certificate template for CN={common_name:?} is invalid: {reason}")]
    InvalidTemplate { common_name: String, reason: String },

    #[error("the {what} is not usable: {reason}")]
    BadPem { what: &'static str, reason: String },

    #[error("the {what} could not be decoded: {reason}")]
    BadKey { what: &'static str, reason: String },

    #[error("unsupported key algorithm in the {what}: {algorithm}; certrotate signs with RSA or ECDSA P-256/P-384 keys")]
    UnsupportedKey { what: &'static str, algorithm: String },

    #[error("the CA certificate could not be read: {reason}")]
    BadCaCertificate { reason: String },

    #[error("the CA certificate (subject {subject}) is not a CA: it lacks basicConstraints CA:TRUE")]
    NotACa { subject: String },

    #[error("the CA private key does not belong to the CA certificate (subject {subject}); check that caCertificate and caPrivateKey come from the same pair")]
    CaKeyMismatch { subject: String },

    #[error("signing the certificate for CN={common_name:?} failed: {reason}")]
    Signing { common_name: String, reason: String },

    #[error("the certificate issued for CN={common_name:?} names an issuer that differs from the CA's subject as encoded in the CA certificate; the CA subject uses an encoding certrotate cannot reproduce (multi-valued or repeated attributes)")]
    IssuerMismatch { common_name: String },

    #[error("{0}")]
    Conversion(String),

    #[error("the system random number generator failed")]
    Random,

    #[error("an issuing worker thread panicked")]
    WorkerPanicked,
}

/// A freshly generated private key. `Debug` never shows the key.
pub struct GeneratedKey {
    spec: KeySpec,
    key_pair: KeyPair,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("spec", &self.spec)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl GeneratedKey {
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The key as AKS Engine writes it: PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`.
    pub fn to_pem(&self) -> Result<String, IssueError> {
        pkcs8_der_to_traditional_pem(self.key_pair.serialized_der(), "generated key")
            .map(|pem| pem.to_string())
    }

    /// DER of the SubjectPublicKeyInfo, the form certificates carry.
    pub fn public_key_info_der(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }
}

impl GeneratedKey {
    /// An existing private key (PKCS#1, SEC1 or PKCS#8 PEM), to issue a renewed certificate
    /// over the same key pair. `Debug` never shows it either.
    pub fn from_pem(pem: &str, what: &'static str) -> Result<GeneratedKey, IssueError> {
        let facts = parse_key_pem(pem).map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
        let spec = match (facts.algorithm.as_str(), facts.bits) {
            ("RSA", 2048) => KeySpec::Rsa2048,
            ("RSA", 3072) => KeySpec::Rsa3072,
            ("RSA", 4096) => KeySpec::Rsa4096,
            ("ECDSA P-256", 256) => KeySpec::EcdsaP256,
            (algorithm, bits) => return Err(IssueError::UnsupportedKey { what, algorithm: format!("{algorithm} {bits}") }),
        };
        Ok(GeneratedKey { spec, key_pair: key_pair_from_pem(pem, what)? })
    }
}

/// Generates one private key of the given kind.
pub fn generate_key(spec: KeySpec) -> Result<GeneratedKey, IssueError> {
    let generated = match spec {
        KeySpec::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        KeySpec::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072),
        KeySpec::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096),
        KeySpec::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
    };
    let key_pair = generated.map_err(|e| IssueError::KeyGeneration { spec, reason: e.to_string() })?;
    Ok(GeneratedKey { spec, key_pair })
}

/// Generates keys for all `specs` at once, one worker per core; results keep input order.
pub fn generate_keys(specs: &[KeySpec]) -> Result<Vec<GeneratedKey>, IssueError> {
    parallel_map(specs, |spec| generate_key(*spec))
}

/// Keys generated ahead of issuance, all at once over the machine's cores, then handed out
/// one by one by kind. Callers that issue certificates one after another (each needing the
/// CA signed before the leaves) would otherwise generate RSA keys serially, which is most of
/// a rotation's local CPU time.
#[derive(Debug, Default)]
pub struct KeyPool {
    keys: std::collections::HashMap<KeySpec, Vec<GeneratedKey>>,
}

impl KeyPool {
    /// Generates one key per entry of `specs`, in parallel. The slowest kinds go first so a
    /// 4096-bit CA key does not start last and leave the other cores idle at the end.
    pub fn generate(specs: &[KeySpec]) -> Result<KeyPool, IssueError> {
        let mut ordered = specs.to_vec();
        ordered.sort_by_key(|s| std::cmp::Reverse(key_cost_rank(*s)));
        let mut pool = KeyPool::default();
        for key in generate_keys(&ordered)? {
            pool.keys.entry(key.spec()).or_default().push(key);
        }
        Ok(pool)
    }

    /// A key of kind `spec`: one generated ahead, or a new one when the pool has none left
    /// (so a caller that counted wrong is slower, never wrong).
    pub fn take(&mut self, spec: KeySpec) -> Result<GeneratedKey, IssueError> {
        match self.keys.get_mut(&spec).and_then(Vec::pop) {
            Some(key) => Ok(key),
            None => generate_key(spec),
        }
    }

    /// Keys generated ahead and not taken.
    pub fn remaining(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }
}

/// Relative cost of generating a key of this kind (RSA generation grows steeply with size).
fn key_cost_rank(spec: KeySpec) -> u8 {
    match spec {
        KeySpec::Rsa4096 => 3,
        KeySpec::Rsa3072 => 2,
        KeySpec::Rsa2048 => 1,
        KeySpec::EcdsaP256 => 0,
    }
}

/// Issues a self-signed CA with a new key.
pub fn issue_ca(template: &CertTemplate) -> Result<KeyCertPair, IssueError> {
    let key = generate_key(template.key)?;
    issue_ca_with_key(template, &key)
}

/// Issues a self-signed CA over an existing generated key.
pub fn issue_ca_with_key(template: &CertTemplate, key: &GeneratedKey) -> Result<KeyCertPair, IssueError> {
    if !template.is_ca {
        return Err(invalid(template, "issue_ca needs a template with is_ca set"));
    }
    check_key_matches_spec(template, key)?;
    let params = certificate_params(template)?;
    let certificate = params.self_signed(&key.key_pair).map_err(|e| signing_error(template, e))?;
    Ok(KeyCertPair { cert_pem: certificate.pem(), key_pem: key.to_pem()? })
}

/// Issues a leaf certificate with a new key, signed by `ca` (which may have been made by AKS
/// Engine: a PKCS#1 RSA key and a Go-made certificate).
pub fn issue_leaf(template: &CertTemplate, ca: &KeyCertPair) -> Result<KeyCertPair, IssueError> {
    let authority = CertificateAuthority::load(ca)?;
    let key = generate_key(template.key)?;
    authority.issue_with_key(template, &key)
}

/// Issues one leaf per template, all signed by `ca`, generating keys in parallel. The result
/// keeps the order of `templates`. CA templates are refused: AKS Engine has no intermediates,
/// and a second root (the front-proxy CA) goes through [`issue_ca`].
pub fn issue_all(templates: &[CertTemplate], ca: &KeyCertPair) -> Result<Vec<KeyCertPair>, IssueError> {
    if let Some(ca_template) = templates.iter().find(|t| t.is_ca) {
        return Err(invalid(ca_template, "issue_all issues leaves only; issue CAs with issue_ca"));
    }
    let authority = CertificateAuthority::load(ca)?;
    parallel_map(templates, |template| {
        let key = generate_key(template.key)?;
        authority.issue_with_key(template, &key)
    })
}

/// A CA loaded once for signing many leaves: its key, and its subject exactly as encoded.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    subject_der: Vec<u8>,
    subject_display: String,
    has_subject_key_id: bool,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject_display)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Loads a CA pair: certificate PEM plus a PKCS#1, PKCS#8 or SEC1 key PEM. Refuses a
    /// certificate without CA:TRUE and a key that is not the certificate's.
    pub fn load(ca: &KeyCertPair) -> Result<Self, IssueError> {
        let cert_der = single_certificate_der(&ca.cert_pem)
            .map_err(|e| IssueError::BadPem { what: "CA certificate", reason: e.to_string() })?;
        let (rest, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| IssueError::BadCaCertificate { reason: e.to_string() })?;
        if !rest.is_empty() {
            return Err(IssueError::BadCaCertificate {
                reason: format!("{} bytes of trailing data after the certificate", rest.len()),
            });
        }
        let subject_display = rfc4514_name(cert.subject());
        if !cert.is_ca() {
            return Err(IssueError::NotACa { subject: subject_display });
        }

        let signing_key = key_pair_from_pem(&ca.key_pem, "CA private key")?;
        if signing_key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(IssueError::CaKeyMismatch { subject: subject_display });
        }
        let has_subject_key_id = cert.iter_extensions().any(|ext| {
            matches!(ext.parsed_extension(), x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(_))
        });
        let subject_der = cert.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), signing_key)
            .map_err(|e| IssueError::BadCaCertificate { reason: e.to_string() })?;
        Ok(Self { issuer, subject_der, subject_display, has_subject_key_id })
    }

    /// The CA's subject, RFC 4514 style.
    pub fn subject(&self) -> &str {
        &self.subject_display
    }

    /// Issues a leaf with a new key.
    pub fn issue(&self, template: &CertTemplate) -> Result<KeyCertPair, IssueError> {
        let key = generate_key(template.key)?;
        self.issue_with_key(template, &key)
    }

    /// Issues a leaf over an existing generated key.
    pub fn issue_with_key(&self, template: &CertTemplate, key: &GeneratedKey) -> Result<KeyCertPair, IssueError> {
        if template.is_ca {
            return Err(invalid(template, "a CA template cannot be issued as a leaf"));
        }
        check_key_matches_spec(template, key)?;
        let mut params = certificate_params(template)?;
        // Go copies the parent's SubjectKeyId into AuthorityKeyId only when the parent has one;
        // openssl x509 -req without an extension file writes none.
        params.use_authority_key_identifier_extension = self.has_subject_key_id && !without_extensions(template);
        let certificate =
            params.signed_by(&key.key_pair, &self.issuer).map_err(|e| signing_error(template, e))?;

        // rcgen re-encodes the issuer name from its parsed form; prove it came out identical.
        let (_, issued) = x509_parser::parse_x509_certificate(certificate.der())
            .map_err(|e| signing_error(template, e))?;
        if issued.issuer().as_raw() != self.subject_der.as_slice() {
            return Err(IssueError::IssuerMismatch { common_name: template.common_name.clone() });
        }
        Ok(KeyCertPair { cert_pem: certificate.pem(), key_pem: key.to_pem()? })
    }
}

fn invalid(template: &CertTemplate, reason: impl Into<String>) -> IssueError {
    IssueError::InvalidTemplate { common_name: template.common_name.clone(), reason: reason.into() }
}

fn signing_error(template: &CertTemplate, error: impl std::fmt::Display) -> IssueError {
    IssueError::Signing { common_name: template.common_name.clone(), reason: error.to_string() }
}

fn check_key_matches_spec(template: &CertTemplate, key: &GeneratedKey) -> Result<(), IssueError> {
    if template.key != key.spec {
        return Err(invalid(
            template,
            format!("the template asks for a {:?} key but a {:?} key was supplied", template.key, key.spec),
        ));
    }
    Ok(())
}

/// Builds rcgen parameters that reproduce AKS Engine's certificate layout.
fn certificate_params(template: &CertTemplate) -> Result<CertificateParams, IssueError> {
    if template.common_name.is_empty() {
        return Err(invalid(template, "the common name is empty"));
    }
    // X.509 carries whole seconds; truncating here makes the issued cert equal its template.
    let not_before = template.not_before.replace_nanosecond(0).map_err(|e| invalid(template, e.to_string()))?;
    let not_after = template.not_after.replace_nanosecond(0).map_err(|e| invalid(template, e.to_string()))?;
    if not_after <= not_before {
        return Err(invalid(template, format!("not_after {not_after} is not after not_before {not_before}")));
    }

    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);

    let mut name = DistinguishedName::new();
    // Go's pkix.Name puts O before CN in the encoded sequence.
    if let Some(organization) = &template.organization {
        name.push(DnType::OrganizationName, directory_string(organization));
    }
    name.push(DnType::CommonName, directory_string(&template.common_name));
    params.distinguished_name = name;

    let mut sans = Vec::with_capacity(template.dns_sans.len() + template.ip_sans.len());
    for dns in &template.dns_sans {
        let ia5 = dns
            .clone()
            .try_into()
            .map_err(|_| invalid(template, format!("DNS SAN {dns:?} is not an ASCII name")))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(template.ip_sans.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;

    // Go's crypto/tls guidance: keyEncipherment only makes sense for RSA subject keys.
    params.key_usages = match template.key {
        KeySpec::EcdsaP256 => vec![KeyUsagePurpose::DigitalSignature],
        _ => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
    };
    if template.is_ca {
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
    }
    if without_extensions(template) {
        params.key_usages.clear();
        params.is_ca = IsCa::NoCa;
    }
    params.extended_key_usages = template
        .extended_usages
        .iter()
        .map(|usage| match usage {
            ExtendedUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    Ok(params)
}

/// Whether a template is issued without any extension, as openssl makes AKS Engine's
/// front-proxy client (see the module's notes): a leaf with no usage and no SAN to state.
pub fn without_extensions(template: &CertTemplate) -> bool {
    !template.is_ca && template.extended_usages.is_empty() && template.dns_sans.is_empty() && template.ip_sans.is_empty()
}

/// Go's encoding/asn1 writes a string as PrintableString when it can, else as UTF8String.
fn directory_string(value: &str) -> DnValue {
    match rcgen::string::PrintableString::try_from(value) {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(value.to_owned()),
    }
}

/// A uniformly random serial in [1, 2^128), like Go's `rand.Int(rand.Reader, 1<<128)`
/// (zero excluded: RFC 5280 wants positive serials).
fn random_serial() -> Result<SerialNumber, IssueError> {
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    let mut bytes = [0u8; 16];
    loop {
        random
            .fill(&mut bytes)
            .map_err(|_| IssueError::Random)?;
        if bytes.iter().any(|b| *b != 0) {
            // Strip leading zero bytes: a DER INTEGER is minimal; rcgen adds a 0x00 when the
            // top bit is set so the number stays positive.
            let first = bytes.iter().position(|b| *b != 0).unwrap_or(0);
            return Ok(SerialNumber::from_slice(&bytes[first..]));
        }
    }
}

/// Runs `work` over `items` on up to `available_parallelism` threads, keeping input order.
/// Stops handing out new items after the first failure.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<R, IssueError> + Sync,
) -> Result<Vec<R>, IssueError> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(items.len()).max(1);
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R, IssueError>>>> =
        Mutex::new(std::iter::repeat_with(|| None).take(items.len()).collect());

    let joined: Vec<std::thread::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let outcome = work(item);
                    if outcome.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    let mut slots = results.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    slots[index] = Some(outcome);
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    if joined.iter().any(|j| j.is_err()) {
        return Err(IssueError::WorkerPanicked);
    }

    let slots = results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Report the first failure in input order, so errors are deterministic.
    if let Some(first_error_at) = slots.iter().position(|s| matches!(s, Some(Err(_)))) {
        if let Some(Some(Err(error))) = slots.into_iter().nth(first_error_at) {
            return Err(error);
        }
        return Err(IssueError::WorkerPanicked);
    }
    slots
        .into_iter()
        .map(|slot| match slot {
            Some(Ok(value)) => Ok(value),
            // Unreachable without an error above; kept typed rather than panicking.
            _ => Err(IssueError::WorkerPanicked),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Key encodings: PKCS#1 / SEC1 (what AKS Engine reads and writes) and PKCS#8 (what rcgen
// and aws-lc take).

/// Encodes DER as PEM exactly as Go's `pem.Encode` does: no headers, 64-column base64
/// lines, `\n` line ends, a trailing newline.
pub fn encode_pem_like_go(label: &str, der: &[u8]) -> Result<String, IssueError> {
    pkcs8::der::pem::encode_string(label, pkcs8::LineEnding::LF, der)
        .map_err(|e| IssueError::Conversion(format!("PEM encoding of a {label} failed: {e}")))
}

/// Converts a PKCS#1 `RSA PRIVATE KEY` PEM into a PKCS#8 `PRIVATE KEY` PEM.
pub fn pkcs1_pem_to_pkcs8_pem(pem: &str) -> Result<String, IssueError> {
    let der = private_key_der_of(pem, "PKCS#1 key", KeyEncoding::Pkcs1)?;
    let pkcs8 = rsa_pkcs1_to_pkcs8_der(&der, "PKCS#1 key")?;
    encode_pem_like_go(LABEL_PKCS8_PRIVATE_KEY, &pkcs8)
}

/// Converts a PKCS#8 `PRIVATE KEY` PEM holding an RSA key into PKCS#1 `RSA PRIVATE KEY` PEM
/// (EC keys become SEC1 `EC PRIVATE KEY`), the form AKS Engine can read.
pub fn pkcs8_pem_to_pkcs1_pem(pem: &str) -> Result<String, IssueError> {
    let der = private_key_der_of(pem, "PKCS#8 key", KeyEncoding::Pkcs8)?;
    pkcs8_der_to_traditional_pem(&der, "PKCS#8 key").map(|pem| pem.to_string())
}

/// Any supported private key PEM (PKCS#1, PKCS#8, SEC1) as PKCS#8 DER.
pub fn private_key_pem_to_pkcs8_der(pem: &str, what: &'static str) -> Result<Zeroizing<Vec<u8>>, IssueError> {
    let (encoding, der) =
        private_key_der(pem).map_err(|e| IssueError::BadPem { what, reason: e.to_string() })?;
    match encoding {
        KeyEncoding::Pkcs1 => rsa_pkcs1_to_pkcs8_der(&der, what),
        KeyEncoding::Sec1 => sec1_to_pkcs8_der(&der, what),
        KeyEncoding::Pkcs8 => Ok(der),
    }
}

/// The DER of the first private key in `pem`, which must be encoded as `wanted`.
fn private_key_der_of(pem: &str, what: &'static str, wanted: KeyEncoding) -> Result<Zeroizing<Vec<u8>>, IssueError> {
    let (encoding, der) =
        private_key_der(pem).map_err(|e| IssueError::BadPem { what, reason: e.to_string() })?;
    if encoding != wanted {
        return Err(IssueError::BadPem {
            what,
            reason: format!("PEM block is {}, expected {}", encoding.pem_label(), wanted.pem_label()),
        });
    }
    Ok(der)
}

/// Reads a private key PEM into an rcgen key pair that signs with SHA-256 (SHA-384 on P-384).
fn key_pair_from_pem(pem: &str, what: &'static str) -> Result<KeyPair, IssueError> {
    let pkcs8 = private_key_pem_to_pkcs8_der(pem, what)?;
    let info = PrivateKeyInfo::try_from(pkcs8.as_slice())
        .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
    let algorithm = if info.algorithm.oid == OID_RSA_ENCRYPTION {
        &rcgen::PKCS_RSA_SHA256
    } else if info.algorithm.oid == OID_EC_PUBLIC_KEY {
        match info.algorithm.parameters_oid() {
            Ok(curve) if curve == OID_CURVE_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Ok(curve) if curve == OID_CURVE_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Ok(curve) => return Err(IssueError::UnsupportedKey { what, algorithm: format!("EC curve {curve}") }),
            Err(_) => return Err(IssueError::UnsupportedKey { what, algorithm: "EC key without a named curve".into() }),
        }
    } else {
        return Err(IssueError::UnsupportedKey { what, algorithm: info.algorithm.oid.to_string() });
    };
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), algorithm)
        .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })
}

fn rsa_pkcs1_to_pkcs8_der(pkcs1_der: &[u8], what: &'static str) -> Result<Zeroizing<Vec<u8>>, IssueError> {
    // Parse first so a broken key is reported here, not deep inside the signer.
    pkcs1::RsaPrivateKey::from_der(pkcs1_der).map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
    let algorithm = pkcs8::AlgorithmIdentifierRef { oid: OID_RSA_ENCRYPTION, parameters: Some(AnyRef::NULL) };
    PrivateKeyInfo::new(algorithm, pkcs1_der)
        .to_der()
        .map(Zeroizing::new)
        .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })
}

fn sec1_to_pkcs8_der(sec1_der: &[u8], what: &'static str) -> Result<Zeroizing<Vec<u8>>, IssueError> {
    let key = EcPrivateKey::from_der(sec1_der).map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
    let curve = key.parameters.ok_or_else(|| IssueError::BadKey {
        what,
        reason: "the EC PRIVATE KEY names no curve".into(),
    })?;
    let algorithm = pkcs8::AlgorithmIdentifierRef { oid: OID_EC_PUBLIC_KEY, parameters: Some(AnyRef::from(&curve)) };
    // Inside PKCS#8 the curve lives in the algorithm identifier; aws-lc wants it only there.
    let inner = EcPrivateKey { parameters: None, ..key }
        .to_der()
        .map(Zeroizing::new)
        .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
    PrivateKeyInfo::new(algorithm, &inner)
        .to_der()
        .map(Zeroizing::new)
        .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })
}

/// PKCS#8 DER to the traditional PEM of its algorithm: PKCS#1 for RSA, SEC1 (with the curve
/// named, as Go's `MarshalECPrivateKey` and OpenSSL write it) for EC.
fn pkcs8_der_to_traditional_pem(pkcs8_der: &[u8], what: &'static str) -> Result<Zeroizing<String>, IssueError> {
    let info = PrivateKeyInfo::try_from(pkcs8_der).map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
    if info.algorithm.oid == OID_RSA_ENCRYPTION {
        return encode_pem_like_go(LABEL_RSA_PRIVATE_KEY, info.private_key).map(Zeroizing::new);
    }
    if info.algorithm.oid == OID_EC_PUBLIC_KEY {
        let curve = info.algorithm.parameters_oid().map_err(|_| IssueError::UnsupportedKey {
            what,
            algorithm: "EC key without a named curve".into(),
        })?;
        let inner = EcPrivateKey::from_der(info.private_key)
            .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
        let sec1 = EcPrivateKey { parameters: Some(curve), ..inner }
            .to_der()
            .map(Zeroizing::new)
            .map_err(|e| IssueError::BadKey { what, reason: e.to_string() })?;
        return encode_pem_like_go(LABEL_EC_PRIVATE_KEY, &sec1).map(Zeroizing::new);
    }
    Err(IssueError::UnsupportedKey { what, algorithm: info.algorithm.oid.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn template(cn: &str, key: KeySpec, is_ca: bool) -> CertTemplate {
        let now = time::OffsetDateTime::now_utc();
        CertTemplate {
            common_name: cn.into(),
            organization: None,
            dns_sans: vec![],
            ip_sans: vec![],
            is_ca,
            extended_usages: vec![],
            key,
            not_before: now,
            not_after: now + time::Duration::days(365),
        }
    }

    #[test]
    fn key_pool_hands_out_distinct_keys_of_the_kind_asked_and_generates_more_when_empty() {
        let mut pool = KeyPool::generate(&[KeySpec::EcdsaP256, KeySpec::Rsa2048, KeySpec::EcdsaP256]).unwrap();
        assert_eq!(pool.remaining(), 3);
        let a = pool.take(KeySpec::EcdsaP256).unwrap();
        let b = pool.take(KeySpec::EcdsaP256).unwrap();
        assert_eq!((a.spec(), b.spec()), (KeySpec::EcdsaP256, KeySpec::EcdsaP256));
        assert_ne!(a.public_key_info_der(), b.public_key_info_der(), "each key is handed out once");
        assert_eq!(pool.take(KeySpec::Rsa2048).unwrap().spec(), KeySpec::Rsa2048);
        assert_eq!(pool.remaining(), 0);
        // Empty: a new key rather than an error or a repeat.
        let c = pool.take(KeySpec::EcdsaP256).unwrap();
        assert_eq!(c.spec(), KeySpec::EcdsaP256);
        assert!(c.public_key_info_der() != a.public_key_info_der() && c.public_key_info_der() != b.public_key_info_der());
        // The pooled key signs a certificate like a freshly generated one.
        issue_ca_with_key(&template("pooled", KeySpec::EcdsaP256, true), &c).unwrap();
    }

    #[test]
    fn pem_layout_matches_go() {
        let der: Vec<u8> = (0..=200u8).collect();
        let pem = encode_pem_like_go("RSA PRIVATE KEY", &der).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(pem.ends_with("\n-----END RSA PRIVATE KEY-----\n"));
        let body: Vec<&str> = pem.lines().skip(1).take_while(|l| !l.starts_with("-----")).collect();
        assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
        assert!(body.last().unwrap().len() <= 64);
        assert!(!pem.contains('\r'));
    }

    #[test]
    fn ec_key_round_trips_through_sec1_and_pkcs8() {
        let key = generate_key(KeySpec::EcdsaP256).unwrap();
        let sec1_pem = key.to_pem().unwrap();
        assert!(sec1_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        let pkcs8 = private_key_pem_to_pkcs8_der(&sec1_pem, "test key").unwrap();
        assert_eq!(pkcs8.as_slice(), key.key_pair.serialized_der());
    }

    #[test]
    fn rsa_key_round_trips_through_pkcs1_and_pkcs8() {
        let key = generate_key(KeySpec::Rsa2048).unwrap();
        let pkcs1_pem = key.to_pem().unwrap();
        assert!(pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let pkcs8_pem = pkcs1_pem_to_pkcs8_pem(&pkcs1_pem).unwrap();
        assert!(pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(pkcs8_pem_to_pkcs1_pem(&pkcs8_pem).unwrap(), pkcs1_pem);
    }

    #[test]
    fn serials_are_positive_distinct_and_at_most_128_bits() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_ne!(a, b);
        assert!(a.len() <= 16 && !a.is_empty() && a[0] != 0);
    }

    #[test]
    fn leaf_with_ca_template_and_mismatched_key_are_refused() {
        let ca = issue_ca(&template("ca", KeySpec::EcdsaP256, true)).unwrap();
        let authority = CertificateAuthority::load(&ca).unwrap();
        assert!(matches!(
            authority.issue(&template("ca2", KeySpec::EcdsaP256, true)),
            Err(IssueError::InvalidTemplate { .. })
        ));
        let key = generate_key(KeySpec::EcdsaP256).unwrap();
        assert!(matches!(
            authority.issue_with_key(&template("leaf", KeySpec::Rsa2048, false), &key),
            Err(IssueError::InvalidTemplate { .. })
        ));
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let mut backwards = template("apiserver", KeySpec::EcdsaP256, true);
        backwards.not_after = backwards.not_before - time::Duration::days(1);
        let error = issue_ca(&backwards).unwrap_err().to_string();
        assert!(error.contains("apiserver") && error.contains("not after"), "{error}");

        let mut bad_dns = template("apiserver", KeySpec::EcdsaP256, true);
        bad_dns.dns_sans = vec!["bücher.example".into()];
        bad_dns.ip_sans = vec![IpAddr::from([127, 0, 0, 1])];
        assert!(issue_ca(&bad_dns).unwrap_err().to_string().contains("bücher.example"));
    }

    #[test]
    fn ca_key_from_another_pair_is_refused() {
        let ca = issue_ca(&template("ca", KeySpec::EcdsaP256, true)).unwrap();
        let other = issue_ca(&template("ca", KeySpec::EcdsaP256, true)).unwrap();
        let mixed = KeyCertPair { cert_pem: ca.cert_pem.clone(), key_pem: other.key_pem.clone() };
        let error = CertificateAuthority::load(&mixed).unwrap_err();
        assert!(matches!(error, IssueError::CaKeyMismatch { .. }), "{error}");
        assert!(!error.to_string().contains("PRIVATE KEY"));
    }

    #[test]
    fn leaf_as_ca_is_refused() {
        let ca = issue_ca(&template("ca", KeySpec::EcdsaP256, true)).unwrap();
        let leaf = issue_leaf(&template("leaf", KeySpec::EcdsaP256, false), &ca).unwrap();
        assert!(matches!(CertificateAuthority::load(&leaf), Err(IssueError::NotACa { .. })));
    }

    /// The front-proxy client as the catalogue describes it comes out with no extension at
    /// all, as openssl x509 -req makes AKS Engine's; any leaf with a usage keeps AKS Engine's
    /// Go layout.
    #[test]
    fn a_leaf_without_usages_or_sans_has_no_extensions() {
        let ca = issue_ca(&template("proxyClientCA", KeySpec::EcdsaP256, true)).unwrap();
        let mut proxy = template("aggregator", KeySpec::EcdsaP256, false);
        proxy.organization = Some("system:masters".into());
        assert!(without_extensions(&proxy));
        let issued = issue_leaf(&proxy, &ca).unwrap();
        let der = crate::pki::encoding::single_certificate_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.extensions().is_empty(), "{:?}", cert.extensions());
        let mut client = proxy.clone();
        client.extended_usages = vec![ExtendedUsage::ClientAuth];
        assert!(!without_extensions(&client));
        let issued = issue_leaf(&client, &ca).unwrap();
        let der = crate::pki::encoding::single_certificate_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.key_usage().unwrap().is_some() && cert.basic_constraints().unwrap().is_some());
    }
}
