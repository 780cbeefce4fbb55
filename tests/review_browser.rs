//! The HTML review document in a real browser: `certrotate show FILE --format html` is opened
//! by headless Chromium (Debian's `chromium`, installed by tests/install-deps.sh), and the
//! page it builds holds what a reviewer reads: the cluster, the plan's digest, every step
//! and gate, the apply command, and the graph as an SVG element with the steps drawn in it.
//! Without Chromium this test fails: it cannot show what it is for.

mod profile_support;

use profile_support::sample_plan;
use std::path::Path;
use std::process::Command;

/// The DOM Chromium builds from the page at `path`, serialized.
fn dom_in_chromium(path: &Path, profile_dir: &Path) -> String {
    let url = format!("file://{}", path.display());
    let out = Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        // Nothing the page could ask for resolves: it must stand on its own.
        .arg("--host-resolver-rules=MAP * ~NOTFOUND")
        .args(["--dump-dom", &url])
        .output()
        .expect("cannot run timeout(1) from coreutils");
    match out.status.code() {
        Some(127) => panic!("chromium is not installed: run `bash tests/install-deps.sh` (as root), which installs Debian's chromium"),
        Some(124) => panic!("chromium did not finish within 120 s"),
        _ => {}
    }
    assert!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The text of a piece of serialized DOM, as a reader sees it: tags dropped, entities read,
/// runs of white space as one space.
fn visible_text(dom: &str) -> String {
    let tags = regex::Regex::new(r"(?s)<style>.*?</style>|<[^>]*>").unwrap();
    let text = tags.replace_all(dom, " ");
    let text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&nbsp;", " ").replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn chromium_shows_what_a_reviewer_reads() {
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("change-42.plan.yaml");
    let plan = sample_plan();
    plan.write_atomic(&plan_path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certrotate"))
        .args(["show", plan_path.to_str().unwrap(), "--format", "html"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = dir.path().join("review.html");
    std::fs::write(&page, &out.stdout).unwrap();

    let dom = dom_in_chromium(&page, &dir.path().join("chromium-profile"));
    let (before_svg, rest) = dom.split_once("<svg").expect("the page holds an SVG element");
    let (svg, after_svg) = rest.split_once("</svg>").expect("the SVG element is closed");
    let page_text = visible_text(&format!("{before_svg}{after_svg}"));
    let drawn = visible_text(svg);

    assert!(page_text.contains("Certificate rotation of kube-ash: review"), "{page_text}");
    assert!(page_text.contains("Cluster kube-ash"), "{page_text}");
    assert!(page_text.contains(&format!("Plan digest {}", plan.digest.as_ref().unwrap())), "{page_text}");
    assert!(page_text.contains("Plan: 0 to create, 0 to reissue, 2 to replace; 0 restarts; API downtime: outage, up to 15m"), "{page_text}");
    for (i, step) in plan.graph.steps.iter().enumerate() {
        assert!(page_text.contains(&format!("{} {} {}", i + 1, step.phase.title(), step.id)), "step {} is not listed:\n{page_text}", step.id);
        assert!(drawn.contains(&step.operation.to_string()), "step {} is not drawn: {drawn}", step.id);
    }
    assert!(page_text.contains("timeout 15m"), "{page_text}");
    let apply = format!("certrotate apply {} \\ --api-model _output/kube-ash/apimodel.json \\ --ssh-host HOST --linux-ssh-private-key KEY", plan_path.display());
    assert!(page_text.contains(&apply), "{page_text}");
}
