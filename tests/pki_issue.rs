//! Issuance checked by independent parties: the real `openssl` CLI verifies chains, usages
//! and keys; rustls does real mutual-TLS handshakes over loopback TCP with the issued pairs;
//! and a CA made by `openssl req -x509` with a PKCS#1 key stands in for one AKS Engine made.

use certrotate::pki::inspect::{self, InspectError, KeyEncoding};
use certrotate::pki::issue::{self, IssueError};
use certrotate::pki::{CertTemplate, ExtendedUsage, KeyCertPair, KeySpec};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const FQDN: &str = "mycluster.local.cloudapp.azurestack.external";

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn template(cn: &str, key: KeySpec) -> CertTemplate {
    CertTemplate {
        common_name: cn.into(),
        organization: None,
        dns_sans: vec![],
        ip_sans: vec![],
        is_ca: false,
        extended_usages: vec![],
        key,
        not_before: now(),
        not_after: now() + time::Duration::days(2 * 365),
    }
}

fn master_ips() -> Vec<IpAddr> {
    ["10.255.255.5", "127.0.0.1", "10.255.255.15", "10.255.255.6", "10.255.255.7", "10.0.0.1"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect()
}

fn ca_template(cn: &str, key: KeySpec) -> CertTemplate {
    CertTemplate { is_ca: true, not_after: now() + time::Duration::days(30 * 365), ..template(cn, key) }
}

/// The leaves of an AKS Engine cluster, as the catalogue would describe them.
fn leaf_templates(key: KeySpec) -> Vec<CertTemplate> {
    let mut apiserver = template("apiserver", key);
    apiserver.dns_sans = [FQDN, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    apiserver.ip_sans = master_ips();
    apiserver.extended_usages = vec![ExtendedUsage::ServerAuth];

    let mut client = template("client", key);
    client.organization = Some("system:masters".into());
    client.extended_usages = vec![ExtendedUsage::ClientAuth];

    let mut etcdserver = template("etcdserver", key);
    etcdserver.ip_sans = master_ips();
    etcdserver.extended_usages = vec![ExtendedUsage::ServerAuth, ExtendedUsage::ClientAuth];

    let mut etcdclient = template("etcdclient", key);
    etcdclient.ip_sans = master_ips();
    etcdclient.extended_usages = vec![ExtendedUsage::ServerAuth, ExtendedUsage::ClientAuth];

    vec![apiserver, client, etcdserver, etcdclient]
}

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs openssl, asserting success; returns stdout and stderr together.
fn openssl(args: &[&str], dir: &Path) -> String {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "openssl {args:?} failed: {text}");
    text
}

/// Runs openssl, asserting success; returns stdout alone.
fn openssl_stdout(args: &[&str], dir: &Path) -> String {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("openssl prints text")
}

fn check_with_openssl(ca: &KeyCertPair, leaves: &[(CertTemplate, KeyCertPair)], key: KeySpec) {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write(dir.path(), "ca.pem", &ca.cert_pem);
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", "ca.pem"], dir.path());
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign"), "{ca_text}");

    for (template, pair) in leaves {
        let name = &template.common_name;
        write(dir.path(), &format!("{name}.pem"), &pair.cert_pem);
        write(dir.path(), &format!("{name}.key"), &pair.key_pem);

        let verified = openssl(
            &["verify", "-CAfile", ca_path.to_str().unwrap(), &format!("{name}.pem")],
            dir.path(),
        );
        assert!(verified.contains(&format!("{name}.pem: OK")), "{verified}");

        let text = openssl(&["x509", "-noout", "-text", "-in", &format!("{name}.pem")], dir.path());
        assert!(text.contains("CA:FALSE"), "{name}: {text}");
        match key {
            KeySpec::EcdsaP256 => assert!(text.contains("Digital Signature\n"), "{name}: {text}"),
            _ => assert!(text.contains("Digital Signature, Key Encipherment"), "{name}: {text}"),
        }
        let has_server = text.contains("TLS Web Server Authentication");
        let has_client = text.contains("TLS Web Client Authentication");
        assert_eq!(has_server, template.extended_usages.contains(&ExtendedUsage::ServerAuth), "{name}: {text}");
        assert_eq!(has_client, template.extended_usages.contains(&ExtendedUsage::ClientAuth), "{name}: {text}");
        let signature = if key == KeySpec::EcdsaP256 { "ecdsa-with-SHA256" } else { "sha256WithRSAEncryption" };
        assert!(text.contains(&format!("Signature Algorithm: {signature}")), "{name}: {text}");

        // SANs in template order, DNS names first, as Go writes them.
        let expected_sans: Vec<String> = template
            .dns_sans
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(template.ip_sans.iter().map(|ip| format!("IP Address:{ip}")))
            .collect();
        if !expected_sans.is_empty() {
            assert!(text.contains(&expected_sans.join(", ")), "{name}: {text}");
        }

        let subject = openssl(&["x509", "-noout", "-subject", "-in", &format!("{name}.pem")], dir.path());
        let expected_subject = match &template.organization {
            Some(o) => format!("subject=O = {o}, CN = {name}"),
            None => format!("subject=CN = {name}"),
        };
        assert_eq!(subject.trim(), expected_subject);

        match key {
            KeySpec::EcdsaP256 => {
                assert!(pair.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
                let checked = openssl(&["ec", "-check", "-noout", "-in", &format!("{name}.key")], dir.path());
                assert!(checked.contains("EC Key valid"), "{checked}");
            }
            _ => {
                assert!(pair.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
                assert!(pair.key_pem.ends_with("-----END RSA PRIVATE KEY-----\n"));
                let checked = openssl(&["rsa", "-check", "-noout", "-in", &format!("{name}.key")], dir.path());
                assert!(checked.contains("RSA key ok"), "{checked}");
            }
        }
        // Byte-for-byte layout: OpenSSL's PEM writer lays out PEM as Go's pem.Encode does
        // (64 columns, LF, trailing newline), so re-encoding must reproduce our files exactly.
        let reencoded_cert = openssl_stdout(&["x509", "-in", &format!("{name}.pem")], dir.path());
        assert_eq!(reencoded_cert, pair.cert_pem, "{name}: certificate PEM layout");
        let reencoded_key = match key {
            KeySpec::EcdsaP256 => openssl_stdout(&["ec", "-in", &format!("{name}.key")], dir.path()),
            _ => openssl_stdout(&["rsa", "-traditional", "-in", &format!("{name}.key")], dir.path()),
        };
        assert_eq!(reencoded_key, pair.key_pem, "{name}: key PEM layout");
        // Go's encoding/asn1 writes printable names as PrintableString; so do we.
        let asn1 = openssl(&["asn1parse", "-in", &format!("{name}.pem")], dir.path());
        assert!(asn1.contains(&format!("PRINTABLESTRING   :{name}")), "{name}: {asn1}");

        // The key file's public half is the certificate's.
        let key_pub = openssl(&["pkey", "-pubout", "-in", &format!("{name}.key")], dir.path());
        let cert_pub = openssl(&["x509", "-noout", "-pubkey", "-in", &format!("{name}.pem")], dir.path());
        assert_eq!(key_pub, cert_pub);
    }
}

fn check_facts(ca: &KeyCertPair, leaves: &[(CertTemplate, KeyCertPair)], key: KeySpec) {
    let ca_facts = inspect::parse_cert_pem(&ca.cert_pem).unwrap();
    assert!(ca_facts.is_ca);
    assert_eq!(ca_facts.subject, "CN=ca");
    assert_eq!(ca_facts.issuer, "CN=ca");
    let expected_ca_usages: &[&str] = match key {
        KeySpec::EcdsaP256 => &["digitalSignature", "keyCertSign"],
        _ => &["digitalSignature", "keyEncipherment", "keyCertSign"],
    };
    assert_eq!(ca_facts.key_usages, expected_ca_usages);

    let mut serials = std::collections::HashSet::new();
    for (template, pair) in leaves {
        let facts = inspect::parse_cert_pem(&pair.cert_pem).unwrap();
        assert_eq!(facts.subject_cn.as_deref(), Some(template.common_name.as_str()));
        assert_eq!(facts.subject_o, template.organization.iter().cloned().collect::<Vec<_>>());
        assert_eq!(facts.issuer, ca_facts.subject);
        assert_eq!(facts.issuer_cn.as_deref(), Some("ca"));
        assert_eq!(facts.dns_sans, template.dns_sans);
        assert_eq!(facts.ip_sans, template.ip_sans);
        assert_eq!(facts.extended_usages, template.extended_usages);
        assert!(facts.other_extended_usages.is_empty());
        assert!(!facts.is_ca);
        assert_eq!(facts.not_before, template.not_before.replace_nanosecond(0).unwrap());
        assert_eq!(facts.not_after, template.not_after.replace_nanosecond(0).unwrap());
        let (algorithm, bits) = match key {
            KeySpec::Rsa2048 => ("RSA", 2048),
            KeySpec::Rsa3072 => ("RSA", 3072),
            KeySpec::Rsa4096 => ("RSA", 4096),
            KeySpec::EcdsaP256 => ("ECDSA P-256", 256),
        };
        assert_eq!((facts.key_algorithm.as_str(), facts.key_bits), (algorithm, bits));
        // A 128-bit positive serial is at most 17 bytes with its sign padding; we strip that.
        assert!(facts.serial.len() <= 32 && !facts.serial.is_empty(), "{}", facts.serial);
        assert!(serials.insert(facts.serial.clone()), "serial repeated");

        let key_facts = inspect::parse_key_pem(&pair.key_pem).unwrap();
        assert_eq!(key_facts.public_key_sha256, facts.public_key_sha256);
        assert_eq!((key_facts.algorithm.as_str(), key_facts.bits), (algorithm, bits));
        assert!(inspect::key_matches_cert(&pair.key_pem, &pair.cert_pem).unwrap());
        assert!(inspect::chains_to(&pair.cert_pem, &ca.cert_pem).unwrap());
    }
}

fn issue_pki(key: KeySpec) -> (KeyCertPair, Vec<(CertTemplate, KeyCertPair)>) {
    let ca = issue::issue_ca(&ca_template("ca", key)).unwrap();
    let templates = leaf_templates(key);
    let pairs = issue::issue_all(&templates, &ca).unwrap();
    assert_eq!(pairs.len(), templates.len());
    (ca, templates.into_iter().zip(pairs).collect())
}

#[test]
fn rsa2048_pki_passes_openssl_and_inspection() {
    let (ca, leaves) = issue_pki(KeySpec::Rsa2048);
    check_with_openssl(&ca, &leaves, KeySpec::Rsa2048);
    check_facts(&ca, &leaves, KeySpec::Rsa2048);
    mutual_tls(&ca, &leaves[0].1, &leaves[1].1, "localhost");
    mutual_tls(&ca, &leaves[0].1, &leaves[1].1, "10.255.255.15");
    // etcd pairs are both server and client.
    mutual_tls(&ca, &leaves[2].1, &leaves[3].1, "127.0.0.1");
}

#[test]
fn ecdsa_p256_pki_passes_openssl_and_inspection() {
    let (ca, leaves) = issue_pki(KeySpec::EcdsaP256);
    check_with_openssl(&ca, &leaves, KeySpec::EcdsaP256);
    check_facts(&ca, &leaves, KeySpec::EcdsaP256);
    mutual_tls(&ca, &leaves[0].1, &leaves[1].1, "localhost");
    mutual_tls(&ca, &leaves[2].1, &leaves[3].1, "10.0.0.1");
}

#[test]
fn foreign_ca_and_foreign_key_are_told_apart() {
    let (ca, leaves) = issue_pki(KeySpec::EcdsaP256);
    // Same subject (CN=ca), different key: only the signature check can tell.
    let impostor = issue::issue_ca(&ca_template("ca", KeySpec::EcdsaP256)).unwrap();
    let leaf = &leaves[0].1;
    assert!(inspect::chains_to(&leaf.cert_pem, &ca.cert_pem).unwrap());
    assert!(!inspect::chains_to(&leaf.cert_pem, &impostor.cert_pem).unwrap());
    let other_name = issue::issue_ca(&ca_template("proxyClientCA", KeySpec::EcdsaP256)).unwrap();
    assert!(!inspect::chains_to(&leaf.cert_pem, &other_name.cert_pem).unwrap());

    assert!(!inspect::key_matches_cert(&leaves[1].1.key_pem, &leaf.cert_pem).unwrap());
    assert!(!inspect::key_matches_cert(&impostor.key_pem, &ca.cert_pem).unwrap());
}

#[test]
fn tls_handshake_fails_against_a_foreign_ca() {
    let (ca, leaves) = issue_pki(KeySpec::EcdsaP256);
    let impostor = issue::issue_ca(&ca_template("ca", KeySpec::EcdsaP256)).unwrap();
    let server = &leaves[0].1;
    let client = &leaves[1].1;
    let error = try_mutual_tls(&impostor, &ca, server, client, "localhost").unwrap_err();
    assert!(error.contains("UnknownIssuer") || error.contains("BadSignature"), "{error}");
}

/// A CA made by OpenSSL with a PKCS#1 key is what an AKS Engine cluster hands us.
#[test]
fn openssl_made_pkcs1_ca_signs_leaves_with_its_exact_subject() {
    let dir = tempfile::tempdir().unwrap();
    openssl(&["genrsa", "-traditional", "-out", "ca.key", "2048"], dir.path());
    openssl(
        &["req", "-x509", "-new", "-key", "ca.key", "-subj", "/C=US/O=Contoso Ltd/OU=AzureStack/CN=ca", "-days", "3650", "-out", "ca.crt"],
        dir.path(),
    );
    let ca = KeyCertPair {
        cert_pem: std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.path().join("ca.key")).unwrap(),
    };
    assert!(ca.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let key_facts = inspect::parse_key_pem(&ca.key_pem).unwrap();
    assert_eq!(key_facts.encoding, KeyEncoding::Pkcs1);
    assert!(inspect::key_matches_cert(&ca.key_pem, &ca.cert_pem).unwrap());

    let templates = leaf_templates(KeySpec::Rsa2048);
    let single = issue::issue_leaf(&templates[0], &ca).unwrap();
    let many = issue::issue_all(&templates, &ca).unwrap();
    let ca_facts = inspect::parse_cert_pem(&ca.cert_pem).unwrap();
    assert_eq!(ca_facts.subject, "CN=ca,OU=AzureStack,O=Contoso Ltd,C=US");
    for (name, pair) in std::iter::once(("single", &single)).chain(many.iter().map(|p| ("many", p))) {
        assert!(inspect::chains_to(&pair.cert_pem, &ca.cert_pem).unwrap(), "{name}");
        let facts = inspect::parse_cert_pem(&pair.cert_pem).unwrap();
        assert_eq!(facts.issuer, ca_facts.subject);
        write(dir.path(), "leaf.crt", &pair.cert_pem);
        let verified = openssl(&["verify", "-CAfile", "ca.crt", "leaf.crt"], dir.path());
        assert!(verified.contains("leaf.crt: OK"), "{verified}");
        // The issuer name bytes equal the CA's subject bytes (openssl prints the DER hash).
        let issuer_hash = openssl(&["x509", "-noout", "-issuer_hash", "-in", "leaf.crt"], dir.path());
        let subject_hash = openssl(&["x509", "-noout", "-subject_hash", "-in", "ca.crt"], dir.path());
        assert_eq!(issuer_hash, subject_hash);
    }
    // The authority key identifier points at the OpenSSL CA's subject key identifier.
    write(dir.path(), "leaf.crt", &single.cert_pem);
    let leaf_text = openssl(&["x509", "-noout", "-text", "-in", "leaf.crt"], dir.path());
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", "ca.crt"], dir.path());
    let ski = ca_text.split("Subject Key Identifier:").nth(1).unwrap().lines().nth(1).unwrap().trim();
    assert!(leaf_text.contains(ski), "AKI should be {ski}: {leaf_text}");
    mutual_tls(&ca, &many[0], &many[1], FQDN);
}

/// What clusters built years ago carry: Go before 1.15 gave the CA no subject key
/// identifier, names were PrintableString, KeyUsage digitalSignature|keyEncipherment|certSign.
/// Leaves then carry no authority key identifier either, as Go would issue them.
#[test]
fn old_aks_engine_style_ca_without_key_identifiers_signs_leaves() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ca.cnf",
        "[req]\ndistinguished_name = dn\nx509_extensions = v3\nstring_mask = nombstr\nprompt = no\n\
         [dn]\nCN = ca\n\
         [v3]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign\n\
         subjectKeyIdentifier = none\nauthorityKeyIdentifier = none\n",
    );
    openssl(&["genrsa", "-traditional", "-out", "ca.key", "2048"], dir.path());
    openssl(&["req", "-x509", "-new", "-key", "ca.key", "-config", "ca.cnf", "-days", "3650", "-out", "ca.crt"], dir.path());
    let ca = KeyCertPair {
        cert_pem: std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.path().join("ca.key")).unwrap(),
    };
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", "ca.crt"], dir.path());
    assert!(!ca_text.contains("Key Identifier"), "test CA should have no key identifiers: {ca_text}");

    let pairs = issue::issue_all(&leaf_templates(KeySpec::Rsa2048), &ca).unwrap();
    for pair in &pairs {
        write(dir.path(), "leaf.crt", &pair.cert_pem);
        let verified = openssl(&["verify", "-CAfile", "ca.crt", "leaf.crt"], dir.path());
        assert!(verified.contains("leaf.crt: OK"), "{verified}");
        let text = openssl(&["x509", "-noout", "-text", "-in", "leaf.crt"], dir.path());
        assert!(!text.contains("Authority Key Identifier"), "{text}");
        assert!(inspect::chains_to(&pair.cert_pem, &ca.cert_pem).unwrap());
    }
    mutual_tls(&ca, &pairs[0], &pairs[1], "kubernetes.default");
}

