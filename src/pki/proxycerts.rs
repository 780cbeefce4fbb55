//! How AKS Engine keeps the front-proxy material under `/proxycerts` in etcd, and how it
//! reads it back, so certrotate writes values a master AKS Engine provisions can use.
//!
//! AKS Engine's `generateproxycerts.sh` (parts/k8s/cloud-init/artifacts/) stores each value
//! as `" $(cat file)"`: one space, then the PEM without its trailing newlines. Masters read a
//! value with `etcdctl get --print-value-only > file` (etcdctl ends it with a newline) and then
//! `sed -i '1s/\s//'`, which drops the first whitespace character of the first line: the
//! leading space of its own form, or, for a raw PEM, the space of `-----BEGIN CERTIFICATE-----`.

use serde::{Deserialize, Serialize};

/// The value AKS Engine would store for a PEM file's content.
pub fn etcd_value(pem: &str) -> String {
    format!(" {}", pem.trim_end_matches('\n'))
}

/// What a master ends up with after AKS Engine's reading step, from the text
/// `etcdctl get --print-value-only` printed (the value and a newline).
pub fn read_back_printed(printed: &str) -> String {
    let (first, rest) = printed.split_at(printed.find('\n').unwrap_or(printed.len()));
    // GNU sed's \s: space, tab, carriage return, form feed, vertical tab (newline cannot occur
    // in the first line).
    let first = match first.char_indices().find(|(_, c)| matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')) {
        Some((i, c)) => format!("{}{}", &first[..i], &first[i + c.len_utf8()..]),
        None => first.to_string(),
    };
    format!("{first}{rest}")
}

/// What a master ends up with after AKS Engine's reading step, from a stored value.
pub fn read_back(value: &str) -> String {
    read_back_printed(&format!("{value}\n"))
}

/// Which form a stored value is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredForm {
    /// Nothing stored.
    Empty,
    /// One space, then the PEM: what AKS Engine writes and can read back.
    AksEngine,
    /// The PEM as it is: AKS Engine's reading step turns its first line into
    /// `-----BEGINCERTIFICATE-----`, which neither openssl nor kube-apiserver reads.
    RawPem,
    /// Anything else (two spaces, a tab, no PEM at all).
    Other,
}

impl StoredForm {
    pub fn of(value: &str) -> Self {
        if value.trim().is_empty() {
            StoredForm::Empty
        } else if value.starts_with(" -----BEGIN ") {
            StoredForm::AksEngine
        } else if value.starts_with("-----BEGIN ") {
            StoredForm::RawPem
        } else {
            StoredForm::Other
        }
    }

    /// Whether a master AKS Engine provisions could use the value.
    pub fn is_wrong(self) -> bool {
        matches!(self, StoredForm::RawPem | StoredForm::Other)
    }
}

/// sh that prints, for the stored value in `$1` (as etcdctl printed it), its form as one of
/// `empty`, `aks`, `raw`, `other` in `$form`, and AKS Engine's reading of it in `$aks`.
/// Shared by the refresh script (for the key, which must not leave the node) and its tests.
pub const SH_AKS_READ: &str = r#"aks_read() {
  case $1 in ''|"$nl") form=empty ;; " -----BEGIN "*) form=aks ;; "-----BEGIN "*) form=raw ;; *) form=other ;; esac
  first=${1%%"$nl"*}; rest=${1#"$first"}
  case $first in *[[:space:]]*) first="${first%%[[:space:]]*}${first#*[[:space:]]}" ;; esac
  aks=$first$rest; first=; rest=
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn stored_as_aks_engine_writes_it_and_read_back_to_the_pem() {
        let v = etcd_value(PEM);
        assert_eq!(v, " -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "one space, no trailing newline");
        assert_eq!(etcd_value(&format!("{PEM}\n\n")), v, "$(cat) drops every trailing newline");
        assert_eq!(StoredForm::of(&v), StoredForm::AksEngine);
        assert_eq!(read_back(&v), PEM);
    }

    #[test]
    fn raw_pem_reads_back_broken_as_aks_engine_reads_it() {
        assert_eq!(StoredForm::of(PEM), StoredForm::RawPem);
        assert!(StoredForm::of(PEM).is_wrong());
        assert!(read_back(PEM).starts_with("-----BEGINCERTIFICATE-----\n"), "{}", read_back(PEM));
        assert_eq!(StoredForm::of(&format!("  {PEM}")), StoredForm::Other);
        assert_eq!(StoredForm::of("\tx"), StoredForm::Other);
        assert_eq!(StoredForm::of(""), StoredForm::Empty);
        assert!(!StoredForm::of("").is_wrong());
        assert_eq!(read_back_printed("\t-----BEGIN X-----\nA\n"), "-----BEGIN X-----\nA\n", "sed's \\s takes a tab too");
    }

    /// The shell reading and the Rust one agree, on what sed itself does.
    #[test]
    fn shell_reading_matches_sed() {
        for value in [etcd_value(PEM), PEM.to_string(), format!("  {PEM}"), "\tab c\nd".to_string(), "".to_string()] {
            let printed = format!("{value}\n");
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("v");
            std::fs::write(&f, &printed).unwrap();
            assert!(std::process::Command::new("sed").args(["-i", r"1s/\s//"]).arg(&f).status().unwrap().success());
            let by_sed = std::fs::read_to_string(&f).unwrap();
            assert_eq!(read_back_printed(&printed), by_sed, "{value:?}");
            let script = format!("nl='\n'\n{SH_AKS_READ}\naks_read \"$V\"\nprintf '%s|%s' \"$form\" \"$aks\"");
            let out = std::process::Command::new("sh").args(["-c", &script]).env("V", &printed).output().unwrap();
            let out = String::from_utf8(out.stdout).unwrap();
            let (form, read) = out.split_once('|').unwrap();
            assert_eq!(read, by_sed, "{value:?}");
            let want = match StoredForm::of(&value) {
                StoredForm::Empty => "empty",
                StoredForm::AksEngine => "aks",
                StoredForm::RawPem => "raw",
                StoredForm::Other => "other",
            };
            assert_eq!(form, want, "{value:?}");
        }
    }
}
