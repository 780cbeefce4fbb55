//! The shell scripts apply runs on Linux nodes (as root, `sudo -n sh -s`, script on stdin so
//! nothing shows in a process list): the cluster lock, staging, backup, atomic install,
//! removal of kubelet-client-current.pem, restarts, the front-proxy material in etcd, the
//! SSH-level gate probes, clean-up and rollback's restore.
//!
//! Each script is idempotent and checks its own postcondition before it exits 0. Every step
//! appends a line to /var/log/azure/rotate-certs.log, as aks-engine rotate-certs did; key
//! material travels only inside the staging script, base64 in a here-document, and is never
//! logged or echoed.

use crate::pki::catalogue::{CERT_DIR, KUBELET_CLIENT_CURRENT, ROTATE_LOG};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The lock file on the first master.
pub const LOCK_FILE: &str = "/etc/kubernetes/certrotate.lock";
/// Backup of the certificate directory, as aks-engine named it.
pub const BACKUP: &str = "/etc/kubernetes/certs.bak";
/// What the backup holds beside the directory: the admin kubeconfig, kubelet's rotated pem,
/// and the stamp of the plan it was made for.
pub const BACKUP_EXTRA: &str = "/etc/kubernetes/certs.bak.extra";

pub use crate::remote::script::sh_quote;

/// The staging directory of one plan on a node (0700, root).
pub fn staging_dir(stamp: &str) -> String {
    format!("/etc/kubernetes/.certrotate-{stamp}")
}

/// A file apply puts on a node: where, whose, which mode, and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: String,
    pub owner: String,
    /// Empty: the owner's primary group.
    pub group: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for NodeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeFile").field("path", &self.path).field("owner", &self.owner).field("mode", &format_args!("{:o}", self.mode)).finish_non_exhaustive()
    }
}

impl NodeFile {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.content))
    }

    /// Name of the file in the staging directory: stable and free of slashes.
    pub fn staged_name(&self) -> String {
        self.path.trim_start_matches('/').replace('/', "__")
    }
}

/// Sets up `log` and `fail` for a step's script. aks-engine rotate-certs appended each step's
/// output to the log; certrotate appends one line per step: when the script exits, its
/// outcome (`ok`, or `failed (exit N)`) and what it noted, so the log reads as the run did.
fn prelude(stamp: &str, step: &str) -> String {
    format!(
        r#"set -eu
umask 077
STAMP={stamp}
STEP={step}
mkdir -p /var/log/azure
NOTES=$(mktemp)
log() {{ printf '%s\n' "$*" >> "$NOTES"; }}
fail() {{ log "FAILED: $*"; echo "$*" >&2; exit 1; }}
trap 'rc=$?; if [ "$rc" = 0 ]; then OUTCOME=ok; else OUTCOME="failed (exit $rc)"; fi; printf "%s certrotate[%s] %s: %s: %s\n" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$STAMP" "$STEP" "$OUTCOME" "$(paste -sd";" "$NOTES" | sed "s/;/; /g")" >> {log}; rm -f "$NOTES"' EXIT
"#,
        stamp = sh_quote(stamp),
        step = sh_quote(step),
        log = ROTATE_LOG,
    )
}

/// Copies every file the node will need into the staging directory in one go, checks each
/// against its SHA-256, and marks the directory complete. Skips when already complete.
pub fn stage_script(stamp: &str, files: &[NodeFile]) -> String {
    prelude(stamp, "distributeCerts") + &stage_body(stamp, files)
}

fn stage_body(stamp: &str, files: &[NodeFile]) -> String {
    let mut s = String::new();
    let dir = staging_dir(stamp);
    let manifest: String = files.iter().map(|f| format!("{}  {}\n", f.sha256(), f.staged_name())).collect();
    let manifest_digest = hex::encode(Sha256::digest(manifest.as_bytes()));
    s.push_str(&format!(
        "D={dir}\nif [ -f \"$D/.complete\" ] && [ \"$(cat \"$D/.complete\")\" = {md} ]; then log 'staging already complete'; echo SKIP; exit 0; fi\n\
         rm -rf \"$D.tmp\"\nmkdir -m 0700 \"$D.tmp\"\n",
        dir = sh_quote(&dir),
        md = sh_quote(&manifest_digest)
    ));
    for f in files {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&f.content);
        let wrapped: Vec<&str> = b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).expect("base64 is ascii")).collect();
        s.push_str(&format!("base64 -d > \"$D.tmp/\"{} <<'CERTROTATE_EOF'\n{}\nCERTROTATE_EOF\n", sh_quote(&f.staged_name()), wrapped.join("\n")));
    }
    s.push_str(&format!(
        "cat > \"$D.tmp/.manifest\" <<'CERTROTATE_EOF'\n{manifest}CERTROTATE_EOF\n\
         (cd \"$D.tmp\" && sha256sum -c --quiet .manifest) || fail 'staged files do not match what was sent'\n\
         printf '%s' {md} > \"$D.tmp/.complete\"\nrm -rf \"$D\"\nmv \"$D.tmp\" \"$D\"\nlog 'staged {n} files'\necho OK\n",
        md = sh_quote(&manifest_digest),
        n = files.len()
    ));
    s
}

