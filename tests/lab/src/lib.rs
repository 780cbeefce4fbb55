//! The lab: a local AKS Engine-like cluster for certrotate's tests and demos.
//! Each node is a host of its own (network, mount and UTS namespaces) running real sshd,
//! real etcd on masters, and stand-ins for what cannot run here (kube-apiserver, kubelet,
//! Azure Resource Manager) that speak the real wire formats.

pub mod arm;
pub mod kube;
