//! Every kind of bad profile gets a diagnostic that names the file, points at the offending
//! line and says what to do. The rendered text is snapshotted; each case also asserts the
//! line it must point at, so a diagnostic that drifts to the wrong place fails.

use certrotate::diag::{InputError, SourceFile};
use certrotate::model::profile::Profile;

fn render(err: &InputError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, err)
        .expect("rendering into a String cannot fail");
    out
}

/// Loads `text` as the profile `file`, expects it to be refused, checks that the diagnostic
/// names the file at `line`, and returns the rendering for the snapshot.
fn refused(file: &str, text: &str, line: usize) -> String {
    let err = Profile::from_source(&SourceFile::from_text(file, text)).expect_err("the profile must be refused");
    let rendered = render(&err);
    let location = format!("[{file}:{line}:");
    assert!(rendered.contains(&location), "expected the diagnostic to point at {location}…]:\n{rendered}");
    assert!(err.help.as_deref().is_some_and(|h| !h.is_empty()), "no advice given:\n{rendered}");
    rendered
}

#[test]
fn unknown_field() {
    let text = "name: typo\nrenewBefore: 30d\nrenewBeofre: 60d\n";
    let out = refused("profiles/typo.yaml", text, 3);
    assert!(out.contains("renewBeofre"));
    insta::assert_snapshot!(out);
}

#[test]
fn unknown_nested_field() {
    let text = "name: typo\ngates:\n  timeout: 10m\n  etcdHealty:\n    timeout: 5m\n";
    insta::assert_snapshot!(refused("profiles/typo-gate.yaml", text, 4));
}

#[test]
fn invalid_yaml() {
    let text = "name: broken\nvalidity:\n  ca: 30y\n leaf: 2y\n";
    insta::assert_snapshot!(refused("profiles/broken.yaml", text, 4));
}

#[test]
fn negative_duration() {
    let text = "name: negative\nvalidity:\n  leaf: 2y\nrenewBefore: -3d\n";
    let out = refused("profiles/negative.yaml", text, 4);
    assert!(out.contains("negative"));
    insta::assert_snapshot!(out);
}

#[test]
fn zero_duration() {
    let text = "name: zero\ngates:\n  timeout: 10m\n  interval: 0s\n";
    let out = refused("profiles/zero.yaml", text, 4);
    assert!(out.contains("zero"));
    insta::assert_snapshot!(out);
}

#[test]
fn duration_without_unit() {
    insta::assert_snapshot!(refused("profiles/unitless.yaml", "name: unitless\nrenewBefore: 90\n", 2));
}

#[test]
fn rsa_1024() {
    let text = "name: weak\nkey:\n  algorithm: rsa\n  size: 1024\n";
    let out = refused("profiles/weak.yaml", text, 4);
    assert!(out.contains("1024"));
    insta::assert_snapshot!(out);
}

#[test]
fn unknown_scope_id() {
    let text = "name: scoped\nscope:\n  - apiserver\n  - etcd-server\n";
    let out = refused("profiles/scoped.yaml", text, 4);
    assert!(out.contains("etcdserver") && out.contains("kubeletserver"), "the known ids must be listed:\n{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn bad_ip_in_extra_sans() {
    let text = "name: sans\nextraSans:\n  dns: [api.contoso.local]\n  ips:\n    - 10.255.255.15\n    - 10.255.255.300\n";
    let out = refused("profiles/sans.yaml", text, 6);
    assert!(out.contains("10.255.255.300"));
    insta::assert_snapshot!(out);
}

#[test]
fn bad_dns_name_in_extra_sans() {
    let text = "name: sans\nextraSans:\n  dns:\n    - api_server.contoso.local\n";
    insta::assert_snapshot!(refused("profiles/dns.yaml", text, 4));
}

#[test]
fn parallelism_zero() {
    let text = "name: stalled\nagents:\n  parallelism: 0\n";
    insta::assert_snapshot!(refused("profiles/stalled.yaml", text, 3));
}

#[test]
fn unknown_ca_policy() {
    let text = "name: pol\nca:\n  policy: sometimes\n";
    insta::assert_snapshot!(refused("profiles/policy.yaml", text, 3));
}

#[test]
fn negative_duration_inside_a_policy() {
    let text = "name: w\nca:\n  policy: rotateWhenExpiring\n  within: -1y\n";
    let out = refused("profiles/within-negative.yaml", text, 4);
    assert!(out.contains("ca.within"), "the path to the value must be named:\n{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn within_given_to_a_policy_that_takes_none() {
    let text = "name: w\nca: {policy: keep, within: 1y}\n";
    insta::assert_snapshot!(refused("profiles/keep-within.yaml", text, 2));
}

#[test]
fn rotate_when_expiring_without_within() {
    let text = "name: w\nca:\n  policy: rotateWhenExpiring\n";
    insta::assert_snapshot!(refused("profiles/no-within.yaml", text, 3));
}

#[test]
fn unknown_field_beside_a_unit_policy() {
    let text = "name: w\nleaves:\n  policy: always\n  force: true\n";
    insta::assert_snapshot!(refused("profiles/leaves.yaml", text, 4));
}

#[test]
fn ecdsa_for_certificates_kept_in_the_api_model() {
    let text = "name: ec\nkey:\n  algorithm: ecdsa-p256\n";
    let out = refused("profiles/ec.yaml", text, 3);
    assert!(out.contains("RSA"));
    insta::assert_snapshot!(out);
}

#[test]
fn renew_before_not_shorter_than_leaf_validity() {
    let text = "name: churn\nrenewBefore: 1y\nvalidity:\n  leaf: 180d\n";
    insta::assert_snapshot!(refused("profiles/churn.yaml", text, 2));
}

#[test]
fn new_ca_with_rolling_masters() {
    let text = "name: roll\nca:\n  policy: always\nmasters:\n  strategy: rolling\n";
    insta::assert_snapshot!(refused("profiles/roll.yaml", text, 5));
}

#[test]
fn ca_rotation_leaving_signed_certificates_out_of_scope() {
    let text = "name: partial\nca: {policy: always}\nmasters: {strategy: all-at-once}\nscope: [ca, apiserver]\n";
    let out = refused("profiles/partial.yaml", text, 4);
    assert!(out.contains("etcdpeer"));
    insta::assert_snapshot!(out);
}

#[test]
fn rotate_when_expiring_within_longer_than_validity() {
    let text = "name: w\nvalidity:\n  ca: 10y\nca:\n  policy: rotateWhenExpiring\n  within: 20y\n";
    insta::assert_snapshot!(refused("profiles/within.yaml", text, 6));
}

#[test]
fn gate_interval_not_shorter_than_timeout() {
    let text = "name: g\ngates:\n  nodesReady:\n    timeout: 5s\n";
    insta::assert_snapshot!(refused("profiles/gate.yaml", text, 4));
}

#[test]
fn empty_profile() {
    let err = Profile::from_source(&SourceFile::from_text("profiles/empty.yaml", "\n# nothing\n")).unwrap_err();
    let out = render(&err);
    assert!(out.contains("profiles/empty.yaml"));
    insta::assert_snapshot!(out);
}

#[test]
fn missing_file() {
    let err = Profile::load("profiles/does-not-exist.yaml").unwrap_err();
    let out = render(&err);
    assert!(out.contains("profiles/does-not-exist.yaml"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn unknown_profile_name() {
    let err = Profile::load("rotate-everything").unwrap_err();
    let out = render(&err);
    assert!(out.contains("renew-expiring"), "the shipped names must be listed:\n{out}");
    insta::assert_snapshot!(out);
}
