//! The low-level encodings inspection and issuance share: PEM blocks and their labels, the
//! OIDs of the key algorithms, private keys in PKCS#1, PKCS#8 and SEC1 (read only to derive
//! the public half and its SubjectPublicKeyInfo fingerprint), and distinguished names as
//! RFC 4514 writes them. `inspect` builds certificate facts on it and `issue` builds new
//! material on it; neither needs the other.
//!
//! Key bytes are held in `Zeroizing` buffers and never put into an error message.

use pkcs8::der::asn1::{AnyRef, BitStringRef, ContextSpecific, ContextSpecificRef, OctetStringRef};
use pkcs8::der::zeroize::Zeroizing;
use pkcs8::der::{
    Decode, DecodeValue, Encode, EncodeValue, Header, Length, Reader, Sequence, TagMode, TagNumber, Writer,
};
use pkcs8::{ObjectIdentifier, PrivateKeyInfo};
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::x509::X509Name;

/// `rsaEncryption` (PKCS#1).
pub(crate) const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-ecPublicKey` (RFC 5480).
pub(crate) const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1` / `secp256r1`.
pub(crate) const OID_CURVE_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1`.
pub(crate) const OID_CURVE_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// PEM labels certrotate writes.
pub(crate) const LABEL_RSA_PRIVATE_KEY: &str = "RSA PRIVATE KEY";
pub(crate) const LABEL_EC_PRIVATE_KEY: &str = "EC PRIVATE KEY";
pub(crate) const LABEL_PKCS8_PRIVATE_KEY: &str = "PRIVATE KEY";

/// Why a PEM could not be inspected. Messages say what was found and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("not a PEM certificate: no PEM block found")]
    NoCertificate,

    #[error("not a PEM private key: no PEM block found")]
    NoKey,

    #[error("the private key is encrypted (passphrase-protected); AKS Engine writes and reads unencrypted PEM keys, so use the unencrypted key (`openssl pkey -in KEY -traditional`)")]
    EncryptedKey,

    #[error("PEM block is {found}, expected {expected}")]
    WrongPemBlock { found: &'static str, expected: &'static str },

    #[error("malformed PEM: {0}")]
    Pem(String),

    #[error("expected one certificate, found {0}; read bundles with parse_certs_pem")]
    MultipleCertificates(usize),

    #[error("certificate DER is invalid: {0}")]
    CertificateDer(String),

    #[error("private key DER is invalid: {0}")]
    KeyDer(String),

    #[error("unsupported key algorithm {0}; certrotate reads RSA and ECDSA P-256/P-384 keys")]
    UnsupportedKey(String),
}

/// How a private key PEM was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyEncoding {
    /// `RSA PRIVATE KEY`: the only form AKS Engine reads back.
    Pkcs1,
    /// `PRIVATE KEY`.
    Pkcs8,
    /// `EC PRIVATE KEY`.
    Sec1,
}

impl KeyEncoding {
    /// The PEM label of this encoding.
    pub fn pem_label(self) -> &'static str {
        match self {
            KeyEncoding::Pkcs1 => LABEL_RSA_PRIVATE_KEY,
            KeyEncoding::Pkcs8 => LABEL_PKCS8_PRIVATE_KEY,
            KeyEncoding::Sec1 => LABEL_EC_PRIVATE_KEY,
        }
    }
}

/// What a private key is, without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyFacts {
    /// `RSA`, `ECDSA P-256` or `ECDSA P-384`.
    pub algorithm: String,
    pub bits: u32,
    pub encoding: KeyEncoding,
    /// SHA-256 of the SubjectPublicKeyInfo DER of the public half, lowercase hex.
    pub public_key_sha256: String,
}

/// DER of every CERTIFICATE block; errors when there is none, naming what was there instead.
pub(crate) fn certificate_ders(pem: &str) -> Result<Vec<Vec<u8>>, InspectError> {
    let mut certificates = Vec::new();
    let mut found_other = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| InspectError::Pem(pem_error_reason(&e)))?;
        if kind == SectionKind::Certificate {
            certificates.push(der);
        } else {
            found_other.get_or_insert(kind);
            // Whatever else sits in the file may be a key: wipe it.
            drop(Zeroizing::new(der));
        }
    }
    if certificates.is_empty() {
        return Err(match found_other {
            Some(kind) => InspectError::WrongPemBlock { found: section_label(kind), expected: "CERTIFICATE" },
            None => InspectError::NoCertificate,
        });
    }
    Ok(certificates)
}

/// The DER of the only certificate in `pem`.
pub(crate) fn single_certificate_der(pem: &str) -> Result<Vec<u8>, InspectError> {
    let mut certificates = certificate_ders(pem)?;
    if certificates.len() > 1 {
        return Err(InspectError::MultipleCertificates(certificates.len()));
    }
    Ok(certificates.remove(0))
}

/// The DER of the first private key block in `pem` (wiped when dropped), and its encoding.
pub(crate) fn private_key_der(pem: &str) -> Result<(KeyEncoding, Zeroizing<Vec<u8>>), InspectError> {
    let mut found_other = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| InspectError::Pem(pem_error_reason(&e)))?;
        let der = Zeroizing::new(der);
        let encoding = match kind {
            SectionKind::RsaPrivateKey => KeyEncoding::Pkcs1,
            SectionKind::PrivateKey => KeyEncoding::Pkcs8,
            SectionKind::EcPrivateKey => KeyEncoding::Sec1,
            other => {
                found_other.get_or_insert(other);
                continue;
            }
        };
        return Ok((encoding, der));
    }
    Err(match found_other {
        Some(kind) => InspectError::WrongPemBlock {
            found: section_label(kind),
            expected: "RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY",
        },
        // rustls' PEM reader skips blocks it has no kind for, encrypted keys among them.
        None if is_encrypted_key(pem) => InspectError::EncryptedKey,
        None => InspectError::NoKey,
    })
}

/// PKCS#8 `ENCRYPTED PRIVATE KEY`, or a traditional PEM key with OpenSSL's `Proc-Type: 4,ENCRYPTED`.
fn is_encrypted_key(pem: &str) -> bool {
    pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || (pem.contains("PRIVATE KEY-----") && pem.contains("Proc-Type: 4,ENCRYPTED"))
}

fn section_label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => LABEL_RSA_PRIVATE_KEY,
        SectionKind::PrivateKey => LABEL_PKCS8_PRIVATE_KEY,
        SectionKind::EcPrivateKey => LABEL_EC_PRIVATE_KEY,
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "of an unsupported kind",
    }
}

/// Describes a PEM syntax error without echoing input lines (they could be key material).
fn pem_error_reason(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as PemError;
    match error {
        PemError::MissingSectionEnd { .. } => "PEM block is truncated: its END line is missing".into(),
        PemError::IllegalSectionStart { .. } => "malformed PEM BEGIN line".into(),
        PemError::Base64Decode(_) => "PEM body is not valid base64".into(),
        PemError::SectionTooLarge => "PEM block is too large".into(),
        _ => "unreadable PEM".into(),
    }
}

/// The public half of a private key, as a certificate would carry it.
struct PublicHalf {
    algorithm: String,
    bits: u32,
    spki_der: Vec<u8>,
}

fn rsa_public_from_pkcs1(pkcs1_der: &[u8]) -> Result<PublicHalf, InspectError> {
    let key = pkcs1::RsaPrivateKey::from_der(pkcs1_der).map_err(|e| InspectError::KeyDer(e.to_string()))?;
    let public_der = key.public_key().to_der().map_err(|e| InspectError::KeyDer(e.to_string()))?;
    let spki = pkcs8::spki::SubjectPublicKeyInfo {
        algorithm: pkcs8::AlgorithmIdentifierRef { oid: OID_RSA_ENCRYPTION, parameters: Some(AnyRef::NULL) },
        subject_public_key: BitStringRef::from_bytes(&public_der).map_err(|e| InspectError::KeyDer(e.to_string()))?,
    };
    Ok(PublicHalf {
        algorithm: "RSA".into(),
        bits: unsigned_bit_length(key.modulus.as_bytes()),
        spki_der: spki.to_der().map_err(|e| InspectError::KeyDer(e.to_string()))?,
    })
}

/// `curve_from_container` is the curve named by an enclosing PKCS#8 algorithm identifier.
fn ec_public_from_sec1(
    sec1_der: &[u8],
    curve_from_container: Option<pkcs8::ObjectIdentifier>,
) -> Result<PublicHalf, InspectError> {
    let key = EcPrivateKey::from_der(sec1_der).map_err(|e| InspectError::KeyDer(e.to_string()))?;
    let curve = curve_from_container
        .or(key.parameters)
        .ok_or_else(|| InspectError::UnsupportedKey("EC key without a named curve".into()))?;
    let (algorithm, bits) = match curve {
        c if c == OID_CURVE_P256 => ("ECDSA P-256", 256),
        c if c == OID_CURVE_P384 => ("ECDSA P-384", 384),
        other => return Err(InspectError::UnsupportedKey(format!("EC curve {other}"))),
    };
    let point = match key.public_key {
        Some(point) => point.raw_bytes().to_vec(),
        None => derive_ec_public_point(sec1_der, curve)?,
    };
    let spki = pkcs8::spki::SubjectPublicKeyInfo {
        algorithm: pkcs8::AlgorithmIdentifierRef { oid: OID_EC_PUBLIC_KEY, parameters: Some(AnyRef::from(&curve)) },
        subject_public_key: BitStringRef::from_bytes(&point).map_err(|e| InspectError::KeyDer(e.to_string()))?,
    };
    Ok(PublicHalf {
        algorithm: algorithm.into(),
        bits,
        spki_der: spki.to_der().map_err(|e| InspectError::KeyDer(e.to_string()))?,
    })
}

/// SEC1 lets the public key be left out; then the curve arithmetic in aws-lc recomputes it.
fn derive_ec_public_point(sec1_der: &[u8], curve: pkcs8::ObjectIdentifier) -> Result<Vec<u8>, InspectError> {
    let key = EcPrivateKey::from_der(sec1_der).map_err(|e| InspectError::KeyDer(e.to_string()))?;
    let inner = Zeroizing::new(
        EcPrivateKey { parameters: None, ..key }.to_der().map_err(|e| InspectError::KeyDer(e.to_string()))?,
    );
    let algorithm = pkcs8::AlgorithmIdentifierRef { oid: OID_EC_PUBLIC_KEY, parameters: Some(AnyRef::from(&curve)) };
    let pkcs8_der = Zeroizing::new(
        PrivateKeyInfo::new(algorithm, &inner).to_der().map_err(|e| InspectError::KeyDer(e.to_string()))?,
    );
    let signature_algorithm =
        if curve == OID_CURVE_P256 { &rcgen::PKCS_ECDSA_P256_SHA256 } else { &rcgen::PKCS_ECDSA_P384_SHA384 };
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8_der.as_slice().into(), signature_algorithm)
        .map_err(|e| InspectError::KeyDer(e.to_string()))?;
    Ok(key_pair.public_key_raw().to_vec())
}

/// Facts of a private key in PKCS#1, PKCS#8 or SEC1 PEM.
pub fn parse_key_pem(pem: &str) -> Result<KeyFacts, InspectError> {
    let (encoding, der) = private_key_der(pem)?;
    let public = match encoding {
        KeyEncoding::Pkcs1 => rsa_public_from_pkcs1(&der)?,
        KeyEncoding::Sec1 => ec_public_from_sec1(&der, None)?,
        KeyEncoding::Pkcs8 => {
            let info = PrivateKeyInfo::try_from(der.as_slice()).map_err(|e| InspectError::KeyDer(e.to_string()))?;
            if info.algorithm.oid == OID_RSA_ENCRYPTION {
                rsa_public_from_pkcs1(info.private_key)?
            } else if info.algorithm.oid == OID_EC_PUBLIC_KEY {
                let curve = info
                    .algorithm
                    .parameters_oid()
                    .map_err(|_| InspectError::UnsupportedKey("EC key without a named curve".into()))?;
                ec_public_from_sec1(info.private_key, Some(curve))?
            } else {
                return Err(InspectError::UnsupportedKey(info.algorithm.oid.to_string()));
            }
        }
    };
    Ok(KeyFacts {
        algorithm: public.algorithm,
        bits: public.bits,
        encoding,
        public_key_sha256: hex::encode(Sha256::digest(&public.spki_der)),
    })
}

/// Bit length of a big-endian unsigned integer (x509-parser's own `key_size` miscounts
/// moduli encoded without a leading zero byte).
pub(crate) fn unsigned_bit_length(bytes: &[u8]) -> u32 {
    let significant = match bytes.iter().position(|b| *b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    (significant.len() as u32) * 8 - significant[0].leading_zeros()
}

/// SEC1 `ECPrivateKey` (RFC 5915):
/// `SEQUENCE { version INTEGER (1), privateKey OCTET STRING,
///             parameters [0] EXPLICIT OID OPTIONAL, publicKey [1] EXPLICIT BIT STRING OPTIONAL }`
/// Written by hand because the `sec1` crate is not among our dependencies.
#[derive(Clone, Copy)]
pub(crate) struct EcPrivateKey<'a> {
    pub private_key: &'a [u8],
    pub parameters: Option<ObjectIdentifier>,
    pub public_key: Option<BitStringRef<'a>>,
}

