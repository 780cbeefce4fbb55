//! Renderings of a plan: Terraform-style human output grouped by node, JSON, and DOT of the
//! action graph. They read the saved-plan vocabulary, so a fresh plan and one read back
//! from a file (`show FILE`) render the same way. Colour is a parameter: the CLI decides
//! (by TTY), this module never looks at the terminal.

use crate::plan::diff::Diff;
use crate::plan::file::{
    self, ApiDowntime, AttrValue, CertificateChange, ChangeAction, ChangeTarget, DowntimeKind, Finding, NodeRole,
    PlanFile, Severity, StepKind, Summary, TargetChanges,
};
use crate::plan::graph::ActionGraph;
use owo_colors::OwoColorize;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// The parts of a plan that rendering needs, borrowed from a fresh plan or a saved one.
#[derive(Debug, Clone, Copy)]
pub struct PlanView<'a> {
    pub profile_name: &'a str,
    pub changes: &'a [TargetChanges],
    pub findings: &'a [Finding],
    pub graph: &'a file::ActionGraph,
    pub downtime: &'a ApiDowntime,
}

impl<'a> PlanView<'a> {
    pub fn from_plan_file(plan: &'a PlanFile) -> Self {
        PlanView {
            profile_name: &plan.profile.name,
            changes: &plan.changes,
            findings: &plan.findings,
            graph: &plan.graph,
            downtime: &plan.expected_api_downtime,
        }
    }

    pub fn summary(&self) -> Summary {
        Summary::tally(self.changes, self.graph, self.findings)
    }

    /// Nodes on which a service restarts or the VM reboots.
    pub fn restarts(&self) -> usize {
        self.graph
            .steps
            .iter()
            .filter(|n| n.operation.is_restart())
            .filter_map(|n| n.target.as_deref())
            .collect::<HashSet<_>>()
            .len()
    }
}

/// What a fresh plan contributes to the saved plan: changes, findings (the diff's and the
/// graph's notes), the graph in saved form, the summary and the expected downtime.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanParts {
    pub profile_name: String,
    pub changes: Vec<TargetChanges>,
    pub findings: Vec<Finding>,
    pub graph: file::ActionGraph,
    pub summary: Summary,
    pub expected_api_downtime: ApiDowntime,
}

impl PlanParts {
    pub fn assemble(diff: &Diff, graph: &ActionGraph) -> Self {
        let saved = graph.to_saved();
        let mut findings = diff.findings.clone();
        findings.extend(graph.notes.iter().cloned());
        let summary = Summary::tally(&diff.changes, &saved, &findings);
        PlanParts {
            profile_name: diff.profile_name.clone(),
            changes: diff.changes.clone(),
            findings,
            graph: saved,
            summary,
            expected_api_downtime: graph.downtime.clone(),
        }
    }

    /// A plan file for `cluster` made with `profile`, holding these parts; not sealed, so
    /// the caller can add what it observed before sealing.
    pub fn into_plan(self, cluster: file::ClusterIdentity, profile: crate::model::profile::Profile) -> PlanFile {
        let mut plan = PlanFile::new(cluster, profile);
        plan.changes = self.changes;
        plan.findings = self.findings;
        plan.graph = self.graph;
        plan.summary = self.summary;
        plan.expected_api_downtime = self.expected_api_downtime;
        plan
    }

    pub fn view(&self) -> PlanView<'_> {
        PlanView {
            profile_name: &self.profile_name,
            changes: &self.changes,
            findings: &self.findings,
            graph: &self.graph,
            downtime: &self.expected_api_downtime,
        }
    }
}

/// Applies a style only when colour is wanted.
struct Paint {
    on: bool,
}