#[test]
fn pkcs8_and_sec1_keys_from_openssl_are_read_and_usable_as_ca() {
    let dir = tempfile::tempdir().unwrap();
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa8.key"], dir.path());
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key"], dir.path());
    for (file, encoding, algorithm) in
        [("rsa8.key", KeyEncoding::Pkcs8, "RSA"), ("ec.key", KeyEncoding::Sec1, "ECDSA P-256")]
    {
        let pem = std::fs::read_to_string(dir.path().join(file)).unwrap();
        let facts = inspect::parse_key_pem(&pem).unwrap();
        assert_eq!((facts.encoding, facts.algorithm.as_str()), (encoding, algorithm));
        // Same SPKI hash as OpenSSL computes from the key.
        let spki = Command::new("openssl")
            .args(["pkey", "-in", file, "-pubout", "-outform", "DER"])
            .current_dir(dir.path())
            .output()
            .unwrap()
            .stdout;
        use sha2::Digest;
        assert_eq!(facts.public_key_sha256, hex::encode(sha2::Sha256::digest(&spki)));

        openssl(&["req", "-x509", "-new", "-key", file, "-subj", "/CN=ca", "-days", "30", "-out", "ca.crt"], dir.path());
        let ca = KeyCertPair {
            cert_pem: std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            key_pem: pem,
        };
        let leaf = issue::issue_leaf(&leaf_templates(KeySpec::EcdsaP256)[0], &ca).unwrap();
        write(dir.path(), "leaf.crt", &leaf.cert_pem);
        let verified = openssl(&["verify", "-CAfile", "ca.crt", "leaf.crt"], dir.path());
        assert!(verified.contains("leaf.crt: OK"), "{verified}");
    }
    // SEC1 may leave the public key out; its hash must come out the same, recomputed.
    openssl(&["ec", "-in", "ec.key", "-no_public", "-out", "ec_nopub.key"], dir.path());
    let without_public = std::fs::read_to_string(dir.path().join("ec_nopub.key")).unwrap();
    let with_public = std::fs::read_to_string(dir.path().join("ec.key")).unwrap();
    assert_ne!(without_public, with_public);
    assert_eq!(
        inspect::parse_key_pem(&without_public).unwrap().public_key_sha256,
        inspect::parse_key_pem(&with_public).unwrap().public_key_sha256
    );

    // The PKCS#8 form converts to the PKCS#1 AKS Engine needs, and OpenSSL reads it back.
    let pkcs8 = std::fs::read_to_string(dir.path().join("rsa8.key")).unwrap();
    let pkcs1 = issue::pkcs8_pem_to_pkcs1_pem(&pkcs8).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    write(dir.path(), "rsa1.key", &pkcs1);
    let traditional = openssl(&["rsa", "-in", "rsa8.key", "-traditional"], dir.path());
    assert!(traditional.contains(pkcs1.trim_end()), "same bytes as openssl -traditional");
    assert_eq!(issue::pkcs1_pem_to_pkcs8_pem(&pkcs1).unwrap().trim_end(), pkcs8.trim_end());
}

