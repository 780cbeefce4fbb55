//! The checks that relate several fields of a profile (validities against each other and
//! against renewBefore, CA policies against scope, the key algorithm against where AKS Engine
//! keeps keys, gate intervals against timeouts). Each error points at the setting to change.

use super::{CaPolicy, CertId, GateKind, KeyAlgorithm, MasterStrategy, Profile, Scope};
use crate::diag::yaml::point_at_first_present;
use crate::diag::{InputError, SourceFile};

impl Profile {
    /// Checks that relate several fields; each error points at the field to change.
    pub(super) fn check(&self, source: &SourceFile) -> Result<(), InputError> {
        let at = |paths: &[&[&str]], message: String, help: String| -> InputError {
            point_at_first_present(source, paths, message, help)
        };

        if self.validity.leaf > self.validity.ca {
            return Err(at(
                &[&["validity", "leaf"], &["validity", "ca"]],
                format!(
                    "leaf validity {} is longer than the CA validity {}: leaves would outlive the CA that signs them",
                    self.validity.leaf, self.validity.ca
                ),
                "shorten validity.leaf or lengthen validity.ca".into(),
            ));
        }
        if self.validity.front_proxy_client > self.validity.front_proxy_ca {
            return Err(at(
                &[&["validity", "frontProxyClient"], &["validity", "frontProxyCa"]],
                format!(
                    "front-proxy client validity {} is longer than the front-proxy CA validity {}",
                    self.validity.front_proxy_client, self.validity.front_proxy_ca
                ),
                "shorten validity.frontProxyClient or lengthen validity.frontProxyCa".into(),
            ));
        }

        let leaf_validities = [
            ("validity.leaf", "leaf", self.validity.leaf, true),
            ("validity.frontProxyClient", "frontProxyClient", self.validity.front_proxy_client, self.in_scope(CertId::Proxy)),
        ];
        for (setting, key, validity, relevant) in leaf_validities {
            if relevant && self.renew_before >= validity {
                return Err(at(
                    &[&["renewBefore"], &["validity", key]],
                    format!(
                        "renewBefore {} is not shorter than {setting} {validity}: every new certificate would be due for renewal the moment it is issued",
                        self.renew_before
                    ),
                    format!("make renewBefore shorter than {setting} (e.g. a few months against years)"),
                ));
            }
        }

        let ca_policies = [
            (CertId::Ca, &self.ca, &["ca"][..], self.validity.ca, "validity.ca"),
            (CertId::ProxyCa, &self.front_proxy.ca, &["frontProxy", "ca"][..], self.validity.front_proxy_ca, "validity.frontProxyCa"),
        ];
        for (ca, policy, path, validity, validity_setting) in ca_policies {
            let within_path: Vec<&str> = path.iter().copied().chain(["within"]).collect();
            let policy_path: Vec<&str> = path.iter().copied().chain(["policy"]).collect();
            if let CaPolicy::RotateWhenExpiring { within } = policy {
                if *within >= validity {
                    return Err(at(
                        &[&within_path],
                        format!(
                            "the {ca} policy rotates within {within} of expiry, but a new {ca} is only valid for {validity}: it would be replaced on every run"
                        ),
                        format!("make `within` shorter than {validity_setting}"),
                    ));
                }
            }
            if policy.may_rotate() && !self.in_scope(ca) {
                return Err(at(
                    &[&policy_path, &["scope"]],
                    format!("the {ca} policy may replace `{ca}`, but `{ca}` is not in scope"),
                    format!("add `{ca}` to scope, or set the policy to `keep`"),
                ));
            }
            if policy.may_rotate() {
                let missing: Vec<&str> = CertId::ALL
                    .into_iter()
                    .filter(|id| id.signed_by() == Some(ca) && !self.in_scope(*id))
                    .map(CertId::as_str)
                    .collect();
                if !missing.is_empty() {
                    let (paths, help): (Vec<&[&str]>, String) = if ca == CertId::ProxyCa && missing == ["proxy"] && !self.front_proxy.client {
                        (vec![&["frontProxy", "client"][..]], "set frontProxy.client to true, or the front-proxy CA policy to `keep`".into())
                    } else {
                        (vec![&["scope"][..], &policy_path[..]], format!("add {} to scope, or set the {ca} policy to `keep`", missing.join(", ")))
                    };
                    return Err(at(
                        &paths,
                        format!(
                            "replacing `{ca}` invalidates every certificate it signs, but {} would be left signed by the old CA",
                            missing.join(", ")
                        ),
                        help,
                    ));
                }
            }
        }

        if let Scope::Only(ids) = &self.scope {
            if ids.contains(&CertId::Proxy) && !self.front_proxy.client {
                return Err(at(
                    &[&["frontProxy", "client"]],
                    "scope lists `proxy`, but frontProxy.client is false, which takes it out of scope".into(),
                    "remove `proxy` from scope, or set frontProxy.client to true".into(),
                ));
            }
        }

        if self.key.algorithm == KeyAlgorithm::EcdsaP256 {
            let held: Vec<&str> = self
                .certificates_in_scope()
                .into_iter()
                .filter(|id| id.kept_in_apimodel())
                .map(CertId::as_str)
                .collect();
            if !held.is_empty() {
                return Err(at(
                    &[&["key", "algorithm"]],
                    format!(
                        "ecdsa-p256 keys cannot be used for {}: AKS Engine keeps them in apimodel.json and can only read RSA keys there, so `aks-engine upgrade` and `scale` would fail afterwards",
                        held.join(", ")
                    ),
                    "use `algorithm: rsa`, or limit scope to certificates kept outside the API model: proxy-ca, proxy, kubeletserver".into(),
                ));
            }
        }

        if self.ca == CaPolicy::Always && self.masters.strategy == MasterStrategy::Rolling {
            return Err(at(
                &[&["masters", "strategy"], &["ca", "policy"]],
                "a new cluster CA cannot be rolled out one master at a time: masters trusting different CAs cannot talk to each other or to etcd".into(),
                "set masters.strategy to `all-at-once` (the API is down while masters restart), or keep the CA with `ca: {policy: keep}`".into(),
            ));
        }

        for gate in GateKind::ALL {
            let timing = self.gates.timing(gate);
            if timing.interval >= timing.timeout {
                let over = self.gates.override_for(gate);
                let paths: Vec<Vec<&str>> = match (over.interval.is_some(), over.timeout.is_some()) {
                    (true, _) => vec![vec!["gates", gate.as_str(), "interval"]],
                    (false, true) => vec![vec!["gates", gate.as_str(), "timeout"]],
                    (false, false) => vec![vec!["gates", "interval"], vec!["gates", "timeout"]],
                };
                let paths: Vec<&[&str]> = paths.iter().map(Vec::as_slice).collect();
                return Err(at(
                    &paths,
                    format!(
                        "gate {} checks every {} but gives up after {}: it would check at most once",
                        gate.as_str(),
                        timing.interval,
                        timing.timeout
                    ),
                    "make the interval shorter than the timeout".into(),
                ));
            }
        }
        Ok(())
    }
}
