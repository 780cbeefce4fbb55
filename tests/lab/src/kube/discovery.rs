//! What the apiserver stand-in says about itself: /version, the discovery documents kubectl
//! and client-go read before any request (/api, /api/v1, /apis, /apis/<group>/<version>),
//! and the server-side `Table` rendering `kubectl get` asks for.

use crate::kube::store::{ResourceType, RESOURCE_TYPES};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery, ServerAddressByClientCIDR,
};
use k8s_openapi::chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// The Kubernetes version the stand-in reports (AKS Engine on Azure Stack Hub ships 1.30 at
/// the newest; kubectl 1.32 is within the supported skew).
pub const GIT_VERSION: &str = "v1.30.10";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "30",
        "gitVersion": GIT_VERSION,
        "gitCommit": "certrotate-lab",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.12",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The resource list of one group version, subresources included (kubectl's scale client
/// finds the Scale kind through `deployments/scale`).
pub fn resource_list(group: &str, version: &str) -> Option<APIResourceList> {
    let types: Vec<&ResourceType> = RESOURCE_TYPES.iter().filter(|r| r.group == group && r.version == version).collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in types {
        resources.push(APIResource {
            name: rt.plural.to_owned(),
            singular_name: rt.singular.to_owned(),
            namespaced: rt.namespaced,
            kind: rt.kind.to_owned(),
            verbs: strings(VERBS),
            short_names: (!rt.short_names.is_empty()).then(|| strings(rt.short_names)),
            categories: matches!(rt.plural, "pods" | "deployments" | "daemonsets").then(|| vec!["all".to_owned()]),
            ..Default::default()
        });
        if rt.has_status {
            resources.push(APIResource {
                name: format!("{}/status", rt.plural),
                namespaced: rt.namespaced,
                kind: rt.kind.to_owned(),
                verbs: strings(&["get", "patch", "update"]),
                ..Default::default()
            });
        }
        if rt.has_scale {
            resources.push(APIResource {
                name: format!("{}/scale", rt.plural),
                namespaced: rt.namespaced,
                kind: "Scale".to_owned(),
                group: Some("autoscaling".to_owned()),
                version: Some("v1".to_owned()),
                verbs: strings(&["get", "patch", "update"]),
                ..Default::default()
            });
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(APIResourceList { group_version, resources })
}

pub fn core_versions(server_address: &str) -> APIVersions {
    APIVersions {
        versions: vec!["v1".to_owned()],
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".to_owned(),
            server_address: server_address.to_owned(),
        }],
    }
}

fn named_groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = RESOURCE_TYPES.iter().filter(|r| !r.group.is_empty()).map(|r| (r.group, r.version)).collect();
    groups.dedup();
    groups
}

pub fn group(name: &str) -> Option<APIGroup> {
    named_groups().into_iter().find(|(g, _)| *g == name).map(|(g, v)| {
        let gv = GroupVersionForDiscovery { group_version: format!("{g}/{v}"), version: v.to_owned() };
        APIGroup { name: g.to_owned(), versions: vec![gv.clone()], preferred_version: Some(gv), server_address_by_client_cidrs: None }
    })
}

pub fn group_list() -> APIGroupList {
    APIGroupList { groups: named_groups().into_iter().filter_map(|(g, _)| group(g)).collect() }
}

/// Whether an Accept header asks for a meta.k8s.io Table (as `kubectl get` does).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| media.contains("as=Table"))
}

fn age(object: &Value, now: DateTime<Utc>) -> String {
    let Some(created) = object["metadata"]["creationTimestamp"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".to_owned();
    };
    let seconds = (now - created.with_timezone(&Utc)).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn condition_status<'a>(object: &'a Value, kind: &str) -> Option<&'a str> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)?["status"].as_str()
}