/// rcgen rebuilds the issuer name from a parsed form that cannot hold repeated attributes
/// or multi-valued RDNs; such CAs must be refused, not turned into unverifiable leaves.
#[test]
fn ca_subjects_rcgen_cannot_reproduce_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    openssl(&["genrsa", "-traditional", "-out", "ca.key", "2048"], dir.path());
    let key_pem = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
    // Repeated OU: rcgen keeps one, so the issued issuer would differ; the guard catches it.
    // Multi-valued RDN: rcgen refuses to parse the CA at all.
    type Expect = fn(&IssueError) -> bool;
    let cases: [(&str, Option<&str>, Expect); 2] = [
        ("/OU=a/OU=b/CN=ca", None, |e| matches!(e, IssueError::IssuerMismatch { .. })),
        ("/O=a+OU=b/CN=ca", Some("-multivalue-rdn"), |e| matches!(e, IssueError::BadCaCertificate { .. })),
    ];
    for (subject, extra, expected) in cases {
        let mut args = vec!["req", "-x509", "-new", "-key", "ca.key", "-subj", subject, "-days", "30", "-out", "ca.crt"];
        args.extend(extra);
        openssl(&args, dir.path());
        let ca = KeyCertPair {
            cert_pem: std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            key_pem: key_pem.clone(),
        };
        let error = issue::issue_leaf(&leaf_templates(KeySpec::EcdsaP256)[0], &ca).unwrap_err();
        assert!(expected(&error), "{subject}: {error}");
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let (ca, leaves) = issue_pki(KeySpec::EcdsaP256);
    let cert = &leaves[0].1.cert_pem;
    let key = &leaves[0].1.key_pem;

    assert_eq!(inspect::parse_cert_pem("hello world").unwrap_err(), InspectError::NoCertificate);
    assert_eq!(inspect::parse_cert_pem("").unwrap_err(), InspectError::NoCertificate);
    assert_eq!(inspect::parse_key_pem("garbage").unwrap_err(), InspectError::NoKey);

    let truncated = &cert[..cert.len() / 2];
    let error = inspect::parse_cert_pem(truncated).unwrap_err();
    assert!(matches!(error, InspectError::Pem(_)), "{error}");

    let key_error = inspect::parse_cert_pem(key).unwrap_err();
    assert_eq!(key_error.to_string(), "PEM block is EC PRIVATE KEY, expected CERTIFICATE");
    let cert_error = inspect::parse_key_pem(cert).unwrap_err();
    assert!(cert_error.to_string().starts_with("PEM block is CERTIFICATE, expected"), "{cert_error}");

    // Valid PEM armour around bytes that are not a certificate.
    let fake = issue::encode_pem_like_go("CERTIFICATE", b"definitely not DER").unwrap();
    assert!(matches!(inspect::parse_cert_pem(&fake).unwrap_err(), InspectError::CertificateDer(_)));
    let fake_key = issue::encode_pem_like_go("RSA PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap();
    assert!(matches!(inspect::parse_key_pem(&fake_key).unwrap_err(), InspectError::KeyDer(_)));

    // A body that is not base64.
    let mangled = cert.replacen('M', "!", 3);
    assert!(inspect::parse_cert_pem(&mangled).is_err());

    // Bundles: one is fine through parse_certs_pem, an error through parse_cert_pem.
    let bundle = format!("{}{}", cert, ca.cert_pem);
    assert_eq!(inspect::parse_certs_pem(&bundle).unwrap().len(), 2);
    assert_eq!(inspect::parse_cert_pem(&bundle).unwrap_err(), InspectError::MultipleCertificates(2));
    // A combined cert+key file still yields the certificate.
    assert!(inspect::parse_cert_pem(&format!("{key}{cert}")).is_ok());

    // Issuing against broken CA material.
    let template = &leaf_templates(KeySpec::EcdsaP256)[0];
    let truncated_key = KeyCertPair { cert_pem: ca.cert_pem.clone(), key_pem: ca.key_pem[..ca.key_pem.len() / 2].into() };
    let error = issue::issue_leaf(template, &truncated_key).unwrap_err().to_string();
    for line in ca.key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!error.contains(line), "error leaks key material: {error}");
    }
    let swapped = KeyCertPair { cert_pem: ca.key_pem.clone(), key_pem: ca.cert_pem.clone() };
    let error = issue::issue_leaf(template, &swapped).unwrap_err().to_string();
    assert!(error.contains("PEM block is EC PRIVATE KEY, expected CERTIFICATE"), "{error}");
    assert!(issue::issue_leaf(template, &KeyCertPair { cert_pem: "x".into(), key_pem: "y".into() }).is_err());
    assert!(inspect::chains_to("nope", &ca.cert_pem).is_err());
    assert!(inspect::key_matches_cert(cert, cert).is_err());

    // Debug of a pair never shows the key.
    let debug = format!("{:?}", leaves[0].1);
    assert!(!debug.contains("PRIVATE KEY") && debug.contains("redacted"));
    let generated = issue::generate_key(KeySpec::EcdsaP256).unwrap();
    assert!(!format!("{generated:?}").contains("PRIVATE"));
}

