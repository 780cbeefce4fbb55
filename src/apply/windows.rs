//! The PowerShell steps `certrotate apply` runs over SSH on the Windows agents of an AKS
//! Engine cluster: back up, stage and install, restart, restore, clean up.
//!
//! AKS Engine keeps a Windows node's material under `c:\k`: the cluster CA as `c:\k\ca.crt`,
//! and the kubelet's client identity inside `c:\k\config`, the kubeconfig of the `kubelet`
//! and `kubeproxy` services (`certificate-authority-data`, `client-certificate-data`,
//! `client-key-data`). Every step appends to `c:\k\rotate-certs.log`, as the original
//! `aks-engine rotate-certs` does.
//!
//! Everything here is pure: each function renders one script, which the executor sends on
//! stdin to [`POWERSHELL_COMMAND`] so that no secret appears in a process list. The lab has
//! no Windows node, so none of these scripts has run on Windows; the unit tests pin the exact
//! text that is sent. Read the scripts with these PowerShell facts in mind:
//!
//! - `-Command -` reads stdin like an interactive prompt, statement by statement: a failing
//!   statement does not stop the next one, and a multi-line statement only runs after an
//!   empty line. So each script is ONE statement, `& { ... }`, with no empty line inside,
//!   followed by empty lines; it ends the process itself with `[Environment]::Exit(0|1)`.
//! - PowerShell 5.1 writes any script block containing certain words (`FromBase64String`,
//!   `ToBase64String`, `MemoryStream`, `Cryptography`, ...) to the PowerShell/Operational
//!   event log, even when script block logging is off. The install script carries the
//!   private key, so it must never contain those words: it carries the PEM files as hex
//!   (hex digits cannot spell any of them), decodes with `[Convert]::ToByte`, encodes the
//!   kubeconfig values with `[Convert]::ToBase64CharArray` and hashes files with
//!   `Get-FileHash`. A test runs the same word check over every script. A site that turns
//!   script block logging on for everything still gets the script, key included, in that
//!   log: that needs the key to travel as a file, not as script text (not done here).

use sha2::{Digest, Sha256};

/// The remote command line that runs a script read from stdin.
pub const POWERSHELL_COMMAND: &[&str] =
    &["powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-Command", "-"];

/// The Windows services that use `c:\k\config`, restarted in this order.
pub const SERVICES: [&str; 2] = ["kubelet", "kubeproxy"];

/// How long the services get to be Running again after a restart.
pub const SERVICE_TIMEOUT_SECS: u32 = 120;

/// Where things live on an AKS Engine Windows node.
pub const CA_PATH: &str = r"c:\k\ca.crt";
pub const KUBECONFIG_PATH: &str = r"c:\k\config";
pub const LOG_PATH: &str = r"c:\k\rotate-certs.log";
pub const BACKUP_DIR: &str = r"c:\k\certs.bak";
/// Names the plan a backup was made for (first line) and the SHA-256 of each copy.
pub const BACKUP_MARKER: &str = r"c:\k\certs.bak\certrotate-stamp.txt";
/// New material while it is checked, readable by Administrators and SYSTEM only.
pub const STAGE_DIR: &str = r"c:\k\certrotate.staged";
pub const CA_TMP: &str = r"c:\k\ca.crt.certrotate.tmp";
pub const KUBECONFIG_TMP: &str = r"c:\k\config.certrotate.tmp";

/// What one Windows agent receives: the cluster CA and its kubelet client identity.
#[derive(Clone, PartialEq, Eq)]
pub struct WindowsInstall {
    pub ca_crt_pem: String,
    pub client_crt_pem: String,
    pub client_key_pem: String,
    /// Prefix of the plan's digest; names the backup this install relies on.
    pub stamp: String,
}

impl std::fmt::Debug for WindowsInstall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsInstall")
            .field("ca_crt_pem", &self.ca_crt_pem)
            .field("client_crt_pem", &self.client_crt_pem)
            .field("client_key_pem", &"<redacted>")
            .field("stamp", &self.stamp)
            .finish()
    }
}

/// A PowerShell single-quoted string literal holding `s` verbatim. PowerShell takes the
/// typographic quotes U+2018..U+201B as single quotes too; each is escaped by doubling it.
pub fn ps_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn sha256_upper(data: &str) -> String {
    hex::encode_upper(Sha256::digest(data.as_bytes()))
}

