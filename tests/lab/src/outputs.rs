//! What `lab up` hands to the operator side, as `aks-engine deploy` would leave it:
//! `_output/<dnsPrefix>/apimodel.json` (vlabs, certificateProfile, customCloudProfile pointing
//! at the ARM stand-in), `azuredeploy.json` carrying nameSuffix, the admin kubeconfig, and
//! `DIR/lab.env` with every LAB_* value a certrotate or aks-engine command line needs.

use crate::error::LabError;
use crate::fsutil::{make_dir, write_file};
use crate::pki::ClusterPki;
use crate::spec::{Layout, ADMIN_USER, AGENT_POOL};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

pub const VM_DNS_SUFFIX: &str = "cloudapp.azurestack.external";
pub const AZURE_ENV: &str = "AzureStackCloud";

/// Identity values of the lab's Azure side (service principal, subscription, tenant).
/// `Debug` redacts the client secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub subscription_id: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub resource_group: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("subscription_id", &self.subscription_id)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("resource_group", &self.resource_group)
            .finish()
    }
}

fn uuid_from(seed: &str) -> String {
    let a = crate::spec::fnv64a(seed.as_bytes());
    let b = crate::spec::fnv64a(format!("{seed}/2").as_bytes());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

impl Identity {
    pub fn generate(layout: &Layout) -> Identity {
        Identity {
            subscription_id: uuid_from(&format!("{}/subscription", layout.id)),
            tenant_id: uuid_from(&format!("{}/tenant", layout.id)),
            client_id: uuid_from(&format!("{}/client", layout.id)),
            client_secret: hex::encode(rand::random::<[u8; 24]>()),
            resource_group: layout.dns_prefix.clone(),
        }
    }
}

pub fn arm_endpoint(layout: &Layout) -> String {
    format!("https://127.0.0.1:{}/", layout.arm_port)
}
pub fn arm_ca_bundle(layout: &Layout) -> PathBuf {
    crate::armhost::ca_bundle(layout)
}
pub fn apimodel_path(layout: &Layout) -> PathBuf {
    layout.output_dir().join("apimodel.json")
}
pub fn kubeconfig_path(layout: &Layout) -> PathBuf {
    layout.output_dir().join("kubeconfig").join(format!("kubeconfig.{}.json", layout.spec.location))
}
pub fn env_path(layout: &Layout) -> PathBuf {
    layout.dir.join("lab.env")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The admin kubeconfig (AKS Engine writes it as JSON, parts/k8s/kubeconfig.json, server =
/// the public IP's FQDN): the public load balancer's address, with the apiserver FQDN as
/// `tls-server-name` since the operator side cannot resolve it.
pub fn admin_kubeconfig(layout: &Layout, pki: &ClusterPki) -> String {
    let cluster = layout.dns_prefix.clone();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": {
                "certificate-authority-data": b64(&pki.ca.cert_pem),
                "server": format!("https://{}:443", layout.public_lb_ip()),
                "tls-server-name": layout.apiserver_fqdn(),
            }
        }],
        "users": [{
            "name": format!("{cluster}-admin"),
            "user": {
                "client-certificate-data": b64(&pki.kubectl_client.cert_pem),
                "client-key-data": b64(&pki.kubectl_client.key_pem),
            }
        }],
        "contexts": [{
            "name": cluster,
            "context": {"cluster": cluster, "user": format!("{cluster}-admin")}
        }],
        "current-context": cluster,
    });
    serde_json::to_string_pretty(&config).expect("a JSON value always serialises")
}

