//! The review document of a saved plan (`show FILE --format markdown|html`): what a change
//! ticket needs from the plan, for people who did not make it. Cluster, profile and digest;
//! the summary; per-node changes with reasons and attribute diffs (quoted from `render`,
//! which renders the same plan for the terminal); the steps and gates in order with a picture
//! of the graph, drawn here as SVG by layout-rs from `render::dot`; the expected API
//! downtime; the kubeconfigs to hand out again; what rollback would do; who must approve;
//! and the `apply` command. It reads only the plan, which holds no secret, and writes
//! plan-supplied text escaped, so nothing in a plan becomes markup.

use crate::flow::discover::admin_kubeconfig_path;
use crate::model::profile::CertId;
use crate::plan::file::{ChangeAction, Finding, PlanFile, Severity, Step, StepKind};
use crate::plan::render::{self, PlanView};
use crate::plan::step::Operation;
use std::fmt::Write as _;
use std::path::Path;

/// What `markdown` calls the plan file in the commands it prints, for a caller that does not
/// say where the plan is.
pub const PLAN_FILE_PLACEHOLDER: &str = "PLAN_FILE";

/// The review document as Markdown, naming the plan file `PLAN_FILE` in its commands.
pub fn markdown(plan: &PlanFile) -> String {
    markdown_for_file(plan, Path::new(PLAN_FILE_PLACEHOLDER))
}

/// The review document as Markdown, with `plan_file` in its `apply` and `rollback` commands.
/// The graph's picture is an SVG data URI (viewers that show no such image still show the
/// step table).
pub fn markdown_for_file(plan: &PlanFile, plan_file: &Path) -> String {
    document(plan, plan_file, GraphPicture::DataUri)
}

/// The review document as one self-contained HTML page (inline style, inline SVG, no script,
/// nothing fetched): the same Markdown, rendered.
pub fn html(plan: &PlanFile, plan_file: &Path) -> String {
    let text = document(plan, plan_file, GraphPicture::Placeholder);
    let options = pulldown_cmark::Options::ENABLE_TABLES;
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, pulldown_cmark::Parser::new_ext(&text, options));
    let picture = match graph_svg(&plan.graph) {
        Some(svg) => svg.trim_start_matches(SVG_XML_DECLARATION).trim_start().to_string(),
        None => String::new(),
    };
    let body = body.replace(GRAPH_PLACEHOLDER, &format!("<figure class=\"graph\">{picture}</figure>"));
    let title = html_escape(&format!("Review of certrotate plan for {}", plan.cluster.dns_prefix));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
}

/// The plan's action graph drawn as SVG (actions as boxes, gates as filled ovals: layout-rs
/// has no diamond), or None for a plan without steps.
pub fn graph_svg(graph: &crate::plan::file::ActionGraph) -> Option<String> {
    if graph.steps.is_empty() {
        return None;
    }
    let dot = render::dot(graph);
    let ast = layout::gv::DotParser::new(&dot).process().ok()?;
    let mut builder = layout::gv::GraphBuilder::new();
    builder.visit_graph(&ast);
    let mut visual = builder.get();
    let mut svg = layout::backends::svg::SVGWriter::new();
    visual.do_it(false, false, false, &mut svg);
    Some(sorted_styles(&svg.finalize()))
}

/// layout-rs writes its font classes from a HashMap, in a different order on every run; in
/// sorted order the same plan always gives the same document (and the same digest in evidence).
fn sorted_styles(svg: &str) -> String {
    let Some(start) = svg.find("<style>\n").map(|i| i + "<style>\n".len()) else { return svg.to_string() };
    let Some(len) = svg[start..].find("</style>") else { return svg.to_string() };
    let mut rules: Vec<&str> = svg[start..start + len].lines().collect();
    rules.sort_unstable();
    let mut out = String::with_capacity(svg.len());
    out.push_str(&svg[..start]);
    for rule in rules {
        out.push_str(rule);
        out.push('\n');
    }
    out.push_str(&svg[start + len..]);
    out
}