/// Copies /etc/kubernetes/certs to certs.bak (and the admin kubeconfig and kubelet's rotated
/// pem to certs.bak.extra), verifies the copy, and records the plan's stamp. A backup made for
/// another plan is moved aside with a time suffix, never deleted.
pub fn backup_script(stamp: &str, admin_kubeconfig: Option<&str>) -> String {
    prelude(stamp, "backupNodeCerts") + &backup_body(admin_kubeconfig)
}

fn backup_body(admin_kubeconfig: Option<&str>) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        r#"B={b}; X={x}; C={c}
if [ -d "$B" ] && [ -f "$X/stamp" ] && [ "$(cat "$X/stamp")" = "$STAMP" ]; then log 'backup already made for this plan'; echo SKIP; exit 0; fi
[ -d "$C" ] || fail "$C does not exist"
T=$(date -u +%Y%m%d%H%M%S)
if [ -e "$B" ]; then mv "$B" "$B.$T"; log "kept the earlier backup as $B.$T"; fi
if [ -e "$X" ]; then mv "$X" "$X.$T"; fi
rm -rf "$B.tmp" "$X.tmp"
cp -a "$C" "$B.tmp"
diff -r "$C" "$B.tmp" >/dev/null || fail "the copy of $C differs from the original"
mkdir -m 0700 "$X.tmp"
"#,
        b = sh_quote(BACKUP),
        x = sh_quote(BACKUP_EXTRA),
        c = sh_quote(CERT_DIR)
    ));
    s.push_str(&format!(
        "if [ -e {p} ] || [ -L {p} ]; then cp -a {p} \"$X.tmp/kubelet-client-current.pem\"; fi\n\
         if [ -e {p} ]; then cp -L {p} \"$X.tmp/kubelet-client-current.pem.content\"; fi\n",
        p = sh_quote(KUBELET_CLIENT_CURRENT)
    ));
    if let Some(k) = admin_kubeconfig {
        s.push_str(&format!("if [ -e {p} ]; then cp -a {p} \"$X.tmp/admin-kubeconfig\"; fi\n", p = sh_quote(k)));
    }
    s.push_str(
        "printf '%s' \"$STAMP\" > \"$X.tmp/stamp\"\nmv \"$B.tmp\" \"$B\"\nmv \"$X.tmp\" \"$X\"\nlog \"backed up $C to $B\"\necho OK\n",
    );
    s
}

/// The node's backup, then its staging, in one remote command (one round trip instead of
/// two). Each runs in its own subshell with its own `set -eu`, so the backup's early
/// `exit 0` when it is already made does not skip the staging, and a failed backup stops
/// the script before anything is staged. Prints the backup's line, then the staging's. One
/// plan step, so one line in the node's log.
pub fn backup_and_stage_script(stamp: &str, admin_kubeconfig: Option<&str>, files: &[NodeFile]) -> String {
    format!("{}(\n{}\n)\n(\n{}\n)\n", prelude(stamp, "distributeCerts"), backup_body(admin_kubeconfig), stage_body(stamp, files))
}

