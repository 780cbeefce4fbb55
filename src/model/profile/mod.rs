//! The desired state of a rotation: a profile says which certificates are in scope, when a
//! certificate is due (renew-before threshold, CA policies), what new material looks like
//! (validities, key algorithm and size, extra SANs) and how fast apply may go (master strategy,
//! agent parallelism, gate timeouts). Profiles are YAML files; three are shipped in `plans/`
//! and embedded in the binary so `--profile rotate-all` works without a file.
//!
//! Value checks live in the newtypes (`Duration`, `RsaKeySize`, `Parallelism`, `SanDnsName`,
//! `SanIp`, `Scope`) so serde_yaml reports the line of the bad value; checks that relate two
//! fields run after parsing (`check`) and point at the field with
//! `diag::yaml::locate_yaml_path`.
//!
//! This module holds the profile itself and its loading; each part of it has its own file:
//! `duration` (time spans), `policy` (validity, keys, CA and leaf policies), `scope`
//! (certificate ids and scope), `sans` (extra SANs), `rollout` (masters and agents), `gates`
//! (gate timings), `de` (the deserializers that keep serde_yaml's line numbers) and `check`
//! (the cross-field checks). Their types are re-exported here: `model::profile::X` is the
//! path to use.

mod check;
mod de;
mod duration;
mod gates;
mod policy;
mod rollout;
mod sans;
mod scope;

pub use duration::Duration;
pub use gates::{GateKind, GateOverride, GateTiming, Gates};
pub use policy::{CaPolicy, FrontProxyPolicy, KeyAlgorithm, KeyPolicy, LeafPolicy, RsaKeySize, Validity, AKS_ENGINE_FRONT_PROXY_DAYS};
pub use rollout::{AgentRollout, MasterRollout, MasterStrategy, Parallelism};
pub use sans::{ExtraSans, SanDnsName, SanIp};
pub use scope::{CertId, Scope};

use crate::diag::yaml::diagnostic_from_yaml;
use crate::diag::{InputError, SourceFile};
use crate::digest::Sha256Digest;
use crate::pki::KeySpec;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Profiles shipped with certrotate, by name, with their YAML text.
pub const SHIPPED_PROFILES: &[(&str, &str)] = &[
    ("rotate-all", include_str!("../../../plans/rotate-all.yaml")),
    ("renew-expiring", include_str!("../../../plans/renew-expiring.yaml")),
    ("rotate-ca", include_str!("../../../plans/rotate-ca.yaml")),
];

/// The desired state of a certificate rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "certrotate profile")]
pub struct Profile {
    /// Short name shown in plans. Defaults to the file name without its extension.
    #[serde(default)]
    pub name: String,
    /// What this profile is for, in a sentence or two, for the reviewer of a plan.
    #[serde(default)]
    pub description: String,
    /// A leaf certificate expiring within this duration is reissued. Default `90d`.
    #[serde(default = "defaults::renew_before")]
    pub renew_before: Duration,
    /// Validity of newly issued certificates.
    #[serde(default)]
    pub validity: Validity,
    /// Key algorithm and sizes of newly issued key pairs.
    #[serde(default)]
    pub key: KeyPolicy,
    /// When the cluster CA (`CN=ca`) is replaced. Default `{policy: keep}`.
    #[serde(default)]
    pub ca: CaPolicy,
    /// Whether leaves in scope are reissued only when due (default) or always.
    #[serde(default)]
    pub leaves: LeafPolicy,
    /// When the front-proxy CA is replaced and whether its client certificate is in scope.
    #[serde(default)]
    pub front_proxy: FrontProxyPolicy,
    /// Which certificates certrotate manages: `all` (default) or a list of catalogue ids.
    #[serde(default)]
    pub scope: Scope,
    /// Extra subject alternative names added to the apiserver certificate.
    #[serde(default)]
    pub extra_sans: ExtraSans,
    /// How masters are changed.
    #[serde(default)]
    pub masters: MasterRollout,
    /// How agents are changed.
    #[serde(default)]
    pub agents: AgentRollout,
    /// How long apply waits at each validation gate, and how often it looks.
    #[serde(default)]
    pub gates: Gates,
    /// Who must approve an apply of this profile's plans.
    #[serde(default)]
    pub approval: ApprovalPolicy,
}

/// Approval of an apply, recorded in the run's journal with the plan digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// Every apply names its approver with `--approved-by NAME` (for production clusters
    /// under change management); without it apply refuses before contacting the cluster.
    /// Default false: the approver is whoever answered `yes`, or ran `apply PLAN`.
    #[serde(default)]
    pub required: bool,
}

mod defaults {
    use super::Duration;

    pub fn renew_before() -> Duration {
        Duration::days(90)
    }
}

