//! What apply keeps on the operator's machine, beside the API model: the timestamped backup
//! of the API model and its artifacts (`_rotate_certs_backup/<time>/`, never overwritten), and
//! per plan a run directory (`_rotate_certs_output/<plan digest>/`, 0700) holding the newly
//! issued PKI (0600 files), the journal and small run state.
//!
//! The new PKI is issued once and persisted before any node is touched; a resumed apply loads
//! it back instead of issuing again, so every node ends up with the same material.

use crate::model::apimodel::{write_atomic, ApiModel, CertificateProfile};
use crate::model::profile::{CertId, Profile};
use crate::model::topology::Topology;
use crate::pki::catalogue::{self, ApiModelField, CertEntry, CertKind};
use crate::pki::inspect;
use crate::pki::issue::{self, CertificateAuthority};
use crate::pki::KeyCertPair;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const BACKUP_DIR: &str = "_rotate_certs_backup";
pub const OUTPUT_DIR: &str = "_rotate_certs_output";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("issuing {what}: {detail}")]
    Issue { what: String, detail: String },
    #[error("the persisted PKI in {dir} is incomplete or unreadable ({detail}); it was not used")]
    Corrupt { dir: PathBuf, detail: String },
    #[error("{0}")]
    Plan(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io { path: path.to_path_buf(), error }
}

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one to 0700.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// The per-plan directory under `_rotate_certs_output/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn open(model_dir: &Path, plan_digest_hex: &str) -> Result<RunDir, StoreError> {
        let short = &plan_digest_hex[..plan_digest_hex.len().min(16)];
        let root = model_dir.join(OUTPUT_DIR).join(short);
        private_dir(&model_dir.join(OUTPUT_DIR))?;
        private_dir(&root)?;
        Ok(RunDir { root })
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal.jsonl")
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The expiry table apply saw before it changed anything (JSON rows), for `evidence`.
    pub fn status_before_json(&self) -> PathBuf {
        self.root.join("status-before.json")
    }

    /// The same table as `status` prints it.
    pub fn status_before_text(&self) -> PathBuf {
        self.root.join("status-before.txt")
    }

    pub fn load_state(&self) -> RunState {
        std::fs::read_to_string(self.state_path()).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    pub fn save_state(&self, state: &RunState) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        write_atomic(&self.state_path(), text.as_bytes(), Some(0o600)).map_err(io(&self.state_path()))
    }
}

/// Small facts a later step (or a resumed run) needs from an earlier one. No secrets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// Replicas of cluster-autoscaler before it was paused; `None` when not deployed.
    #[serde(default)]
    pub autoscaler_replicas: Option<i32>,
    #[serde(default)]
    pub autoscaler_paused: bool,
    /// The local backup made by backupApiModel.
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// The restartedAt stamp of the workload rollout, kept so a resumed rollout does not
    /// restart what it already restarted.
    #[serde(default)]
    pub rollout_stamp: Option<String>,
}

/// Copies apimodel.json and the artifacts beside it (azuredeploy*.json, kubeconfig/) into a new
/// `_rotate_certs_backup/<UTC time>/`; an existing backup is never overwritten. Returns its path.
pub fn backup_api_model(model_dir: &Path) -> Result<PathBuf, StoreError> {
    backup_api_model_as(model_dir, "")
}

