//! Reaching the nodes: SSH sessions through the jumpbox (one multiplexed connection per
//! node, host keys verified), and the scripts run on them.

pub mod refresh;
pub mod script;
pub mod ssh;
