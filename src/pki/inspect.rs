//! Inspection of existing PEM material: what a certificate says (subject, SANs, usages,
//! validity, key) and what a private key is, as plain serialisable facts the diff compares
//! against the desired profile. Also the two relations the plan needs: does a certificate
//! chain to a CA, and does a key belong to a certificate.
//!
//! Keys are read only long enough to compute their public half; nothing secret is kept,
//! returned or put into an error message. Reading PEM and keys is `encoding`'s; its key
//! facts and errors are re-exported here, where callers look for them.

use super::encoding::{certificate_ders, rfc4514_name, single_certificate_der, unsigned_bit_length};
use super::ExtendedUsage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::X509Name;

pub use super::encoding::{parse_key_pem, InspectError, KeyEncoding, KeyFacts};

/// What a certificate says, in the terms the diff uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CertFacts {
    /// Subject as RFC 4514 (most specific attribute first), e.g. `CN=client,O=system:masters`.
    pub subject: String,
    pub subject_cn: Option<String>,
    pub subject_o: Vec<String>,
    pub issuer: String,
    pub issuer_cn: Option<String>,
    /// Serial number: lowercase hex of its bytes, leading zero bytes dropped.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub not_before: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub not_after: time::OffsetDateTime,
    /// DNS SANs in certificate order.
    pub dns_sans: Vec<String>,
    /// IP SANs in certificate order.
    pub ip_sans: Vec<IpAddr>,
    /// `RSA`, `ECDSA P-256`, `ECDSA P-384`, or the algorithm OID when unknown.
    pub key_algorithm: String,
    pub key_bits: u32,
    pub is_ca: bool,
    /// RFC 5280 names: digitalSignature, keyEncipherment, keyCertSign, ...
    pub key_usages: Vec<String>,
    pub extended_usages: Vec<ExtendedUsage>,
    /// Extended usages beyond serverAuth/clientAuth, by name or OID.
    pub other_extended_usages: Vec<String>,
    /// e.g. `sha256WithRSAEncryption`, `ecdsa-with-SHA256`, or the OID.
    pub signature_algorithm: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub sha256_fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex; equals
    /// [`KeyFacts::public_key_sha256`] of the matching private key.
    pub public_key_sha256: String,
}

impl CertFacts {
    /// True when the certificate is expired at `now` or will be within `window`.
    pub fn expires_within(&self, now: time::OffsetDateTime, window: std::time::Duration) -> bool {
        let horizon = time::Duration::try_from(window).ok().and_then(|w| now.checked_add(w));
        match horizon {
            Some(horizon) => self.not_after <= horizon,
            // A window too large to represent reaches past any certificate's end.
            None => true,
        }
    }

    /// True when `now` is past the end of validity.
    pub fn is_expired(&self, now: time::OffsetDateTime) -> bool {
        now > self.not_after
    }

    /// True when `now` is before the start of validity.
    pub fn is_not_yet_valid(&self, now: time::OffsetDateTime) -> bool {
        now < self.not_before
    }
}

/// Facts of the single certificate in `pem`. Other PEM blocks (say, a key in a combined
/// file) are skipped; more than one certificate is an error.
pub fn parse_cert_pem(pem: &str) -> Result<CertFacts, InspectError> {
    let mut certificates = certificate_ders(pem)?;
    if certificates.len() > 1 {
        return Err(InspectError::MultipleCertificates(certificates.len()));
    }
    cert_facts_from_der(&certificates.remove(0))
}

/// Facts of every certificate of a bundle, in file order.
pub fn parse_certs_pem(pem: &str) -> Result<Vec<CertFacts>, InspectError> {
    certificate_ders(pem)?.iter().map(|der| cert_facts_from_der(der)).collect()
}