impl Paint {
    fn action(&self, action: ChangeAction, text: &str) -> String {
        if !self.on {
            return text.to_string();
        }
        match action {
            ChangeAction::Create => text.green().to_string(),
            ChangeAction::Reissue => text.yellow().to_string(),
            ChangeAction::Replace | ChangeAction::Delete => text.red().to_string(),
            ChangeAction::Noop => text.to_string(),
        }
    }
    fn added(&self, text: &str) -> String {
        if self.on { text.green().to_string() } else { text.to_string() }
    }
    fn removed(&self, text: &str) -> String {
        if self.on { text.red().to_string() } else { text.to_string() }
    }
    fn dim(&self, text: &str) -> String {
        if self.on { text.dimmed().to_string() } else { text.to_string() }
    }
    fn bold(&self, text: &str) -> String {
        if self.on { text.bold().to_string() } else { text.to_string() }
    }
    fn severity(&self, severity: Severity, text: &str) -> String {
        if !self.on {
            return text.to_string();
        }
        match severity {
            Severity::Error => text.red().bold().to_string(),
            Severity::Warning => text.yellow().to_string(),
            Severity::Info => text.cyan().to_string(),
        }
    }
}

/// Attributes in the order a reviewer reads them.
const ATTRIBUTE_ORDER: [&str; 10] =
    ["subject", "issuer", "issuerFingerprint", "notAfter", "dnsSans", "ipSans", "key", "publicKey", "fingerprint", "serial"];

fn short(value: &str) -> String {
    // Full digests are in the JSON; 16 hex digits identify a certificate for a reviewer.
    match value.strip_prefix("sha256:").and_then(|hex| hex.get(..16).filter(|_| hex.len() > 16)) {
        Some(prefix) => format!("sha256:{prefix}…"),
        None => value.to_string(),
    }
}

