//! The AKS Engine API model (`_output/<dnsPrefix>/apimodel.json`, apiVersion vlabs).
//!
//! The whole document is kept as an ordered JSON tree so that saving it keeps every field
//! certrotate does not know about, in its original order; a typed view of the parts that
//! rotation needs (`ApiModelView`) is read out of it. Saving writes what Go's
//! `json.MarshalIndent(v, "", "  ")` writes (2-space indent, `<>&` escaped as `\u003c`...),
//! so a model AKS Engine wrote round-trips byte for byte. A hand-edited file with other
//! whitespace is normalised to that layout when it is saved; it is never saved unchanged.

use crate::diag::{InputError, SourceFile};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The loaded API model: the ordered document plus a typed view of what rotation uses.
#[derive(Debug, Clone)]
pub struct ApiModel {
    pub source: SourceFile,
    pub view: ApiModelView,
    doc: Value,
}

/// The fields of apimodel.json that rotation reads. Unknown fields are ignored here and
/// kept in the document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiModelView {
    pub api_version: String,
    #[serde(default)]
    pub location: String,
    pub properties: Properties,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Properties {
    #[serde(default)]
    pub orchestrator_profile: Option<OrchestratorProfile>,
    pub master_profile: MasterProfile,
    #[serde(default, deserialize_with = "null_as_default")]
    pub agent_pool_profiles: Vec<AgentPoolProfile>,
    pub linux_profile: LinuxProfile,
    #[serde(default)]
    pub windows_profile: Option<WindowsProfile>,
    #[serde(default)]
    pub certificate_profile: Option<CertificateProfile>,
    #[serde(default)]
    pub custom_cloud_profile: Option<CustomCloudProfile>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrchestratorProfile {
    #[serde(default)]
    pub orchestrator_type: Option<String>,
    #[serde(default)]
    pub orchestrator_version: Option<String>,
    #[serde(default)]
    pub kubernetes_config: Option<KubernetesConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesConfig {
    #[serde(default)]
    pub service_cidr: Option<String>,
    #[serde(default)]
    pub kubelet_config: Option<std::collections::BTreeMap<String, String>>,
}

/// The number of masters; AKS Engine allows only 1, 3 or 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct MasterCount(pub usize);

/// Go writes a nil slice as `null`; read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl TryFrom<i64> for MasterCount {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            1 | 3 | 5 => Ok(MasterCount(n as usize)),
            _ => Err(format!(
                "masterProfile.count is {n}, but AKS Engine clusters have 1, 3 or 5 masters (etcd needs an odd quorum)"
            )),
        }
    }
}

impl From<MasterCount> for i64 {
    fn from(c: MasterCount) -> i64 {
        c.0 as i64
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MasterProfile {
    pub count: MasterCount,
    pub dns_prefix: String,
    #[serde(default, rename = "firstConsecutiveStaticIP")]
    pub first_consecutive_static_ip: Option<String>,
    #[serde(default)]
    pub ip_address_count: Option<u32>,
    #[serde(default)]
    pub availability_profile: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolProfile {
    pub name: String,
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub os_type: Option<String>,
    #[serde(default)]
    pub availability_profile: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinuxProfile {
    pub admin_username: String,
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WindowsProfile {
    #[serde(default)]
    pub admin_username: Option<String>,
    #[serde(default)]
    pub admin_password: Option<String>,
    #[serde(default)]
    pub ssh_enabled: Option<bool>,
}

impl std::fmt::Debug for WindowsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsProfile")
            .field("admin_username", &self.admin_username)
            .field("admin_password", &self.admin_password.as_ref().map(|_| "<redacted>"))
            .field("ssh_enabled", &self.ssh_enabled)
            .finish()
    }
}

/// `properties.certificateProfile`: PEM strings, exactly the field names AKS Engine uses.
/// The same shape is what `aks-engine rotate-certs --certificate-profile` reads.
#[derive(Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config_private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_server_private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_client_private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_peer_certificates: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_peer_private_keys: Vec<String>,
}

impl std::fmt::Debug for CertificateProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present = |v: &Option<String>| if v.is_some() { "<present>" } else { "<absent>" };
        f.debug_struct("CertificateProfile")
            .field("ca_certificate", &present(&self.ca_certificate))
            .field("ca_private_key", &present(&self.ca_private_key).replace("present", "redacted"))
            .field("etcd_peer_certificates", &self.etcd_peer_certificates.len())
            .finish_non_exhaustive()
    }
}

