//! The one remote command refresh runs on each node, and the parser of what it prints.
//!
//! The script is POSIX sh run as root through sudo. It reads every catalogue file the node
//! should hold, and prints one tab-separated record per fact. Certificates travel as one
//! base64 stream, cut by size and checked by digest; private keys never leave the node:
//! `openssl pkey -pubout` derives their public key there and only that travels. Kubeconfigs
//! travel as text, one prefixed line each, with secret fields redacted on the node, plus the
//! public key of the embedded key. etcd's front-proxy key is treated the same way.

use crate::model::inventory::{EtcdProxyState, NodeInventory, ObservedContent, ObservedFile, ObservedKubeconfig, Symlink};
use crate::pki::catalogue::{self, CertEntry, CERT_DIR, ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY, ETCD_PROXY_PREFIX};
use crate::pki::{inspect, proxycerts};
use crate::model::topology::{Node, Role};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// What refresh must read on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReadSpec {
    pub cert_paths: Vec<String>,
    pub key_paths: Vec<String>,
    pub kubeconfig_paths: Vec<String>,
    /// Masters: read the front-proxy material from the local etcd member.
    pub read_etcd_proxy: bool,
}

impl NodeReadSpec {
    pub fn for_node(node: &Node, catalogue: &[CertEntry], admin_username: &str) -> Self {
        let mut spec = NodeReadSpec { cert_paths: vec![], key_paths: vec![], kubeconfig_paths: vec![], read_etcd_proxy: false };
        // The admin kubeconfig's certificate is read from the kubeconfig itself, below.
        for e in catalogue.iter().filter(|e| e.holders.contains(&node.name) && !e.in_admin_kubeconfig()) {
            spec.cert_paths.push(e.cert_file.path.clone());
            if catalogue::holds_key(e, node) {
                if let Some(k) = &e.key_file {
                    spec.key_paths.push(k.path.clone());
                }
            }
        }
        spec.kubeconfig_paths.push(catalogue::KUBELET_KUBECONFIG.to_string());
        if node.role == Role::Master {
            spec.kubeconfig_paths.push(catalogue::admin_kubeconfig_path(admin_username));
            spec.read_etcd_proxy = true;
        }
        spec
    }
}

/// A single-quoted sh word; shared by every script certrotate sends to a node.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script for one node. It works from `$ROOT` (`/` on real nodes) with relative paths,
/// so the same script is tested against a directory tree.
pub fn refresh_script(spec: &NodeReadSpec) -> String {
    let list = |v: &[String]| v.iter().map(|p| sh_quote(p)).collect::<Vec<_>>().join(" ");
    // Masters: one etcdctl for all three front-proxy values (each etcdctl start costs tens of
    // milliseconds on the slowest nodes of every plan). Its output is key line, value lines;
    // the key's value goes only into openssl, on the node.
    let etcd = if spec.read_etcd_proxy {
        format!(
            r#"
c={cert_dir_rel}
# Between apply's install and etcd's restart, etcd already serves its new certificate (it
# reads it again for every handshake) but still trusts only client certificates of the CA it
# started with: the one in certs.bak, where apply backs the directory up (apply::node::BACKUP).
# Then members trusting different CAs have no quorum, so those reads are serializable: the
# member answers from its own store.
nl='
'
{aks_read}
etcd_get() {{ ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert="$1/ca.crt" --cert="$2/etcdclient.crt" --key="$2/etcdclient.key" --command-timeout=5s get {prefix} --prefix ${{3-}} 2>/dev/null; }}
if [ -r "$c/etcdclient.key" ] && command -v etcdctl >/dev/null 2>&1; then
  out=$(etcd_get "$c" "$c") || {{ [ -r "$c.bak/etcdclient.key" ] && {{ out=$(etcd_get "$c" "$c.bak" --consistency=s) || out=$(etcd_get "$c.bak" "$c.bak" --consistency=s); }}; }} || out=
  ca=; cert=; key=; cur=; o=$IFS; IFS='
'; set -f
  for l in $out; do
    case $l in
      {ca}|{cert}|{key}) cur=$l ;;
      *) case $cur in
           {ca}) ca="$ca$l
" ;;
           {cert}) cert="$cert$l
" ;;
           {key}) key="$key$l
" ;;
         esac ;;
    esac
  done
  set +f; IFS=$o; out=
  printf 'ETCD\t%s\t%s\n' {ca} "$(printf %s "$ca" | base64 -w0)"
  printf 'ETCD\t%s\t%s\n' {cert} "$(printf %s "$cert" | base64 -w0)"
  # The key is read as AKS Engine's masters read it (its form travels, the key does not).
  aks_read "$key"; key=; printf 'ETCDKEYFORM\t%s\n' "$form"
  pem_body "$(printf %s "$aks" | openssl pkey -passin pass: -pubout 2>/dev/null)"; aks=; printf 'ETCDKEYPUB\t%s\n' "$b"
