//! A small etcd v3 client speaking etcd's JSON gateway (`/v3/kv/*` over HTTPS with a client
//! certificate), which is what the apiserver stand-in keeps its objects in. The gateway maps
//! the gRPC KV service one to one: keys and values are base64, 64-bit numbers are strings.
//! Several endpoints may be given; a request moves on to the next one when a member is down.

use crate::kube::credentials::{self, CredentialError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd client credentials: {0}")]
    Credentials(#[from] CredentialError),
    #[error("no etcd endpoint answered (tried {endpoints}); last error: {last}")]
    Unavailable { endpoints: String, last: String },
    #[error("etcd answered {status} to {path}: {body}")]
    Rejected { path: String, status: u16, body: String },
    #[error("etcd sent a response that is not the v3 JSON shape: {0}")]
    Malformed(String),
}

/// One key as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// The outcome of a range read: the keys and the store revision it was read at.
#[derive(Debug, Clone)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The write happened; the store is now at this revision.
    Written { revision: i64 },
    /// The condition did not hold; the key's current state (None when absent).
    Conflict { current: Option<KeyValue> },
}

/// A client for the JSON gateway of one etcd cluster.
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
    preferred: AtomicUsize,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").field("endpoints", &self.endpoints).finish()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    #[serde(default)]
    revision: Option<String>,
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    create_revision: Option<String>,
    #[serde(default)]
    mod_revision: Option<String>,
}

#[derive(Deserialize)]
struct RawRange {
    header: Option<RawHeader>,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

fn parse_i64(s: &Option<String>) -> i64 {
    s.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn decode_kv(raw: &RawKv) -> Result<KeyValue, EtcdError> {
    let key = B64.decode(&raw.key).map_err(|e| EtcdError::Malformed(format!("key: {e}")))?;
    let value = match &raw.value {
        Some(v) => B64.decode(v).map_err(|e| EtcdError::Malformed(format!("value: {e}")))?,
        None => Vec::new(),
    };
    Ok(KeyValue {
        key: String::from_utf8_lossy(&key).into_owned(),
        value,
        create_revision: parse_i64(&raw.create_revision),
        mod_revision: parse_i64(&raw.mod_revision),
    })
}

/// The key just past every key starting with `prefix`, which is how etcd spells "prefix".
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdClient {
    /// Builds a client presenting `cert`/`key` and trusting `ca`. Endpoints are
    /// `https://host:port` URLs.
    pub fn new(endpoints: Vec<String>, ca: &Path, cert: &Path, key: &Path) -> Result<Self, EtcdError> {
        let tls = credentials::client_config(ca, Some((cert, key)))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EtcdError::Malformed(format!("building the HTTP client: {e}")))?;
        let endpoints = endpoints.into_iter().map(|e| e.trim_end_matches('/').to_owned()).collect();
        Ok(Self { http, endpoints, preferred: AtomicUsize::new(0) })
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::Unavailable { endpoints: "none configured".into(), last: String::new() });
        }
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let index = (start + i) % self.endpoints.len();
            let url = format!("{}{}", self.endpoints[index], path);
            let response = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            match response {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.map_err(|e| EtcdError::Malformed(e.to_string()))?;
                    if !status.is_success() {
                        // A member without a leader or quorum answers 5xx; another may do better.
                        if status.is_server_error() {
                            last = format!("{url}: {status} {text}");
                            continue;
                        }
                        return Err(EtcdError::Rejected { path: path.into(), status: status.as_u16(), body: text });
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return serde_json::from_str(&text).map_err(|e| EtcdError::Malformed(e.to_string()));
                }
                Err(e) => {
                    last = format!("{url}: {}", error_chain(&e));
                }
            }
        }
        Err(EtcdError::Unavailable { endpoints: self.endpoints.join(", "), last })
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        Ok(self.range(key, false).await?.kvs.into_iter().next())
    }

    /// Reads every key under `prefix` (or exactly `key` when `prefix` is false).
    pub async fn range(&self, key: &str, prefix: bool) -> Result<RangeResult, EtcdError> {
        self.range_at(key, prefix, None).await
    }

    /// Like `range`, read as the store was at `revision` (MVCC history, until compacted).
    pub async fn range_at(&self, key: &str, prefix: bool, revision: Option<i64>) -> Result<RangeResult, EtcdError> {
        let mut body = json!({ "key": B64.encode(key) });
        if let Some(revision) = revision {
            body["revision"] = json!(revision.to_string());
        }
        if prefix {
            body["range_end"] = json!(B64.encode(prefix_end(key)));
        }
        let raw: RawRange = serde_json::from_value(self.call("/v3/kv/range", body).await?)
            .map_err(|e| EtcdError::Malformed(e.to_string()))?;
        let kvs = raw.kvs.iter().map(decode_kv).collect::<Result<Vec<_>, _>>()?;
        let revision = raw.header.map(|h| parse_i64(&h.revision)).unwrap_or(0);
        Ok(RangeResult { kvs, revision })
    }

    /// The current store revision (also a cheap liveness probe that needs quorum).
    pub async fn revision(&self) -> Result<i64, EtcdError> {
        Ok(self.range("/lab/health", false).await?.revision)
    }

    /// Writes `value` at `key` only if the key's mod_revision is `expected` (0 = absent).
    pub async fn put_if(&self, key: &str, value: &[u8], expected: i64) -> Result<TxnOutcome, EtcdError> {
        let compare = if expected == 0 {
            json!({ "target": "CREATE", "key": B64.encode(key), "create_revision": "0", "result": "EQUAL" })
        } else {
            json!({ "target": "MOD", "key": B64.encode(key), "mod_revision": expected.to_string(), "result": "EQUAL" })
        };
        let body = json!({
            "compare": [compare],
            "success": [{ "request_put": { "key": B64.encode(key), "value": B64.encode(value) } }],
            "failure": [{ "request_range": { "key": B64.encode(key) } }],
        });
        self.txn(body).await
    }

    /// Deletes `key` only if its mod_revision is `expected`.
    pub async fn delete_if(&self, key: &str, expected: i64) -> Result<TxnOutcome, EtcdError> {
        let body = json!({
            "compare": [{ "target": "MOD", "key": B64.encode(key), "mod_revision": expected.to_string(), "result": "EQUAL" }],
            "success": [{ "request_delete_range": { "key": B64.encode(key) } }],
            "failure": [{ "request_range": { "key": B64.encode(key) } }],
        });
        self.txn(body).await
    }

    /// Writes `value` at `key` unconditionally.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        let raw = self.call("/v3/kv/put", body).await?;
        Ok(raw["header"]["revision"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    async fn txn(&self, body: Value) -> Result<TxnOutcome, EtcdError> {
        let raw = self.call("/v3/kv/txn", body).await?;
        let revision = raw["header"]["revision"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        if raw["succeeded"].as_bool().unwrap_or(false) {
            return Ok(TxnOutcome::Written { revision });
        }
        let current = raw["responses"][0]["response_range"]["kvs"]
            .get(0)
            .map(|kv| serde_json::from_value::<RawKv>(kv.clone()))
            .transpose()
            .map_err(|e| EtcdError::Malformed(e.to_string()))?
            .map(|kv| decode_kv(&kv))
            .transpose()?;
        Ok(TxnOutcome::Conflict { current })
    }
}

/// The full cause chain of an error; reqwest hides the TLS reason (e.g. a bad certificate)
/// behind "error sending request".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
