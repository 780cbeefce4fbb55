//! Talks to the clouds a cluster lives in: Azure Resource Manager (VM restarts through the
//! Compute API, Azure Stack Hub endpoints and identities) and the Kubernetes API (kube-rs).
//! Only `apply` calls into here; plan never needs the cloud.

pub mod azure;
pub mod kube;