fi"#,
            prefix = sh_quote(ETCD_PROXY_PREFIX),
            ca = sh_quote(ETCD_PROXY_CA_KEY),
            cert = sh_quote(ETCD_PROXY_CERT_KEY),
            key = sh_quote(ETCD_PROXY_KEY_KEY),
            cert_dir_rel = sh_quote(CERT_DIR.trim_start_matches('/')),
            aks_read = proxycerts::SH_AKS_READ,
        )
    } else {
        String::new()
    };
    // Few processes per node: refresh runs on every node at once, so each fork and exec
    // costs wall time across the whole cluster. One stat and one sha256sum cover every file,
    // and one base64 every certificate: the client cuts that stream by the sizes stat gave
    // and checks each part against its sha256sum digest, so a file rewritten while it was
    // read is caught rather than misread. Keys need one openssl each; their PEM output is
    // already base64 and kubeconfigs are text, so neither needs base64 (shell builtins
    // strip the PEM armour, and sed prefixes every kubeconfig line while it redacts).
    // Only regular files are read (after symlinks): a FIFO would block sha256sum for ever.
    // Kubeconfig redaction replaces secret values in JSON (escaped quotes too, the rest of
    // the line kept so the JSON still parses), then whole YAML values (quoted keys and list
    // items too), and drops lines without a colon other than JSON's brackets: that is where
    // block scalars (`token: |`) and list items keep their text.
    format!(
        r#"set -u
cd "${{ROOT:-/}}" || exit 1
pem_body() {{ b=; o=$IFS; IFS='
'; set -f; for l in $1; do case $l in -----*) ;; *) b=$b$l ;; esac; done; set +f; IFS=$o; }}
h=; read -r h < /proc/sys/kernel/hostname 2>/dev/null || h=$(hostname)
printf 'HOST\t%s\n' "$h"
set --
for f in {certs} {keys}; do
  if [ -L "${{f#/}}" ]; then printf 'LINK\t%s\t%s\n' "$f" "$(readlink -- "${{f#/}}")"; fi
  if [ -f "${{f#/}}" ]; then set -- "$@" "${{f#/}}"
  elif [ -e "${{f#/}}" ]; then printf 'NOTFILE\t%s\n' "$f"
  else printf 'MISSING\t%s\n' "$f"; fi
done
if [ $# -gt 0 ]; then sha256sum -- "$@" | while read -r d n; do printf 'SHA\t/%s\t%s\n' "$n" "$d"; done; fi
for f in {kubeconfigs}; do if [ -f "${{f#/}}" ]; then set -- "$@" "${{f#/}}"; fi; done
if [ $# -gt 0 ]; then stat -L --printf 'FILE\t/%n\t%U\t%G\t%a\t%s\n' -- "$@"; fi
set --
for f in {certs}; do
  if [ -f "${{f#/}}" ]; then set -- "$@" "${{f#/}}"; printf 'PEMFILE\t%s\n' "$f"; fi
done
if [ $# -gt 0 ]; then printf 'PEMS\t'; cat -- "$@" | base64 -w0; printf '\n'; fi
for f in {keys}; do
  if [ -f "${{f#/}}" ]; then
    pem_body "$(openssl pkey -in "${{f#/}}" -passin pass: -pubout 2>/dev/null </dev/null)"
    if [ -n "$b" ]; then printf 'PUB\t%s\t%s\n' "$f" "$b"
    elif grep -q -e '-----BEGIN ENCRYPTED PRIVATE KEY-----' -e '^Proc-Type: 4,ENCRYPTED' -- "${{f#/}}" 2>/dev/null; then printf 'PUBERR\t%s\tencrypted\n' "$f"
    else printf 'PUBERR\t%s\n' "$f"; fi
  fi
done
for f in {kubeconfigs}; do
  if [ -f "${{f#/}}" ]; then
    printf 'KCFG\t%s\n' "$f"
    sed -E -e '/^[^:]*$/{{/^[[:space:]]*[][{{}},]*[[:space:]]*$/!d;}}' \
      -e 's/("({secret_keys})"[[:space:]]*:[[:space:]]*")([^"\\]|\\.)*"/\1REDACTED"/g' \
      -e '/^[[:space:]]*(- )?["'\'']?({secret_keys})["'\'']?[[:space:]]*:[[:space:]]*"REDACTED"/!s/^([[:space:]]*(- )?["'\'']?({secret_keys})["'\'']?[[:space:]]*:).*/\1 REDACTED/' \
      -e 's/^/KCFGLINE\t/' "${{f#/}}"
    printf '\nKCFGEND\t%s\n' "$f"
    k=$(sed -nE -e '/^[[:space:]]*client-key-data:/{{s/^[[:space:]]*client-key-data:[[:space:]]*"?([A-Za-z0-9+\/=]+)"?.*/\1/p;q;}}' -e '/"client-key-data"[[:space:]]*:/{{s/.*"client-key-data"[[:space:]]*:[[:space:]]*"([^"]*)".*/\1/p;q;}}' "${{f#/}}")
    if [ -n "$k" ]; then pem_body "$(printf %s "$k" | base64 -d 2>/dev/null | openssl pkey -passin pass: -pubout 2>/dev/null)"; printf 'KCFGKEYPUB\t%s\t%s\n' "$f" "$b"; fi
  fi
done
for p in ./{cert_dir_rel}/*; do if [ -e "$p" ]; then printf 'LS\t%s\n' "{cert_dir}/${{p##*/}}"; fi; done
if [ -e {kubelet_pem_rel} ]; then printf 'KUBELETPEM\t1\n'; else printf 'KUBELETPEM\t0\n'; fi{etcd}
printf 'END\n'
"#,
        certs = list(&spec.cert_paths),
        keys = list(&spec.key_paths),
        kubeconfigs = list(&spec.kubeconfig_paths),
        cert_dir = CERT_DIR,
        cert_dir_rel = sh_quote(CERT_DIR.trim_start_matches('/')),
        kubelet_pem_rel = sh_quote(catalogue::KUBELET_CLIENT_CURRENT.trim_start_matches('/')),
        secret_keys = KUBECONFIG_SECRET_KEYS.join("|"),
    )
}

/// Kubeconfig fields whose values are secrets and never leave the node: the embedded key, and
/// every kind of token, password and client secret kubeconfigs and auth plugins carry.
const KUBECONFIG_SECRET_KEYS: &[&str] =
    &["client-key-data", "token", "password", "access-token", "id-token", "refresh-token", "client-secret", "secret"];

/// Output that does not follow the protocol (a truncated run, a shell error).
#[derive(Debug, thiserror::Error)]
#[error("node {node}: unexpected refresh output: {why}")]
pub struct ParseError {
    pub node: String,
    pub why: String,
}

/// Parses the script's output into the node's inventory.
pub fn parse_output(node: &str, spec: &NodeReadSpec, out: &str) -> Result<NodeInventory, ParseError> {
    let err = |why: String| ParseError { node: node.to_string(), why };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut inv = NodeInventory {
        node: node.to_string(),
        hostname: String::new(),
        files: vec![],
        kubeconfigs: vec![],
        unexpected_files: vec![],
        etcd_proxy: None,
        kubelet_client_current: false,
        symlinks: vec![],
    };
    let mut meta: std::collections::HashMap<String, FileMeta> = Default::default();
    let mut listed: Vec<String> = vec![];
    let mut ended = false;
    let mut etcd = EtcdProxyState { ca_sha256: None, client_cert_sha256: None, client_key_public_sha256: None, wrong_form: vec![] };
    let mut saw_etcd = false;
    let mut pem_files: Vec<String> = vec![];
    let mut kubeconfig: Option<(String, String)> = None;
    for line in out.lines() {
        // Kubeconfig lines are the file's own text, tabs and all: they are taken whole.
        if let Some(text) = line.strip_prefix("KCFGLINE\t") {
            let Some((_, body)) = kubeconfig.as_mut() else {
                return Err(err("a kubeconfig line outside a kubeconfig".into()));
            };
            body.push_str(text);
            body.push('\n');
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let decode = |s: &str| b64.decode(s.trim()).map_err(|e| err(format!("bad base64 in {line:.60}: {e}")));
        match f.as_slice() {
            ["HOST", h] => inv.hostname = h.to_string(),
            ["FILE", path, owner, group, mode, size] => {
                let mode = u32::from_str_radix(mode, 8).map_err(|_| err(format!("bad mode {mode} for {path}")))?;
                let size = size.parse().map_err(|_| err(format!("bad size {size} for {path}")))?;
                let entry = meta.entry(path.to_string()).or_default();
                (entry.owner, entry.group, entry.mode, entry.size) = (owner.to_string(), group.to_string(), mode, size);
            }
            ["SHA", path, sha] => meta.entry(path.to_string()).or_default().sha256 = sha.to_string(),
            ["MISSING", path] => inv.files.push(ObservedFile {
                path: path.to_string(),
                owner: String::new(),
                group: String::new(),
                mode: 0,
                sha256: String::new(),
                content: ObservedContent::Missing,
            }),
            ["PEMFILE", path] => pem_files.push(path.to_string()),
            // A directory, FIFO or device where a certificate or key belongs: nothing is read
            // from it (a FIFO would block), and it stays out of the certificate stream.
            ["NOTFILE", path] => inv.files.push(observed(&meta, path, ObservedContent::Unparseable { error: "not a regular file".into() })),
            ["PEMS", data] => {
                let mut rest = &decode(data)?[..];
                for path in pem_files.drain(..) {
                    let Some(m) = meta.get(&path).filter(|m| !m.sha256.is_empty()) else {
                        return Err(err(format!("no size or digest for {path}: stat or sha256sum could not read it")));
                    };
                    let Some(part) = rest.get(..m.size).filter(|part| m.sha256 == hex::encode(Sha256::digest(part))) else {
                        return Err(err(format!("{path} changed while it was read; run again")));
                    };
                    let size = m.size;
                    rest = &rest[size..];
                    let pem = String::from_utf8(part.to_vec()).unwrap_or_default();
                    let content = match inspect::parse_cert_pem(&pem) {
                        Ok(facts) => ObservedContent::Certificate { facts: Box::new(facts), pem },
                        Err(e) => ObservedContent::Unparseable { error: e.to_string() },
                    };
                    inv.files.push(observed(&meta, &path, content));
                }
                if !rest.is_empty() {
                    return Err(err("the certificate files changed while they were read; run again".into()));
                }
            }
            ["PUB", path, data] => {
                let der = decode(data)?;
                let content = match inspect::public_key_facts_from_spki_der(&der) {
                    Ok((algorithm, bits)) => ObservedContent::PrivateKey {
                        algorithm,
                        bits,
                        public_key_sha256: hex::encode(Sha256::digest(&der)),
                    },
                    Err(e) => ObservedContent::Unparseable { error: e.to_string() },
                };
                inv.files.push(observed(&meta, path, content));
            }
            ["PUBERR", path] => inv.files.push(observed(
                &meta,
                path,
                ObservedContent::Unparseable { error: "not a private key openssl can read".into() },
            )),
            ["PUBERR", path, "encrypted"] => inv.files.push(observed(
                &meta,
                path,
                ObservedContent::Unparseable { error: "an encrypted (passphrase-protected) private key; the components read unencrypted keys".into() },
            )),
            ["KCFG", path] => kubeconfig = Some((path.to_string(), String::new())),
            ["KCFGEND", path] => {
                let Some((started, text)) = kubeconfig.take().filter(|(started, _)| started == path) else {
                    return Err(err(format!("the end of kubeconfig {path} without its start")));
                };
                let m = meta.get(&started).cloned().unwrap_or_default();
                inv.kubeconfigs.push(parse_kubeconfig(path, &m.owner, m.mode, &text));
                // The admin kubeconfig carries the kubeconfig certificate inline (AKS Engine
                // writes it nowhere else on a node): it is observed there, as a certificate.
                if path.starts_with("/home/") && path.ends_with("/.kube/config") {
                    if let Some(pem) = embedded_client_certificate(&text) {
                        let content = match inspect::parse_cert_pem(&pem) {
                            Ok(facts) => ObservedContent::Certificate { facts: Box::new(facts), pem: pem.clone() },
                            Err(e) => ObservedContent::Unparseable { error: format!("client-certificate-data: {e}") },
                        };
                        let FileMeta { owner, group, mode, .. } = m;
                        inv.files.push(ObservedFile { path: path.to_string(), owner, group, mode, sha256: hex::encode(Sha256::digest(pem.as_bytes())), content });
                    }
                }
            }
            ["KCFGKEYPUB", path, data] => {
                let der = decode(data)?;
                if let Some(k) = inv.kubeconfigs.iter_mut().find(|k| k.path == *path) {
                    k.client_key = Some(if der.is_empty() {
                        "embedded:unreadable".into()
                    } else {
                        format!("embedded:{}", hex::encode(Sha256::digest(&der)))
                    });
                }
            }
            ["LS", path] => listed.push(path.to_string()),
            ["KUBELETPEM", v] => inv.kubelet_client_current = *v == "1",
            ["LINK", path, target @ ..] => inv.symlinks.push(Symlink { path: path.to_string(), target: target.join("\t") }),
            ["ETCD", key, data] => {
                saw_etcd = true;
                // As etcdctl printed it; judged and read as AKS Engine's masters read it.
                let printed = String::from_utf8(decode(data)?).unwrap_or_default();
                if proxycerts::StoredForm::of(&printed).is_wrong() {
                    etcd.wrong_form.push(key.to_string());
                }
                let digest = inspect::parse_cert_pem(&proxycerts::read_back_printed(&printed)).ok().map(|f| f.sha256_fingerprint);
                if *key == ETCD_PROXY_CA_KEY {
                    etcd.ca_sha256 = digest;
                } else if *key == ETCD_PROXY_CERT_KEY {
                    etcd.client_cert_sha256 = digest;
                }
            }
            ["ETCDKEYFORM", form] => {
                if matches!(*form, "raw" | "other") {
                    etcd.wrong_form.push(ETCD_PROXY_KEY_KEY.to_string());
                }
            }
            ["ETCDKEYPUB", data] => {
                let der = decode(data)?;
                etcd.client_key_public_sha256 = (!der.is_empty()).then(|| hex::encode(Sha256::digest(&der)));
            }
            ["ETCDKEYPUB"] => {}
            ["END"] => ended = true,
            _ if line.trim().is_empty() => {}
            _ => return Err(err(format!("unrecognised line {line:.80}"))),
        }
    }
    if let Some((path, _)) = kubeconfig {
        return Err(err(format!("kubeconfig {path} was cut short")));
    }
    if let Some(path) = pem_files.first() {
        return Err(err(format!("{path} was announced but its content never came")));
    }
    if !ended {
        return Err(err("the output ended early (connection dropped or the script failed)".into()));
    }
    if saw_etcd {
        inv.etcd_proxy = Some(etcd);
    }
    let known: Vec<&String> = spec.cert_paths.iter().chain(spec.key_paths.iter()).collect();
    inv.unexpected_files = listed.into_iter().filter(|p| !known.contains(&p) && !is_known_elsewhere(p)).collect();
    Ok(inv)
}

/// Files under the cert directory that belong to AKS Engine but are not certrotate's
/// (other nodes' etcd peer files are not expected; the CA key on agents is not either).
fn is_known_elsewhere(path: &str) -> bool {
    path.ends_with(".bak") || path.ends_with("/certs.bak")
}

/// What stat and sha256sum said about one file.
#[derive(Debug, Clone, Default)]
struct FileMeta {
    owner: String,
    group: String,
    mode: u32,
    sha256: String,
    size: usize,
}

fn observed(meta: &std::collections::HashMap<String, FileMeta>, path: &str, content: ObservedContent) -> ObservedFile {
    let FileMeta { owner, group, mode, sha256, .. } = meta.get(path).cloned().unwrap_or_default();
    ObservedFile { path: path.to_string(), owner, group, mode, sha256, content }
}

/// The PEM of the first user's inline client certificate, when it has one.
pub fn embedded_client_certificate(text: &str) -> Option<String> {
    let doc = serde_yaml::from_str::<serde_yaml::Value>(text).ok()?;
    let data = doc.get("users")?.as_sequence()?.first()?.get("user")?.get("client-certificate-data")?.as_str()?.to_string();
    let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).ok()?;
    Some(String::from_utf8_lossy(&pem).into_owned())
}

/// Reads what a kubeconfig's current user and cluster refer to. Inline data becomes
/// `embedded:<sha256>` (of the certificate DER for certificates).
pub fn parse_kubeconfig(path: &str, owner: &str, mode: u32, text: &str) -> ObservedKubeconfig {
    let mut k = ObservedKubeconfig {
        path: path.to_string(),
        owner: owner.to_string(),
        mode,
        server: None,
        certificate_authority: None,
        client_certificate: None,
        client_key: None,
    };
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return k;
    };
    let first = |list: &str, inner: &str| -> Option<serde_yaml::Value> {
        doc.get(list)?.as_sequence()?.first()?.get(inner).cloned()
    };
    let embedded_cert = |b64data: &str| -> String {
        let pem = base64::engine::general_purpose::STANDARD.decode(b64data.trim()).unwrap_or_default();
        match inspect::parse_cert_pem(&String::from_utf8_lossy(&pem)) {
            Ok(f) => format!("embedded:{}", f.sha256_fingerprint),
            Err(_) => "embedded:unreadable".into(),
        }
    };
    if let Some(cluster) = first("clusters", "cluster") {
        k.server = cluster.get("server").and_then(|v| v.as_str()).map(String::from);
        k.certificate_authority = cluster
            .get("certificate-authority")
            .and_then(|v| v.as_str())
            .map(String::from)
            .or_else(|| cluster.get("certificate-authority-data").and_then(|v| v.as_str()).map(embedded_cert));
    }
    if let Some(user) = first("users", "user") {
        k.client_certificate = user
            .get("client-certificate")
            .and_then(|v| v.as_str())
            .map(String::from)
            .or_else(|| user.get("client-certificate-data").and_then(|v| v.as_str()).map(embedded_cert));
        k.client_key = user.get("client-key").and_then(|v| v.as_str()).map(String::from);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{issue, CertTemplate, ExtendedUsage, KeySpec};

    fn pair(cn: &str, ca: Option<&crate::pki::KeyCertPair>) -> crate::pki::KeyCertPair {
        let now = time::OffsetDateTime::now_utc();
        let t = CertTemplate {
            common_name: cn.into(),
            organization: None,
            dns_sans: vec![],
            ip_sans: vec![],
            is_ca: ca.is_none(),
            extended_usages: if ca.is_none() { vec![] } else { vec![ExtendedUsage::ClientAuth] },
            key: KeySpec::EcdsaP256,
            not_before: now,
            not_after: now + time::Duration::days(30),
        };
        match ca {
            None => issue::issue_ca(&t).unwrap(),
            Some(ca) => issue::issue_leaf(&t, ca).unwrap(),
        }
    }

    /// Runs the real script with sh against a directory tree standing in for a node.
    #[test]
    fn script_reads_certs_and_only_public_halves_of_keys() {
        let root = tempfile::tempdir().unwrap();
        let certs = root.path().join("etc/kubernetes/certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::create_dir_all(root.path().join("var/lib/kubelet")).unwrap();
        let ca = pair("ca", None);
        let client = pair("client", Some(&ca));
        // ca.crt is a symlink: its size, owner and mode are the target's.
        std::fs::write(certs.join("ca-real.pem"), &ca.cert_pem).unwrap();
        std::os::unix::fs::symlink("ca-real.pem", certs.join("ca.crt")).unwrap();
        std::fs::write(certs.join("client.crt"), &client.cert_pem).unwrap();
        // A FIFO where a key belongs must be reported, not block the script.
        assert!(std::process::Command::new("mkfifo").arg(certs.join("apiserver.key")).status().unwrap().success());
        std::fs::write(certs.join("client.key"), &client.key_pem).unwrap();
        std::fs::write(certs.join("stray.pem"), "x").unwrap();
        std::fs::create_dir(certs.join("apiserver.crt")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: std::path::PathBuf, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        mode(certs.join("ca.crt"), 0o640);
        mode(certs.join("client.key"), 0o600);
        let b64 = base64::engine::general_purpose::STANDARD;
        std::fs::write(
            root.path().join("var/lib/kubelet/kubeconfig"),
            format!(
                "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority: /etc/kubernetes/certs/ca.crt\n    server: https://10.255.255.5:443\n  name: c\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n- name: t\n  user:\n    token: s3cr3t-bearer-token\n    password: s3cr3t-password\n\
                 - name: block\n  user:\n    \"token\": |\n      s3cr3t-block-scalar\n    auth-provider:\n      config:\n        access-token: s3cr3t-access\n        refresh-token: s3cr3t-refresh\n        client-secret: s3cr3t-client\n",
                b64.encode(&client.cert_pem),
                b64.encode(&client.key_pem)
            ),
        )
        .unwrap();
        mode(root.path().join("var/lib/kubelet/kubeconfig"), 0o604);
        // apply writes the admin kubeconfig as pretty JSON; a password may hold escaped quotes.
        std::fs::create_dir_all(root.path().join("home/azureuser/.kube")).unwrap();
        std::fs::write(
            root.path().join("home/azureuser/.kube/config"),
            "{\n  \"clusters\": [\n    {\n      \"cluster\": {\n        \"server\": \"https://10.255.255.6:443\"\n      },\n      \"name\": \"c\"\n    }\n  ],\n  \"users\": [\n    {\n      \"name\": \"u\",\n      \"user\": {\n        \"password\": \"pw\\\"s3cr3t-escaped\",\n        \"token\": \"s3cr3t-json\", \"client-certificate\": \"/etc/kubernetes/certs/client.crt\"\n      }\n    }\n  ]\n}\n",
        )
        .unwrap();
        let spec = NodeReadSpec {
            cert_paths: vec![
                "/etc/kubernetes/certs/ca.crt".into(),
                "/etc/kubernetes/certs/client.crt".into(),
                "/etc/kubernetes/certs/apiserver.crt".into(),
                "/etc/kubernetes/certs/kubectlClient.crt".into(),
            ],
            key_paths: vec!["/etc/kubernetes/certs/client.key".into(), "/etc/kubernetes/certs/apiserver.key".into()],
            kubeconfig_paths: vec!["/var/lib/kubelet/kubeconfig".into(), "/home/azureuser/.kube/config".into()],
            read_etcd_proxy: false,
        };
        let out = std::process::Command::new("timeout")
            .args(["20", "sh", "-c"])
            .arg(refresh_script(&spec))
            .env("ROOT", root.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "the script failed or hung: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.contains(&b64.encode(&client.key_pem)), "the key left the node");
        // Kubeconfigs travel as text, one prefixed line each.
        let kubeconfigs: String = stdout.lines().filter_map(|l| l.strip_prefix("KCFGLINE\t")).collect();
        assert!(kubeconfigs.contains("client-certificate-data"), "the kubeconfig travelled: {kubeconfigs}");
        assert!(!stdout.contains("s3cr3t"), "a token or password left the node: {stdout}");
        let key_body: String = client.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!stdout.contains(&key_body[..40]), "the key left the node");
        let inv = parse_output("n1", &spec, &stdout).unwrap();
        let client_cert = crate::pki::inspect::parse_cert_pem(&client.cert_pem).unwrap();
        match &inv.file("/etc/kubernetes/certs/client.key").unwrap().content {
            ObservedContent::PrivateKey { public_key_sha256, .. } => assert_eq!(public_key_sha256, &client_cert.public_key_sha256),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            inv.file("/etc/kubernetes/certs/apiserver.crt").unwrap().content,
            ObservedContent::Unparseable { error: "not a regular file".into() },
            "a directory where a certificate belongs is reported, and the other files still read"
        );
        assert_eq!(inv.file("/etc/kubernetes/certs/kubectlClient.crt").unwrap().content, ObservedContent::Missing);
        assert!(matches!(inv.file("/etc/kubernetes/certs/ca.crt").unwrap().content, ObservedContent::Certificate { .. }));
        assert_eq!(inv.file("/etc/kubernetes/certs/apiserver.key").unwrap().content, ObservedContent::Unparseable { error: "not a regular file".into() });
        assert_eq!(inv.unexpected_files, vec!["/etc/kubernetes/certs/ca-real.pem".to_string(), "/etc/kubernetes/certs/stray.pem".to_string()]);
        assert_eq!(inv.symlinks, vec![Symlink { path: "/etc/kubernetes/certs/ca.crt".into(), target: "ca-real.pem".into() }]);
        // Owners, modes and digests come from one stat and one sha256sum over every file.
        let owner = String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let ca_file = inv.file("/etc/kubernetes/certs/ca.crt").unwrap();
        assert_eq!((ca_file.owner.as_str(), ca_file.mode), (owner.trim(), 0o640));
        assert_eq!(ca_file.sha256, hex::encode(Sha256::digest(ca.cert_pem.as_bytes())));
        let key_file = inv.file("/etc/kubernetes/certs/client.key").unwrap();
        assert_eq!((key_file.mode, key_file.sha256.as_str()), (0o600, hex::encode(Sha256::digest(client.key_pem.as_bytes())).as_str()));
        let admin = &inv.kubeconfigs[1];
        assert_eq!(admin.server.as_deref(), Some("https://10.255.255.6:443"), "the redacted JSON kubeconfig still parses");
        assert_eq!(admin.client_certificate.as_deref(), Some("/etc/kubernetes/certs/client.crt"));
        let kc = &inv.kubeconfigs[0];
        assert_eq!((kc.owner.as_str(), kc.mode), (owner.trim(), 0o604));
        assert_eq!(kc.server.as_deref(), Some("https://10.255.255.5:443"));
        assert_eq!(kc.certificate_authority.as_deref(), Some("/etc/kubernetes/certs/ca.crt"));
        assert_eq!(kc.client_certificate.as_deref(), Some(format!("embedded:{}", client_cert.sha256_fingerprint).as_str()));
        assert_eq!(kc.client_key.as_deref(), Some(format!("embedded:{}", client_cert.public_key_sha256).as_str()));
        assert!(!inv.kubelet_client_current);
    }

    /// Certificates travel in one stream cut by stat's sizes: a file rewritten between stat and
    /// the read must be refused, not cut in the wrong place.
    #[test]
    fn certificate_rewritten_while_read_is_refused() {
        let ca = pair("ca", None);
        let client = pair("client", Some(&ca));
        let b64 = base64::engine::general_purpose::STANDARD;
        let spec = NodeReadSpec {
            cert_paths: vec!["/etc/kubernetes/certs/ca.crt".into(), "/etc/kubernetes/certs/client.crt".into()],
            key_paths: vec![],
            kubeconfig_paths: vec![],
            read_etcd_proxy: false,
        };
        let digest = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
        let output = |client_now: &str| {
            format!(
                "HOST\tn1\nSHA\t/etc/kubernetes/certs/ca.crt\t{}\nSHA\t/etc/kubernetes/certs/client.crt\t{}\n\
                 FILE\t/etc/kubernetes/certs/ca.crt\troot\troot\t644\t{}\nFILE\t/etc/kubernetes/certs/client.crt\troot\troot\t644\t{}\n\
                 PEMFILE\t/etc/kubernetes/certs/ca.crt\nPEMFILE\t/etc/kubernetes/certs/client.crt\nPEMS\t{}\nEND\n",
                digest(&ca.cert_pem),
                digest(&client.cert_pem),
                ca.cert_pem.len(),
                client.cert_pem.len(),
                b64.encode(format!("{}{}", ca.cert_pem, client_now)),
            )
        };
        let inv = parse_output("n1", &spec, &output(&client.cert_pem)).unwrap();
        assert!(matches!(inv.file("/etc/kubernetes/certs/client.crt").unwrap().content, ObservedContent::Certificate { .. }));
        let other = pair("client", Some(&ca));
        let e = parse_output("n1", &spec, &output(&other.cert_pem)).unwrap_err();
        assert!(e.why.contains("client.crt changed while it was read"), "{e}");
        let longer = format!("{}\n", client.cert_pem);
        assert!(parse_output("n1", &spec, &output(&longer)).unwrap_err().why.contains("changed while they were read"));
    }

    /// The front-proxy values come from one `etcdctl get --prefix` (a stand-in on PATH prints
    /// what etcd 3.4 prints); only the public half of the key leaves the node.
    #[test]
    fn front_proxy_material_is_read_from_etcd_in_one_call() {
        use std::os::unix::fs::PermissionsExt;
        assert!([ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY].iter().all(|k| k.starts_with(ETCD_PROXY_PREFIX)));
        let root = tempfile::tempdir().unwrap();
        let certs = root.path().join("etc/kubernetes/certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("etcdclient.key"), "client key").unwrap();
        let proxy_ca = pair("proxy-ca", None);
        let proxy = pair("proxy", Some(&proxy_ca));
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let stored = root.path().join("etcd-output");
        std::fs::write(
            &stored,
            aks_form_output(&[(ETCD_PROXY_CERT_KEY, &proxy.cert_pem), (ETCD_PROXY_KEY_KEY, &proxy.key_pem), (ETCD_PROXY_CA_KEY, &proxy_ca.cert_pem)]),
        )
        .unwrap();
        let etcdctl = bin.join("etcdctl");
        std::fs::write(&etcdctl, format!("#!/bin/sh\necho \"$*\" >> {0}.calls\ncat {0}\n", stored.display())).unwrap();
        std::fs::set_permissions(&etcdctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = NodeReadSpec { cert_paths: vec![], key_paths: vec![], kubeconfig_paths: vec![], read_etcd_proxy: true };
        let run = || {
            let out = std::process::Command::new("timeout")
                .args(["20", "sh", "-c"])
                .arg(refresh_script(&spec))
                .env("ROOT", root.path())
                .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let stdout = run();
        let calls = std::fs::read_to_string(root.path().join("etcd-output.calls")).unwrap();
        assert_eq!(calls.lines().count(), 1, "one etcdctl per node: {calls}");
        assert!(calls.contains(&format!("get {ETCD_PROXY_PREFIX} --prefix")), "{calls}");
        let key_body: String = proxy.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!stdout.contains(&key_body[..40]) && !stdout.contains("PRIVATE KEY"), "the front-proxy key left the node: {stdout}");
        let etcd = parse_output("m0", &spec, &stdout).unwrap().etcd_proxy.expect("etcd was read");
        let facts = |p: &crate::pki::KeyCertPair| crate::pki::inspect::parse_cert_pem(&p.cert_pem).unwrap();
        assert_eq!(etcd.ca_sha256, Some(facts(&proxy_ca).sha256_fingerprint));
        assert_eq!(etcd.client_cert_sha256, Some(facts(&proxy).sha256_fingerprint));
        assert_eq!(etcd.client_key_public_sha256, Some(facts(&proxy).public_key_sha256));
        assert!(etcd.wrong_form.is_empty(), "{:?}", etcd.wrong_form);

        // Raw PEM, as certrotate once wrote it: AKS Engine's reading step breaks every value.
        let raw = format!("{ETCD_PROXY_CERT_KEY}\n{}{ETCD_PROXY_KEY_KEY}\n{}{ETCD_PROXY_CA_KEY}\n{}", proxy.cert_pem, proxy.key_pem, proxy_ca.cert_pem);
        std::fs::write(&stored, &raw).unwrap();
        let etcd = parse_output("m0", &spec, &run()).unwrap().etcd_proxy.expect("etcd was read");
        let mut wrong = etcd.wrong_form.clone();
        wrong.sort();
        assert_eq!(wrong, [ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY, ETCD_PROXY_CA_KEY], "sorted");
        assert_eq!((etcd.ca_sha256, etcd.client_cert_sha256, etcd.client_key_public_sha256), (None, None, None), "nothing AKS Engine could read");
        // Only the CA in the wrong form.
        std::fs::write(&stored, aks_form_output(&[(ETCD_PROXY_CERT_KEY, &proxy.cert_pem), (ETCD_PROXY_KEY_KEY, &proxy.key_pem)]) + &format!("{ETCD_PROXY_CA_KEY}\n{}", proxy_ca.cert_pem)).unwrap();
        let etcd = parse_output("m0", &spec, &run()).unwrap().etcd_proxy.expect("etcd was read");
        assert_eq!(etcd.wrong_form, [ETCD_PROXY_CA_KEY.to_string()]);
        assert_eq!(etcd.client_key_public_sha256, Some(facts(&proxy).public_key_sha256));
        std::fs::write(&stored, aks_form_output(&[(ETCD_PROXY_CERT_KEY, &proxy.cert_pem), (ETCD_PROXY_KEY_KEY, &proxy.key_pem), (ETCD_PROXY_CA_KEY, &proxy_ca.cert_pem)])).unwrap();

        // Between apply's install and etcd's restart, real etcd serves the new certificate but
        // trusts only the client certificates of the CA in certs.bak: no single directory works.
        std::fs::create_dir_all(root.path().join("etc/kubernetes/certs.bak")).unwrap();
        std::fs::write(root.path().join("etc/kubernetes/certs.bak/etcdclient.key"), "old client key").unwrap();
        std::fs::remove_file(root.path().join("etcd-output.calls")).unwrap();
        let refusing = format!("#!/bin/sh\necho \"$*\" >> {0}.calls\ncase \"$*\" in *--cacert=etc/kubernetes/certs/ca.crt?--cert=etc/kubernetes/certs.bak/*) cat {0} ;; *) exit 1 ;; esac\n", stored.display());
        std::fs::write(&etcdctl, refusing).unwrap();
        let read_etcd = || parse_output("m0", &spec, &run()).unwrap().etcd_proxy.expect("etcd was asked");
        let etcd = read_etcd();
        assert_eq!(etcd.client_cert_sha256, Some(facts(&proxy).sha256_fingerprint), "read with the new CA and the backup's client certificate");
        let calls = std::fs::read_to_string(root.path().join("etcd-output.calls")).unwrap();
        assert_eq!(calls.lines().count(), 2, "{calls}");
        let consistency: Vec<bool> = calls.lines().map(|l| l.contains("--consistency=s")).collect();
        assert_eq!(consistency, [false, true], "a linearizable read first; the fallback is answered by a member without quorum: {calls}");
        // Neither set of credentials works: nothing is made up.
        std::fs::write(&etcdctl, "#!/bin/sh\nexit 1\n").unwrap();
        let etcd = read_etcd();
        assert_eq!((etcd.ca_sha256, etcd.client_cert_sha256, etcd.client_key_public_sha256), (None, None, None));
    }

    /// What `etcdctl get --prefix` prints for values stored as AKS Engine stores them.
    fn aks_form_output(values: &[(&str, &str)]) -> String {
        values.iter().map(|(k, pem)| format!("{k}\n{}\n", proxycerts::etcd_value(pem))).collect()
    }

    /// The kubeconfig certificate is observed inline in the admin kubeconfig, where AKS
    /// Engine puts it, and nowhere else: no kubectlClient.crt is read.
    #[test]
    fn kubeconfig_certificate_is_read_from_the_admin_kubeconfig() {
        let ca = pair("ca", None);
        let client = pair("client", Some(&ca));
        let b64 = base64::engine::general_purpose::STANDARD;
        let admin = "/home/azureuser/.kube/config";
        let out = format!(
            "HOST\tm0\nFILE\t{admin}\tazureuser\tazureuser\t600\t10\nKCFG\t{admin}\nKCFGLINE\tusers:\nKCFGLINE\t- name: a\nKCFGLINE\t  user:\n\
             KCFGLINE\t    client-certificate-data: {}\nKCFGLINE\t    client-key-data: REDACTED\nKCFGEND\t{admin}\nEND\n",
            b64.encode(&client.cert_pem)
        );
        let spec = NodeReadSpec { cert_paths: vec![], key_paths: vec![], kubeconfig_paths: vec![admin.into()], read_etcd_proxy: false };
        let inv = parse_output("m0", &spec, &out).unwrap();
        let f = inv.file(admin).expect("observed as a certificate");
        assert_eq!((f.owner.as_str(), f.mode), ("azureuser", 0o600));
        match &f.content {
            ObservedContent::Certificate { facts, .. } => assert_eq!(facts.sha256_fingerprint, inspect::parse_cert_pem(&client.cert_pem).unwrap().sha256_fingerprint),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.sha256, hex::encode(Sha256::digest(client.cert_pem.as_bytes())));
        // The read spec of a master names no kubectlClient file.
        let json = r#"{"apiVersion":"vlabs","location":"local","properties":{
            "masterProfile":{"count":1,"dnsPrefix":"kube-lab","firstConsecutiveStaticIP":"10.255.255.5"},
            "linuxProfile":{"adminUsername":"azureuser"}}}"#;
        let m = crate::model::apimodel::ApiModel::parse(crate::diag::SourceFile::from_text("apimodel.json", json)).unwrap();
        let topo = crate::model::topology::Topology::derive_with_suffix(&m, "12345678").unwrap();
        let spec = NodeReadSpec::for_node(&topo.masters[0], &catalogue::catalogue(&topo), "azureuser");
        assert!(!spec.cert_paths.iter().chain(&spec.key_paths).any(|p| p.contains("kubectlClient") || p.contains(".kube")), "{spec:?}");
        assert!(spec.kubeconfig_paths.contains(&admin.to_string()));
    }

    #[test]
    fn truncated_output_is_an_error() {
        let spec = NodeReadSpec { cert_paths: vec![], key_paths: vec![], kubeconfig_paths: vec![], read_etcd_proxy: false };
        assert!(parse_output("n1", &spec, "HOST\tn1\n").unwrap_err().why.contains("ended early"));
        assert!(parse_output("n1", &spec, "HOST\tn1\nbash: oops\nEND\n").is_err());
    }
}