/// Installs staged files atomically (a temp file beside the target, then rename) with their
/// owners and modes; files already in place are left alone. Checks content, owner and mode.
pub fn install_script(stamp: &str, step: &str, files: &[NodeFile]) -> String {
    let mut s = prelude(stamp, step);
    s.push_str(&format!("D={}\n[ -f \"$D/.complete\" ] || fail 'the staged files are missing; run the plan again to stage them'\n", sh_quote(&staging_dir(stamp))));
    s.push_str(&format!("[ -f {x}/stamp ] && [ \"$(cat {x}/stamp)\" = \"$STAMP\" ] || fail 'no backup for this plan; refusing to install'\n", x = sh_quote(BACKUP_EXTRA)));
    s.push_str(
        r#"put() { # staged target owner group mode sha256
  g="$4"; [ -n "$g" ] || g=$(id -gn "$3")
  if [ -f "$2" ] && [ "$(sha256sum < "$2" | cut -d' ' -f1)" = "$6" ]; then
    chown "$3:$g" "$2"; chmod "$5" "$2"
  else
    mkdir -p "$(dirname "$2")"
    t="$(dirname "$2")/.$(basename "$2").certrotate.tmp"
    install -o "$3" -g "$g" -m "$5" "$D/$1" "$t"
    mv -f "$t" "$2"
    log "installed $2"
  fi
  [ "$(sha256sum < "$2" | cut -d' ' -f1)" = "$6" ] || fail "$2 does not hold the new content after install"
  [ "$(stat -c '%U %a' "$2")" = "$3 $(printf '%o' "0$5")" ] || fail "$2 has owner/mode $(stat -c '%U %a' "$2"), expected $3 $5"
}
"#,
    );
    for f in files {
        s.push_str(&format!(
            "put {} {} {} {} {:o} {}\n",
            sh_quote(&f.staged_name()),
            sh_quote(&f.path),
            sh_quote(&f.owner),
            sh_quote(&f.group),
            f.mode,
            f.sha256()
        ));
    }
    s.push_str("echo OK\n");
    s
}

/// Removes kubelet's rotated client certificate (issued under the old CA) once the backup holds it.
pub fn remove_kubelet_pem_script(stamp: &str) -> String {
    let mut s = prelude(stamp, "removeKubeletClientCurrent");
    s.push_str(&format!(
        "P={p}\nif [ -e \"$P\" ] || [ -L \"$P\" ]; then\n  [ -e {x}/kubelet-client-current.pem ] || [ -L {x}/kubelet-client-current.pem ] || fail 'kubelet-client-current.pem is not in the backup; refusing to remove it'\n  rm -f \"$P\"; log \"removed $P\"\nfi\n[ ! -e \"$P\" ] || fail \"$P is still there\"\necho OK\n",
        p = sh_quote(KUBELET_CLIENT_CURRENT),
        x = sh_quote(BACKUP_EXTRA)
    ));
    s
}

/// Restarts systemd units and checks they are active again; `control_plane` also restarts the
/// control-plane containers (kubelet does not restart running static pods on its own).
pub fn restart_script(stamp: &str, step: &str, units: &[&str], control_plane: &[&str]) -> String {
    let mut s = prelude(stamp, step);
    for u in units {
        s.push_str(&format!("systemctl restart {u} || fail 'systemctl restart {u} failed'\nlog 'restarted {u}'\n"));
    }
    for c in control_plane {
        s.push_str(&format!(
            "if command -v crictl >/dev/null 2>&1; then for id in $(crictl ps -q --name '^{c}$' 2>/dev/null); do crictl stop \"$id\" >/dev/null; log 'stopped {c} container for kubelet to restart it'; done\n\
             elif command -v docker >/dev/null 2>&1; then for id in $(docker ps -q --filter 'name=k8s_{c}_' 2>/dev/null); do docker restart \"$id\" >/dev/null; log 'restarted {c} container'; done; fi\n"
        ));
    }
    for u in units {
        s.push_str(&format!(
            "i=0; until systemctl is-active --quiet {u}; do i=$((i+1)); [ $i -lt 30 ] || fail '{u} is not active after restart'; sleep 1; done\n"
        ));
    }
    s.push_str("echo OK\n");
    s
}

fn etcdctl(endpoints: &str) -> String {
    format!(
        "ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert={c}/ca.crt --cert={c}/etcdclient.crt --key={c}/etcdclient.key --command-timeout=10s",
        c = CERT_DIR
    )
}

