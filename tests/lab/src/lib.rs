//! The lab: a local AKS Engine-like cluster for certrotate's tests and demos.
//! Each node is a host of its own (network, mount and UTS namespaces) running real sshd,
//! real etcd on masters, and stand-ins for what cannot run here (kube-apiserver, kubelet,
//! Azure Resource Manager) that speak the real wire formats.
//!
//! Start with [`handle::Lab::up`] (or `lab up`); [`spec`] names the nodes and addresses,
//! [`supervisor`] runs them, [`control`] is how anything talks to a running lab.

pub mod arm;
pub mod armhost;
pub mod cleanup;
pub mod control;
pub mod error;
pub mod fsutil;
pub mod handle;
pub mod kube;
pub mod lb;
pub mod net;
pub mod nodefiles;
pub mod nsexec;
pub mod outputs;
pub mod pki;
pub mod service;
pub mod spec;
pub mod supervisor;

pub use handle::{Lab, UpOptions};
pub use spec::{Expiry, LabSpec};
