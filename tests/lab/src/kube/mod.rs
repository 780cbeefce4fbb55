//! Kubernetes stand-ins for the lab: the API server each master runs on 443 (backed by the
//! cluster's real etcd, with the controllers kube-controller-manager would run) and the
//! kubelet each node runs. Both speak the real wire format, so kubectl and kube-rs work
//! against them, and both read their certificates from the node's disk, so rotating those
//! files has the effects it has on a real AKS Engine cluster.
//!
//! Wiring them into a node (what the supervisor does):
//! - masters: `apiserver::run(ApiserverConfig::aks_engine_master(root, name, ip), shutdown)`
//!   inside the node's network namespace (it binds <ip>:443 and talks to the local etcd
//!   member at 127.0.0.1:2379). A config can also come from JSON
//!   (`ApiserverConfig::from_file`). The process exits with an error when a certificate or
//!   key it needs is unreadable, as kube-apiserver does; restart it like a crash-looping pod.
//! - every node: `kubelet::run(KubeletConfig::aks_engine(root, name, role, ip), shutdown)`,
//!   also inside the node's network namespace, so cutting the node off the network stops its
//!   heartbeats. It never exits on API errors; it keeps retrying every heartbeat interval.
//! - how fast a silent node turns NotReady is the apiserver's
//!   `controllers.node_monitor_grace_period` (default 8 s), as in Kubernetes, where it is a
//!   kube-controller-manager flag rather than a kubelet one.

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