/// As [`backup_api_model`], the directory name starting with `prefix` (rollback keeps the
/// rotated model as `before-rollback-<time>`, which is never mistaken for an apply's backup).
pub fn backup_api_model_as(model_dir: &Path, prefix: &str) -> Result<PathBuf, StoreError> {
    let base = model_dir.join(BACKUP_DIR);
    private_dir(&base)?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .expect("formats");
    let stamp = format!("{prefix}{stamp}");
    let mut dir = base.join(&stamp);
    let mut n = 1;
    loop {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                n += 1;
                dir = base.join(format!("{stamp}-{n}"));
            }
            Err(e) => return Err(StoreError::Io { path: dir, error: e }),
        }
    }
    let entries = std::fs::read_dir(model_dir).map_err(io(model_dir))?;
    for entry in entries {
        let entry = entry.map_err(io(model_dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let keep = name == "apimodel.json" || (name.starts_with("azuredeploy") && name.ends_with(".json")) || name == "kubeconfig";
        if keep {
            copy_verified(&entry.path(), &dir.join(&name))?;
        }
    }
    Ok(dir)
}

/// Copies a file or directory tree and checks every copied file's bytes.
fn copy_verified(from: &Path, to: &Path) -> Result<(), StoreError> {
    let meta = std::fs::metadata(from).map_err(io(from))?;
    if meta.is_dir() {
        private_dir(to)?;
        for entry in std::fs::read_dir(from).map_err(io(from))? {
            let entry = entry.map_err(io(from))?;
            copy_verified(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    let bytes = std::fs::read(from).map_err(io(from))?;
    write_atomic(to, &bytes, Some(0o600)).map_err(io(to))?;
    if std::fs::read(to).map_err(io(to))? != bytes {
        return Err(StoreError::Io { path: to.to_path_buf(), error: std::io::Error::other("the copy differs from the original") });
    }
    Ok(())
}

/// The material apply installs: every certificate the plan changes, by plan id (`ca`,
/// `etcdpeer1`, `kubeletserver:<node>`), plus the CA that signs the rest.
pub struct NewPki {
    pub items: BTreeMap<String, KeyCertPair>,
    /// The cluster CA certificate after rotation (new or kept).
    pub ca_cert_pem: String,
    /// The front-proxy CA certificate after rotation, when it changes.
    pub proxy_ca_cert_pem: Option<String>,
}

impl std::fmt::Debug for NewPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPki").field("ids", &self.items.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    ids: Vec<String>,
    ca_cert_file: String,
    proxy_ca_cert_file: Option<String>,
}

/// The file naming every persisted pair; written last, so its presence means complete.
const MANIFEST: &str = "manifest.json";

fn file_stem(id: &str) -> String {
    id.replace(':', "_")
}

impl NewPki {
    pub fn get(&self, id: &str) -> Option<&KeyCertPair> {
        self.items.get(id)
    }

    /// SHA-256 fingerprint (hex, lower case) of a new certificate, as `CertFacts` gives it.
    pub fn fingerprint(&self, id: &str) -> Option<String> {
        self.items.get(id).and_then(|p| inspect::parse_cert_pem(&p.cert_pem).ok()).map(|f| f.sha256_fingerprint)
    }

    /// Writes every pair as `<id>.crt` / `<id>.key` (0600) into `dir` (0700), then the
    /// manifest last, so a directory with a manifest is complete.
    pub fn persist(&self, dir: &Path) -> Result<(), StoreError> {
        private_dir(dir)?;
        for (id, pair) in &self.items {
            let stem = file_stem(id);
            write_atomic(&dir.join(format!("{stem}.crt")), pair.cert_pem.as_bytes(), Some(0o600)).map_err(io(dir))?;
            write_atomic(&dir.join(format!("{stem}.key")), pair.key_pem.as_bytes(), Some(0o600)).map_err(io(dir))?;
        }
        write_atomic(&dir.join("ca-after.crt"), self.ca_cert_pem.as_bytes(), Some(0o600)).map_err(io(dir))?;
        if let Some(p) = &self.proxy_ca_cert_pem {
            write_atomic(&dir.join("proxy-ca-after.crt"), p.as_bytes(), Some(0o600)).map_err(io(dir))?;
        }
        let manifest = Manifest {
            ids: self.items.keys().cloned().collect(),
            ca_cert_file: "ca-after.crt".into(),
            proxy_ca_cert_file: self.proxy_ca_cert_pem.as_ref().map(|_| "proxy-ca-after.crt".into()),
        };
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        write_atomic(&dir.join(MANIFEST), text.as_bytes(), Some(0o600)).map_err(io(dir))
    }

    /// Whether a PKI was persisted in `dir` (its manifest, written last, is there).
    pub fn is_persisted(dir: &Path) -> bool {
        dir.join(MANIFEST).is_file()
    }

    /// Loads a persisted PKI; `None` when none was persisted (no manifest).
    pub fn load(dir: &Path) -> Result<Option<NewPki>, StoreError> {
        let manifest_path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path: manifest_path, error: e }),
        };
        let corrupt = |detail: String| StoreError::Corrupt { dir: dir.to_path_buf(), detail };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| corrupt(format!("{name}: {e}")));
        let mut items = BTreeMap::new();
        for id in &manifest.ids {
            let stem = file_stem(id);
            let pair = KeyCertPair { cert_pem: read(&format!("{stem}.crt"))?, key_pem: read(&format!("{stem}.key"))? };
            if !inspect::key_matches_cert(&pair.key_pem, &pair.cert_pem).unwrap_or(false) {
                return Err(corrupt(format!("the key of {id} does not match its certificate")));
            }
            items.insert(id.clone(), pair);
        }
        let ca_cert_pem = read(&manifest.ca_cert_file)?;
        let proxy_ca_cert_pem = match &manifest.proxy_ca_cert_file {
            Some(f) => Some(read(f)?),
            None => None,
        };
        Ok(Some(NewPki { items, ca_cert_pem, proxy_ca_cert_pem }))
    }
}