const SVG_XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#;
const GRAPH_PLACEHOLDER: &str = "<div id=\"certrotate-graph\"></div>";
const STYLE: &str = "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}\
pre{background:#f6f6f6;padding:.5em;overflow-x:auto}code{font-size:.95em}\
figure.graph{overflow:auto;border:1px solid #ddd;margin:1em 0;padding:.5em}";

enum GraphPicture {
    /// `![...](data:image/svg+xml;base64,...)`: a Markdown file stays one file.
    DataUri,
    /// A marker `html` replaces with the inline SVG after rendering the Markdown.
    Placeholder,
}

fn document(plan: &PlanFile, plan_file: &Path, picture: GraphPicture) -> String {
    let view = PlanView::from_plan_file(plan);
    let mut out = String::new();
    let c = &plan.cluster;
    let _ = writeln!(out, "# Certificate rotation of {}: review\n", text(&c.dns_prefix));
    let _ = writeln!(out, "**{}**\n", text(&render::summary_line(&view)));

    let _ = writeln!(out, "| | |\n|---|---|");
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "| {name} | {} |", cell(&value));
    };
    row("Cluster", code(&c.dns_prefix));
    row("API server", code(&c.apiserver_fqdn));
    row("Location", code(&c.location));
    if let Some(rg) = &c.resource_group {
        row("Resource group", code(rg));
    }
    if let Some(sub) = &c.subscription_id {
        row("Subscription", code(sub));
    }
    row("VM name suffix", code(&c.name_suffix));
    row("API model", format!("{} ({})", code(&c.api_model.path.display().to_string()), code(c.api_model.digest.as_str())));
    row("Profile", format!("{} ({})", code(&plan.profile.name), code(plan.profile_digest.as_str())));
    if let Some(s) = &plan.supplied_certificates {
        row("Supplied certificates", format!("{} ({})", code(&s.path.display().to_string()), code(s.digest.as_str())));
    }
    let digest = plan.digest.as_ref().map_or("(not sealed)", |d| d.as_str());
    row("Plan digest", code(digest));
    row("Plan file", code(&plan_file.display().to_string()));
    row("Made", format!("{} by certrotate {}", text(&rfc3339(plan.created_at)), text(&plan.tool_version)));
    out.push('\n');

    let _ = writeln!(out, "## Expected API downtime\n");
    let d = &plan.expected_api_downtime;
    let _ = writeln!(out, "**{}**. {}.\n", text(&render::downtime_label(d)), text(&render::sentence(&d.explanation)));

    changes_section(&mut out, plan);
    findings_section(&mut out, &plan.findings);
    steps_section(&mut out, plan, picture);
    handed_out_section(&mut out, plan);
    rollback_section(&mut out, plan, plan_file);
    approval_section(&mut out, plan);
    apply_section(&mut out, plan, plan_file);
    out
}

fn changes_section(out: &mut String, plan: &PlanFile) {
    let _ = writeln!(out, "## Changes\n");
    let s = &plan.summary;
    let _ = writeln!(
        out,
        "`~` reissue under the same CA, `-/+` replace with a new CA, `+` create (missing), `-` delete. \
         {} to create, {} to reissue, {} to replace, {} to delete, {} unchanged.\n",
        s.create, s.reissue, s.replace, s.delete, s.noop
    );
    let mut any = false;
    for target in &plan.changes {
        let changed: Vec<_> = target.certificates.iter().filter(|c| c.action != ChangeAction::Noop).collect();
        if changed.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "### {}\n", text(&render::target_heading(&target.target)));
        let _ = writeln!(out, "| Certificate | Action | Where | Why |\n|---|---|---|---|");
        for change in &changed {
            let why: Vec<String> = change.reasons.iter().map(|r| text(&r.message)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                cell(&code(change.certificate.as_str())),
                cell(&format!("{:?}", change.action).to_lowercase()),
                cell(&code(&change.location)),
                cell(&why.join("; "))
            );
        }
        out.push('\n');
        let quoted: String = changed.iter().map(|c| render::change_text(c)).collect();
        fenced(out, "text", &quoted);
        let unchanged = target.certificates.len() - changed.len();
        if unchanged > 0 {
            let noun = if unchanged == 1 { "certificate" } else { "certificates" };
            let _ = writeln!(out, "{unchanged} {noun} unchanged here.\n");
        }
    }
    if !any {
        let _ = writeln!(out, "No certificate changes.\n");
    }
}