/// The vlabs API model; without a PKI (before issuance) it has no certificateProfile.
pub fn apimodel(layout: &Layout, pki: Option<&ClusterPki>, identity: &Identity, ssh_public_key: &str) -> serde_json::Value {
    let mut model = json!({
        "apiVersion": "vlabs",
        "location": layout.spec.location,
        "properties": {
            "orchestratorProfile": {
                "orchestratorType": "Kubernetes",
                "orchestratorVersion": "1.23.15",
                "kubernetesConfig": {
                    "networkPlugin": "kubenet",
                    "serviceCidr": "10.0.0.0/16",
                    "dnsServiceIP": "10.0.0.10",
                    "clusterSubnet": "10.244.0.0/16",
                }
            },
            "masterProfile": {
                "count": layout.spec.masters,
                "dnsPrefix": layout.dns_prefix,
                "subjectAltNames": null,
                "vmSize": "Standard_D2_v2",
                "firstConsecutiveStaticIP": layout.first_master().ip.to_string(),
                "vnetCidr": format!("{}.{}.{}.0/24", layout.subnet[0], layout.subnet[1], layout.subnet[2]),
                "availabilityProfile": "AvailabilitySet",
                "distro": "aks-ubuntu-18.04",
            },
            "agentPoolProfiles": [{
                "name": AGENT_POOL,
                "count": layout.spec.agents,
                "vmSize": "Standard_D2_v2",
                "osType": "Linux",
                "availabilityProfile": "AvailabilitySet",
                "distro": "aks-ubuntu-18.04",
            }],
            "linuxProfile": {
                "adminUsername": ADMIN_USER,
                "ssh": {"publicKeys": [{"keyData": ssh_public_key}]}
            },
            "servicePrincipalProfile": {
                "clientId": identity.client_id,
                "secret": identity.client_secret,
            },
            "certificateProfile": null,
            "customCloudProfile": crate::armhost::custom_cloud_profile(layout, identity),
        }
    });
    let properties = model["properties"].as_object_mut().expect("properties is an object");
    match pki {
        Some(pki) => {
            properties["certificateProfile"] = certificate_profile(pki);
        }
        None => {
            properties.shift_remove("certificateProfile");
        }
    }
    model
}

/// The certificateProfile object of the API model (also the file `--certificate-profile` reads).
pub fn certificate_profile(pki: &ClusterPki) -> serde_json::Value {
    json!({
        "caCertificate": pki.ca.cert_pem,
        "caPrivateKey": pki.ca.key_pem,
        "apiServerCertificate": pki.apiserver.cert_pem,
        "apiServerPrivateKey": pki.apiserver.key_pem,
        "clientCertificate": pki.client.cert_pem,
        "clientPrivateKey": pki.client.key_pem,
        "kubeConfigCertificate": pki.kubectl_client.cert_pem,
        "kubeConfigPrivateKey": pki.kubectl_client.key_pem,
        "etcdServerCertificate": pki.etcd_server.cert_pem,
        "etcdServerPrivateKey": pki.etcd_server.key_pem,
        "etcdClientCertificate": pki.etcd_client.cert_pem,
        "etcdClientPrivateKey": pki.etcd_client.key_pem,
        "etcdPeerCertificates": pki.etcd_peers.iter().map(|p| p.cert_pem.clone()).collect::<Vec<_>>(),
        "etcdPeerPrivateKeys": pki.etcd_peers.iter().map(|p| p.key_pem.clone()).collect::<Vec<_>>(),
    })
}

pub fn azuredeploy(layout: &Layout) -> serde_json::Value {
    json!({
        "$schema": "https://schema.management.azure.com/schemas/2015-01-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "nameSuffix": {
                "defaultValue": layout.name_suffix,
                "metadata": {"description": "A string hash of the master DNS name to uniquely identify the cluster."},
                "type": "string"
            },
            "masterEndpointDNSNamePrefix": {"defaultValue": layout.dns_prefix, "type": "string"},
            "firstConsecutiveStaticIP": {"defaultValue": layout.first_master().ip.to_string(), "type": "string"},
        },
        "variables": {},
        "resources": [],
        "outputs": {}
    })
}

