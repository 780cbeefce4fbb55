//! Command-line arguments. The cluster flags keep `aks-engine rotate-certs`' spelling so an
//! operator can reuse a command line; secrets may come from the environment or from files
//! and are never required on the command line.

use crate::cloud::azure;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "certrotate",
    version,
    about = "Plan and apply certificate rotation on AKS Engine clusters (Azure Stack Hub first)",
    long_about = "certrotate reads the live certificates of every node, compares them with a desired \
                  profile, shows the plan, and applies it through validation gates. \
                  Saved plans are artifacts for change review."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log what certrotate does internally (files loaded, retries) to stderr. Holds no secrets.
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read every node's certificates, compare with the profile, show (and save) the plan.
    Plan(PlanArgs),
    /// Execute a saved plan (or plan, show and ask for `yes`).
    Apply(ApplyArgs),
    /// Render a saved plan without touching the cluster.
    Show(ShowArgs),
    /// Print a saved plan's action graph as Graphviz DOT.
    Graph(GraphArgs),
    /// Print an expiry table of the cluster's certificates.
    Status(StatusArgs),
    /// Check the API model and profile offline: topology, managed certificates, findings.
    Validate(ValidateArgs),
    /// Restore the certificates backed up by an apply.
    Rollback(RollbackArgs),
    /// Gather an applied plan's evidence for the change record: plan, review document,
    /// approvals, journal, status before and after, node logs, backups, SHA-256 manifest.
    Evidence(EvidenceArgs),
}

/// The API model and the desired state: all that `validate` needs, and the start of every
/// command that reaches the cluster.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Path to apimodel.json written by aks-engine deploy or generate.
    #[arg(short = 'm', long, value_name = "FILE")]
    pub api_model: PathBuf,

    /// The desired profile: a shipped name (rotate-all, renew-expiring, rotate-ca) or a YAML path.
    #[arg(long, value_name = "NAME|PATH", default_value = "renew-expiring")]
    pub profile: String,

    /// aks-engine's certificate profile JSON: certificates you supply instead of having
    /// certrotate issue them (the front-proxy pair and kubelet serving certificates still
    /// follow --profile). The plan records the file's digest, never its keys.
    #[arg(long, value_name = "FILE")]
    pub certificate_profile: Option<PathBuf>,

    /// The 8-digit VM name suffix. Default: azuredeploy.json's beside the API model, else the
    /// one AKS Engine computes from the dnsPrefix.
    #[arg(long, value_name = "DIGITS")]
    pub name_suffix: Option<String>,
}

/// What identifies and reaches the cluster; shared by plan, apply, status, rollback.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// SSH listener that reaches every node (the jumpbox or first master), as HOST or HOST:PORT.
    #[arg(long, value_name = "HOST")]
    pub ssh_host: Option<String>,

    /// Private key for the Linux nodes' admin user.
    #[arg(long, value_name = "FILE")]
    pub linux_ssh_private_key: Option<PathBuf>,

    /// known_hosts file to verify node host keys against (default: trust on first use,
    /// recorded beside the API model).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Nodes read or changed at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallelism: u16,

    /// Plan without nodes that cannot be reached (they are named in the plan).
    #[arg(long)]
    pub skip_unreachable: bool,

    /// Address the apiserver is reached at from here (ADDRESS:PORT), when its FQDN does not resolve.
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub apiserver: Option<String>,

    #[command(flatten)]
    pub azure: AzureArgs,

    /// Go on although the API server does not answer (as aks-engine's --force).
    #[arg(long)]
    pub force: bool,
}

/// Azure Resource Manager access, named as aks-engine names it.
#[derive(Debug, Clone, Args)]
pub struct AzureArgs {
    /// Azure location of the cluster; when given, it must be the API model's (as aks-engine
    /// checks it: case and spaces ignored).
    #[arg(short = 'l', long)]
    pub location: Option<String>,
    /// Subscription holding the cluster's VMs.
    #[arg(short = 's', long, env = "AZURE_SUBSCRIPTION_ID")]
    pub subscription_id: Option<String>,
    /// Resource group holding the cluster's VMs.
    #[arg(short = 'g', long)]
    pub resource_group: Option<String>,
    /// Tenant of the service principal (Azure AD); `adfs` for AD FS stamps.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,
    /// Service principal client id.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Service principal secret. Prefer AZURE_CLIENT_SECRET or --client-secret-file: a
    /// command line is visible to other users of the machine.
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// File holding the service principal secret (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret")]
    pub client_secret_file: Option<PathBuf>,
    /// Cloud name, e.g. AzureStackCloud (defaults to the API model's customCloudProfile).
    #[arg(long)]
    pub azure_env: Option<String>,
    /// How the service principal signs in.
    #[arg(long, value_enum)]
    pub auth_method: Option<AuthMethod>,
    /// Identity system of the stamp.
    #[arg(long, value_enum)]
    pub identity_system: Option<IdentitySystem>,
    /// Client certificate (PEM) for --auth-method client_certificate.
    #[arg(long, value_name = "FILE")]
    pub certificate_path: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, value_name = "FILE")]
    pub private_key_path: Option<PathBuf>,
    /// CA bundle to trust for the stamp's endpoints (Azure Stack Hub's private root).
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Language of the messages, as aks-engine's flag; certrotate writes English (en-us) only.
    #[arg(long, default_value = "en-us", value_name = "LANG", value_parser = english_only)]
    pub language: String,
}