fn columns(rt: &ResourceType) -> Vec<(&'static str, &'static str)> {
    match rt.plural {
        "nodes" => vec![("Name", "string"), ("Status", "string"), ("Roles", "string"), ("Age", "string"), ("Version", "string")],
        "pods" => vec![("Name", "string"), ("Ready", "string"), ("Status", "string"), ("Restarts", "string"), ("Age", "string")],
        "deployments" => vec![("Name", "string"), ("Ready", "string"), ("Up-to-date", "string"), ("Available", "string"), ("Age", "string")],
        "daemonsets" => vec![("Name", "string"), ("Desired", "integer"), ("Current", "integer"), ("Ready", "integer"), ("Up-to-date", "integer"), ("Available", "integer"), ("Age", "string")],
        "secrets" => vec![("Name", "string"), ("Type", "string"), ("Data", "string"), ("Age", "string")],
        "namespaces" => vec![("Name", "string"), ("Status", "string"), ("Age", "string")],
        "serviceaccounts" => vec![("Name", "string"), ("Secrets", "string"), ("Age", "string")],
        _ => vec![("Name", "string"), ("Age", "string")],
    }
}

fn cells(rt: &ResourceType, o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(o["metadata"]["name"].as_str().unwrap_or_default());
    let age = json!(age(o, now));
    let int = |v: &Value| json!(v.as_i64().unwrap_or(0));
    match rt.plural {
        "nodes" => {
            let status = match condition_status(o, "Ready") {
                Some("True") => "Ready",
                _ => "NotReady",
            };
            let mut roles: Vec<&str> = o["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
                .unwrap_or_default();
            if roles.is_empty() {
                if let Some(role) = o["metadata"]["labels"]["kubernetes.io/role"].as_str() {
                    roles.push(role);
                }
            }
            let roles = if roles.is_empty() { "<none>".to_owned() } else { roles.join(",") };
            vec![name, json!(status), json!(roles), age, json!(o["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or(""))]
        }
        "pods" => {
            let statuses = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|s| s["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|s| s["restartCount"].as_i64().unwrap_or(0)).sum();
            vec![name, json!(format!("{ready}/{total}")), json!(o["status"]["phase"].as_str().unwrap_or("Pending")), json!(restarts.to_string()), age]
        }
        "deployments" => {
            let s = &o["status"];
            let ready = format!("{}/{}", s["readyReplicas"].as_i64().unwrap_or(0), o["spec"]["replicas"].as_i64().unwrap_or(1));
            vec![name, json!(ready), int(&s["updatedReplicas"]), int(&s["availableReplicas"]), age]
        }
        "daemonsets" => {
            let s = &o["status"];
            vec![name, int(&s["desiredNumberScheduled"]), int(&s["currentNumberScheduled"]), int(&s["numberReady"]), int(&s["updatedNumberScheduled"]), int(&s["numberAvailable"]), age]
        }
        "secrets" => {
            let data = o["data"].as_object().map_or(0, |d| d.len());
            vec![name, json!(o["type"].as_str().unwrap_or("Opaque")), json!(data.to_string()), age]
        }
        "namespaces" => vec![name, json!(o["status"]["phase"].as_str().unwrap_or("Active")), age],
        "serviceaccounts" => vec![name, json!(o["secrets"].as_array().map_or(0, Vec::len).to_string()), age],
        _ => vec![name, age],
    }
}

/// A meta.k8s.io/v1 Table of objects; `include_object` is the request's includeObject
/// (Metadata by default, as kubectl asks).
pub fn table(rt: &ResourceType, objects: &[Value], resource_version: Option<&str>, include_object: &str) -> Value {
    let now = Utc::now();
    let column_definitions: Vec<Value> = columns(rt)
        .into_iter()
        .map(|(name, kind)| {
            json!({
                "name": name,
                "type": kind,
                "format": if name == "Name" { "name" } else { "" },
                "description": "",
                "priority": 0
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": cells(rt, o, now) });
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"].clone(),
                    })
                }
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}
