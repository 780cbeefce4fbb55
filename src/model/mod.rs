//! What certrotate knows about a cluster before touching it: the AKS Engine API model,
//! the topology derived from it, and the desired profile.

pub mod apimodel;
pub mod cluster_id;
pub mod inventory;
pub mod profile;
pub mod topology;
