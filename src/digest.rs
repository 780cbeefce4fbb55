//! Digests and canonical JSON: the `sha256:<hex>` values that profiles, saved plans and
//! observed files are identified by, and the one byte form (sorted keys, no whitespace) a
//! value is hashed in, so that the same data always gives the same digest. Plain functions
//! over bytes and serde values; every module that records or compares a digest uses these.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::borrow::Cow;

/// A sha256 digest written `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(String);

impl Sha256Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// From bare lowercase or uppercase hex, as `pki::inspect` and the inventory record
    /// fingerprints; `None` unless it is 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::try_from(format!("sha256:{}", hex.to_ascii_lowercase())).ok()
    }

    /// The 64 hex digits without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Digest of a value's canonical JSON (see `canonical_json`).
    pub fn of_canonical_json<T: Serialize + ?Sized>(value: &T) -> Self {
        Self::of_bytes(canonical_json(value).as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min("sha256:".len() + 12)]
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let valid = text
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if valid {
            Ok(Self(text))
        } else {
            Err(format!("`{text}` is not a digest: expected `sha256:` and 64 lowercase hex digits"))
        }
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.0
    }
}

impl JsonSchema for Sha256Digest {
    fn schema_name() -> Cow<'static, str> {
        "Sha256Digest".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A sha256 digest: `sha256:` and 64 lowercase hex digits.",
            "type": "string",
            "pattern": "^sha256:[0-9a-f]{64}$"
        })
    }
}

/// Serializes a value to JSON with object keys sorted and no insignificant whitespace, so
/// the same data always gives the same bytes whatever order it was built or read in.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> String {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    // Plan and profile types serialize to JSON without fail: string keys, no floats.
    let value = serde_json::to_value(value).expect("plan data serializes to JSON");
    serde_json::to_string(&sort(value)).expect("a JSON value serializes")
}


/// The digest that seals a document: its canonical JSON with the top-level field
/// `seal_field` (where the digest itself is kept) left out, so the digest can be stored in
/// the document it covers.
pub fn sealing_digest<T: Serialize + ?Sized>(document: &T, seal_field: &str) -> Sha256Digest {
    let mut value = serde_json::to_value(document).expect("plan data serializes to JSON");
    if let Some(map) = value.as_object_mut() {
        map.remove(seal_field);
    }
    Sha256Digest::of_canonical_json(&value)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a = serde_json::json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn digests_convert_from_bare_hex_and_refuse_anything_else() {
        let d = Sha256Digest::of_bytes(b"x");
        assert_eq!(Sha256Digest::from_hex(d.hex()), Some(d.clone()));
        assert_eq!(Sha256Digest::from_hex(&d.hex().to_ascii_uppercase()), Some(d));
        assert_eq!(Sha256Digest::from_hex("abc"), None);
        assert_eq!(Sha256Digest::from_hex(&"g".repeat(64)), None);
    }
}