/// True when `cert_pem` was issued by `ca_pem`: the issuer name equals the CA's subject
/// byte for byte and the signature verifies with the CA's public key.
pub fn chains_to(cert_pem: &str, ca_pem: &str) -> Result<bool, InspectError> {
    let cert_der = single_certificate_der(cert_pem)?;
    let ca_der = single_certificate_der(ca_pem)?;
    let cert = parse_x509(&cert_der)?;
    let ca = parse_x509(&ca_der)?;
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Ok(false);
    }
    Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// True when the private key in `key_pem` is the one certified by `cert_pem`.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> Result<bool, InspectError> {
    let key = parse_key_pem(key_pem)?;
    let cert = parse_cert_pem(cert_pem)?;
    Ok(key.public_key_sha256 == cert.public_key_sha256)
}

/// Facts of one DER certificate.
pub fn cert_facts_from_der(der: &[u8]) -> Result<CertFacts, InspectError> {
    let cert = parse_x509(der)?;
    let bad = |e: x509_parser::error::X509Error| InspectError::CertificateDer(e.to_string());

    let mut dns_sans = Vec::new();
    let mut ip_sans = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(bad)? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => ip_sans.push(ip_from_san(bytes)?),
                _ => {}
            }
        }
    }

    let key_usages = match cert.key_usage().map_err(bad)? {
        Some(ku) => key_usage_names(ku.value),
        None => Vec::new(),
    };
    let mut extended_usages = Vec::new();
    let mut other_extended_usages = Vec::new();
    if let Some(eku) = cert.extended_key_usage().map_err(bad)? {
        let eku = eku.value;
        if eku.server_auth {
            extended_usages.push(ExtendedUsage::ServerAuth);
        }
        if eku.client_auth {
            extended_usages.push(ExtendedUsage::ClientAuth);
        }
        for (present, name) in [
            (eku.any, "anyExtendedKeyUsage"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ] {
            if present {
                other_extended_usages.push(name.to_owned());
            }
        }
        other_extended_usages.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }
    let is_ca = cert.basic_constraints().map_err(bad)?.is_some_and(|bc| bc.value.ca);

    let spki = cert.public_key();
    let (key_algorithm, key_bits) = algorithm_and_bits(spki);

    Ok(CertFacts {
        subject: rfc4514_name(cert.subject()),
        subject_cn: first_attribute(cert.subject(), OID_COMMON_NAME),
        subject_o: all_attributes(cert.subject(), OID_ORGANIZATION),
        issuer: rfc4514_name(cert.issuer()),
        issuer_cn: first_attribute(cert.issuer(), OID_COMMON_NAME),
        serial: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_sans,
        ip_sans,
        key_algorithm,
        key_bits,
        is_ca,
        key_usages,
        extended_usages,
        other_extended_usages,
        signature_algorithm: signature_algorithm_name(&cert.signature_algorithm.algorithm.to_id_string()),
        sha256_fingerprint: hex::encode(Sha256::digest(der)),
        public_key_sha256: hex::encode(Sha256::digest(spki.raw)),
    })
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, InspectError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| InspectError::CertificateDer(e.to_string()))?;
    if !rest.is_empty() {
        return Err(InspectError::CertificateDer(format!("{} bytes of trailing data", rest.len())));
    }
    Ok(cert)
}

fn algorithm_and_bits(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> (String, u32) {
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => ("RSA".to_owned(), unsigned_bit_length(rsa.modulus)),
        Ok(PublicKey::EC(_)) => ec_algorithm_of_spki(spki),
        _ => (spki.algorithm.algorithm.to_id_string(), 0),
    }
}

/// Algorithm and size of a public key given as SubjectPublicKeyInfo DER (what
/// `openssl pkey -pubout -outform DER` prints on a node).
pub fn public_key_facts_from_spki_der(der: &[u8]) -> Result<(String, u32), InspectError> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).map_err(|e| InspectError::KeyDer(e.to_string()))?;
    Ok(algorithm_and_bits(&spki))
}

fn ec_algorithm_of_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> (String, u32) {
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|oid| oid.to_id_string());
    match curve.as_deref() {
        Some("1.2.840.10045.3.1.7") => ("ECDSA P-256".into(), 256),
        Some("1.3.132.0.34") => ("ECDSA P-384".into(), 384),
        Some("1.3.132.0.35") => ("ECDSA P-521".into(), 521),
        Some(other) => (format!("ECDSA {other}"), 0),
        None => ("ECDSA".into(), 0),
    }
}

