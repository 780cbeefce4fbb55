//! Discovery: apimodel.json loaded once and the topology derived from it once, then passed
//! on to every later stage. Also where the files AKS Engine writes beside the API model are
//! named (the admin kubeconfig), so no stage builds those paths on its own.

use crate::diag::InputError;
use crate::model::apimodel::ApiModel;
use crate::model::topology::{OsType, RegisteredNode, Topology};
use crate::plan::file::PlanFile;
use std::path::{Path, PathBuf};

/// The cluster as its API model describes it.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub model: ApiModel,
    /// The API model's nodes; agents only the Kubernetes API knows are added by the read.
    pub topology: Topology,
}

/// Loads the API model and derives its topology. The name suffix comes from `name_suffix`
/// when given, else from azuredeploy.json beside the API model, else from the dnsPrefix as
/// AKS Engine computes it.
pub fn discover(api_model: &Path, name_suffix: Option<&str>) -> Result<Discovered, InputError> {
    from_model(ApiModel::load(api_model)?, name_suffix)
}

/// As [`discover`], for an API model already loaded (and checked against a saved plan).
pub fn from_model(model: ApiModel, name_suffix: Option<&str>) -> Result<Discovered, InputError> {
    let topology = Topology::derive(&model, name_suffix)?;
    Ok(Discovered { model, topology })
}

/// aks-engine rotate-certs' check of `--location` (cmd/rotate_certs.go): the flag, lowercased
/// and without spaces (`helpers.NormalizeAzureRegion`), must be the API model's location.
/// aks-engine also takes the flag when the API model has none; certrotate derives names and
/// the kubeconfig path from the API model's, so it refuses an API model without one.
pub fn check_location(model: &ApiModel, flag: &str) -> Result<(), InputError> {
    let normalize = |s: &str| s.replace(' ', "").to_lowercase();
    let theirs = &model.view.location;
    if normalize(flag) == normalize(theirs) {
        return Ok(());
    }
    Err(model.source.error_at_path(
        &["location"],
        format!("--location {flag} does not match the API model's location `{theirs}`"),
        "pass the location the cluster was deployed to (the API model's `location`), or leave --location out",
    ))
}

/// The admin kubeconfig AKS Engine writes beside the API model.
pub fn admin_kubeconfig_path(model_dir: &Path, location: &str) -> PathBuf {
    model_dir.join("kubeconfig").join(format!("kubeconfig.{location}.json"))
}

impl Discovered {
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        admin_kubeconfig_path(&self.model.dir(), &self.topology.location)
    }

    /// The cluster as a saved plan saw it: these nodes plus the agents the plan read that the
    /// API model does not count (added by `aks-engine scale`, found through the Kubernetes API).
    /// `Err` names a node of the plan this API model cannot place.
    pub fn topology_of_plan(&self, plan: &PlanFile) -> Result<Topology, String> {
        let topo = &self.topology;
        let observed: Vec<RegisteredNode> = plan
            .observed
            .nodes
            .iter()
            .filter(|n| topo.node(&n.node).is_none())
            .map(|n| RegisteredNode { name: n.node.clone(), os: OsType::Linux })
            .collect();
        if observed.is_empty() {
            return Ok(topo.clone());
        }
        let (extended, notes) = topo.with_registered_nodes(&observed);
        if let Some(missing) = observed.iter().find(|n| extended.node(&n.name).is_none()) {
            return Err(format!("the plan names node {}, which this API model cannot place ({})", missing.name, notes.join("; ")));
        }
        Ok(extended)
    }
}