const EC_PRIVATE_KEY_VERSION: u8 = 1;

impl<'a> DecodeValue<'a> for EcPrivateKey<'a> {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> pkcs8::der::Result<Self> {
        reader.read_nested(header.length, |reader| {
            let version = u8::decode(reader)?;
            if version != EC_PRIVATE_KEY_VERSION {
                return Err(pkcs8::der::Tag::Integer.value_error());
            }
            let private_key = OctetStringRef::decode(reader)?.as_bytes();
            let parameters = ContextSpecific::<ObjectIdentifier>::decode_explicit(reader, TagNumber::N0)?
                .map(|field| field.value);
            let public_key =
                ContextSpecific::<BitStringRef<'a>>::decode_explicit(reader, TagNumber::N1)?.map(|field| field.value);
            Ok(Self { private_key, parameters, public_key })
        })
    }
}

impl EcPrivateKey<'_> {
    fn parameters_field(&self) -> Option<ContextSpecificRef<'_, ObjectIdentifier>> {
        self.parameters.as_ref().map(|value| ContextSpecificRef {
            tag_number: TagNumber::N0,
            tag_mode: TagMode::Explicit,
            value,
        })
    }

    fn public_key_field(&self) -> Option<ContextSpecificRef<'_, BitStringRef<'_>>> {
        self.public_key.as_ref().map(|value| ContextSpecificRef {
            tag_number: TagNumber::N1,
            tag_mode: TagMode::Explicit,
            value,
        })
    }
}

