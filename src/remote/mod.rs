//! SSH sessions to cluster nodes through the jumpbox, and the scripts run on them.
//! Not built yet (issue: plan).