impl Profile {
    /// Loads a shipped profile by name (`rotate-all`, `renew-expiring`, `rotate-ca`) or a
    /// profile file by path. A path that names an existing file wins over a shipped name.
    pub fn load(name_or_path: &str) -> Result<Profile, InputError> {
        let path = Path::new(name_or_path);
        if path.is_file() {
            return Self::from_source(&SourceFile::read(path, "profile")?);
        }
        if let Some(source) = Self::shipped_source(name_or_path) {
            return Self::from_source(&source);
        }
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.ends_with(".yaml")
            || name_or_path.ends_with(".yml");
        if looks_like_path {
            // Reading reports the operating system's reason (missing, permission denied).
            let source = SourceFile::read(path, "profile")?;
            return Self::from_source(&source);
        }
        Err(InputError::plain(
            path,
            format!("`{name_or_path}` is neither a shipped profile nor a profile file"),
            format!(
                "use one of the shipped profiles ({}) or the path of a profile YAML file",
                Self::shipped_names().collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// Names of the profiles built into certrotate.
    pub fn shipped_names() -> impl Iterator<Item = &'static str> {
        SHIPPED_PROFILES.iter().map(|(name, _)| *name)
    }

    /// The text of a shipped profile, labelled with its path in the source tree.
    pub fn shipped_source(name: &str) -> Option<SourceFile> {
        SHIPPED_PROFILES
            .iter()
            .find(|(shipped, _)| *shipped == name)
            .map(|(shipped, text)| SourceFile::from_text(format!("plans/{shipped}.yaml"), *text))
    }

    /// Parses and checks a profile. The name defaults to the file stem.
    pub fn from_source(source: &SourceFile) -> Result<Profile, InputError> {
        let only_comments = source.text.lines().all(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with('#') || line == "---"
        });
        if only_comments {
            return Err(source.error_at(
                0..0,
                "the profile is empty",
                "write at least `name:` and the settings that differ from the defaults, or use a shipped profile (rotate-all, renew-expiring, rotate-ca)",
            ));
        }
        let mut profile: Profile = serde_yaml::from_str(&source.text).map_err(|err| diagnostic_from_yaml(source, &err))?;
        if profile.name.trim().is_empty() {
            profile.name = source
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "profile".to_string());
        }
        profile.check(source)?;
        Ok(profile)
    }

    /// Whether certrotate manages `id` under this profile.
    pub fn in_scope(&self, id: CertId) -> bool {
        if id == CertId::Proxy && !self.front_proxy.client {
            return false;
        }
        self.scope.contains(id)
    }

    /// The managed certificates, in catalogue order.
    pub fn certificates_in_scope(&self) -> Vec<CertId> {
        CertId::ALL.into_iter().filter(|id| self.in_scope(*id)).collect()
    }

    /// The policy that governs `ca` (for the cluster CA) or `proxy-ca`; `None` for leaves.
    pub fn ca_policy_for(&self, id: CertId) -> Option<&CaPolicy> {
        match id {
            CertId::Ca => Some(&self.ca),
            CertId::ProxyCa => Some(&self.front_proxy.ca),
            _ => None,
        }
    }

    /// Validity of a newly issued certificate of kind `id`.
    pub fn validity_for(&self, id: CertId) -> Duration {
        match id {
            CertId::Ca => self.validity.ca,
            CertId::ProxyCa => self.validity.front_proxy_ca,
            CertId::Proxy => self.validity.front_proxy_client,
            _ => self.validity.leaf,
        }
    }

    /// The key to issue for a certificate of kind `id`.
    pub fn key_for(&self, id: CertId) -> KeySpec {
        match (id, self.front_proxy.key_size) {
            (CertId::ProxyCa | CertId::Proxy, Some(size)) => self.key.with_size(size),
            (CertId::Ca | CertId::ProxyCa, _) => self.key.ca_key(),
            _ => self.key.leaf_key(),
        }
    }

    /// sha256 of the profile's canonical JSON (sorted keys, no whitespace): two profiles
    /// that mean the same thing have the same digest whatever their YAML looked like.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of_canonical_json(self)
    }

    /// The JSON Schema of profile files.
    pub fn json_schema_document() -> Schema {
        schemars::schema_for!(Profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_resolution_honours_front_proxy_client() {
        let mut p: Profile = serde_yaml::from_str("name: x\n").unwrap();
        assert!(p.in_scope(CertId::Proxy));
        p.front_proxy.client = false;
        assert!(!p.in_scope(CertId::Proxy));
        assert_eq!(p.certificates_in_scope().len(), 9);
    }

    /// Inputs of the profile fuzz target (fuzz/corpus/profile/): they loaded, and apply would
    /// then have panicked adding the span to the clock. Now refused where they are written.
    #[test]
    fn spans_apply_cannot_use_are_refused_at_the_setting() {
        let cases = [
            (include_str!("../../../fuzz/corpus/profile/unusable-validity-9000y.yaml"), "9000y"),
            (include_str!("../../../fuzz/corpus/profile/unusable-gate-timeout-500000000000y.yaml"), "500000000000y"),
        ];
        for (yaml, value) in cases {
            let e = Profile::from_source(&SourceFile::from_text("p.yaml", yaml)).expect_err(value);
            assert!(e.message.contains("too large"), "{}", e.message);
            let (span, shown) = (e.span.expect("points at the value"), e.src.as_ref().unwrap().inner());
            assert!(shown[span.offset()..].starts_with(value), "marks {:?}", &shown[span.offset()..]);
        }
        let longest: Profile = serde_yaml::from_str("name: x\nvalidity:\n  ca: 1000y\n  leaf: 1000y\n").unwrap();
        assert!(time::OffsetDateTime::now_utc().checked_add(longest.validity_for(CertId::Ca).as_time()).is_some());
    }
}
