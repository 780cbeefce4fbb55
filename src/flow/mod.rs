//! certrotate's one flow, stage by stage: discover (the API model and the topology it
//! implies, loaded and derived once), read (the live state of every node, and agents only the
//! Kubernetes API knows), plan (diff, graph, seal; and before apply, the re-check that the
//! plan still matches the cluster). The command line turns arguments into these stages'
//! inputs and their results into output; `apply` walks what they produce.

pub mod discover;
pub mod evidence;
pub mod expiry;
pub mod fleet;
pub mod planner;
pub mod read;
pub mod supplied;
