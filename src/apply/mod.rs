//! Executes a saved plan: walks the action graph in dependency order through its gates.
//! Not built yet (issue: apply); the CLI says so when asked.

pub mod progress;
pub mod windows;
