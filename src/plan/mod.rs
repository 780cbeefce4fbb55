//! Plans: the saved-plan file format; diff, graph and rendering come with the plan issue.

pub mod file;
