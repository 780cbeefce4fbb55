//! Kubernetes API server and kubelet stand-ins (to be written).
