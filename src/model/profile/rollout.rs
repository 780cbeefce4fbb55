//! How fast apply may go: the order in which masters change and how many agents change
//! at the same time.

use super::de::deserialize_from_integer;
use crate::diag::yaml::with_help;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// How masters are changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MasterRollout {
    /// `rolling` (default): one master at a time, gated, so etcd keeps quorum and the API
    /// stays up when the CA is kept. `all-at-once`: every master together, as
    /// `aks-engine rotate-certs` does. A new cluster CA can only go to all masters together
    /// (masters trusting different CAs cannot reach each other or etcd), so `ca: always`
    /// requires `all-at-once`, and a run in which `rotateWhenExpiring` replaces the CA
    /// changes masters all at once whatever this says; the plan states it.
    #[serde(default)]
    pub strategy: MasterStrategy,
}

/// Order in which masters are changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MasterStrategy {
    #[default]
    Rolling,
    AllAtOnce,
}

/// How agents are changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentRollout {
    /// How many agents are changed at the same time (at least 1). Default 1.
    #[serde(default)]
    pub parallelism: Parallelism,
}

/// A number of nodes changed at the same time; at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "u32")]
pub struct Parallelism(u32);

impl Parallelism {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Parallelism {
    fn default() -> Self {
        Self(1)
    }
}

impl TryFrom<i64> for Parallelism {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, Self::Error> {
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(Self(n)),
            _ => Err(with_help(
                format!("parallelism {n} would change no agent at all"),
                "use 1 to change agents one at a time, or a larger number to change that many together",
            )),
        }
    }
}

impl From<Parallelism> for u32 {
    fn from(p: Parallelism) -> u32 {
        p.0
    }
}

impl JsonSchema for Parallelism {
    fn schema_name() -> Cow<'static, str> {
        "Parallelism".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How many nodes are changed at the same time.",
            "type": "integer",
            "minimum": 1,
            "maximum": u32::MAX
        })
    }
}

deserialize_from_integer!(Parallelism, "a whole number of nodes, at least 1");