impl EncodeValue for EcPrivateKey<'_> {
    fn value_len(&self) -> pkcs8::der::Result<Length> {
        EC_PRIVATE_KEY_VERSION.encoded_len()?
            + OctetStringRef::new(self.private_key)?.encoded_len()?
            + self.parameters_field().encoded_len()?
            + self.public_key_field().encoded_len()?
    }

    fn encode_value(&self, writer: &mut impl Writer) -> pkcs8::der::Result<()> {
        EC_PRIVATE_KEY_VERSION.encode(writer)?;
        OctetStringRef::new(self.private_key)?.encode(writer)?;
        self.parameters_field().encode(writer)?;
        self.public_key_field().encode(writer)?;
        Ok(())
    }
}

impl<'a> Sequence<'a> for EcPrivateKey<'a> {}

/// RFC 4514 short names; other attributes print as dotted OIDs, as the RFC says.
fn attribute_short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "2.5.4.5" => "serialNumber",
        _ => return None,
    })
}

/// A distinguished name as RFC 4514 writes it: last RDN first, `,` between RDNs, `+`
/// inside a multi-valued RDN, special characters escaped. Strings are shown decoded;
/// non-string values as `#` and the hex of their content.
pub fn rfc4514_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let key = attribute_short_name(&oid).map(str::to_owned).unwrap_or(oid);
                    let value = match attr.as_str() {
                        Ok(text) => escape_rfc4514(text),
                        Err(_) => format!("#{}", hex::encode(attr.as_slice())),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rfc4514(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, ch) in value.chars().enumerate() {
        let needs_escape = matches!(ch, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (index == 0 && (ch == '#' || ch == ' '))
            || (index == last && ch == ' ');
        if ch == '\0' {
            escaped.push_str("\\00");
            continue;
        }
        if needs_escape {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_ignores_leading_zero_bytes_and_bits() {
        assert_eq!(unsigned_bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(unsigned_bit_length(&[0x01, 0x00]), 9);
        assert_eq!(unsigned_bit_length(&[0x00]), 0);
    }

    #[test]
    fn rfc4514_escaping() {
        assert_eq!(escape_rfc4514("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rfc4514("#lead "), "\\#lead\\ ");
        assert_eq!(escape_rfc4514("system:masters"), "system:masters");
    }
}
