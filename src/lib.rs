//! certrotate: plan-and-apply certificate rotation for AKS Engine clusters.
//!
//! The flow runs one way: the API model and a desired profile are read (`model`), the live
//! certificates of every node are refreshed over SSH (`remote`), diffed against the profile
//! and turned into a graph of actions and gates (`plan`), which `apply` walks. `pki` knows
//! every certificate an AKS Engine cluster carries; `cloud` talks to Azure and Kubernetes.
//! Only `remote`, `cloud` and `apply` do I/O against a cluster; the rest is plain data.

pub mod apply;
pub mod cli;
pub mod cloud;
pub mod diag;
pub mod flow;
pub mod digest;
pub mod interrupt;
pub mod model;
pub mod pki;
pub mod plan;
pub mod remote;