fn scalar(value: &AttrValue) -> String {
    match value {
        AttrValue::Unknown => "(known after apply)".into(),
        AttrValue::Flag(b) => b.to_string(),
        AttrValue::Integer(n) => n.to_string(),
        AttrValue::Text(t) => format!("{:?}", short(t)),
        AttrValue::List(items) => format!("[{}]", items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")),
    }
}

/// One attribute line (or block, for lists) of a change.
fn attribute(out: &mut String, paint: &Paint, name: &str, before: Option<&AttrValue>, after: Option<&AttrValue>, width: usize) {
    let pad = " ".repeat(width.saturating_sub(name.len()));
    match (before, after) {
        (Some(AttrValue::List(old)), Some(AttrValue::List(new))) => {
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            let new: Vec<&str> = new.iter().map(String::as_str).collect();
            let _ = writeln!(out, "      {} {name}{pad} = [", paint.action(ChangeAction::Reissue, "~"));
            let diff = similar::TextDiff::from_slices(&old, &new);
            for change in diff.iter_all_changes() {
                let item = format!("{:?},", change.value());
                let line = match change.tag() {
                    similar::ChangeTag::Equal => format!("            {item}"),
                    similar::ChangeTag::Delete => paint.removed(&format!("          - {item}")),
                    similar::ChangeTag::Insert => paint.added(&format!("          + {item}")),
                };
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(out, "        ]");
        }
        (Some(b), Some(a)) => {
            let _ = writeln!(out, "      {} {name}{pad} = {} -> {}", paint.action(ChangeAction::Reissue, "~"), scalar(b), scalar(a));
        }
        (None, Some(a)) => {
            let _ = writeln!(out, "      {} {name}{pad} = {}", paint.added("+"), scalar(a));
        }
        (Some(b), None) => {
            let _ = writeln!(out, "      {} {name}{pad} = {}", paint.removed("-"), scalar(b));
        }
        (None, None) => {}
    }
}

pub fn target_heading(target: &ChangeTarget) -> String {
    match target {
        ChangeTarget::Node { name, role: NodeRole::Master } => format!("{name} (master)"),
        ChangeTarget::Node { name, role: NodeRole::Agent } => format!("{name} (agent)"),
        ChangeTarget::ApiModel {} => "API model (apimodel.json certificateProfile)".into(),
        ChangeTarget::Etcd {} => "etcd (front-proxy material under /proxycerts)".into(),
    }
}

fn change_block(out: &mut String, paint: &Paint, change: &CertificateChange) {
    let marker = format!("{:>3}", change.action.marker());
    let _ = writeln!(out, "  {} {}  {}", paint.action(change.action, &marker), paint.bold(change.certificate.as_str()), change.location);
    for reason in &change.reasons {
        let _ = writeln!(out, "      {}", paint.dim(&format!("# {}", reason.message)));
    }
    let mut names: Vec<&str> = ATTRIBUTE_ORDER.iter().copied().filter(|n| change.before.contains_key(*n) || change.after.contains_key(*n)).collect();
    for extra in change.before.keys().chain(change.after.keys()) {
        if !names.contains(&extra.as_str()) {
            names.push(extra);
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut unchanged = 0;
    for name in names {
        let before = change.before.get(name);
        let after = change.after.get(name);
        // A value that stays the same, or a before without an after (the row only shows what
        // was seen), is not a change.
        if after.is_none() || before == after {
            unchanged += 1;
            continue;
        }
        attribute(out, paint, name, before, after, width);
    }
    if unchanged > 0 && !change.after.is_empty() {
        let _ = writeln!(out, "      {}", paint.dim(&format!("# ({unchanged} unchanged attributes hidden)")));
    }
}

/// One certificate's change as `human` shows it (marker, location, reasons, attribute
/// diffs), without colour: what the review document quotes per node.
pub fn change_text(change: &CertificateChange) -> String {
    let mut out = String::new();
    change_block(&mut out, &Paint { on: false }, change);
    out
}

/// The explanation as a sentence: capitalised, without a trailing full stop (added by the caller).
pub fn sentence(text: &str) -> String {
    let text = text.trim().trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `none`, `rolling (...)` or `outage, up to 15m`: how the summary line names the downtime.
pub fn downtime_label(d: &ApiDowntime) -> String {
    match (d.kind, d.estimate) {
        (DowntimeKind::None, _) => "none".into(),
        (DowntimeKind::Rolling, _) => "rolling (individual requests may fail)".into(),
        (DowntimeKind::Outage, Some(e)) => format!("outage, up to {e}"),
        (DowntimeKind::Outage, None) => "outage".into(),
    }
}

/// `Plan: 3 to create, 21 to reissue, 0 to replace; 3 restarts; API downtime: none`, or the
/// no-changes sentence.
pub fn summary_line(view: &PlanView<'_>) -> String {
    let s = view.summary();
    if !s.has_changes() {
        return "No changes. Certificates match the profile.".into();
    }
    let restarts = view.restarts();
    let mut line = format!("Plan: {} to create, {} to reissue, {} to replace", s.create, s.reissue, s.replace);
    if s.delete > 0 {
        let _ = write!(line, ", {} to delete", s.delete);
    }
    let _ = write!(
        line,
        "; {restarts} restart{}; API downtime: {}",
        if restarts == 1 { "" } else { "s" },
        downtime_label(view.downtime)
    );
    line
}

/// The human rendering.
pub fn human(view: &PlanView<'_>, colour: bool) -> String {
    let paint = Paint { on: colour };
    let mut out = String::new();
    let summary = view.summary();
    if summary.has_changes() {
        let _ = writeln!(out, "certrotate will perform the following actions (profile {}):", view.profile_name);
        let _ = writeln!(
            out,
            "  {} reissue under the same CA   {} replace with a new CA   {} create (missing)\n",
            paint.action(ChangeAction::Reissue, "~"),
            paint.action(ChangeAction::Replace, "-/+"),
            paint.action(ChangeAction::Create, "+")
        );
        for target in view.changes {
            let changed: Vec<&CertificateChange> = target.certificates.iter().filter(|c| c.action != ChangeAction::Noop).collect();
            if changed.is_empty() {
                continue;
            }
            let unchanged = target.certificates.len() - changed.len();
            let _ = writeln!(out, "  {}", paint.bold(&format!("# {}", target_heading(&target.target))));
            for change in changed {
                change_block(&mut out, &paint, change);
            }
            if unchanged > 0 {
                let noun = if unchanged == 1 { "certificate" } else { "certificates" };
                let _ = writeln!(out, "      {}", paint.dim(&format!("# ({unchanged} {noun} unchanged)")));
            }
            let _ = writeln!(out);
        }
    }
    if !view.findings.is_empty() {
        let _ = writeln!(out, "Findings:");
        let mut findings: Vec<&Finding> = view.findings.iter().collect();
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        for f in findings {
            let label = match f.severity {
                Severity::Error => "error  ",
                Severity::Warning => "warning",
                Severity::Info => "info   ",
            };
            let place = match (&f.node, &f.path) {
                (Some(n), Some(p)) => format!(" {n}:{p}"),
                (Some(n), None) => format!(" {n}"),
                (None, Some(p)) => format!(" {p}"),
                (None, None) => String::new(),
            };
            let _ = writeln!(out, "  {} [{}]{place}: {}", paint.severity(f.severity, label), f.code, f.message);
        }
        let _ = writeln!(out);
    }
    if summary.has_changes() {
        let gates = view.graph.steps.iter().filter(|n| n.kind == StepKind::Gate).count();
        let _ = writeln!(out, "Apply walks {} steps, {gates} of them gates.", view.graph.steps.len());
        let _ = writeln!(out, "API downtime: {}. {}.\n", downtime_label(view.downtime), sentence(&view.downtime.explanation));
    }
    let _ = writeln!(out, "{}", paint.bold(&summary_line(view)));
    out
}

/// The steps of a graph by phase, in the order they run, gates marked `◇` with their timeout
/// and steps `done` says are finished marked so: what `rollback` shows before it asks.
pub fn step_list(graph: &file::ActionGraph, done: &dyn Fn(&str) -> bool, colour: bool) -> String {
    let paint = Paint { on: colour };
    let mut out = String::new();
    for phase in crate::plan::step::Phase::ALL {
        let steps: Vec<&file::Step> = graph.steps.iter().filter(|s| s.phase == phase).collect();
        if steps.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {}", paint.bold(&format!("# {}", phase.title())));
        for s in steps {
            let marker = match s.kind {
                StepKind::Gate => "◇",
                StepKind::Action => "-",
            };
            let mut line = format!("    {marker} {}: {}", s.id, s.description);
            if let Some(g) = &s.gate {
                let _ = write!(line, " (timeout {})", g.timeout);
            }
            if done(&s.id) {
                line = paint.dim(&format!("{line} [done]"));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// What `--json` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonPlan<'a> {
    profile: &'a str,
    summary: Summary,
    restarts: usize,
    expected_api_downtime: &'a ApiDowntime,
    changes: &'a [TargetChanges],
    findings: &'a [Finding],
    graph: &'a file::ActionGraph,
}

/// The JSON rendering (pretty-printed).
pub fn json(view: &PlanView<'_>) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&JsonPlan {
        profile: view.profile_name,
        summary: view.summary(),
        restarts: view.restarts(),
        expected_api_downtime: view.downtime,
        changes: view.changes,
        findings: view.findings,
        graph: view.graph,
    })
}

fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// DOT of the graph: actions as boxes, gates as diamonds, steps grouped by the node they act on.
pub fn dot(graph: &file::ActionGraph) -> String {
    let mut out = String::from("digraph certrotate {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n");
    let mut by_target: BTreeMap<Option<&str>, Vec<&file::Step>> = BTreeMap::new();
    for n in &graph.steps {
        // Gates on several nodes belong to the cluster, not to one node's box.
        let group = if n.kind == StepKind::Gate { None } else { n.target.as_deref() };
        by_target.entry(group).or_default().push(n);
    }
    for (i, (target, nodes)) in by_target.iter().enumerate() {
        let indent = if target.is_some() { "    " } else { "  " };
        if let Some(t) = target {
            let _ = writeln!(out, "  subgraph cluster_{i} {{\n    label={};\n    style=rounded;", dot_quote(t));
        }
        for n in nodes {
            let (shape, extra) = match n.kind {
                StepKind::Gate => ("diamond", ", style=filled, fillcolor=\"#fff3c4\""),
                StepKind::Action => ("box", ""),
            };
            let mut label = n.operation.to_string();
            if let Some(t) = &n.target {
                label.push('\n');
                label.push_str(t);
            }
            if let Some(gate) = &n.gate {
                let _ = write!(label, "\n(timeout {})", gate.timeout);
            }
            let _ = writeln!(out, "{indent}{} [label={}, shape={shape}{extra}];", dot_quote(&n.id), dot_quote(&label));
        }
        if target.is_some() {
            let _ = writeln!(out, "  }}");
        }
    }
    for e in &graph.edges {
        let _ = writeln!(out, "  {} -> {};", dot_quote(&e.from), dot_quote(&e.to));
    }
    out.push_str("}\n");
    out
}