/// Issues the certificates named by the plan's issuePki step. With the CA kept, leaves are
/// signed by the CA from the API model's certificateProfile; the front-proxy client always
/// comes with a new front-proxy CA, whose key no node keeps.
///
/// With `supplied` (the operator's `--certificate-profile`), every certificate the API model
/// keeps is taken from it as it is; only the others (front-proxy, kubelet serving) are issued.
pub fn issue_pki(
    ids: &[String],
    topo: &Topology,
    catalogue: &[CertEntry],
    model: &ApiModel,
    profile: &Profile,
    supplied: Option<&CertificateProfile>,
) -> Result<NewPki, StoreError> {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::minutes(5);
    let until = |d: crate::model::profile::Duration| now + time::Duration::seconds(d.as_secs() as i64);
    let failed = |what: &str| {
        let what = what.to_string();
        move |e: issue::IssueError| StoreError::Issue { what: what.clone(), detail: e.to_string() }
    };
    let entry = |id: &str| -> Result<CertEntry, StoreError> { catalogue::entry_of_plan_id(catalogue, topo, id).map_err(StoreError::Plan) };
    let wanted = |id: &str| ids.iter().any(|i| i == id);
    let mut items = BTreeMap::new();
    // What the operator supplied is taken as it is: no key is made for it.
    let supplied_ca = supplied.and_then(|cp| pair_of(cp.pair("caCertificate")));
    let supplied_leaf = |e: &CertEntry| supplied.zip(e.apimodel_field.as_ref()).and_then(|(cp, field)| pair_of(field.read(cp)));
    // All keys first, in parallel: issued one by one below, they were generated serially.
    let mut keys = {
        let mut specs = Vec::new();
        if wanted("ca") && supplied_ca.is_none() {
            specs.push(profile.key_for(CertId::Ca));
        }
        if wanted("proxy-ca") || wanted("proxy") {
            specs.push(profile.key_for(CertId::ProxyCa));
        }
        for id in ids.iter().filter(|i| *i != "ca" && *i != "proxy-ca") {
            let e = entry(id)?;
            if !(e.kind == CertKind::Apiserver && !wanted("ca")) && supplied_leaf(&e).is_none() {
                specs.push(if e.kind == CertKind::Proxy { profile.key_for(CertId::Proxy) } else { profile.key.leaf_key() });
            }
        }
        issue::KeyPool::generate(&specs).map_err(failed("the new keys"))?
    };

    let ca_pair = if let Some(pair) = supplied_ca {
        if wanted("ca") {
            items.insert("ca".to_string(), pair.clone());
        }
        pair
    } else if wanted("ca") {
        let t = entry("ca")?.template(profile.key.ca_key(), not_before, until(profile.validity.ca));
        let pair = keys.take(t.key).and_then(|k| issue::issue_ca_with_key(&t, &k)).map_err(failed("the cluster CA"))?;
        items.insert("ca".to_string(), pair.clone());
        pair
    } else {
        let cp = model.view.properties.certificate_profile.clone().unwrap_or_default();
        match (cp.ca_certificate, cp.ca_private_key) {
            (Some(cert_pem), Some(key_pem)) => KeyCertPair { cert_pem, key_pem },
            _ => {
                return Err(StoreError::Plan(
                    "the plan keeps the cluster CA, but apimodel.json holds no caCertificate/caPrivateKey to sign with".into(),
                ))
            }
        }
    };
    let ca = CertificateAuthority::load(&ca_pair).map_err(failed("loading the cluster CA"))?;

    let mut proxy_ca_cert_pem = None;
    let proxy_ca = if wanted("proxy-ca") || wanted("proxy") {
        let t = entry("proxy-ca")?.template(profile.key_for(CertId::ProxyCa), not_before, until(profile.validity.front_proxy_ca));
        let pair = keys.take(t.key).and_then(|k| issue::issue_ca_with_key(&t, &k)).map_err(failed("the front-proxy CA"))?;
        proxy_ca_cert_pem = Some(pair.cert_pem.clone());
        items.insert("proxy-ca".to_string(), pair.clone());
        Some(CertificateAuthority::load(&pair).map_err(failed("loading the front-proxy CA"))?)
    } else {
        None
    };

    for id in ids {
        if id == "ca" || id == "proxy-ca" {
            continue;
        }
        let e = entry(id)?;
        if let Some(pair) = supplied_leaf(&e) {
            items.insert(id.clone(), pair);
            continue;
        }
        let pair = match e.kind {
            CertKind::KubeletServer => {
                let t = e.template(profile.key.leaf_key(), not_before, until(profile.validity.leaf));
                keys.take(t.key).and_then(|k| issue::issue_ca_with_key(&t, &k)).map_err(failed(id))?
            }
            CertKind::Proxy => {
                let t = e.template(profile.key_for(CertId::Proxy), not_before, until(profile.validity.front_proxy_client));
                keys.take(t.key).and_then(|k| proxy_ca.as_ref().expect("made above").issue_with_key(&t, &k)).map_err(failed(id))?
            }
            _ => {
                let mut t = e.template(profile.key.leaf_key(), not_before, until(profile.validity.leaf));
                if e.kind == CertKind::Apiserver {
                    for name in &profile.extra_sans.dns {
                        if !t.dns_sans.iter().any(|d| d == name.as_str()) {
                            t.dns_sans.push(name.as_str().to_string());
                        }
                    }
                    for ip in &profile.extra_sans.ips {
                        if !t.ip_sans.contains(&ip.0) {
                            t.ip_sans.push(ip.0);
                        }
                    }
                }
                if e.kind == CertKind::Apiserver && !wanted("ca") {
                    // Service-account tokens are signed with this key: keep it, or every token
                    // breaks from the first master restart until tokens are recreated.
                    let key = kept_apiserver_key(model).map_err(failed(id))?;
                    ca.issue_with_key(&t, &key).map_err(failed(id))?
                } else {
                    keys.take(t.key).and_then(|k| ca.issue_with_key(&t, &k)).map_err(failed(id))?
                }
            }
        };
        items.insert(id.clone(), pair);
    }
    Ok(NewPki { items, ca_cert_pem: ca_pair.cert_pem, proxy_ca_cert_pem })
}