/// Writes the staged front-proxy material into etcd (`/proxycerts/*`) in AKS Engine's form
/// (`pki::proxycerts`: one space, then the PEM) and reads it back. The value goes through
/// etcdctl's stdin, never its command line, where any user on the node could read the key.
/// Keys without new material (the CA when only the client is reissued) are rewritten in that
/// form where they hold a raw PEM, so that every value a master AKS Engine provisions reads
/// is one it can use.
pub fn etcd_put_script(stamp: &str, puts: &[(&str, &NodeFile)]) -> String {
    use crate::pki::catalogue::{ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY};
    let mut s = prelude(stamp, "putFrontProxyInEtcd");
    s.push_str(&format!("D={}\n[ -f \"$D/.complete\" ] || fail 'the staged files are missing'\n", sh_quote(&staging_dir(stamp))));
    let e = etcdctl("https://127.0.0.1:2379");
    // etcd's values are backed up before the first put, beside this plan's node backup, so
    // rollback restores what etcd held (byte for byte, in whatever form) even where it
    // differed from the files on disk.
    s.push_str(&format!(
        "X={x}\n[ -f \"$X/stamp\" ] && [ \"$(cat \"$X/stamp\")\" = \"$STAMP\" ] || fail 'no backup for this plan on this node; refusing to change etcd'\n\
         if [ ! -f \"$X/etcd-proxycerts/.saved\" ]; then\n  mkdir -p \"$X/etcd-proxycerts.tmp\"\n",
        x = sh_quote(BACKUP_EXTRA)
    ));
    let all = [ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY];
    for key in all {
        let name = key.rsplit('/').next().unwrap_or(key);
        s.push_str(&format!(
            "  {e} get {k} --print-value-only | head -c -1 > \"$X/etcd-proxycerts.tmp/\"{n} || fail 'cannot read {key} from etcd to back it up'\n",
            k = sh_quote(key),
            n = sh_quote(name)
        ));
    }
    s.push_str("  touch \"$X/etcd-proxycerts.tmp/.saved\"\n  rm -rf \"$X/etcd-proxycerts\"\n  mv \"$X/etcd-proxycerts.tmp\" \"$X/etcd-proxycerts\"\n  log 'backed up /proxycerts from etcd'\nfi\n");
    for (key, file) in puts {
        let value = crate::pki::proxycerts::etcd_value(&String::from_utf8_lossy(&file.content));
        s.push_str(&format!(
            "v=$(cat \"$D/\"{n}) || fail 'cannot read the staged {n}'\n\
             printf ' %s' \"$v\" | {e} put {k} >/dev/null || fail 'etcdctl put {key} failed'; v=\n\
             [ \"$({e} get {k} --print-value-only | head -c -1 | sha256sum | cut -d' ' -f1)\" = {sha} ] || fail 'etcd does not return the new value of {key}'\n\
             log 'wrote {key} in etcd'\n",
            k = sh_quote(key),
            n = sh_quote(&file.staged_name()),
            sha = hex::encode(Sha256::digest(value.as_bytes()))
        ));
    }
    for key in all.iter().filter(|k| !puts.iter().any(|(p, _)| p == *k)) {
        s.push_str(&format!(
            "v=$({e} get {k} --print-value-only) || fail 'cannot read {key} from etcd'\n\
             case $v in '-----BEGIN '*) printf ' %s' \"$v\" | {e} put {k} >/dev/null || fail 'etcdctl put {key} failed'; log 'rewrote {key} in etcd in the form AKS Engine reads' ;; esac; v=\n",
            k = sh_quote(key),
        ));
    }
    s.push_str("echo OK\n");
    s
}

/// Removes the staging directory; backups stay.
pub fn cleanup_script(stamp: &str) -> String {
    let mut s = prelude(stamp, "cleanup");
    s.push_str(&format!("rm -rf {d} {d}.tmp\nlog 'removed the staging directory; backups kept in {b}'\necho OK\n", d = sh_quote(&staging_dir(stamp)), b = BACKUP));
    s
}

/// Takes the cluster lock atomically (noclobber); prints `TAKEN`, or `HELD` and the holder.
/// `replacing`: take it over only if it still holds exactly that line (compare and swap,
/// under flock where the node has it), so two resumes cannot both take a dead holder's lock.
pub fn lock_take_script(line: &str, replacing: Option<&str>) -> String {
    let l = sh_quote(line);
    // The guard lives in /run: it only serialises takers and needs no history.
    let guard = "mkdir -p /etc/kubernetes\nexec 9>>/run/certrotate.lock.guard\nif command -v flock >/dev/null 2>&1; then flock -w 10 9 || { echo HELD; echo 'another certrotate is taking the lock'; exit 0; }; fi\n";
    match replacing {
        Some(old) => format!(
            "set -eu\n{guard}if [ \"$(cat {f} 2>/dev/null || true)\" = {o} ]; then printf '%s\\n' {l} > {f}.tmp && mv -f {f}.tmp {f}; echo TAKEN; else echo HELD; cat {f} 2>/dev/null || true; fi\n",
            f = LOCK_FILE,
            o = sh_quote(old)
        ),
        None => format!(
            "set -eu\n{guard}if ( set -C; printf '%s\\n' {l} > {f} ) 2>/dev/null; then echo TAKEN; else echo HELD; cat {f}; fi\n",
            f = LOCK_FILE
        ),
    }
}

