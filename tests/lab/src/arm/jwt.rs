//! JSON Web Tokens as the stand-in needs them: access tokens it issues (RS256, signed with a
//! key made at start-up) and client assertions it checks against a registered certificate.

use aws_lc_rs as crypto;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use crypto::signature::{self, KeyPair as _};
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

/// Base64url that accepts tokens with or without padding, as lenient JWT parsers do.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A JWT split into its parts; nothing is trusted until a `verify_*` call says so.
pub(crate) struct UnverifiedJwt {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl UnverifiedJwt {
    pub fn parse(token: &str) -> Result<Self, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("not a JWT: it must have three dot-separated parts".into());
        };
        let header = decode_json(h).map_err(|e| format!("JWT header: {e}"))?;
        let claims = decode_json(p).map_err(|e| format!("JWT payload: {e}"))?;
        let signature = URL_SAFE_LENIENT.decode(s).map_err(|e| format!("JWT signature is not base64url: {e}"))?;
        Ok(Self { header, claims, signing_input: format!("{h}.{p}"), signature })
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    pub fn claim_i64(&self, name: &str) -> Option<i64> {
        self.claims.get(name).and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
    }

    /// Checks the signature against an X.509 certificate's RSA public key (RS256 or PS256).
    pub fn verify_with_certificate(&self, certificate_der: &[u8]) -> Result<(), String> {
        let (_, cert) = x509_parser::parse_x509_certificate(certificate_der)
            .map_err(|e| format!("the registered certificate does not parse: {e}"))?;
        let public_key = cert.public_key().subject_public_key.data.as_ref();
        let algorithm: &dyn signature::VerificationAlgorithm = match self.header_str("alg") {
            Some("RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
            Some("PS256") => &signature::RSA_PSS_2048_8192_SHA256,
            other => return Err(format!("unsupported assertion algorithm {other:?}; RS256 or PS256 expected")),
        };
        signature::UnparsedPublicKey::new(algorithm, public_key)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| "signature does not verify with the registered certificate".to_string())
    }
}

fn decode_json(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_LENIENT.decode(part).map_err(|e| format!("not base64url: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// SHA-1 of a certificate's DER: what `x5t` names.
pub(crate) fn sha1_thumbprint(certificate_der: &[u8]) -> Vec<u8> {
    Sha1::digest(certificate_der).to_vec()
}

/// Does `x5t` name this thumbprint? RFC 7515 says base64url; azure_identity 0.21 sends
/// standard base64, which Azure AD accepts too.
pub(crate) fn x5t_matches(x5t: &str, thumbprint: &[u8]) -> bool {
    URL_SAFE_LENIENT.decode(x5t).ok().as_deref() == Some(thumbprint)
        || STANDARD_LENIENT.decode(x5t).ok().as_deref() == Some(thumbprint)
}

/// The key access tokens are signed with.
pub(crate) struct TokenSigner {
    key: signature::RsaKeyPair,
    kid: String,
}

impl TokenSigner {
    pub fn generate() -> Result<Self, String> {
        let key = signature::RsaKeyPair::generate(crypto::rsa::KeySize::Rsa2048)
            .map_err(|e| format!("RSA key generation failed: {e}"))?;
        let kid = URL_SAFE_NO_PAD.encode(&Sha1::digest(key.public_key().as_ref())[..]);
        Ok(Self { key, kid })
    }

    pub fn mint(&self, claims: &Value) -> Result<String, String> {
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &crypto::rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig)
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Parses a bearer token and checks that this signer issued it.
    pub fn verify(&self, token: &str) -> Result<UnverifiedJwt, String> {
        let jwt = UnverifiedJwt::parse(token)?;
        if jwt.header_str("alg") != Some("RS256") || jwt.header_str("kid") != Some(self.kid.as_str()) {
            return Err("the token was not issued by this stamp's authority".into());
        }
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, self.key.public_key().as_ref())
            .verify(jwt.signing_input.as_bytes(), &jwt.signature)
            .map_err(|_| "the token signature does not verify".to_string())?;
        Ok(jwt)
    }
}

#[allow(dead_code)]
pub(crate) fn encode_standard(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_tampered_ones_do_not() {
        let signer = TokenSigner::generate().unwrap();
        let token = signer.mint(&serde_json::json!({"aud": "a", "exp": 1})).unwrap();
        let jwt = signer.verify(&token).unwrap();
        assert_eq!(jwt.claim_str("aud"), Some("a"));

        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"aud":"b","exp":1}"#);
        parts[1] = &forged;
        assert!(signer.verify(&parts.join(".")).is_err());

        let other = TokenSigner::generate().unwrap();
        assert!(other.verify(&token).is_err());
        assert!(signer.verify("a.b").is_err());
    }

    #[test]
    fn x5t_accepts_both_base64_alphabets() {
        let thumb = sha1_thumbprint(b"certificate bytes ~~~ with high bits \xff\xfe");
        assert!(x5t_matches(&URL_SAFE_NO_PAD.encode(&thumb), &thumb));
        assert!(x5t_matches(&STANDARD.encode(&thumb), &thumb));
        assert!(!x5t_matches(&STANDARD.encode(b"something else entirely!"), &thumb));
    }
}