/// A certificateProfile field's certificate and key as a pair, when both halves are there.
fn pair_of((cert, key): (Option<&str>, Option<&str>)) -> Option<KeyCertPair> {
    Some(KeyCertPair { cert_pem: cert?.to_string(), key_pem: key?.to_string() })
}

/// The apiserver's current key, from apiServerPrivateKey in the API model, checked against
/// apiServerCertificate there.
fn kept_apiserver_key(model: &ApiModel) -> Result<issue::GeneratedKey, issue::IssueError> {
    let cp = model.view.properties.certificate_profile.clone().unwrap_or_default();
    let bad = |reason: &str| issue::IssueError::BadKey {
        what: "apiServerPrivateKey",
        reason: format!("{reason}; the plan keeps the apiserver key so service-account tokens stay valid: fix apimodel.json, or plan with a profile that replaces the CA"),
    };
    let (Some(cert), Some(key)) = (cp.api_server_certificate.as_deref(), cp.api_server_private_key.as_deref()) else {
        return Err(bad("apimodel.json holds no apiServerCertificate/apiServerPrivateKey"));
    };
    if !inspect::key_matches_cert(key, cert).unwrap_or(false) {
        return Err(bad("apiServerPrivateKey in apimodel.json does not belong to apiServerCertificate"));
    }
    issue::GeneratedKey::from_pem(key, "apiServerPrivateKey")
}

/// The API model's certificateProfile with every changed certificate kept there replaced.
pub fn updated_certificate_profile(model: &ApiModel, catalogue: &[CertEntry], pki: &NewPki) -> CertificateProfile {
    let mut cp = model.view.properties.certificate_profile.clone().unwrap_or_default();
    for e in catalogue {
        let Some(pair) = pki.get(&e.id()) else { continue };
        match &e.apimodel_field {
            Some(ApiModelField::Pair { cert, .. }) => cp.set_pair(cert, pair.cert_pem.clone(), pair.key_pem.clone()),
            Some(ApiModelField::PeerIndex(i)) => {
                while cp.etcd_peer_certificates.len() <= *i {
                    cp.etcd_peer_certificates.push(String::new());
                }
                while cp.etcd_peer_private_keys.len() <= *i {
                    cp.etcd_peer_private_keys.push(String::new());
                }
                cp.etcd_peer_certificates[*i] = pair.cert_pem.clone();
                cp.etcd_peer_private_keys[*i] = pair.key_pem.clone();
            }
            None => {}
        }
    }
    cp
}