/// Shell-quote a value for lab.env.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Every LAB_* variable, in the order lab.env lists them.
pub fn env_vars(layout: &Layout, identity: &Identity) -> Vec<(&'static str, String)> {
    let first = layout.first_master().ip;
    let mut vars = vec![
        ("LAB_DIR", layout.dir.display().to_string()),
        ("LAB_API_MODEL", apimodel_path(layout).display().to_string()),
        ("LAB_SSH_HOST", first.to_string()),
        ("LAB_SSH_USER", ADMIN_USER.to_string()),
        ("LAB_SSH_KEY", layout.ssh_key().display().to_string()),
        ("LAB_KNOWN_HOSTS", layout.known_hosts().display().to_string()),
        ("LAB_SSH_CONFIG", crate::nodefiles::ssh_config_path(layout).display().to_string()),
        ("LAB_LOCATION", layout.spec.location.clone()),
        ("LAB_SUBSCRIPTION_ID", identity.subscription_id.clone()),
        ("LAB_RESOURCE_GROUP", identity.resource_group.clone()),
        ("LAB_TENANT_ID", match layout.spec.identity_system {
            crate::arm::IdentitySystem::AzureAd => identity.tenant_id.clone(),
            crate::arm::IdentitySystem::Adfs => "adfs".into(),
        }),
        ("LAB_CLIENT_ID", identity.client_id.clone()),
        ("LAB_CLIENT_SECRET", identity.client_secret.clone()),
        ("LAB_AZURE_ENV", AZURE_ENV.to_string()),
        ("LAB_ARM_ENDPOINT", arm_endpoint(layout)),
        ("LAB_ARM_CA_BUNDLE", arm_ca_bundle(layout).display().to_string()),
        ("LAB_KUBECONFIG", kubeconfig_path(layout).display().to_string()),
        // What clients reach the API at: the public load balancer (the FQDN's address).
        ("LAB_APISERVER", format!("{}:443", layout.public_lb_ip())),
        // Where agents and in-cluster clients reach it (AKS Engine's kubernetesAPIServerIP).
        ("LAB_INTERNAL_APISERVER", format!("{}:443", layout.kubernetes_api_server_ip())),
        ("LAB_APISERVER_NAME", layout.apiserver_fqdn()),
        ("LAB_NAME_SUFFIX", layout.name_suffix.clone()),
        ("LAB_DNS_PREFIX", layout.dns_prefix.clone()),
        ("LAB_IDENTITY_SYSTEM", match layout.spec.identity_system {
            crate::arm::IdentitySystem::AzureAd => "azure_ad".into(),
            crate::arm::IdentitySystem::Adfs => "adfs".into(),
        }),
        ("LAB_AUTH_METHOD", layout.spec.auth_method.as_str().into()),
    ];
    if layout.spec.auth_method == crate::spec::AuthMethod::ClientCertificate {
        let (certificate, key) = crate::armhost::client_certificate_paths(layout, identity);
        vars.push(("LAB_CLIENT_CERTIFICATE", certificate.display().to_string()));
        vars.push(("LAB_CLIENT_PRIVATE_KEY", key.display().to_string()));
    }
    vars
}

/// Before issuance: azuredeploy.json and an apimodel.json without certificates, from which
/// certrotate derives the topology and catalogue the PKI is issued from.
pub fn write_model_skeleton(layout: &Layout, identity: &Identity, ssh_public_key: &str) -> Result<(), LabError> {
    let out = layout.output_dir();
    make_dir(&out, 0o700, 0, 0)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialise");
    write_file(&out.join("azuredeploy.json"), pretty(&azuredeploy(layout)).as_bytes(), 0o644, 0, 0)?;
    write_file(&apimodel_path(layout), pretty(&apimodel(layout, None, identity, ssh_public_key)).as_bytes(), 0o600, 0, 0)
}

/// Write apimodel.json, azuredeploy.json, the admin kubeconfig and lab.env (0600: it holds the
/// client secret).
pub fn write_outputs(
    layout: &Layout,
    pki: &ClusterPki,
    identity: &Identity,
    ssh_public_key: &str,
    admin_kubeconfig_text: &str,
) -> Result<(), LabError> {
    let out = layout.output_dir();
    make_dir(&out, 0o700, 0, 0)?;
    make_dir(&out.join("kubeconfig"), 0o700, 0, 0)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialise");
    write_file(&apimodel_path(layout), pretty(&apimodel(layout, Some(pki), identity, ssh_public_key)).as_bytes(), 0o600, 0, 0)?;
    write_file(&out.join("azuredeploy.json"), pretty(&azuredeploy(layout)).as_bytes(), 0o644, 0, 0)?;
    write_file(&kubeconfig_path(layout), admin_kubeconfig_text.as_bytes(), 0o600, 0, 0)?;
    let mut env = String::from("# lab cluster values; `source` this file (it holds a client secret: 0600)\n");
    for (key, value) in env_vars(layout, identity) {
        env.push_str(&format!("{key}={}\n", sh_quote(&value)));
    }
    write_file(&env_path(layout), env.as_bytes(), 0o600, 0, 0)?;
    let identity_json = serde_json::to_string_pretty(identity).expect("identity serialises");
    write_file(&layout.dir.join("identity.json"), identity_json.as_bytes(), 0o600, 0, 0)?;
    Ok(())
}

pub fn load_identity(layout: &Layout) -> Result<Identity, LabError> {
    let path = layout.dir.join("identity.json");
    let text = std::fs::read_to_string(&path).map_err(LabError::io(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| LabError::NotALab { dir: layout.dir.clone(), reason: format!("{}: {e}", path.display()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn uuids_are_shaped_and_distinct() {
        let a = uuid_from("x");
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, uuid_from("y"));
    }

    #[test]
    fn identity_debug_redacts_secret() {
        let id = Identity { subscription_id: "s".into(), tenant_id: "t".into(), client_id: "c".into(), client_secret: "hunter2".into(), resource_group: "rg".into() };
        assert!(!format!("{id:?}").contains("hunter2"));
    }
}