/// Names of the certificateProfile fields, pairing each certificate with its key, in the
/// order AKS Engine writes them. Peer certificates are arrays and handled apart.
pub const CERTIFICATE_PROFILE_PAIRS: &[(&str, &str)] = &[
    ("caCertificate", "caPrivateKey"),
    ("apiServerCertificate", "apiServerPrivateKey"),
    ("clientCertificate", "clientPrivateKey"),
    ("kubeConfigCertificate", "kubeConfigPrivateKey"),
    ("etcdServerCertificate", "etcdServerPrivateKey"),
    ("etcdClientCertificate", "etcdClientPrivateKey"),
];

impl CertificateProfile {
    /// The certificate and key PEM of a single-valued field pair, by JSON field name.
    pub fn pair(&self, cert_field: &str) -> (Option<&str>, Option<&str>) {
        let (c, k) = match cert_field {
            "caCertificate" => (&self.ca_certificate, &self.ca_private_key),
            "apiServerCertificate" => (&self.api_server_certificate, &self.api_server_private_key),
            "clientCertificate" => (&self.client_certificate, &self.client_private_key),
            "kubeConfigCertificate" => (&self.kube_config_certificate, &self.kube_config_private_key),
            "etcdServerCertificate" => (&self.etcd_server_certificate, &self.etcd_server_private_key),
            "etcdClientCertificate" => (&self.etcd_client_certificate, &self.etcd_client_private_key),
            _ => return (None, None),
        };
        (c.as_deref(), k.as_deref())
    }

    /// Sets a single-valued field pair by JSON field name; unknown names are ignored.
    pub fn set_pair(&mut self, cert_field: &str, cert_pem: String, key_pem: String) {
        let (c, k) = match cert_field {
            "caCertificate" => (&mut self.ca_certificate, &mut self.ca_private_key),
            "apiServerCertificate" => (&mut self.api_server_certificate, &mut self.api_server_private_key),
            "clientCertificate" => (&mut self.client_certificate, &mut self.client_private_key),
            "kubeConfigCertificate" => (&mut self.kube_config_certificate, &mut self.kube_config_private_key),
            "etcdServerCertificate" => (&mut self.etcd_server_certificate, &mut self.etcd_server_private_key),
            "etcdClientCertificate" => (&mut self.etcd_client_certificate, &mut self.etcd_client_private_key),
            _ => return,
        };
        *c = Some(cert_pem);
        *k = Some(key_pem);
    }

    /// Loads aks-engine's `--certificate-profile` JSON file (the certificateProfile object).
    pub fn load(path: &Path) -> Result<(Self, SourceFile), InputError> {
        let source = SourceFile::read(path, "certificate profile")?;
        let profile = Self::from_source(&source)?;
        Ok((profile, source))
    }