fn findings_section(out: &mut String, findings: &[Finding]) {
    if findings.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Findings\n");
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in sorted {
        let severity = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        let place = match (&f.node, &f.path) {
            (Some(n), Some(p)) => format!(" on {} at {}", code(n), code(p)),
            (Some(n), None) => format!(" on {}", code(n)),
            (None, Some(p)) => format!(" at {}", code(p)),
            (None, None) => String::new(),
        };
        let _ = writeln!(out, "- **{severity}** {}{place}: {}", code(&f.code), text(&f.message));
    }
    out.push('\n');
}

fn steps_section(out: &mut String, plan: &PlanFile, picture: GraphPicture) {
    let steps = &plan.graph.steps;
    let gates = steps.iter().filter(|s| s.kind == StepKind::Gate).count();
    let _ = writeln!(out, "## Steps and gates\n");
    if steps.is_empty() {
        let _ = writeln!(out, "Apply has nothing to do.\n");
        return;
    }
    let _ = writeln!(
        out,
        "Apply walks {} steps, {gates} of them gates, in this order (independent steps may run at once; \
         a step starts only once everything it depends on has finished, and stops at the first gate that fails).\n",
        steps.len()
    );
    match picture {
        GraphPicture::DataUri => {
            if let Some(svg) = graph_svg(&plan.graph) {
                use base64::Engine as _;
                let data = base64::engine::general_purpose::STANDARD.encode(svg);
                let _ = writeln!(out, "![The plan's action graph: boxes are actions, yellow ovals gates](data:image/svg+xml;base64,{data})\n");
            }
        }
        GraphPicture::Placeholder => {
            let _ = writeln!(out, "{GRAPH_PLACEHOLDER}\n");
        }
    }
    let _ = writeln!(out, "| # | Phase | Step | What | Gate |\n|---|---|---|---|---|");
    for (i, s) in steps.iter().enumerate() {
        let gate = match &s.gate {
            // A gate's description is usually its check: say it once.
            Some(g) if g.checks == s.description => format!("timeout {}; if it fails: {}", g.timeout, text(&g.on_failure)),
            Some(g) => format!("checks {}; timeout {}; if it fails: {}", text(&g.checks), g.timeout, text(&g.on_failure)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            s.phase.title(),
            cell(&code(&s.id)),
            cell(&text(&s.description)),
            cell(&gate)
        );
    }
    out.push('\n');
}

fn steps_of(plan: &PlanFile, op: Operation) -> impl Iterator<Item = &Step> {
    plan.graph.steps.iter().filter(move |s| s.operation == op)
}

fn handed_out_section(out: &mut String, plan: &PlanFile) {
    let _ = writeln!(out, "## Handed out again\n");
    let changes = plan.changes.iter().flat_map(|t| &t.certificates);
    let kubeconfig_changes = changes.clone().any(|c| c.certificate == CertId::Kubeconfig && c.action != ChangeAction::Noop);
    let new_ca = steps_of(plan, Operation::IssuePki).any(|s| s.params.new_cluster_ca)
        || changes.clone().any(|c| c.certificate == CertId::Ca && c.action != ChangeAction::Noop);
    let tokens = steps_of(plan, Operation::DeleteServiceAccountTokens).next().is_some();
    let mut items = Vec::new();
    if kubeconfig_changes || new_ca {
        let dir = plan.cluster.api_model.path.parent().unwrap_or(Path::new(""));
        let local = admin_kubeconfig_path(dir, &plan.cluster.location);
        let mut on_masters: Vec<String> =
            steps_of(plan, Operation::InstallAdminKubeconfig).filter_map(|s| s.params.admin_kubeconfig.clone()).collect();
        on_masters.dedup();
        let masters = match on_masters.as_slice() {
            [] => String::new(),
            paths => format!(" and {} on the masters", paths.iter().map(|p| code(p)).collect::<Vec<_>>().join(", ")),
        };
        items.push(format!(
            "The admin kubeconfig: apply writes a new one to {}{masters}. Hand it out again to everyone who holds a copy; the old one stops working.",
            code(&local.display().to_string())
        ));
    }
    if new_ca {
        items.push(
            "Every other kubeconfig (users', pipelines', monitoring's): the cluster CA changes, so each one's \
             `certificate-authority-data` must be replaced with the new CA, and client certificates the old CA signed are no longer accepted."
                .to_string(),
        );
    }
    if tokens {
        items.push(
            "Service-account tokens: their secrets are deleted and recreated under the new apiserver key, so a kubeconfig \
             that carries such a token must get the new one."
                .to_string(),
        );
    }
    if items.is_empty() {
        let _ = writeln!(out, "Nothing: the admin kubeconfig and the cluster CA stay as they are, so every kubeconfig in use keeps working.\n");
    } else {
        for item in items {
            let _ = writeln!(out, "- {item}");
        }
        out.push('\n');
    }
}

fn rollback_section(out: &mut String, plan: &PlanFile, plan_file: &Path) {
    let _ = writeln!(out, "## Rollback\n");
    if plan.graph.steps.is_empty() {
        let _ = writeln!(out, "Nothing to roll back: apply changes nothing.\n");
        return;
    }
    let mut backed_up: Vec<(String, String)> = Vec::new();
    for s in plan.graph.steps.iter().filter(|s| matches!(s.operation, Operation::DistributeCerts | Operation::BackupNodeCerts)) {
        if let (Some(node), Some(to)) = (&s.target, &s.params.backup_to) {
            if !backed_up.iter().any(|(n, _)| n == node) {
                backed_up.push((node.clone(), to.clone()));
            }
        }
    }
    let local = steps_of(plan, Operation::BackupApiModel).find_map(|s| s.params.local_backup.clone());
    let first = match &local {
        Some(dir) => format!("Apply first copies the API model and its kubeconfig to {} beside it; it backs up each node's certificates (below) before it changes them.", code(&format!("{dir}<time>/"))),
        None => "Apply backs up each node's certificates (below) before it changes them.".to_string(),
    };
    let _ = writeln!(out, "{first} If the change must be undone, this puts the backed-up certificates back:\n");
    fenced(out, "sh", &format!("{}\n", command(plan, plan_file, "rollback", false)));
    let has = |op: Operation| steps_of(plan, op).next().is_some();
    let mut restored = vec!["`/etc/kubernetes/certs` (the rotated directory is kept beside it)", "the admin kubeconfig and kubelet's client certificate"];
    if has(Operation::PutFrontProxyInEtcd) {
        restored.push("etcd's front-proxy material under `/proxycerts`");
    }
    let mut after = vec!["restarts etcd and the control plane on those masters and kubelet on those agents", "restores the API model and the admin kubeconfig from the local backup"];
    if has(Operation::PauseAutoscaler) {
        after.push("scales cluster-autoscaler back");
    }
    if has(Operation::DeleteServiceAccountTokens) {
        after.push("renews the service-account tokens");
    }
    let _ = writeln!(
        out,
        "It shows its own steps and asks for `yes` first, and acts only on the nodes the apply's journal says it backed up, \
         after checking each holds this plan's backup. It puts back {} there; it {}; and it waits behind the same gates as \
         apply until every node is Ready and kube-system has settled. It is journaled and resumes if run again.\n",
        restored.join(", "),
        after.join(", it ")
    );
    if !backed_up.is_empty() {
        let _ = writeln!(out, "| Node | Backup |\n|---|---|");
        for (node, to) in backed_up {
            let _ = writeln!(out, "| {} | {} |", cell(&code(&node)), cell(&code(&to)));
        }
        out.push('\n');
    }
}

fn approval_section(out: &mut String, plan: &PlanFile) {
    let _ = writeln!(out, "## Approval\n");
    if plan.profile.approval.required {
        let _ = writeln!(
            out,
            "Profile {} requires a named approver: apply refuses to start unless `--approved-by NAME` names who approved. \
             The name, the time and this plan's digest are recorded in the run's journal.\n",
            code(&plan.profile.name)
        );
    } else {
        let _ = writeln!(
            out,
            "Profile {} does not require a named approver; apply records who ran it (or `--approved-by NAME`) with this plan's digest.\n",
            code(&plan.profile.name)
        );
    }
    let _ = writeln!(out, "| Role | Name | Date |\n|---|---|---|\n| Prepared by | | |\n| Reviewed by | | |\n| Approved by | | |\n");
}

fn apply_section(out: &mut String, plan: &PlanFile, plan_file: &Path) {
    let _ = writeln!(out, "## Apply\n");
    if plan.graph.steps.is_empty() {
        let _ = writeln!(out, "Nothing to apply.\n");
        return;
    }
    fenced(out, "sh", &format!("{}\n", command(plan, plan_file, "apply", plan.profile.approval.required)));
    let mut notes = vec![
        "HOST and KEY: the SSH host and the Linux nodes' key used for `plan`, which the plan does not record".to_string(),
    ];
    if plan.profile.approval.required {
        notes.push("NAME: the approver above".into());
    }
    if steps_of(plan, Operation::RebootVm).next().is_some() {
        notes.push(
            "the plan restarts VMs through Azure: the service principal comes from AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or --client-secret-file)"
                .into(),
        );
    }
    let _ = writeln!(
        out,
        "{}. Apply refuses a plan whose digest does not match ({}) and a cluster that changed since the plan was made.",
        render::sentence(&notes.join("; ")),
        code(plan.digest.as_ref().map_or("(not sealed)", |d| d.as_str()))
    );
}

/// `certrotate apply|rollback FILE --api-model ...` for this plan, with HOST, KEY (and NAME)
/// for what the plan does not record.
fn command(plan: &PlanFile, plan_file: &Path, verb: &str, approver: bool) -> String {
    let c = &plan.cluster;
    let mut parts = vec![
        format!("certrotate {verb} {}", shell_word(&plan_file.display().to_string())),
        format!("--api-model {}", shell_word(&c.api_model.path.display().to_string())),
        "--ssh-host HOST --linux-ssh-private-key KEY".to_string(),
    ];
    if steps_of(plan, Operation::RebootVm).next().is_some() {
        let mut azure = Vec::new();
        if let Some(rg) = &c.resource_group {
            azure.push(format!("--resource-group {}", shell_word(rg)));
        }
        if let Some(sub) = &c.subscription_id {
            azure.push(format!("--subscription-id {}", shell_word(sub)));
        }
        if !azure.is_empty() {
            parts.push(azure.join(" "));
        }
    }
    if approver {
        parts.push("--approved-by NAME".into());
    }
    parts.join(" \\\n    ")
}

/// A word the shell reads back as `word`: as it is when it holds nothing special, else in
/// single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Plan-supplied prose as Markdown text: every character Markdown (or HTML) could read as
/// markup is escaped.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '!' | '&' | '~' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// A code span holding `s` exactly: fenced with more backticks than any run inside it.
fn code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Markdown for one table cell: a `|` (even inside a code span) would end the cell.
fn cell(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut escaped = false;
    for ch in markdown.chars() {
        if ch == '|' && !escaped {
            out.push('\\');
        }
        escaped = ch == '\\' && !escaped;
        out.push(ch);
    }
    out
}

/// A fenced code block holding `body` exactly.
fn fenced(out: &mut String, info: &str, body: &str) {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(out, "{fence}{info}\n{}{fence}\n", body);
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_from_a_plan_cannot_become_markup() {
        assert_eq!(text("<script>*x*</script>"), r"\<script\>\*x\*\</script\>");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(cell("`a|b` \\| c"), r"`a\|b` \| c");
    }

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        assert_eq!(shell_word("_output/kube-ash/apimodel.json"), "_output/kube-ash/apimodel.json");
        assert_eq!(shell_word("my plans/it's.yaml"), r"'my plans/it'\''s.yaml'");
    }
}
