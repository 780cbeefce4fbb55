//! The review document (`show FILE --format markdown|html`): a snapshot of the Markdown of the
//! sample plan, the graph's picture drawn with every step of a real plan, approval and the
//! apply command, plan text that cannot become markup, no secret in either format, and the
//! binary's `show` printing it (its default output unchanged).

mod plan_fixture;
mod profile_support;

use base64::Engine as _;
use certrotate::plan::file::{self, ClusterIdentity, FileDigest, Finding, PlanFile, Severity, Sha256Digest};
use certrotate::plan::graph;
use certrotate::plan::render::PlanParts;
use certrotate::plan::review;
use plan_fixture::{cluster, shipped, Age};
use profile_support::sample_plan;
use std::path::Path;
use std::process::Command;

/// The picture's base64 and the digests change with the layout engine and the plan types;
/// the rest of the document is compared exactly.
fn masked(text: &str) -> String {
    let picture = regex::Regex::new(r"data:image/svg\+xml;base64,[A-Za-z0-9+/=]+").unwrap();
    let digest = regex::Regex::new("sha256:[0-9a-f]{64}").unwrap();
    digest.replace_all(&picture.replace_all(text, "data:image/svg+xml;base64,<svg>"), "sha256:<digest>").into_owned()
}

/// The SVG embedded in the Markdown.
fn picture(markdown: &str) -> String {
    let re = regex::Regex::new(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)").unwrap();
    let b64 = &re.captures(markdown).expect("the Markdown embeds the graph's picture")[1];
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[test]
fn markdown_of_the_sample_plan() {
    let plan = sample_plan();
    let text = review::markdown_for_file(&plan, Path::new("change-42.plan.yaml"));
    let digest = plan.digest.as_ref().unwrap().as_str();
    assert!(text.contains(&format!("| Plan digest | `{digest}` |")), "{text}");
    assert!(text.contains("certrotate apply change-42.plan.yaml \\\n    --api-model _output/kube-ash/apimodel.json"), "{text}");
    insta::assert_snapshot!(masked(&text));
}

#[test]
fn the_picture_draws_every_step_of_a_real_plan() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    let p = shipped("rotate-ca");
    let d = c.diff(&p);
    let g = graph::build(&d, &c.topo, &p);
    let parts = PlanParts::assemble(&d, &g);
    let svg = review::graph_svg(&parts.graph).expect("a plan with steps has a picture");
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    for step in &parts.graph.steps {
        // Labels are the operation and the node, on lines of their own.
        assert!(svg.contains(&format!(">{}<", step.operation)), "{} is not drawn", step.id);
    }
    let gates = parts.graph.steps.iter().filter(|s| s.kind == file::StepKind::Gate).count();
    assert!(gates > 0);
    // Gates are filled (the DOT's #fff3c4); actions are not.
    assert_eq!(svg.matches("fill=\"#fff3c4ff\"").count(), gates, "{svg}");
    assert!(review::graph_svg(&file::ActionGraph::default()).is_none());
}

#[test]
fn the_markdown_picture_is_the_plan_graph() {
    let plan = sample_plan();
    let svg = picture(&review::markdown(&plan));
    assert_eq!(Some(svg), review::graph_svg(&plan.graph));
}

#[test]
fn approval_and_the_commands_follow_the_plan() {
    let mut plan = sample_plan();
    let text = review::markdown(&plan);
    assert!(text.contains("does not require a named approver"), "{text}");
    assert!(!text.contains("--approved-by NAME \\") && !text.contains("--linux-ssh-private-key KEY \\\n    --approved-by"));
    assert!(text.contains("certrotate apply PLAN_FILE"), "{text}");
    assert!(text.contains("certrotate rollback PLAN_FILE"), "{text}");

    plan.profile.approval.required = true;
    plan.profile_digest = plan.profile.digest();
    plan.seal();
    let text = review::markdown_for_file(&plan, Path::new("plans/change 42.yaml"));
    assert!(text.contains("requires a named approver"), "{text}");
    assert!(text.contains("certrotate apply 'plans/change 42.yaml' \\"), "the path is quoted for the shell:\n{text}");
    assert!(text.contains("--linux-ssh-private-key KEY \\\n    --approved-by NAME\n"), "{text}");
}

