//! Injected ARM failures (throttling, server errors) and the record of every call the
//! stand-in answered. Both are shared handles, cheap to clone, so the lab supervisor can expose
//! them on its CLI while the server runs; their data types are serde so they cross that
//! boundary as JSON.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// One failure to inject: every request whose path matches `path` (a glob where `*` matches
/// any run of characters, compared case-insensitively as ARM compares paths) and, if given,
/// whose method is `method`, is answered with `status` instead of being served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// 429, 500, 503... Other codes are sent as given with a generic ARM error body.
    pub status: u16,
    /// How many requests fail; `None` means every one until the fault is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// `Retry-After` seconds sent with 429 and 503 (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl FaultRule {
    /// `status` on every request to `path`, `times` times (or always with `None`).
    pub fn new(path: impl Into<String>, status: u16, times: Option<u32>) -> Self {
        Self { path: path.into(), method: None, status, times, retry_after_secs: None }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        if let Some(m) = &self.method {
            if !m.eq_ignore_ascii_case(method) {
                return false;
            }
        }
        glob_matches(&self.path.to_ascii_lowercase(), &path.to_ascii_lowercase())
    }
}

/// `*` matches any run of characters (including `/`); everything else literally.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FaultId(pub u64);

/// A fault as installed: its rule and how often it fired so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledFault {
    pub id: FaultId,
    pub rule: FaultRule,
    pub fired: u32,
}

/// The set of installed faults.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<FaultsInner>>,
}

#[derive(Debug, Default)]
struct FaultsInner {
    next_id: u64,
    installed: Vec<InstalledFault>,
}

/// What a matching fault makes the server answer.
#[derive(Debug, Clone)]
pub(crate) struct FaultHit {
    pub status: u16,
    pub retry_after_secs: u64,
}

impl Faults {
    pub fn add(&self, rule: FaultRule) -> FaultId {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next_id += 1;
        let id = FaultId(inner.next_id);
        inner.installed.push(InstalledFault { id, rule, fired: 0 });
        id
    }

    /// Removes one fault; false when no fault has that id.
    pub fn remove(&self, id: FaultId) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = inner.installed.len();
        inner.installed.retain(|f| f.id != id);
        inner.installed.len() != before
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).installed.clear();
    }

    /// Installed faults, including spent ones (so a test can see how often each fired).
    pub fn list(&self) -> Vec<InstalledFault> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).installed.clone()
    }

    /// The first live fault matching this request, counted as fired.
    pub(crate) fn hit(&self, method: &str, path: &str) -> Option<FaultHit> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let fault = inner.installed.iter_mut().find(|f| {
            f.rule.matches(method, path) && f.rule.times.is_none_or(|times| f.fired < times)
        })?;
        fault.fired += 1;
        Some(FaultHit { status: fault.rule.status, retry_after_secs: fault.rule.retry_after_secs.unwrap_or(1) })
    }
}

/// One answered request. Carries no secrets: no bodies, no query string but the api-version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub status: u16,
    /// The ARM or OAuth2 error code answered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// True when the answer came from an injected fault.
    pub injected: bool,
    /// The application that called: the token's appid, or the client_id at the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Every call the stand-in answered, in order.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    inner: Arc<Mutex<Vec<CallRecord>>>,
}

impl CallLog {
    pub(crate) fn push(&self, mut record: CallRecord) {
        let mut calls = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        record.seq = calls.len() as u64 + 1;
        calls.push(record);
    }

    pub fn snapshot(&self) -> Vec<CallRecord> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_segments_and_anchors() {
        assert!(glob_matches("*/restart", "/subscriptions/s/x/virtualmachines/vm/restart"));
        assert!(glob_matches("/a/*/c", "/a/b/c"));
        assert!(!glob_matches("/a/*/c", "/a/b/d"));
        assert!(glob_matches("/exact", "/exact"));
        assert!(!glob_matches("/exact", "/exact/more"));
        assert!(glob_matches("*vm-1*", "/x/vm-1/restart"));
        assert!(!glob_matches("*vm-1*", "/x/vm-2/restart"));
        assert!(!glob_matches("/ab*ba", "/aba"));
    }

    #[test]
    fn a_fault_fires_only_its_count() {
        let faults = Faults::default();
        faults.add(FaultRule::new("*/restart", 429, Some(2)));
        assert_eq!(faults.hit("POST", "/x/vm/Restart").map(|h| h.status), Some(429));
        assert!(faults.hit("POST", "/x/vm/restart").is_some());
        assert!(faults.hit("POST", "/x/vm/restart").is_none());
        assert_eq!(faults.list()[0].fired, 2);
    }

    #[test]
    fn method_filter_and_always() {
        let faults = Faults::default();
        let id = faults.add(FaultRule { method: Some("GET".into()), ..FaultRule::new("*", 500, None) });
        assert!(faults.hit("POST", "/x").is_none());
        for _ in 0..5 {
            assert!(faults.hit("get", "/x").is_some());
        }
        assert!(faults.remove(id));
        assert!(faults.hit("GET", "/x").is_none());
    }
}