/// aks-engine translates its messages (`--language`, default en-us); certrotate's are English,
/// so another language is refused rather than silently ignored.
fn english_only(value: &str) -> Result<String, String> {
    let lower = value.to_ascii_lowercase();
    if lower == "en" || lower.starts_with("en-") || lower.starts_with("en_") {
        Ok(value.to_string())
    } else {
        Err(format!("certrotate writes its messages in English only; pass --language en-us or leave it out (was {value})"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecret,
    ClientCertificate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum IdentitySystem {
    AzureAd,
    Adfs,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Save the plan to FILE for review and `apply FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A saved plan; without it, apply plans, shows and asks for `yes`.
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Who approved this change, recorded in the run's journal with the plan's digest
    /// (required when the plan's profile says `approval: {required: true}`).
    #[arg(long, value_name = "NAME")]
    pub approved_by: Option<String>,
    /// Break another apply's lock on the cluster (warns who held it).
    #[arg(long)]
    pub break_lock: bool,
    /// Emit progress as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub plan_file: PathBuf,
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// `text` for the terminal; `markdown` or `html` for a review document to attach to a
    /// change ticket (the HTML is one self-contained page).
    #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
    pub format: ShowFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    Text,
    Markdown,
    Html,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    pub plan_file: PathBuf,
}

#[derive(Debug, Args)]
// With --fleet the API models come from the fleet file.
#[command(mut_arg("api_model", |a| a.required(false).required_unless_present("fleet").default_value_if("fleet", clap::builder::ArgPredicate::IsPresent, Some("-"))))]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Read certificates from the API model only, without contacting any node.
    #[arg(long)]
    pub offline: bool,
    #[arg(long)]
    pub json: bool,
    /// Many clusters at once: a YAML file of `clusters:` (schemas/fleet.schema.json); each
    /// entry has `apiModel` and the cluster's flags in camelCase. --api-model is not needed.
    #[arg(long, value_name = "FILE", conflicts_with = "offline")]
    pub fleet: Option<PathBuf>,
    /// With --fleet: also write every certificate's expiry as Prometheus text (for
    /// node_exporter's textfile collector), atomically.
    #[arg(long, value_name = "FILE", requires = "fleet")]
    pub prometheus: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The applied plan to roll back (default: the most recent apply beside the API model).
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
}

#[derive(Debug, Args)]
pub struct EvidenceArgs {
    /// The applied plan (default: the most recent apply beside the API model).
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Where to put the bundle: a new directory, or a file ending in .tar.gz.
    #[arg(long, value_name = "DIR|FILE.tar.gz")]
    pub out: PathBuf,
}

impl AzureArgs {
    /// The Azure inputs these flags give; reads `--client-secret-file` (its first line).
    pub fn to_inputs(&self) -> Result<azure::AzureInputs, azure::AzureError> {
        let args = self;

        let client_secret = match (&args.client_secret, &args.client_secret_file) {
            (Some(secret), _) => Some(azure::ClientSecret::new(secret.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    azure::AzureError::settings(
                        format!("cannot read the client secret file {}: {e}", path.display()),
                        "pass a readable file whose first line is the service principal's secret",
                    )
                })?;
                let first = text.lines().next().unwrap_or("").trim();
                if first.is_empty() {
                    return Err(azure::AzureError::settings(
                        format!("the client secret file {} is empty", path.display()),
                        "write the service principal's secret on its first line",
                    ));
                }
                Some(azure::ClientSecret::new(first))
            }
            (None, None) => None,
        };
        Ok(azure::AzureInputs {
            azure_env: args.azure_env.clone(),
            ca_bundle: args.ca_bundle.clone(),
            tenant_id: args.tenant_id.clone(),
            subscription_id: args.subscription_id.clone(),
            resource_group: args.resource_group.clone(),
            client_id: args.client_id.clone(),
            client_secret,
            certificate_path: args.certificate_path.clone(),
            private_key_path: args.private_key_path.clone(),
            identity_system: args.identity_system.map(|i| match i {
                IdentitySystem::AzureAd => azure::IdentitySystem::AzureAd,
                IdentitySystem::Adfs => azure::IdentitySystem::Adfs,
            }),
            auth_method: args.auth_method.map(|m| match m {
                AuthMethod::ClientSecret => azure::AuthMethod::ClientSecret,
                AuthMethod::ClientCertificate => azure::AuthMethod::ClientCertificate,
            }),
        })
    }
}