/// Replaces each `@NAME@` in `template`; panics if one is left (a bug in this file).
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("@{name}@"), value);
    }
    let left = regex::Regex::new("@[A-Z_]+@").expect("placeholder pattern");
    assert!(!left.is_match(&out), "unfilled placeholder in a Windows script: {out}");
    out
}

/// Opens every script: stop on any error, one log line per step. `$step` names the script.
const PRELUDE: &str = r##"& {
# certrotate @STEP@ step for an AKS Engine Windows node; one statement, no empty line inside.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$step = @STEP_Q@
$log = @LOG@
$scratch = @()
function Write-Step([string]$m) { Add-Content -LiteralPath $log -Encoding ASCII -Value ((Get-Date).ToString('o') + ' certrotate ' + $step + ': ' + $m) }
"##;

/// Restricts a file (`''`) or a folder (`'(OI)(CI)'`) to Administrators and SYSTEM, by SID
/// so that localized group names do not matter.
const FN_ADMIN_ONLY_ACL: &str = r##"function Set-AdminOnlyAcl([string]$path, [string]$inherit) {
  & icacls.exe $path /inheritance:r /grant:r ('*S-1-5-32-544:' + $inherit + 'F') ('*S-1-5-18:' + $inherit + 'F') | Out-Null
  if ($LASTEXITCODE -ne 0) { throw ('icacls could not restrict ' + $path + ' to Administrators and SYSTEM (exit ' + $LASTEXITCODE + ')') }
}
"##;

/// Writes bytes to `$path` after restricting it, so the content never sits under a wider ACL.
const FN_WRITE_RESTRICTED: &str = r##"function Write-Restricted([string]$path, [byte[]]$bytes) {
  [IO.File]::WriteAllBytes($path, [byte[]]@())
  Set-AdminOnlyAcl $path ''
  [IO.File]::WriteAllBytes($path, $bytes)
}
"##;

/// Puts `$tmp` (same folder) in place of `$dst` in one rename.
const FN_REPLACE_FILE: &str = r##"function Set-FileFrom([string]$tmp, [string]$dst) {
  if (Test-Path -LiteralPath $dst) { [IO.File]::Replace($tmp, $dst, [NullString]::Value) } else { [IO.File]::Move($tmp, $dst) }
}
"##;

const FN_HEX: &str = r##"function ConvertFrom-Hex([string]$hex) {
  $bytes = New-Object byte[] ([int]($hex.Length / 2))
  for ($i = 0; $i -lt $bytes.Length; $i++) { $bytes[$i] = [Convert]::ToByte($hex.Substring(2 * $i, 2), 16) }
  return ,$bytes
}
function ConvertTo-B64([byte[]]$bytes) {
  $chars = New-Object char[] ([int](4 * [Math]::Ceiling($bytes.Length / 3)))
  [void][Convert]::ToBase64CharArray($bytes, 0, $bytes.Length, $chars, 0)
  return (-join $chars)
}
"##;

/// Closes every script: on failure the log and stderr say why, whatever the script listed in
/// `$scratch` (staged material) is removed, and the process exits 1.
const EPILOGUE: &str = r##"} catch {
  $why = $_.Exception.Message
  try { Write-Step ('FAILED: ' + $why) } catch { }
  foreach ($p in $scratch) { try { if (Test-Path -LiteralPath $p) { Remove-Item -LiteralPath $p -Recurse -Force } } catch { } }
  [Console]::Error.WriteLine('certrotate ' + $step + ' failed on ' + $env:COMPUTERNAME + ': ' + $why)
  [Environment]::Exit(1)
}
[Environment]::Exit(0)
}


"##;

fn script(step: &str, functions: &[&str], body: &str) -> String {
    let mut s = fill(PRELUDE, &[("STEP_Q", ps_quote(step)), ("STEP", step.to_string()), ("LOG", ps_quote(LOG_PATH))]);
    for f in functions {
        s.push_str(f);
    }
    s.push_str("try {\n");
    s.push_str(body);
    s.push_str(EPILOGUE);
    s
}

/// Restarts the services and waits until both are Running; shared by restart and restore.
const RESTART_BODY: &str = r##"  foreach ($svc in @SERVICES@) {
    Write-Step ('restarting service ' + $svc)
    Restart-Service -Name $svc -Force
  }
  $deadline = (Get-Date).AddSeconds(@TIMEOUT@)
  foreach ($svc in @SERVICES@) {
    while ((Get-Service -Name $svc).Status -ne 'Running') {
      if ((Get-Date) -gt $deadline) { throw ('service ' + $svc + ' is ' + (Get-Service -Name $svc).Status + ', not Running, @TIMEOUT@ seconds after its restart') }
      Start-Sleep -Seconds 2
    }
    Write-Step ('service ' + $svc + ' is Running')
  }
