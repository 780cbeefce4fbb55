//! Talks to Azure Resource Manager (VM restarts) and to the Kubernetes API.
//! Not built yet (issues: plan, apply).
