//! Kubernetes stand-ins for the lab: the API server each master runs on 443 (backed by the
//! cluster's real etcd, with the controllers kube-controller-manager would run) and the
//! kubelet each node runs. Both speak the real wire format, so kubectl and kube-rs work
//! against them, and both read their certificates from the node's disk, so rotating those
//! files has the effects it has on a real AKS Engine cluster.

pub mod apiserver;
pub mod controller;
pub mod credentials;
pub mod discovery;
pub mod error;
pub mod etcd;
pub mod kubelet;
pub mod patch;
pub mod select;
pub mod store;
pub mod token;

pub use apiserver::{ApiserverConfig, ApiserverError, ConfigFileError};
pub use controller::ControllerConfig;
pub use kubelet::{KubeletConfig, KubeletError, NodeRole};
