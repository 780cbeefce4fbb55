//! Staleness: before changing anything, apply reads the cluster again and compares it with what
//! the plan observed. Anything that differs, other than material this plan itself already
//! installed (a resumed run), makes the plan stale; apply lists each difference (node, file,
//! fingerprint in the plan, fingerprint now) and stops.

use crate::plan::file::{ObservedItem, Observed, Sha256Digest};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleItem {
    /// A node name, or `etcd`.
    pub node: String,
    pub path: String,
    pub planned: String,
    pub now: String,
}

impl std::fmt::Display for StaleItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {} in the plan, {} now", self.node, self.path, self.planned, self.now)
    }
}

fn describe(item: Option<&ObservedItem>) -> String {
    match item {
        None => "not read".into(),
        Some(ObservedItem::Content { digest }) => short(digest),
        Some(ObservedItem::PrivateKey { public_key_fingerprint }) => format!("key {}", short(public_key_fingerprint)),
        Some(ObservedItem::Missing {}) => "missing".into(),
        Some(ObservedItem::Unreadable { reason }) => format!("unreadable ({reason})"),
    }
}

fn short(d: &Sha256Digest) -> String {
    format!("sha256:{}", &d.hex()[..16])
}

/// What this plan puts where: (node or `etcd`, path or key) → the item refresh would observe.
pub type Applied = BTreeMap<(String, String), ObservedItem>;

/// Differences between the plan's observations and the live ones, ignoring files that already
/// hold what this plan installs.
pub fn stale_items(planned: &Observed, live: &Observed, applied: &Applied) -> Vec<StaleItem> {
    let mut out = Vec::new();
    let mut compare = |node: &str, path: &str, p: Option<&ObservedItem>, l: Option<&ObservedItem>| {
        if p == l {
            return;
        }
        if l.is_some() && applied.get(&(node.to_string(), path.to_string())) == l {
            return;
        }
        out.push(StaleItem { node: node.into(), path: path.into(), planned: describe(p), now: describe(l) });
    };
    for pn in &planned.nodes {
        let ln = live.nodes.iter().find(|n| n.node == pn.node);
        let mut paths: Vec<&String> = pn.files.keys().collect();
        if let Some(ln) = ln {
            paths.extend(ln.files.keys());
        }
        paths.sort();
        paths.dedup();
        for path in paths {
            compare(&pn.node, path, pn.files.get(path), ln.and_then(|n| n.files.get(path)));
        }
    }
    let mut keys: Vec<&String> = planned.etcd.keys().chain(live.etcd.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        compare("etcd", k, planned.etcd.get(k), live.etcd.get(k));
    }
    for ln in &live.nodes {
        if !planned.nodes.iter().any(|p| p.node == ln.node) {
            out.push(StaleItem { node: ln.node.clone(), path: "(node)".into(), planned: "not in the plan".into(), now: "present".into() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::file::{NodeRole, ObservedNode};

    fn obs(files: &[(&str, &str)]) -> Observed {
        Observed {
            nodes: vec![ObservedNode {
                node: "m0".into(),
                role: NodeRole::Master,
                files: files.iter().map(|(p, c)| (p.to_string(), ObservedItem::Content { digest: Sha256Digest::of_bytes(c.as_bytes()) })).collect(),
            }],
            etcd: BTreeMap::new(),
        }
    }

    #[test]
    fn a_file_changed_behind_the_plans_back_is_named_with_both_fingerprints() {
        let planned = obs(&[("/c/ca.crt", "a"), ("/c/apiserver.crt", "b")]);
        let live = obs(&[("/c/ca.crt", "a"), ("/c/apiserver.crt", "changed")]);
        let items = stale_items(&planned, &live, &Applied::new());
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].path, "/c/apiserver.crt");
        assert_eq!(items[0].planned, short(&Sha256Digest::of_bytes(b"b")));
        assert_eq!(items[0].now, short(&Sha256Digest::of_bytes(b"changed")));
    }

    #[test]
    fn material_this_plan_installed_is_not_stale() {
        let planned = obs(&[("/c/apiserver.crt", "b")]);
        let live = obs(&[("/c/apiserver.crt", "new")]);
        let mut applied = Applied::new();
        applied.insert(("m0".into(), "/c/apiserver.crt".into()), ObservedItem::Content { digest: Sha256Digest::of_bytes(b"new") });
        assert!(stale_items(&planned, &live, &applied).is_empty());
        assert_eq!(stale_items(&planned, &obs(&[("/c/apiserver.crt", "other")]), &applied).len(), 1);
    }
}
