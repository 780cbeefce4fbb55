//! Executes a saved plan: walks the action graph in dependency order through its gates,
//! journals every finished step so a rerun resumes, holds a cluster-wide lock, and can roll
//! a cluster back to the certificates it backed up.

pub mod connections;
pub mod executor;
pub mod gates;
pub mod journal;
pub mod lock;
pub mod node;
pub mod preflight;
pub mod prober;
pub mod progress;
pub mod run_store;
pub mod restore;
pub mod rollback;
pub mod stale;
pub mod store;
pub mod walker;
pub mod windows;
pub mod winexec;
