//! The object store behind the apiserver stand-in: the resource types it serves and their
//! objects as JSON in etcd under `/registry/<resource>/<namespace>/<name>`, as kube-apiserver
//! lays them out. `metadata.resourceVersion` is the key's etcd mod_revision; writes that name
//! a resourceVersion are compare-and-swap transactions, so several apiservers (one per
//! master) and their controllers can share one etcd safely.

use crate::kube::error::ApiError;
use crate::kube::etcd::{EtcdClient, KeyValue, TxnOutcome};
use k8s_openapi::chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

/// One resource type the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group ("" for the core group).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// The segment after /registry/ in etcd (kube-apiserver keeps nodes under "minions").
    pub storage: &'static str,
    /// Whether writes to the main resource keep the stored `status` (a /status subresource).
    pub has_status: bool,
    /// Whether a /scale subresource exists.
    pub has_scale: bool,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The etcd key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{ns}/{name}", self.storage),
            _ => format!("/registry/{}/{name}", self.storage),
        }
    }

    /// The etcd prefix of a collection (one namespace or all).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{ns}/", self.storage),
            _ => format!("/registry/{}/", self.storage),
        }
    }
}

const fn core(kind: &'static str, plural: &'static str, singular: &'static str, namespaced: bool) -> ResourceType {
    ResourceType {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        storage: plural,
        has_status: false,
        has_scale: false,
    }
}

pub const NAMESPACES: ResourceType = ResourceType { short_names: &["ns"], has_status: true, ..core("Namespace", "namespaces", "namespace", false) };
pub const NODES: ResourceType = ResourceType { short_names: &["no"], storage: "minions", has_status: true, ..core("Node", "nodes", "node", false) };
pub const PODS: ResourceType = ResourceType { short_names: &["po"], has_status: true, ..core("Pod", "pods", "pod", true) };
pub const SERVICE_ACCOUNTS: ResourceType = ResourceType { short_names: &["sa"], ..core("ServiceAccount", "serviceaccounts", "serviceaccount", true) };
pub const SECRETS: ResourceType = core("Secret", "secrets", "secret", true);
/// Served (and empty unless someone writes some) because `kubectl describe` lists them.
pub const EVENTS: ResourceType = ResourceType { short_names: &["ev"], ..core("Event", "events", "event", true) };
pub const DEPLOYMENTS: ResourceType = ResourceType {
    group: "apps",
    short_names: &["deploy"],
    has_status: true,
    has_scale: true,
    ..core("Deployment", "deployments", "deployment", true)
};
pub const DAEMON_SETS: ResourceType = ResourceType {
    group: "apps",
    short_names: &["ds"],
    has_status: true,
    ..core("DaemonSet", "daemonsets", "daemonset", true)
};

/// Every resource type served.
pub const RESOURCE_TYPES: &[ResourceType] = &[NAMESPACES, NODES, PODS, SERVICE_ACCOUNTS, SECRETS, EVENTS, DEPLOYMENTS, DAEMON_SETS];

/// Finds a served resource by group, version and plural.
pub fn resource_type(group: &str, version: &str, plural: &str) -> Option<ResourceType> {
    RESOURCE_TYPES.iter().copied().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// RFC 3339 "now" with second precision, the format of metav1.Time.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Lower-case alphanumerics as apiserver uses for generateName suffixes (no vowels, so no
/// words), drawn from a random UUID.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for byte in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[*byte as usize % ALPHABET.len()] as char);
        }
    }
    out
}

fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object at {} is not JSON: {e}", kv.key)))?;
    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(object)
}

fn encode(object: &Value) -> Vec<u8> {
    let mut stored = object.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    serde_json::to_vec(&stored).expect("a serde_json::Value always serialises")
}

/// `metadata.resourceVersion` of an object as a revision, if it names one.
pub fn resource_version(object: &Value) -> Result<Option<i64>, ApiError> {
    match object["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("metadata.resourceVersion {rv:?} is not a resource version this server issued"))),
    }
}

/// Typed access to objects in etcd.
#[derive(Debug)]
pub struct Store {
    etcd: EtcdClient,
}

impl Store {
    pub fn new(etcd: EtcdClient) -> Self {
        Self { etcd }
    }

    pub fn etcd(&self) -> &EtcdClient {
        &self.etcd
    }