    /// As `load`, from text already in memory (the fuzz target reads no files).
    pub fn from_source(source: &SourceFile) -> Result<Self, InputError> {
        serde_json::from_str(&source.text).map_err(|e| source.json_error(&e, "certificate profile"))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CustomCloudProfile {
    #[serde(default)]
    pub environment: Option<CloudEnvironment>,
    #[serde(default)]
    pub identity_system: Option<String>,
    #[serde(default)]
    pub authentication_method: Option<String>,
    #[serde(default)]
    pub portal_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CloudEnvironment {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub resource_manager_endpoint: Option<String>,
    #[serde(default)]
    pub active_directory_endpoint: Option<String>,
    #[serde(default)]
    pub service_management_endpoint: Option<String>,
    #[serde(default, rename = "resourceManagerVMDNSSuffix")]
    pub resource_manager_vm_dns_suffix: Option<String>,
}

impl ApiModel {
    /// Reads and checks apimodel.json. Every problem is an `InputError` pointing into it.
    pub fn load(path: &Path) -> Result<Self, InputError> {
        let source = SourceFile::read(path, "API model")?;
        // Counted by a lab test: one apply loads the API model once.
        tracing::debug!(path = %path.display(), "loaded apimodel.json");
        Self::parse(source)
    }

    pub fn parse(source: SourceFile) -> Result<Self, InputError> {
        let doc: Value = serde_json::from_str(&source.text).map_err(|e| source.json_error(&e, "API model"))?;
        if !doc.is_object() {
            return Err(source.error_at(
                0..source.text.len().min(1),
                "the API model must be a JSON object",
                "pass the apimodel.json that aks-engine deploy or generate wrote under _output/<dnsPrefix>/",
            ));
        }
        // Deserialise the view from the text (not the Value) so serde reports line and column.
        let view: ApiModelView = serde_json::from_str(&source.text).map_err(|e| {
            let mut err = source.json_error(&e, "API model");
            if e.is_data() {
                err.help = Some(
                    "correct the marked value to what aks-engine wrote for this cluster; certrotate needs apiVersion, \
                     location, properties.masterProfile and properties.linuxProfile as aks-engine writes them"
                        .into(),
                );
            }
            err
        })?;
        if view.api_version != "vlabs" {
            return Err(source.error_at_path(
                &["apiVersion"],
                format!("apiVersion is {:?}; certrotate reads the vlabs API model", view.api_version),
                "use the apimodel.json that aks-engine wrote under _output/<dnsPrefix>/ (apiVersion \"vlabs\")",
            ));
        }
        if view.properties.master_profile.dns_prefix.trim().is_empty() {
            return Err(source.error_at_path(
                &["properties", "masterProfile", "dnsPrefix"],
                "masterProfile.dnsPrefix is empty",
                "the dnsPrefix names the cluster's VMs and its FQDN; restore it from the original apimodel.json",
            ));
        }
        Ok(Self { source, view, doc })
    }

    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// The directory holding apimodel.json (and azuredeploy.json, kubeconfig/ ...).
    pub fn dir(&self) -> PathBuf {
        self.source.path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn dns_prefix(&self) -> &str {
        &self.view.properties.master_profile.dns_prefix
    }

    /// Replaces `properties.certificateProfile` in the document. Existing keys keep their
    /// place; keys AKS Engine would write that were absent are appended in its order.
    pub fn set_certificate_profile(&mut self, profile: &CertificateProfile) {
        let new_value = serde_json::to_value(profile).expect("certificate profile serialises");
        let props = self.doc.get_mut("properties").and_then(Value::as_object_mut).expect("checked at load");
        match props.get_mut("certificateProfile").and_then(Value::as_object_mut) {
            Some(existing) => {
                if let Value::Object(fields) = new_value {
                    for (k, v) in fields {
                        existing.insert(k, v);
                    }
                }
            }
            None => {
                props.insert("certificateProfile".into(), new_value);
            }
        }
        self.view.properties.certificate_profile = Some(profile.clone());
    }

    /// The document as AKS Engine writes it, keeping a trailing newline if the file had one.
    pub fn to_json_string(&self) -> String {
        let mut out = go_json_indent(&self.doc);
        if self.source.text.ends_with('\n') {
            out.push('\n');
        }
        out
    }

    /// Whether saving would change the file's bytes.
    pub fn is_modified(&self) -> bool {
        self.to_json_string() != self.source.text
    }

    /// Writes the document atomically (temp file in the same directory, fsync, rename),
    /// keeping the original file's permissions.
    pub fn save_atomic(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, self.to_json_string().as_bytes(), None)
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename, so a
/// reader sees either the old or the new content. Keeps the old file's mode unless `mode`
/// is given.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mode = mode.or_else(|| std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o7777));
    if let Some(mode) = mode {
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Serialises JSON the way Go's `json.MarshalIndent(v, "", "  ")` does.
pub fn go_json_indent(value: &Value) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, GoFormatter::default());
    value.serialize(&mut ser).expect("serialising a JSON value to memory cannot fail");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// serde_json's pretty formatter plus Go's HTML-safe escaping of `<`, `>`, `&` and the
/// JavaScript line separators U+2028 and U+2029.
#[derive(Default)]
struct GoFormatter {
    inner: serde_json::ser::PrettyFormatter<'static>,
}

impl serde_json::ser::Formatter for GoFormatter {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.inner.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.inner.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.inner.end_object_value(w)
    }
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escaped = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(fragment[start..i].as_bytes())?;
            w.write_all(escaped.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(fragment[start..].as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
  "apiVersion": "vlabs",
  "zFirst": {"kept": true},
  "location": "local",
  "properties": {
    "masterProfile": {"count": 3, "dnsPrefix": "demo", "firstConsecutiveStaticIP": "10.255.255.5"},
    "linuxProfile": {"adminUsername": "azureuser", "ssh": {"publicKeys": [{"keyData": "ssh-rsa AAAA"}]}},
    "featureFlags": {"a<b": "x&y"}
  }
}"#;

    #[test]
    fn go_layout_escapes_like_go() {
        let v: Value = serde_json::from_str(r#"{"a":"<&>","b":[],"c":{},"d":[1,2]}"#).unwrap();
        assert_eq!(
            go_json_indent(&v),
            "{\n  \"a\": \"\\u003c\\u0026\\u003e\",\n  \"b\": [],\n  \"c\": {},\n  \"d\": [\n    1,\n    2\n  ]\n}"
        );
    }

    #[test]
    fn setting_certificate_profile_keeps_unknown_fields_and_order() {
        let mut m = ApiModel::parse(SourceFile::from_text("apimodel.json", MINIMAL)).unwrap();
        let mut cp = CertificateProfile::default();
        cp.set_pair("caCertificate", "CERT".into(), "KEY".into());
        m.set_certificate_profile(&cp);
        let out = m.to_json_string();
        let keys: Vec<&str> = ["\"apiVersion\"", "\"zFirst\"", "\"location\"", "\"masterProfile\"", "\"featureFlags\"", "\"certificateProfile\""]
            .into_iter()
            .collect();
        let positions: Vec<usize> = keys.iter().map(|k| out.find(k).unwrap_or_else(|| panic!("{k} missing"))).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "order changed:\n{out}");
        assert!(out.contains("\"a\\u003cb\": \"x\\u0026y\""));
        let reparsed = ApiModel::parse(SourceFile::from_text("apimodel.json", out)).unwrap();
        assert_eq!(reparsed.view.properties.certificate_profile.unwrap().ca_private_key.as_deref(), Some("KEY"));
    }

    #[test]
    fn master_count_two_is_pointed_at() {
        let text = MINIMAL.replace("\"count\": 3", "\"count\": 2");
        let err = ApiModel::parse(SourceFile::from_text("apimodel.json", text.clone())).unwrap_err();
        assert!(err.message.contains("1, 3 or 5"), "{}", err.message);
        let span = err.span.unwrap();
        assert_eq!(crate::diag::line_of_offset(&text, span.offset()), 6);
    }

    #[test]
    fn certificate_profile_debug_redacts_keys() {
        let mut cp = CertificateProfile::default();
        cp.set_pair("caCertificate", "CERT".into(), "-----BEGIN RSA PRIVATE KEY-----".into());
        assert!(!format!("{cp:?}").contains("PRIVATE"));
    }
}
