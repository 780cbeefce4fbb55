//! The patch formats clients send: JSON merge patch (RFC 7386), Kubernetes strategic merge
//! patch (what `kubectl rollout restart` and `kubectl patch` send by default), JSON patch
//! (RFC 6902) and server-side apply bodies (treated as a merge of the given fields).
//!
//! Strategic merge differs from merge patch only for lists and `$`-directives. Without the
//! OpenAPI schema, lists of objects are merged by the first merge key every patch element
//! carries (`name`, `type`, `containerPort`, ...), which is the key Kubernetes uses for the
//! lists these workloads have (containers, env, volumes, conditions, ports).

use crate::kube::error::ApiError;
use serde_json::{Map, Value};

/// The patch type named by a PATCH request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies `patch` to `target` in place.
pub fn apply(target: &mut Value, patch: &Value, kind: PatchType) -> Result<(), ApiError> {
    match kind {
        PatchType::Merge => {
            merge(target, patch);
            Ok(())
        }
        PatchType::Strategic | PatchType::Apply => {
            strategic(target, patch);
            Ok(())
        }
        PatchType::Json => json_patch(target, patch),
    }
}

/// RFC 7386.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

const MERGE_KEYS: &[&str] = &["name", "type", "containerPort", "mountPath", "devicePath", "ip", "topologyKey"];

fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.as_object_mut().expect("object").remove("$patch");
        *target = replacement;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        // Ordering hints and retain-keys lists only steer list order and field pruning.
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target_map.get_mut(field), value) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Array(items) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                merge_list(slot, items);
            }
            _ => strategic(target_map.entry(key.clone()).or_insert(Value::Null), value),
        }
    }
}

fn merge_list(target: &mut Value, items: &[Value]) {
    let merge_key = MERGE_KEYS.iter().find(|key| {
        !items.is_empty() && items.iter().all(|item| item.get(**key).is_some_and(|k| !k.is_null()))
    });
    let (Some(merge_key), Value::Array(existing)) = (merge_key, &mut *target) else {
        *target = Value::Array(items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect());
        return;
    };
    for item in items {
        let key_value = &item[*merge_key];
        let position = existing.iter().position(|e| &e[*merge_key] == key_value);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (Some(i), false) => strategic(&mut existing[i], item),
            (None, false) => existing.push(item.clone()),
            (None, true) => {}
        }
    }
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ApiError::bad_request(format!("JSON patch path {path:?} must start with /")))?;
    Ok(rest.split('/').map(|p| p.replace("~1", "/").replace("~0", "~")).collect())
}

fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch.as_array().ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    for op in ops {
        let name = op["op"].as_str().unwrap_or("");
        let path = op["path"].as_str().ok_or_else(|| ApiError::bad_request("JSON patch operation without a path"))?;
        match name {
            "add" | "replace" => set_pointer(target, path, op["value"].clone(), name == "add")?,
            "remove" => remove_pointer(target, path)?,
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(ApiError::invalid("", "", "", format!("JSON patch test failed at {path}")));
                }
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or_else(|| ApiError::bad_request(format!("JSON patch {name} without from")))?;
                let value = target.pointer(from).cloned().ok_or_else(|| ApiError::invalid("", "", "", format!("JSON patch: nothing at {from}")))?;
                if name == "move" {
                    remove_pointer(target, from)?;
                }
                set_pointer(target, path, value, true)?;
            }
            other => return Err(ApiError::bad_request(format!("unknown JSON patch operation {other:?}"))),
        }
    }
    Ok(())
}

fn set_pointer(target: &mut Value, path: &str, value: Value, insert: bool) -> Result<(), ApiError> {
    let mut parts = pointer_parts(path)?;
    let Some(last) = parts.pop() else {
        *target = value;
        return Ok(());
    };
    let parent_path: String = parts.iter().map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1"))).collect();
    let parent = target
        .pointer_mut(&parent_path)
        .ok_or_else(|| ApiError::invalid("", "", "", format!("JSON patch: no parent for {path}")))?;
    match parent {
        Value::Object(map) => {
            if !insert && !map.contains_key(&last) {
                return Err(ApiError::invalid("", "", "", format!("JSON patch replace: nothing at {path}")));
            }
            map.insert(last, value);
        }
        Value::Array(list) => {
            let index = if last == "-" { list.len() } else { last.parse().map_err(|_| ApiError::bad_request(format!("JSON patch: bad index in {path}")))? };
            if insert && index <= list.len() {
                list.insert(index, value);
            } else if !insert && index < list.len() {
                list[index] = value;
            } else {
                return Err(ApiError::invalid("", "", "", format!("JSON patch: index out of range in {path}")));
            }
        }
        _ => return Err(ApiError::invalid("", "", "", format!("JSON patch: parent of {path} is not a container"))),
    }
    Ok(())
}

fn remove_pointer(target: &mut Value, path: &str) -> Result<(), ApiError> {
    let mut parts = pointer_parts(path)?;
    let last = parts.pop().ok_or_else(|| ApiError::bad_request("JSON patch cannot remove the whole object"))?;
    let parent_path: String = parts.iter().map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1"))).collect();
    let removed = match target.pointer_mut(&parent_path) {
        Some(Value::Object(map)) => map.remove(&last).is_some(),
        Some(Value::Array(list)) => match last.parse::<usize>() {
            Ok(i) if i < list.len() => {
                list.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    };
    if removed { Ok(()) } else { Err(ApiError::invalid("", "", "", format!("JSON patch remove: nothing at {path}"))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rollout_restart_patch_sets_the_template_annotation() {
        let mut deployment = json!({"spec": {"replicas": 1, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}});
        apply(&mut deployment, &patch, PatchType::Strategic).unwrap();
        assert_eq!(deployment["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"], "2026-01-01T00:00:00Z");
        assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["a"], "b");
        assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], "i");
    }

    #[test]
    fn strategic_lists_merge_by_key_and_merge_patch_replaces_them() {
        let base = json!({"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]});
        let patch = json!({"containers": [{"name": "b", "image": "3"}]});
        let mut strategic_result = base.clone();
        apply(&mut strategic_result, &patch, PatchType::Strategic).unwrap();
        assert_eq!(strategic_result["containers"].as_array().unwrap().len(), 2);
        assert_eq!(strategic_result["containers"][1]["image"], "3");
        let mut merged = base.clone();
        apply(&mut merged, &patch, PatchType::Merge).unwrap();
        assert_eq!(merged, patch);
    }

    #[test]
    fn json_patch_operations() {
        let mut object = json!({"spec": {"replicas": 1}, "list": [1, 2]});
        let ops = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 0},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "remove", "path": "/list/0"},
            {"op": "test", "path": "/spec/replicas", "value": 0}
        ]);
        apply(&mut object, &ops, PatchType::Json).unwrap();
        assert_eq!(object, json!({"spec": {"replicas": 0}, "list": [2, 3]}));
        assert!(apply(&mut object, &json!([{"op": "test", "path": "/spec/replicas", "value": 5}]), PatchType::Json).is_err());
    }
}