// ---------------------------------------------------------------------------------------
// Mutual TLS over loopback with rustls (aws-lc-rs provider).

fn mutual_tls(ca: &KeyCertPair, server: &KeyCertPair, client: &KeyCertPair, server_name: &str) {
    if let Err(error) = try_mutual_tls(ca, ca, server, client, server_name) {
        panic!("handshake as {server_name} failed: {error}");
    }
}

/// Server trusts `server_trusts` for client certs; client trusts `client_trusts` for the
/// server. Returns what went wrong as text.
fn try_mutual_tls(
    client_trusts: &KeyCertPair,
    server_trusts: &KeyCertPair,
    server: &KeyCertPair,
    client: &KeyCertPair,
    server_name: &str,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = |ca: &KeyCertPair| {
        let mut store = rustls::RootCertStore::empty();
        store.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
        Arc::new(store)
    };
    let chain = |pair: &KeyCertPair| vec![CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap()];
    let key = |pair: &KeyCertPair| PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();

    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(server_trusts), provider.clone())
            .build()
            .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain(server), key(server))
        .map_err(|e| format!("server config: {e}"))?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(client_trusts))
        .with_client_auth_cert(chain(client), key(client))
        .map_err(|e| format!("client config: {e}"))?;

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    let expected_client_cert = chain(client).remove(0);

    let server_thread = std::thread::spawn(move || -> Result<(), String> {
        let (socket, _) = listener.accept().map_err(|e| e.to_string())?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
        let connection = rustls::ServerConnection::new(Arc::new(server_config)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(connection, socket);
        let mut line = String::new();
        BufReader::new(&mut tls).read_line(&mut line).map_err(|e| format!("server read: {e}"))?;
        let peer = tls.conn.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
        if peer.first() != Some(&expected_client_cert) {
            return Err("server did not see the client certificate".into());
        }
        tls.write_all(format!("pong {}", line).as_bytes()).map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(())
    });

    let client_result = (|| -> Result<(), String> {
        // Connect before anything can fail, so the server thread never waits in accept().
        let socket = TcpStream::connect(address).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
        let connection = rustls::ClientConnection::new(Arc::new(client_config), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(connection, socket);
        tls.write_all(b"ping\n").map_err(|e| format!("client write: {e}"))?;
        let mut reply = String::new();
        BufReader::new(&mut tls).read_line(&mut reply).map_err(|e| format!("client read: {e}"))?;
        if reply.trim() != "pong ping" {
            return Err(format!("unexpected reply {reply:?}"));
        }
        Ok(())
    })();
    let server_result = server_thread.join().map_err(|_| "server thread panicked".to_string())?;
    client_result?;
    server_result
}