/// Releases the lock if this plan holds it.
pub fn lock_release_script(plan_digest: &str) -> String {
    format!(
        "set -eu\nif [ -f {f} ] && grep -q {d} {f}; then rm -f {f}; echo RELEASED; else echo NOT_OURS; fi\n",
        f = LOCK_FILE,
        d = sh_quote(&format!("plan={plan_digest}"))
    )
}

/// `etcdctl endpoint health` against every member, with the node's current etcd client
/// certificate. Prints the health lines; exits non-zero when a member is unhealthy.
pub fn etcd_health_script(endpoints: &[String]) -> String {
    format!("{} endpoint health 2>&1\n", etcdctl(&endpoints.join(",")))
}

/// Without usable certificates: etcd active and its client port accepting TCP connections
/// (a TLS handshake cannot complete with expired certificates).
pub fn etcd_alive_script() -> String {
    "set -u\nsystemctl is-active --quiet etcd || { echo 'etcd is not active'; exit 1; }\n\
     if timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2379' 2>/dev/null; then echo 'etcd accepts connections on 2379'; else echo '127.0.0.1:2379 refuses connections'; exit 1; fi\n"
        .to_string()
}

/// The SHA-256 fingerprint of the certificate the apiserver at `ip:443` presents, and the
/// status line of its /readyz, asked with the node's own client certificate.
pub fn apiserver_probe_script(ip: &str, server_name: &str) -> String {
    format!(
        r#"set -u
C={c}
fp=$(timeout 10 openssl s_client -connect {ip}:443 -servername {sn} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f')
printf 'FINGERPRINT\t%s\n' "$fp"
st=$(printf 'GET /readyz HTTP/1.1\r\nHost: {sn}\r\nConnection: close\r\n\r\n' | timeout 10 openssl s_client -quiet -connect {ip}:443 -servername {sn} -CAfile "$C/ca.crt" -cert "$C/client.crt" -key "$C/client.key" 2>/dev/null | head -n 1 | tr -d '\r')
printf 'READYZ\t%s\n' "$st"
"#,
        c = CERT_DIR,
        ip = ip,
        sn = sh_quote(server_name)
    )
}

/// A unit is active (kubelet on an expired cluster, where the API cannot be asked).
pub fn unit_active_script(unit: &str) -> String {
    format!("set -u\nif systemctl is-active --quiet {unit}; then echo '{unit} active'; else echo '{unit} is not active'; exit 1; fi\n")
}

/// The apiserver's port accepts TCP connections at `ip:443` (when its certificates have expired).
pub fn port_open_script(ip: &str) -> String {
    format!(
        "set -u\nif timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/443' 2>/dev/null; then echo '{ip}:443 accepts connections'; else echo '{ip}:443 refuses connections'; exit 1; fi\n"
    )
}

/// Rollback on a node: the backed-up directory replaces the current one (which is kept as
/// certs.rolledback.<time>), and the admin kubeconfig and kubelet's pem are put back.
pub fn restore_script(stamp: &str, admin_kubeconfig: Option<&str>) -> String {
    let mut s = prelude(stamp, "rollback");
    s.push_str(&format!(
        r#"B={b}; X={x}; C={c}
[ -d "$B" ] || fail "there is no backup $B on this node"
[ -f "$X/stamp" ] && [ "$(cat "$X/stamp")" = "$STAMP" ] || fail "$B was not made by the plan being rolled back (stamp $(cat "$X/stamp" 2>/dev/null || echo none), expected $STAMP)"
T=$(date -u +%Y%m%d%H%M%S)
if [ -d "$C" ] && diff -r "$B" "$C" >/dev/null 2>&1; then log 'certificates already match the backup'; else
  rm -rf "$C.restore.tmp"
  cp -a "$B" "$C.restore.tmp"
  diff -r "$B" "$C.restore.tmp" >/dev/null || fail 'the copy of the backup differs from it'
  if [ -e "$C" ]; then mv "$C" "$C.rolledback.$T"; fi
  mv "$C.restore.tmp" "$C"
  log "restored $C from $B (the replaced one is kept as $C.rolledback.$T)"
fi
if [ -e "$X/kubelet-client-current.pem" ] || [ -L "$X/kubelet-client-current.pem" ]; then
  rm -f {p}; cp -a "$X/kubelet-client-current.pem" {p}
  if [ ! -e {p} ] && [ -f "$X/kubelet-client-current.pem.content" ]; then rm -f {p}; cp -p "$X/kubelet-client-current.pem.content" {p}; fi
elif [ -e {p} ] || [ -L {p} ]; then
  # kubelet prefers this file over client.crt; one it got after the backup would keep the rotated identity.
  mv {p} "{p}.rolledback.$T"; log "moved aside a kubelet-client-current.pem the backup did not have"
fi
rm -rf /etc/kubernetes/.certrotate-*
"#,
        b = sh_quote(BACKUP),
        x = sh_quote(BACKUP_EXTRA),
        c = sh_quote(CERT_DIR),
        p = sh_quote(KUBELET_CLIENT_CURRENT)
    ));
    if let Some(k) = admin_kubeconfig {
        s.push_str(&format!("if [ -e \"$X/admin-kubeconfig\" ]; then cp -a \"$X/admin-kubeconfig\" {}; fi\n", sh_quote(k)));
    }
    s.push_str("echo OK\n");
    s
}

/// Whether this node holds a backup made for the plan `stamp` (prints `BACKUP <stamp>` or `NONE`).
pub fn backup_stamp_script() -> String {
    format!("set -u\nif [ -d {b} ] && [ -f {x}/stamp ]; then printf 'BACKUP %s\\n' \"$(cat {x}/stamp)\"; else echo NONE; fi\n", b = sh_quote(BACKUP), x = sh_quote(BACKUP_EXTRA))
}

/// Rollback of the front-proxy material in etcd: the values saved before the apply, byte for
/// byte, else the restored files in AKS Engine's form.
pub fn etcd_restore_proxy_script(stamp: &str) -> String {
    let mut s = prelude(stamp, "rollback");
    let e = etcdctl("https://127.0.0.1:2379");
    for (key, file) in [
        (crate::pki::catalogue::ETCD_PROXY_CA_KEY, "proxy-ca.crt"),
        (crate::pki::catalogue::ETCD_PROXY_CERT_KEY, "proxy.crt"),
        (crate::pki::catalogue::ETCD_PROXY_KEY_KEY, "proxy.key"),
    ] {
        let saved = key.rsplit('/').next().unwrap_or(key);
        s.push_str(&format!(
            "S={x}/etcd-proxycerts/{saved}\n\
             if [ -f {x}/etcd-proxycerts/.saved ] && [ -s \"$S\" ]; then {e} put {k} < \"$S\" >/dev/null || fail 'etcdctl put {key} failed'; log 'restored {key} in etcd from its backup'\n\
             elif [ -f {c}/{file} ]; then v=$(cat {c}/{file}) && printf ' %s' \"$v\" | {e} put {k} >/dev/null || fail 'etcdctl put {key} failed'; v=; log 'restored {key} in etcd from {file}'; fi\n",
            c = CERT_DIR,
            x = sh_quote(BACKUP_EXTRA),
            k = sh_quote(key)
        ));
    }
    s.push_str("echo OK\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> NodeFile {
        NodeFile { path: path.into(), owner: "root".into(), group: "root".into(), mode: 0o600, content: content.as_bytes().to_vec() }
    }

    #[test]
    fn key_material_appears_only_base64_in_the_staging_here_document() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----\n";
        let s = stage_script("abc", &[file("/etc/kubernetes/certs/client.key", key)]);
        assert!(!s.contains("PRIVATE KEY") && !s.contains("MIIEsecret"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        assert!(s.contains(&b64[..60]));
        for other in [install_script("abc", "installCerts", &[file("/etc/kubernetes/certs/client.key", key)]), backup_script("abc", None)] {
            assert!(!other.contains(&b64[..20]) && !other.contains("MIIEsecret"));
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(file("/x/y/z.crt", "").staged_name(), "x__y__z.crt");
    }

    /// A backup that fails stops the combined script before anything is staged, so nothing
    /// on the node moves on without a confirmed backup.
    #[test]
    fn failed_backup_stages_nothing() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display().to_string();
        let script = backup_and_stage_script("s1", None, &[file("/etc/kubernetes/certs/ca.crt", "new ca\n")])
            .replace("/etc/kubernetes", &format!("{r}/etc/kubernetes"))
            .replace("/var/log/azure", &format!("{r}/var/log/azure"));
        std::fs::create_dir_all(format!("{r}/etc/kubernetes")).unwrap();
        // No certs directory: the backup has nothing to copy and must fail.
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
        assert!(!std::path::Path::new(&format!("{r}{}", staging_dir("s1"))).exists(), "staged although the backup failed");
        assert!(!std::path::Path::new(&format!("{r}{}.tmp", staging_dir("s1"))).exists());
        let log = std::fs::read_to_string(format!("{r}/var/log/azure/rotate-certs.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("certrotate[s1] distributeCerts: failed (exit 1): FAILED: ") && log.contains("does not exist"), "{log}");
    }

    /// Runs the scripts against a scratch tree with sh, as root would, using a fake
    /// /etc/kubernetes through path rewriting; proves stage → backup → install → restore.
    #[test]
    fn stage_backup_install_restore_round_trip_in_a_scratch_tree() {
        if std::process::Command::new("sh").arg("-c").arg("command -v sha256sum && command -v diff").output().map(|o| !o.status.success()).unwrap_or(true) {
            panic!("sh, sha256sum and diff are needed");
        }
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display().to_string();
        let rewrite = |s: String| {
            s.replace("/etc/kubernetes", &format!("{r}/etc/kubernetes"))
                .replace("/var/log/azure", &format!("{r}/var/log/azure"))
                .replace("/var/lib/kubelet", &format!("{r}/var/lib/kubelet"))
        };
        let run = |s: String| {
            let out = std::process::Command::new("sh").arg("-c").arg(rewrite(s)).output().unwrap();
            assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let me = String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string();
        std::fs::create_dir_all(format!("{r}/etc/kubernetes/certs")).unwrap();
        std::fs::write(format!("{r}/etc/kubernetes/certs/ca.crt"), "old ca\n").unwrap();
        let new = NodeFile { path: format!("{CERT_DIR}/ca.crt"), owner: me.clone(), group: String::new(), mode: 0o644, content: b"new ca\n".to_vec() };
        let files = vec![NodeFile { path: new.path.clone(), ..new.clone() }];
        assert_eq!(run(backup_and_stage_script("s1", None, &files)).split_whitespace().collect::<Vec<_>>(), ["OK", "OK"]);
        assert_eq!(
            run(backup_and_stage_script("s1", None, &files)).split_whitespace().collect::<Vec<_>>(),
            ["SKIP", "SKIP"],
            "backing up and staging twice is a no-op, and the backup's early exit does not skip the staging check"
        );
        assert_eq!(run(stage_script("s1", &files)).trim(), "SKIP");
        assert_eq!(run(backup_script("s1", None)).trim(), "SKIP");
        assert_eq!(run(install_script("s1", "installCerts", &files)).trim(), "OK");
        assert_eq!(std::fs::read_to_string(format!("{r}/etc/kubernetes/certs/ca.crt")).unwrap(), "new ca\n");
        assert_eq!(run(install_script("s1", "installCerts", &files)).trim(), "OK", "installing twice is a no-op");
        assert_eq!(std::fs::read_to_string(format!("{r}/etc/kubernetes/certs.bak/ca.crt")).unwrap(), "old ca\n");
        let log = std::fs::read_to_string(format!("{r}/var/log/azure/rotate-certs.log")).unwrap();
        assert!(log.contains("installed") && !log.contains("new ca"), "{log}");
        // One line per script run, naming its step and outcome.
        let steps: Vec<&str> = log.lines().map(|l| l.split_whitespace().nth(2).unwrap_or("")).collect();
        assert_eq!(steps, ["distributeCerts:", "distributeCerts:", "distributeCerts:", "backupNodeCerts:", "installCerts:", "installCerts:"], "{log}");
        assert!(log.lines().all(|l| l.starts_with("20") && l.contains("certrotate[s1]") && l.contains(": ok")), "{log}");
        assert_eq!(run(restore_script("s1", None)).trim(), "OK");
        assert_eq!(std::fs::read_to_string(format!("{r}/etc/kubernetes/certs/ca.crt")).unwrap(), "old ca\n");
        // A backup made for another plan is kept aside, not overwritten.
        run(backup_script("s2", None));
        let kept = std::fs::read_dir(format!("{r}/etc/kubernetes")).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("certs.bak.2")).count();
        assert!(kept >= 1, "the earlier backup was moved aside");
    }

    /// putFrontProxyInEtcd stores AKS Engine's form byte for byte (through a stand-in etcdctl
    /// on PATH that keeps each value in a file), repairs a raw CA it has no new material for,
    /// and rollback puts back what etcd held before.
    #[test]
    fn etcd_values_are_written_in_aks_engine_form_and_restored_as_they_were() {
        use crate::pki::catalogue::{ETCD_PROXY_CA_KEY, ETCD_PROXY_CERT_KEY, ETCD_PROXY_KEY_KEY};
        use crate::pki::proxycerts;
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display().to_string();
        let store = format!("{r}/etcd");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::create_dir_all(format!("{r}/bin")).unwrap();
        // `put K` reads the value from stdin; `get K --print-value-only` prints it and a newline.
        let etcdctl = format!(
            "#!/bin/sh\nfor a; do case $a in put|get) op=$a ;; /proxycerts/*) k=$(printf %s \"$a\" | tr / _) ;; esac; done\n\
             case $op in put) cat > {store}/$k ;; get) if [ -f {store}/$k ]; then cat {store}/$k; echo; fi ;; esac\n"
        );
        std::fs::write(format!("{r}/bin/etcdctl"), etcdctl).unwrap();
        std::fs::set_permissions(format!("{r}/bin/etcdctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let value_of = |key: &str| std::fs::read_to_string(format!("{store}/{}", key.replace('/', "_"))).unwrap();
        let set = |key: &str, v: &str| std::fs::write(format!("{store}/{}", key.replace('/', "_")), v).unwrap();
        let old_ca = "-----BEGIN CERTIFICATE-----\nOLDCA\n-----END CERTIFICATE-----\n";
        let old_cert = " -----BEGIN CERTIFICATE-----\nOLDCERT\n-----END CERTIFICATE-----";
        set(ETCD_PROXY_CA_KEY, old_ca);
        set(ETCD_PROXY_CERT_KEY, old_cert);
        let run = |script: String| {
            let script = script.replace("/etc/kubernetes", &format!("{r}/etc/kubernetes")).replace("/var/log/azure", &format!("{r}/var/log/azure"));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .env("PATH", format!("{r}/bin:{}", std::env::var("PATH").unwrap()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        };
        let staged = format!("{r}{}", staging_dir("s1"));
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(format!("{staged}/.complete"), "x").unwrap();
        std::fs::create_dir_all(format!("{r}{BACKUP_EXTRA}")).unwrap();
        std::fs::write(format!("{r}{BACKUP_EXTRA}/stamp"), "s1").unwrap();
        let cert = file("/etc/kubernetes/certs/proxy.crt", "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n");
        let key = file("/etc/kubernetes/certs/proxy.key", "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n");
        for f in [&cert, &key] {
            std::fs::write(format!("{staged}/{}", f.staged_name()), &f.content).unwrap();
        }
        let script = etcd_put_script("s1", &[(ETCD_PROXY_CERT_KEY, &cert), (ETCD_PROXY_KEY_KEY, &key)]);
        assert!(!script.contains("KEY\n") && !script.contains("PRIVATE"), "the key is read on the node, never sent in the script");
        run(script);
        assert_eq!(value_of(ETCD_PROXY_CERT_KEY), " -----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----");
        assert_eq!(value_of(ETCD_PROXY_KEY_KEY), proxycerts::etcd_value(std::str::from_utf8(&key.content).unwrap()));
        assert_eq!(value_of(ETCD_PROXY_CA_KEY), proxycerts::etcd_value(old_ca), "the raw CA is rewritten in AKS Engine's form");
        assert_eq!(proxycerts::read_back(&value_of(ETCD_PROXY_CA_KEY)), old_ca);
        run(etcd_restore_proxy_script("s1"));
        assert_eq!(value_of(ETCD_PROXY_CA_KEY), old_ca, "rollback restores what etcd held, byte for byte");
        assert_eq!(value_of(ETCD_PROXY_CERT_KEY), old_cert);
    }
}