#[test]
fn kubeconfigs_to_hand_out_follow_what_changes() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    let saved = |profile: &str| {
        let p = shipped(profile);
        let d = c.diff(&p);
        let g = graph::build(&d, &c.topo, &p);
        let identity = ClusterIdentity {
            dns_prefix: c.topo.dns_prefix.clone(),
            location: c.topo.location.clone(),
            name_suffix: c.topo.name_suffix.clone(),
            apiserver_fqdn: c.topo.fqdn.clone(),
            resource_group: Some("rg".into()),
            subscription_id: None,
            api_model: FileDigest { path: "_output/k/apimodel.json".into(), digest: Sha256Digest::of_bytes(b"apimodel") },
        };
        let mut plan = PlanParts::assemble(&d, &g).into_plan(identity, p);
        plan.seal();
        review::markdown(&plan)
    };
    let ca = saved("rotate-ca");
    let section = |text: &str| text.split("## Handed out again").nth(1).unwrap().split("## ").next().unwrap().to_string();
    let handed = section(&ca);
    assert!(handed.contains(&format!("`_output/k/kubeconfig/kubeconfig.{}.json`", c.topo.location)), "{handed}");
    assert!(handed.contains("certificate-authority-data"), "{handed}");
    assert!(handed.contains("Service-account tokens"), "{handed}");
    let renew = section(&saved("renew-expiring"));
    assert!(!renew.contains("certificate-authority-data") && !renew.contains("Service-account tokens"), "{renew}");
}

#[test]
fn text_from_the_plan_cannot_become_markup() {
    let mut plan = sample_plan();
    plan.findings.push(Finding {
        severity: Severity::Info,
        code: "odd|code".into(),
        node: None,
        path: Some("/etc/<x>/`a`".into()),
        message: "<script>alert(1)</script> *bold* | pipe".into(),
    });
    plan.summary = file::Summary::tally(&plan.changes, &plan.graph, &plan.findings);
    plan.seal();
    let html = review::html(&plan, Path::new("p.yaml"));
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; *bold* | pipe"), "{html}");
    assert!(html.contains("<code>/etc/&lt;x&gt;/`a`</code>"), "{html}");
}

#[test]
fn the_html_is_one_page_that_fetches_nothing() {
    let html = review::html(&sample_plan(), Path::new("p.yaml"));
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("</svg></figure>"));
    assert!(!html.contains("<?xml"), "the SVG is inline, without its XML declaration");
    for fetching in ["<script", "<link", "<img", "src=", "@import"] {
        assert!(!html.contains(fetching), "the page would load something: {fetching}");
    }
    // url() only for the arrow heads defined in the SVG itself.
    assert_eq!(html.matches("url(").count(), html.matches("url(#").count());
    // The only address is the SVG namespace, which nothing fetches.
    assert_eq!(html.matches("http").count(), html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count());
}

#[test]
fn no_secret_reaches_the_review_document() {
    let c = cluster(3, 2, Age::ExpiringInDays(20));
    assert!(c.issued.values().all(|pair| pair.key_pem.contains("PRIVATE KEY")));
    let mut plans = vec![sample_plan()];
    for name in ["rotate-all", "renew-expiring", "rotate-ca"] {
        let p = shipped(name);
        let d = c.diff(&p);
        let g = graph::build(&d, &c.topo, &p);
        let mut plan = PlanParts::assemble(&d, &g).into_plan(sample_plan().cluster, p);
        plan.seal();
        plans.push(plan);
    }
    for plan in &plans {
        for (what, text) in [("markdown", review::markdown(plan)), ("html", review::html(plan, Path::new("p.yaml")))] {
            assert!(!file::contains_secret(&text), "{}: the {what} holds something that looks secret", plan.profile.name);
            for pair in c.issued.values() {
                let body = pair.key_pem.lines().nth(1).unwrap();
                assert!(!text.contains(body), "{}: the {what} holds key material", plan.profile.name);
            }
        }
    }
}

fn show(plan: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_certrotate"))
        .arg("show")
        .arg(plan)
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn show_prints_the_review_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("change-42.plan.yaml");
    let plan = sample_plan();
    plan.write_atomic(&path).unwrap();

    let md = show(&path, &["--format", "markdown"]);
    assert_eq!(md.status.code(), Some(0), "{}", String::from_utf8_lossy(&md.stderr));
    assert_eq!(String::from_utf8(md.stdout).unwrap(), review::markdown_for_file(&PlanFile::read(&path).unwrap(), &path));

    let html = show(&path, &["--format", "html"]);
    assert_eq!(html.status.code(), Some(0));
    let html = String::from_utf8(html.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"), "{html}");

    // The default is the terminal rendering, as before.
    let text = show(&path, &[]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("Plan for kube-ash (kube-ash.local.cloudapp.azurestack.external)"), "{text}");
    assert_eq!(text, String::from_utf8(show(&path, &["--format", "text"]).stdout).unwrap());

    let both = show(&path, &["--json", "--format", "html"]);
    assert_eq!(both.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));

    // A modified plan is refused in every format.
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("parallelism: 3", "parallelism: 4")).unwrap();
    let refused = show(&path, &["--format", "html"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("was modified after it") && stderr.contains("do not apply it"), "{stderr}");
}