    pub async fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Option<Value>, ApiError> {
        match self.etcd.get(&rt.key(namespace, name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    pub async fn get_existing(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.get(rt, namespace, name).await?.ok_or_else(|| ApiError::not_found(rt.group, rt.plural, name))
    }

    /// Every object of a type (in one namespace or all), and the revision the list was read at.
    pub async fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> Result<(Vec<Value>, i64), ApiError> {
        self.list_at(rt, namespace, None).await
    }

    /// Like `list`, as the store was at `revision` (what a watch from that version starts from).
    pub async fn list_at(&self, rt: &ResourceType, namespace: Option<&str>, revision: Option<i64>) -> Result<(Vec<Value>, i64), ApiError> {
        let range = self.etcd.range_at(&rt.prefix(namespace), true, revision).await?;
        let items = range.kvs.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok((items, range.revision))
    }

    /// Creates an object, filling in what the apiserver owns (uid, creationTimestamp,
    /// generation, namespace, a generated name).
    pub async fn create(&self, rt: &ResourceType, namespace: Option<&str>, mut object: Value) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(format!("the body of a {} must be a JSON object", rt.kind)));
        }
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        if meta["name"].as_str().unwrap_or("").is_empty() {
            match meta["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => meta["name"] = json!(format!("{prefix}{}", random_suffix(5))),
                _ => return Err(ApiError::invalid(rt.group, rt.plural, "", format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", rt.kind))),
            }
        }
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        if rt.namespaced {
            let ns = namespace.unwrap_or("default");
            match meta["namespace"].as_str() {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                    )))
                }
                _ => meta["namespace"] = json!(ns),
            }
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if object.get("spec").is_some() && rt.group == "apps" {
            object["metadata"]["generation"] = json!(1);
        }
        let key = rt.key(namespace, &name);
        match self.etcd.put_if(&key, &encode(&object), 0).await? {
            TxnOutcome::Written { revision } => {
                object["metadata"]["resourceVersion"] = json!(revision.to_string());
                Ok(object)
            }
            TxnOutcome::Conflict { .. } => Err(ApiError::already_exists(rt.group, rt.plural, &name)),
        }
    }

    /// Replaces an object. With `expected` set the write only happens at that
    /// resourceVersion (409 otherwise); without it, it replaces whatever is stored.
    pub async fn update(&self, rt: &ResourceType, namespace: Option<&str>, name: &str, mut object: Value, expected: Option<i64>) -> Result<Value, ApiError> {
        let current = self.etcd.get(&rt.key(namespace, name)).await?.ok_or_else(|| ApiError::not_found(rt.group, rt.plural, name))?;
        let expected_rev = expected.unwrap_or(current.mod_revision);
        if expected_rev != current.mod_revision {
            return Err(ApiError::conflict(rt.group, rt.plural, name));
        }
        let old = decode(&current)?;
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        // What the server owns is not the client's to change.
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            if !old["metadata"][field].is_null() {
                object["metadata"][field] = old["metadata"][field].clone();
            }
        }
        if !old["metadata"]["generation"].is_null() {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let bumped = if old.get("spec") != object.get("spec") { generation + 1 } else { generation };
            object["metadata"]["generation"] = json!(bumped);
        }
        match self.etcd.put_if(&rt.key(namespace, name), &encode(&object), expected_rev).await? {
            TxnOutcome::Written { revision } => {
                object["metadata"]["resourceVersion"] = json!(revision.to_string());
                Ok(object)
            }
            TxnOutcome::Conflict { current: None } => Err(ApiError::not_found(rt.group, rt.plural, name)),
            TxnOutcome::Conflict { current: Some(_) } => Err(ApiError::conflict(rt.group, rt.plural, name)),
        }
    }

    /// Read-modify-write with retries on conflicts: `change` edits the current object and
    /// returns whether it changed anything (no write when it did not).
    pub async fn modify<F>(&self, rt: &ResourceType, namespace: Option<&str>, name: &str, mut change: F) -> Result<Value, ApiError>
    where
        F: FnMut(&mut Value) -> Result<bool, ApiError>,
    {
        for _ in 0..8 {
            let current = self.get_existing(rt, namespace, name).await?;
            let rv = resource_version(&current)?;
            let mut next = current.clone();
            if !change(&mut next)? {
                return Ok(current);
            }
            match self.update(rt, namespace, name, next, rv).await {
                Err(e) if e.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(rt.group, rt.plural, name))
    }

    /// Deletes an object and returns it as it was; with `expected` only at that revision.
    pub async fn delete(&self, rt: &ResourceType, namespace: Option<&str>, name: &str, expected: Option<i64>) -> Result<Value, ApiError> {
        let key = rt.key(namespace, name);
        let current = self.etcd.get(&key).await?.ok_or_else(|| ApiError::not_found(rt.group, rt.plural, name))?;
        if expected.is_some_and(|rv| rv != current.mod_revision) {
            return Err(ApiError::conflict(rt.group, rt.plural, name));
        }
        match self.etcd.delete_if(&key, current.mod_revision).await? {
            TxnOutcome::Written { .. } => decode(&current),
            TxnOutcome::Conflict { current: None } => Err(ApiError::not_found(rt.group, rt.plural, name)),
            TxnOutcome::Conflict { current: Some(_) } => Err(ApiError::conflict(rt.group, rt.plural, name)),
        }
    }

    /// Creates an object unless one of that name exists; returns whether it created it.
    pub async fn create_if_absent(&self, rt: &ResourceType, namespace: Option<&str>, object: Value) -> Result<bool, ApiError> {
        match self.create(rt, namespace, object).await {
            Ok(_) => Ok(true),
            Err(e) if e.reason == "AlreadyExists" => Ok(false),
            Err(e) => Err(e),
        }
    }
}