"##;

fn restart_body() -> String {
    let services = format!("@({})", SERVICES.iter().map(|s| ps_quote(s)).collect::<Vec<_>>().join(", "));
    fill(RESTART_BODY, &[("SERVICES", services), ("TIMEOUT", SERVICE_TIMEOUT_SECS.to_string())])
}

const BACKUP_BODY: &str = r##"  $stamp = @STAMP@
  $bak = @BAK@
  $marker = @MARKER@
  $files = @('ca.crt', 'config')
  $done = $false
  if (Test-Path -LiteralPath $bak) {
    $old = ''
    if (Test-Path -LiteralPath $marker) { $old = [string](@(Get-Content -LiteralPath $marker)[0]) }
    if ($old -ceq $stamp) {
      $lines = @(Get-Content -LiteralPath $marker)
      foreach ($f in $files) {
        $want = @($lines | Where-Object { $_.StartsWith($f + '=') })
        if ($want.Count -ne 1) { throw ('backup marker ' + $marker + ' records no hash for ' + $f + '; look at ' + $bak + ' by hand') }
        $have = (Get-FileHash -Algorithm SHA256 -LiteralPath (Join-Path $bak $f)).Hash
        if ($have -ne $want[0].Substring($f.Length + 1)) { throw ('backup copy ' + (Join-Path $bak $f) + ' no longer matches the hash recorded when it was made; not touching it') }
      }
      $done = $true
      Write-Step ('backup for plan ' + $stamp + ' already made and verified in ' + $bak)
    } else {
      $aside = 'certs.bak.' + (Get-Date).ToString('yyyyMMddTHHmmss')
      if (Test-Path -LiteralPath (Join-Path 'c:\k' $aside)) { throw ('cannot move the earlier backup aside: c:\k\' + $aside + ' exists') }
      Rename-Item -LiteralPath $bak -NewName $aside
      Write-Step ('moved the earlier backup (plan ''' + $old + ''') to c:\k\' + $aside)
    }
  }
  if (-not $done) {
    New-Item -ItemType Directory -Path $bak | Out-Null
    Set-AdminOnlyAcl $bak '(OI)(CI)'
    $record = @($stamp)
    foreach ($f in $files) {
      $src = Join-Path 'c:\k' $f
      $dst = Join-Path $bak $f
      Copy-Item -LiteralPath $src -Destination $dst
      $h = (Get-FileHash -Algorithm SHA256 -LiteralPath $src).Hash
      if ((Get-FileHash -Algorithm SHA256 -LiteralPath $dst).Hash -ne $h) { throw ('backup copy ' + $dst + ' does not match ' + $src) }
      $record += ($f + '=' + $h)
      Write-Step ('backed up ' + $src + ' to ' + $dst + ' (sha256 ' + $h + ')')
    }
    Set-Content -LiteralPath ($marker + '.tmp') -Value $record -Encoding ASCII
    Move-Item -LiteralPath ($marker + '.tmp') -Destination $marker
    Write-Step ('backup for plan ' + $stamp + ' complete and verified in ' + $bak)
  }
"##;

/// Copies `c:\k\ca.crt` and `c:\k\config` into `c:\k\certs.bak\` and verifies the copies,
/// then writes the marker naming the plan. A backup made for another plan (or by anything
/// else) is renamed to `certs.bak.<timestamp>`, never overwritten. Rerunning after the marker
/// is written only re-verifies: it never copies the (by then new) files over the backup.
pub fn backup_script(stamp: &str) -> String {
    let body = fill(
        BACKUP_BODY,
        &[("STAMP", ps_quote(stamp)), ("BAK", ps_quote(BACKUP_DIR)), ("MARKER", ps_quote(BACKUP_MARKER))],
    );
    script("backup", &[FN_ADMIN_ONLY_ACL], &body)
}

const INSTALL_BODY: &str = r##"  $stamp = @STAMP@
  $marker = @MARKER@
  $ca = @CA@
  $cfg = @CFG@
  $stage = @STAGE@
  $caTmp = @CA_TMP@
  $cfgTmp = @CFG_TMP@
  $scratch = @($stage, $caTmp, $cfgTmp)
  # The new PEM files as hex, and the SHA-256 certrotate computed for each.
  $caHex = @CA_HEX@
  $crtHex = @CRT_HEX@
  $keyHex = @KEY_HEX@
  $caSha = @CA_SHA@
  $crtSha = @CRT_SHA@
  $keySha = @KEY_SHA@
  if (-not (Test-Path -LiteralPath $marker)) { throw ('no backup marker ' + $marker + '; run the backup step of plan ' + $stamp + ' first') }
  if ([string](@(Get-Content -LiteralPath $marker)[0]) -cne $stamp) { throw ('the backup in c:\k\certs.bak was not made for plan ' + $stamp + '; run its backup step first') }
  Write-Step ('installing the CA and client certificate of plan ' + $stamp)
  if (Test-Path -LiteralPath $stage) { Remove-Item -LiteralPath $stage -Recurse -Force }
  New-Item -ItemType Directory -Path $stage | Out-Null
  Set-AdminOnlyAcl $stage '(OI)(CI)'
  function Save-Staged([string]$name, [string]$hex, [string]$sha) {
    $path = Join-Path $stage $name
    [IO.File]::WriteAllBytes($path, (ConvertFrom-Hex $hex))
    if ((Get-FileHash -Algorithm SHA256 -LiteralPath $path).Hash -ne $sha) { throw ('staged ' + $path + ' does not have the sha256 the plan expects') }
    Write-Step ('staged ' + $path + ', sha256 as expected')
    return $path
  }
  $caFile = Save-Staged 'ca.crt' $caHex $caSha
  $crtFile = Save-Staged 'client.crt' $crtHex $crtSha
  $keyFile = Save-Staged 'client.key' $keyHex $keySha
  if ((Test-Path -LiteralPath $ca) -and (Get-FileHash -Algorithm SHA256 -LiteralPath $ca).Hash -eq $caSha) {
    Write-Step ($ca + ' already holds the new CA')
  } else {
    [IO.File]::WriteAllBytes($caTmp, [IO.File]::ReadAllBytes($caFile))
    Set-FileFrom $caTmp $ca
    Write-Step ('installed ' + $ca + ' (sha256 ' + $caSha + ')')
  }
  $want = [ordered]@{}
  $want['certificate-authority-data'] = ConvertTo-B64 ([IO.File]::ReadAllBytes($caFile))
  $want['client-certificate-data'] = ConvertTo-B64 ([IO.File]::ReadAllBytes($crtFile))
  $want['client-key-data'] = ConvertTo-B64 ([IO.File]::ReadAllBytes($keyFile))
  $text = [IO.File]::ReadAllText($cfg)
  $nl = "`n"
  if ($text.Contains("`r`n")) { $nl = "`r`n" }
  $lines = $text -split '\r?\n'
  $seen = @{}
  for ($i = 0; $i -lt $lines.Count; $i++) {
    $m = [regex]::Match($lines[$i], '^(\s*)(certificate-authority-data|client-certificate-data|client-key-data)\s*:(.*)$')
    if ($m.Success) {
      $name = $m.Groups[2].Value
      if ($m.Groups[3].Value -notmatch '^\s*"?[A-Za-z0-9+/=]+"?\s*$') { throw ('line ' + ($i + 1) + ' of ' + $cfg + ': ' + $name + ' is not a one-line base64 value') }
      $seen[$name] = 1 + [int]$seen[$name]
      $lines[$i] = $m.Groups[1].Value + $name + ': "' + $want[$name] + '"'
    }
  }
  foreach ($name in $want.Keys) {
    if ([int]$seen[$name] -ne 1) { throw ($cfg + ' has ' + [int]$seen[$name] + ' ' + $name + ' lines, expected exactly one') }
  }
  $new = [string]::Join($nl, $lines)
  if ($new -ceq $text) {
    Write-Step ($cfg + ' already holds the new CA and client certificate')
  } else {
    Write-Restricted $cfgTmp ((New-Object System.Text.UTF8Encoding $false).GetBytes($new))
    Set-FileFrom $cfgTmp $cfg
    Write-Step ('replaced certificate-authority-data, client-certificate-data and client-key-data in ' + $cfg)
  }
  Set-AdminOnlyAcl $cfg ''
  Write-Step ('restricted ' + $cfg + ' to Administrators and SYSTEM')
  if ((Get-FileHash -Algorithm SHA256 -LiteralPath $ca).Hash -ne $caSha) { throw ($ca + ' does not have the sha256 the plan expects after the install') }
  $text = [IO.File]::ReadAllText($cfg)
  foreach ($name in $want.Keys) {
    $found = [regex]::Matches($text, '(?m)^[ \t]*' + $name + '[ \t]*:[ \t]*"?([A-Za-z0-9+/=]+)"?[ \t]*\r?$')
    if ($found.Count -ne 1) { throw ($cfg + ' has ' + $found.Count + ' ' + $name + ' values after the install, expected one') }
    if ($found[0].Groups[1].Value -cne $want[$name]) { throw ($name + ' in ' + $cfg + ' is not the staged value after the install') }
  }
  Remove-Item -LiteralPath $stage -Recurse -Force
  Write-Step ('verified ' + $ca + ' (sha256 ' + $caSha + ') and the three values in ' + $cfg + '; removed ' + $stage)
"##;

/// Stages the new material (checked against the SHA-256 certrotate computed), installs
/// `c:\k\ca.crt` by an atomic replace, rewrites the three certificate lines of `c:\k\config`
/// (failing if any is missing or repeated) and replaces it atomically, restricts its ACL to
/// Administrators and SYSTEM, and verifies the result. Refuses to run unless `c:\k\certs.bak`
/// holds the backup made for `install.stamp`. The key travels only as the `$keyHex` literal.
pub fn stage_and_install_script(install: &WindowsInstall) -> String {
    let hex_of = |pem: &str| ps_quote(&hex::encode(pem.as_bytes()));
    let body = fill(
        INSTALL_BODY,
        &[
            ("STAMP", ps_quote(&install.stamp)),
            ("MARKER", ps_quote(BACKUP_MARKER)),
            ("CA_TMP", ps_quote(CA_TMP)),
            ("CFG_TMP", ps_quote(KUBECONFIG_TMP)),
            ("CA_HEX", hex_of(&install.ca_crt_pem)),
            ("CRT_HEX", hex_of(&install.client_crt_pem)),
            ("KEY_HEX", hex_of(&install.client_key_pem)),
            ("CA_SHA", ps_quote(&sha256_upper(&install.ca_crt_pem))),
            ("CRT_SHA", ps_quote(&sha256_upper(&install.client_crt_pem))),
            ("KEY_SHA", ps_quote(&sha256_upper(&install.client_key_pem))),
            ("CA", ps_quote(CA_PATH)),
            ("CFG", ps_quote(KUBECONFIG_PATH)),
            ("STAGE", ps_quote(STAGE_DIR)),
        ],
    );
    script("install", &[FN_ADMIN_ONLY_ACL, FN_WRITE_RESTRICTED, FN_REPLACE_FILE, FN_HEX], &body)
}

/// Restarts `kubelet`, then `kubeproxy`, and waits until both are Running.
pub fn restart_script() -> String {
    script("restart", &[], &restart_body())
}

const RESTORE_BODY: &str = r##"  $stamp = @STAMP@
  $bak = @BAK@
  $marker = @MARKER@
  if (-not (Test-Path -LiteralPath $marker)) { throw ('no backup marker ' + $marker + '; nothing to restore from') }
  $lines = @(Get-Content -LiteralPath $marker)
  if ([string]$lines[0] -cne $stamp) { throw ('the backup in ' + $bak + ' was made for plan ''' + [string]$lines[0] + ''', not ' + $stamp + '; restore by hand') }
  foreach ($f in @('ca.crt', 'config')) {
    $src = Join-Path $bak $f
    $dst = Join-Path 'c:\k' $f
    $tmp = $dst + '.certrotate.tmp'
    $want = @($lines | Where-Object { $_.StartsWith($f + '=') })
    if ($want.Count -ne 1) { throw ('backup marker ' + $marker + ' records no hash for ' + $f) }
    $sha = $want[0].Substring($f.Length + 1)
    if ((Get-FileHash -Algorithm SHA256 -LiteralPath $src).Hash -ne $sha) { throw ('backup copy ' + $src + ' does not match the hash recorded when it was made; restore by hand') }
    if ((Test-Path -LiteralPath $dst) -and (Get-FileHash -Algorithm SHA256 -LiteralPath $dst).Hash -eq $sha) {
      Write-Step ($dst + ' already matches its backup')
    } else {
      if ($f -eq 'config') { Write-Restricted $tmp ([IO.File]::ReadAllBytes($src)) } else { [IO.File]::WriteAllBytes($tmp, [IO.File]::ReadAllBytes($src)) }
      Set-FileFrom $tmp $dst
      if ((Get-FileHash -Algorithm SHA256 -LiteralPath $dst).Hash -ne $sha) { throw ($dst + ' does not match its backup after the restore') }
      Write-Step ('restored ' + $dst + ' from ' + $src + ' (sha256 ' + $sha + ')')
    }
  }
"##;

/// Rollback: puts back `c:\k\ca.crt` and `c:\k\config` from the backup made for `stamp`
/// (checked against the hashes its marker records), then restarts the services.
pub fn restore_script(stamp: &str) -> String {
    let body = fill(
        RESTORE_BODY,
        &[("STAMP", ps_quote(stamp)), ("BAK", ps_quote(BACKUP_DIR)), ("MARKER", ps_quote(BACKUP_MARKER))],
    );
    script("restore", &[FN_ADMIN_ONLY_ACL, FN_WRITE_RESTRICTED, FN_REPLACE_FILE], &(body + &restart_body()))
}

const CLEANUP_BODY: &str = r##"  foreach ($p in @(@STAGE@, @CA_TMP@, @CFG_TMP@)) {
    if (Test-Path -LiteralPath $p) {
      Remove-Item -LiteralPath $p -Recurse -Force
      Write-Step ('removed ' + $p)
    }
  }
  Write-Step 'temporary files removed; backups in c:\k\certs.bak* kept'
"##;

/// Removes what an interrupted install may have left (the staging folder, temp files);
/// keeps every backup.
pub fn cleanup_script() -> String {
    let body = fill(
        CLEANUP_BODY,
        &[("STAGE", ps_quote(STAGE_DIR)), ("CA_TMP", ps_quote(CA_TMP)), ("CFG_TMP", ps_quote(KUBECONFIG_TMP))],
    );
    script("cleanup", &[], &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nTOPSECRETKEYBODY\n-----END RSA PRIVATE KEY-----\n";

    fn install() -> WindowsInstall {
        WindowsInstall {
            ca_crt_pem: "-----BEGIN CERTIFICATE-----\nCACERTBODY\n-----END CERTIFICATE-----\n".into(),
            client_crt_pem: "-----BEGIN CERTIFICATE-----\nCLIENTCERTBODY\n-----END CERTIFICATE-----\n".into(),
            client_key_pem: KEY.into(),
            stamp: "0123abcd".into(),
        }
    }

    fn all_scripts() -> Vec<(&'static str, String)> {
        vec![
            ("backup", backup_script("0123abcd")),
            ("install", stage_and_install_script(&install())),
            ("restart", restart_script()),
            ("restore", restore_script("0123abcd")),
            ("cleanup", cleanup_script()),
        ]
    }

    /// Words that make PowerShell 5.1 log a script block whatever the logging policy (from
    /// SuspiciousContentChecker in PowerShell's CompiledScriptBlock.cs). It looks for them
    /// case-insensitively; at the very end of the text also across characters other than
    /// letters and '-', which it skips. The check below errs on the side of finding them.
    const LOGGED_WORDS: &[&str] = &[
        "Add-Type", "DllImport", "DefineDynamicAssembly", "DefineDynamicModule", "DefineType",
        "DefineConstructor", "CreateType", "DefineLiteral", "DefineEnum", "DefineField", "ILGenerator",
        "Emit", "UnverifiableCodeAttribute", "DefinePInvokeMethod", "GetTypes", "GetAssemblies", "Methods",
        "Properties", "GetConstructor", "GetDefaultMembers", "GetEvent", "GetField", "GetInterface",
        "GetMember", "GetMethod", "GetNestedType", "GetProperties", "GetProperty", "InvokeMember",
        "MakeArrayType", "MakeByRefType", "MakeGenericType", "MakePointerType", "DeclaringMethod",
        "DeclaringType", "ReflectedType", "TypeHandle", "TypeInitializer", "UnderlyingSystemType",
        "InteropServices", "Marshal", "AllocHGlobal", "PtrToStructure", "StructureToPtr", "FreeHGlobal",
        "IntPtr", "MemoryStream", "DeflateStream", "FromBase64String", "EncodedCommand", "Bypass",
        "ToBase64String", "ExpandString", "GetPowerShell", "OpenProcess", "VirtualAlloc", "VirtualFree",
        "WriteProcessMemory", "CreateUserThread", "CloseHandle", "GetDelegateForFunctionPointer",
        "CreateThread", "memcpy", "LoadLibrary", "GetModuleHandle", "GetProcAddress", "VirtualProtect",
        "FreeLibrary", "ReadProcessMemory", "CreateRemoteThread", "AdjustTokenPrivileges", "WriteByte",
        "OpenThreadToken", "PtrToString", "ZeroFreeGlobalAllocUnicode", "OpenProcessToken",
        "GetTokenInformation", "SetThreadToken", "ImpersonateLoggedOnUser", "RevertToSelf",
        "GetLogonSessionData", "CreateProcessWithToken", "DuplicateTokenEx", "OpenWindowStation",
        "OpenDesktop", "MiniDumpWriteDump", "AddSecurityPackage", "EnumerateSecurityPackages",
        "GetProcessHandle", "DangerousGetHandle", "CryptoServiceProvider", "Cryptography",
        "RijndaelManaged", "SHA1Managed", "CryptoStream", "CreateEncryptor", "CreateDecryptor",
        "TransformFinalBlock", "DeviceIoControl", "SetInformationProcess", "PasswordDeriveBytes",
        "GetAsyncKeyState", "GetKeyboardState", "GetForegroundWindow", "BindingFlags", "NonPublic",
        "ScriptBlockLogging", "LogPipelineExecutionDetails", "ProtectedEventLogging",
    ];

    fn logged_word(script: &str) -> Option<&'static str> {
        let lower = script.to_ascii_lowercase();
        let runs: Vec<&str> = lower.split(|c: char| !(c.is_ascii_lowercase() || c == '-')).collect();
        LOGGED_WORDS.iter().copied().find(|w| {
            let w = w.to_ascii_lowercase();
            let letters: String = w.chars().filter(|c| c.is_ascii_lowercase() || *c == '-').collect();
            lower.contains(&w) || runs.concat().ends_with(&letters)
        })
    }

    #[test]
    fn ps_quote_doubles_every_kind_of_single_quote() {
        assert_eq!(ps_quote(""), "''");
        assert_eq!(ps_quote("plain"), "'plain'");
        assert_eq!(ps_quote("it's"), "'it''s'");
        assert_eq!(ps_quote("''"), "''''''");
        assert_eq!(ps_quote("a\u{2019}b\u{2018}c"), "'a\u{2019}\u{2019}b\u{2018}\u{2018}c'");
        assert_eq!(ps_quote("$env:x `n \"q\""), "'$env:x `n \"q\"'");
    }

    #[test]
    fn a_quote_in_the_stamp_stays_inside_its_literal() {
        let s = backup_script("x'; Remove-Item c:\\ -Recurse; '");
        assert!(s.contains("$stamp = 'x''; Remove-Item c:\\ -Recurse; '''\n"), "{s}");
    }

    #[test]
    fn debug_redacts_the_key() {
        let shown = format!("{:?}", install());
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("TOPSECRETKEYBODY"), "{shown}");
        assert!(shown.contains("CACERTBODY") && shown.contains("0123abcd"), "{shown}");
    }

    #[test]
    fn remote_command_reads_the_script_from_stdin() {
        assert_eq!(
            POWERSHELL_COMMAND.join(" "),
            "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command -"
        );
    }

    #[test]
    fn every_script_is_one_statement_that_stops_on_error() {
        for (name, s) in all_scripts() {
            assert!(s.is_ascii(), "{name}");
            assert!(s.starts_with("& {\n"), "{name}");
            assert!(s.ends_with("\n[Environment]::Exit(0)\n}\n\n\n"), "{name}");
            let body = s.trim_end_matches('\n');
            assert!(!body.lines().any(|l| l.trim().is_empty()), "{name}: an empty line inside the block ends it early");
            assert!(s.contains("\n$ErrorActionPreference = 'Stop'\n"), "{name}");
            assert!(s.contains("[Environment]::Exit(1)"), "{name}");
            assert!(s.contains(&format!("$step = '{name}'")), "{name}");
            assert_eq!(s.matches('{').count(), s.matches('}').count(), "{name}: unbalanced braces");
        }
    }

    #[test]
    fn no_script_contains_a_word_that_forces_event_logging() {
        for (name, s) in all_scripts() {
            assert_eq!(logged_word(&s), None, "{name}");
        }
        // The check itself finds such words.
        assert_eq!(logged_word("[Convert]::FromBase64String($x)"), Some("FromBase64String"));
        assert_eq!(logged_word("$m.Properties"), Some("Properties"));
    }

    #[test]
    fn install_carries_the_material_as_hex_with_its_hashes() {
        let i = install();
        let s = stage_and_install_script(&i);
        for pem in [&i.ca_crt_pem, &i.client_crt_pem, &i.client_key_pem] {
            assert_eq!(s.matches(&hex::encode(pem)).count(), 1);
            let sha = hex::encode_upper(Sha256::digest(pem.as_bytes()));
            assert_eq!(s.matches(&sha).count(), 1, "{sha}");
        }
        assert!(s.contains(&format!("  $caSha = '{}'\n", hex::encode_upper(Sha256::digest(i.ca_crt_pem.as_bytes())))));
        assert!(s.contains("$stamp = '0123abcd'"));
        assert!(s.contains(r"$ca = 'c:\k\ca.crt'") && s.contains(r"$cfg = 'c:\k\config'"));
        assert!(s.contains(r"$log = 'c:\k\rotate-certs.log'"));
    }

    #[test]
    fn the_key_appears_only_in_its_hex_literal() {
        let i = install();
        let s = stage_and_install_script(&i);
        let key_hex = hex::encode(KEY);
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        assert!(!s.contains("TOPSECRETKEYBODY"));
        assert!(!s.contains(&key_b64));
        let holding: Vec<&str> = s.lines().filter(|l| l.contains(&key_hex)).collect();
        assert_eq!(holding, vec![format!("  $keyHex = '{key_hex}'")]);
        // Nothing that writes the log or stderr touches the key or its staged file.
        let mut messages = 0;
        for line in s.lines() {
            for call in ["Write-Step ", "Error.WriteLine(", "throw "] {
                let Some(at) = line.find(call) else { continue };
                messages += 1;
                let message = &line[at..];
                for secret in ["$keyHex", "$keyFile", "$want[", "$new", "$lines[", "$found[0]", "$text"] {
                    assert!(!message.contains(secret), "{line}");
                }
            }
        }
        assert!(messages >= 15, "{messages}");
        // The key's variable is used to stage it and nowhere else.
        assert_eq!(s.matches("$keyHex").count(), 2);
        assert!(s.contains("$keyFile = Save-Staged 'client.key' $keyHex $keySha"));
    }

    #[test]
    fn install_refuses_without_this_plans_backup_and_checks_all_three_keys() {
        let s = stage_and_install_script(&install());
        let guard = s.find("-cne $stamp) { throw").unwrap();
        assert!(guard < s.find("Save-Staged 'ca.crt'").unwrap(), "backup check must come first");
        assert!(s.contains("expected exactly one"));
        assert!(s.contains("[IO.File]::Replace($tmp, $dst, [NullString]::Value)"));
        assert!(s.contains("Set-AdminOnlyAcl $cfg ''"));
    }

    #[test]
    fn restart_script_is_exact() {
        insta::assert_snapshot!(restart_script());
    }

    #[test]
    fn backup_script_is_exact() {
        insta::assert_snapshot!(backup_script("0123abcd"));
    }

    #[test]
    fn restore_script_is_exact() {
        insta::assert_snapshot!(restore_script("0123abcd"));
    }

    #[test]
    fn cleanup_script_is_exact() {
        insta::assert_snapshot!(cleanup_script());
    }

    #[test]
    fn install_script_is_exact() {
        insta::assert_snapshot!(stage_and_install_script(&install()));
    }

    /// Parses every script with pwsh when it is installed (it is not in the lab).
    #[test]
    fn scripts_parse_in_pwsh_when_available() {
        let Ok(out) = std::process::Command::new("pwsh").arg("-Version").output() else { return };
        if !out.status.success() {
            return;
        }
        for (name, s) in all_scripts() {
            let check = format!(
                "$e = $null; [void][System.Management.Automation.Language.Parser]::ParseInput({}, [ref]$null, [ref]$e); if ($e) {{ $e | ForEach-Object {{ $_.ToString() }}; exit 1 }}",
                ps_quote(&s)
            );
            let out = std::process::Command::new("pwsh").args(["-NoProfile", "-NonInteractive", "-Command", &check]).output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
}