/// Lowercase hex of the serial's bytes without leading zero bytes: `openssl x509 -serial`
/// in lower case.
fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[first..])
}

fn ip_from_san(bytes: &[u8]) -> Result<IpAddr, InspectError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default())),
        n => Err(InspectError::CertificateDer(format!("IP SAN of {n} bytes is neither IPv4 nor IPv6"))),
    }
}

fn key_usage_names(usage: &x509_parser::extensions::KeyUsage) -> Vec<String> {
    [
        (usage.digital_signature(), "digitalSignature"),
        (usage.non_repudiation(), "nonRepudiation"),
        (usage.key_encipherment(), "keyEncipherment"),
        (usage.data_encipherment(), "dataEncipherment"),
        (usage.key_agreement(), "keyAgreement"),
        (usage.key_cert_sign(), "keyCertSign"),
        (usage.crl_sign(), "cRLSign"),
        (usage.encipher_only(), "encipherOnly"),
        (usage.decipher_only(), "decipherOnly"),
    ]
    .into_iter()
    .filter(|(present, _)| *present)
    .map(|(_, name)| name.to_owned())
    .collect()
}

fn signature_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.3.101.112" => "ed25519",
        other => return other.to_owned(),
    }
    .to_owned()
}

const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_ORGANIZATION: &str = "2.5.4.10";

fn first_attribute(name: &X509Name<'_>, oid: &str) -> Option<String> {
    all_attributes(name, oid).into_iter().next()
}

fn all_attributes(name: &X509Name<'_>, oid: &str) -> Vec<String> {
    name.iter_attributes()
        .filter(|attr| attr.attr_type().to_id_string() == oid)
        .map(|attr| attribute_value_text(attr))
        .collect()
}

fn attribute_value_text(attr: &x509_parser::x509::AttributeTypeAndValue<'_>) -> String {
    match attr.as_str() {
        Ok(text) => text.to_owned(),
        Err(_) => format!("#{}", hex::encode(attr.as_slice())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_has_no_leading_zeros() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x01, 0x02]), "0102");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn json_schema_describes_times_as_strings() {
        let schema = serde_json::to_value(schemars::schema_for!(CertFacts)).unwrap();
        let properties = &schema["properties"];
        assert_eq!(properties["not_after"]["type"], "string", "{schema}");
        assert_eq!(properties["extended_usages"]["type"], "array", "{schema}");
        let key_schema = serde_json::to_value(schemars::schema_for!(KeyFacts)).unwrap();
        assert!(key_schema["properties"]["public_key_sha256"].is_object(), "{key_schema}");
    }

    #[test]
    fn expiry_helpers() {
        let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let facts = CertFacts {
            subject: "CN=x".into(),
            subject_cn: Some("x".into()),
            subject_o: vec![],
            issuer: "CN=ca".into(),
            issuer_cn: Some("ca".into()),
            serial: "1".into(),
            not_before: now - time::Duration::days(10),
            not_after: now + time::Duration::days(10),
            dns_sans: vec![],
            ip_sans: vec![],
            key_algorithm: "RSA".into(),
            key_bits: 2048,
            is_ca: false,
            key_usages: vec![],
            extended_usages: vec![],
            other_extended_usages: vec![],
            signature_algorithm: "sha256WithRSAEncryption".into(),
            sha256_fingerprint: String::new(),
            public_key_sha256: String::new(),
        };
        let day = std::time::Duration::from_secs(86_400);
        assert!(!facts.is_expired(now));
        assert!(facts.is_expired(now + time::Duration::days(11)));
        assert!(facts.expires_within(now, day * 30));
        assert!(!facts.expires_within(now, day * 5));
        assert!(facts.expires_within(now, std::time::Duration::MAX));
        assert!(facts.is_not_yet_valid(now - time::Duration::days(11)));

        let json = serde_json::to_string(&facts).unwrap();
        let not_after_text = facts.not_after.format(&time::format_description::well_known::Rfc3339).unwrap();
        assert!(json.contains(&format!("\"not_after\":\"{not_after_text}\"")), "{json}");
        let back: CertFacts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, facts);
    }
}
