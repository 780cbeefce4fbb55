//! Plans: the diff of live state against the profile, the graph of actions and gates that
//! carries it out (its steps typed in `step`), their renderings, and the saved-plan file
//! format.

pub mod diff;
pub mod file;
pub mod graph;
pub mod render;
pub mod review;
pub mod rollback;
pub mod step;
