//! What `certrotate apply` shows while it runs. The executor only emits [`Event`]s; this
//! module turns them into one of three renderings and keeps the end-of-run timings.
//!
//! - [`Mode::Tty`]: indicatif bars, one per phase, a spinner per busy node showing its
//!   current step, and finished steps printed above the bars.
//! - [`Mode::Plain`]: one stable, greppable line per event on stderr (logs, CI, pipes).
//! - [`Mode::Json`]: one JSON object per line on stdout: the serde form of the event plus
//!   an RFC 3339 `at` timestamp, for other programs.
//!
//! [`Timings`] folds the same events into a [`Summary`]: wall-clock time per phase, time
//! spent waiting (gates, reboots) against own work, and the API downtime the executor's
//! probes observed. Errors and observations arrive already free of secrets; nothing here
//! adds to them. Writes never panic: a closed pipe or a full disk only loses output.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use is_terminal::IsTerminal;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::plan::step::Phase;

/// What the executor tells the reporter. `rename_all_fields` keeps the JSON form camelCase
/// throughout, like [`Summary`] and saved plans.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Event {
    ApplyStarted {
        plan_digest: String,
        steps: usize,
        already_done: usize,
    },
    StepStarted {
        id: String,
        operation: String,
        target: Option<String>,
        phase: Phase,
    },
    /// Already done per the journal, or its postcondition already holds.
    StepSkipped { id: String, reason: String },
    /// A gate polled and is not yet satisfied.
    GateWaiting {
        id: String,
        observed: Vec<String>,
        elapsed_secs: f64,
    },
    StepFinished {
        id: String,
        elapsed_secs: f64,
        /// Gate or reboot wait rather than own work.
        waiting: bool,
    },
    StepFailed {
        id: String,
        error: String,
        observed: Vec<String>,
    },
    Warning { message: String },
    ApplyFinished {
        ok: bool,
        /// The stop signal that ended the run early, if one did.
        #[serde(skip_serializing_if = "Option::is_none")]
        stopped_by: Option<String>,
        summary: Summary,
    },
}

/// The end-of-run numbers. `waiting_secs` and `own_work_secs` are wall-clock: own work is
/// time when at least one step did its own work; waiting is time when steps ran but all of
/// them waited (gates, reboots). What is left of `total_secs` is the lock, the re-read of the nodes and time between steps.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub phases: Vec<PhaseTime>,
    pub total_secs: f64,
    pub waiting_secs: f64,
    pub own_work_secs: f64,
    pub api_downtime_secs: f64,
    pub api_probes: u64,
    pub api_probe_failures: u64,
    pub steps_done: usize,
    pub steps_skipped: usize,
}

/// Wall-clock time during which at least one step of the phase ran.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTime {
    pub phase: Phase,
    pub secs: f64,
}

/// How apply shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    Json,
}

impl Mode {
    /// Json if asked; Tty if stderr is a terminal and neither `NO_COLOR` is set nor
    /// `TERM=dumb`; Plain otherwise.
    pub fn detect(json: bool) -> Mode {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Mode::choose(json, std::io::stderr().is_terminal(), no_color, dumb)
    }

    fn choose(json: bool, stderr_is_terminal: bool, no_color: bool, dumb_term: bool) -> Mode {
        if json {
            Mode::Json
        } else if stderr_is_terminal && !no_color && !dumb_term {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

/// Gate lines in Plain mode: at most one per gate per this many seconds of its waiting.
const GATE_LINE_EVERY_SECS: f64 = 10.0;

/// Renders events as they come. Shared by the executor's concurrent tasks through an `Arc`;
/// each event is rendered whole under one lock, so lines never interleave.
pub struct Reporter {
    mode: Mode,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    out: Output,
    /// Phase of every step seen starting or registered, for skips and finishes.
    phase_of: HashMap<String, Phase>,
    operation_of: HashMap<String, String>,
    /// Per gate: the `elapsed_secs` of the last wait line printed (Plain).
    last_gate_line: HashMap<String, f64>,
    timings: Timings,
}

enum Output {
    /// Plain lines, or JSON lines, into a writer.
    Lines { w: Box<dyn Write + Send>, json: bool },
    Bars(Bars),
}

struct Bars {
    mp: MultiProgress,
    phases: Vec<(Phase, ProgressBar)>,
    /// Spinner per busy node (or per untargeted step), with the step it shows.
    busy: HashMap<String, (ProgressBar, String)>,
    key_of: HashMap<String, String>,
    overall: Option<ProgressBar>,
}

impl Reporter {
    /// Tty and Plain render on stderr, Json writes lines on stdout.
    pub fn new(mode: Mode, total_steps: usize) -> Reporter {
        let out = match mode {
            Mode::Tty => Output::Bars(Bars::new(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), total_steps)),
            Mode::Plain => Output::Lines { w: Box::new(std::io::stderr()), json: false },
            Mode::Json => Output::Lines { w: Box::new(std::io::stdout()), json: true },
        };
        Reporter::with_output(mode, out)
    }

    /// Renders into `w`; Tty renders as Plain there (bars need a terminal), and lines do
    /// not need the step count.
    pub fn to_writer(mode: Mode, _total_steps: usize, w: Box<dyn Write + Send>) -> Reporter {
        let json = mode == Mode::Json;
        Reporter::with_output(mode, Output::Lines { w, json })
    }

    fn with_output(mode: Mode, out: Output) -> Reporter {
        Reporter {
            mode,
            started: Instant::now(),
            state: Mutex::new(State {
                out,
                phase_of: HashMap::new(),
                operation_of: HashMap::new(),
                last_gate_line: HashMap::new(),
                timings: Timings::new(),
            }),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock must not stop the progress output.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seconds since the reporter was made: the `[   12.3s]` of Plain lines.
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// How many steps each phase has: the lengths of the Tty bars.
    pub fn set_phase_totals(&self, totals: &[(Phase, usize)]) {
        let mut st = self.lock();
        if let Output::Bars(bars) = &mut st.out {
            bars.set_phase_totals(totals);
        }
    }

    /// Every step of the plan with its phase: sets the phase totals and lets skipped steps
    /// (which never start) count towards the right bar.
    pub fn set_steps(&self, steps: &[(String, Phase)]) {
        let mut totals: Vec<(Phase, usize)> = Vec::new();
        for phase in Phase::ALL {
            let n = steps.iter().filter(|(_, p)| *p == phase).count();
            if n > 0 {
                totals.push((phase, n));
            }
        }
        {
            let mut st = self.lock();
            for (id, phase) in steps {
                st.phase_of.insert(id.clone(), *phase);
            }
        }
        self.set_phase_totals(&totals);
    }

    /// The summary of what this reporter has seen so far, the total being its own clock.
    pub fn summary(&self, api_downtime_secs: f64, api_probes: u64, api_probe_failures: u64) -> Summary {
        let total = self.elapsed_secs();
        self.lock().timings.summary(total, api_downtime_secs, api_probes, api_probe_failures)
    }

    pub fn emit(&self, e: Event) {
        let at = self.elapsed_secs();
        let mut st = self.lock();
        let st = &mut *st;
        st.timings.observe_at(&e, at);
        match &e {
            Event::StepStarted { id, operation, phase, .. } => {
                st.phase_of.insert(id.clone(), *phase);
                st.operation_of.insert(id.clone(), operation.clone());
                // A gate run again (resume, retry) starts its rate limit afresh.
                st.last_gate_line.remove(id);
            }
            Event::StepFinished { id, .. } | Event::StepFailed { id, .. } => {
                st.last_gate_line.remove(id);
            }
            _ => {}
        }
        match &mut st.out {
            Output::Lines { w, json: true } => {
                let line = json_line(&e, time::OffsetDateTime::now_utc());
                write_all(w, &line);
            }
            Output::Lines { w, json: false } => {
                if let Event::GateWaiting { id, elapsed_secs, .. } = &e {
                    if let Some(last) = st.last_gate_line.get(id) {
                        if *elapsed_secs - *last < GATE_LINE_EVERY_SECS {
                            return;
                        }
                    }
                    st.last_gate_line.insert(id.clone(), *elapsed_secs);
                }
                let text = plain_lines(&e, at, &st.phase_of);
                write_all(w, &text);
            }
            Output::Bars(bars) => bars.render(&e, at, &st.phase_of, &st.operation_of),
        }
    }

    /// The end-of-run table: time per phase, own work against waiting (with shares of the
    /// total), the API downtime observed and the step counts.
    pub fn summary_text(summary: &Summary) -> String {
        let total = summary.total_secs;
        let pct = |secs: f64| if total > 0.0 { format!("{:>3.0}%", 100.0 * secs / total) } else { "  -%".to_string() };
        let mut s = String::new();
        s.push_str(&format!("{:<14}{:>10}  {:>4}\n", "phase", "time", "of total"));
        for p in &summary.phases {
            s.push_str(&format!("{:<14}{:>10}  {}\n", p.phase.title(), fmt_secs(p.secs), pct(p.secs)));
        }
        s.push_str(&format!("{:<14}{:>10}\n", "total", fmt_secs(total)));
        let between = (total - summary.own_work_secs - summary.waiting_secs).max(0.0);
        s.push_str(&format!("{:<14}{:>10}  {}\n", "own work", fmt_secs(summary.own_work_secs), pct(summary.own_work_secs)));
        s.push_str(&format!(
            "{:<14}{:>10}  {}  (gates and reboots)\n",
            "waiting",
            fmt_secs(summary.waiting_secs),
            pct(summary.waiting_secs)
        ));
        s.push_str(&format!("{:<14}{:>10}  {}  (lock, re-read, between steps)\n", "other", fmt_secs(between), pct(between)));
        if summary.api_probes == 0 {
            s.push_str(&format!("{:<14}{:>10}\n", "API downtime", "not probed"));
        } else {
            s.push_str(&format!(
                "{:<14}{:>10}        ({} of {} probes failed)\n",
                "API downtime",
                fmt_secs(summary.api_downtime_secs),
                summary.api_probe_failures,
                summary.api_probes
            ));
        }
        s.push_str(&format!("{:<14}{} done, {} skipped\n", "steps", summary.steps_done, summary.steps_skipped));
        s
    }
}

/// Writes, ignoring every error: a closed pipe (`| head`) or a full disk must not stop apply.
fn write_all(w: &mut Box<dyn Write + Send>, text: &str) {
    let _ = w.write_all(text.as_bytes());
    let _ = w.flush();
}

/// One JSON line: the event's serde form plus `at`.
fn json_line(e: &Event, now: time::OffsetDateTime) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_else(|_| serde_json::json!({ "event": "unserializable" }));
    if let serde_json::Value::Object(map) = &mut v {
        let at = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        map.insert("at".into(), serde_json::Value::String(at));
    }
    let mut line = v.to_string();
    line.push('\n');
    line
}

/// `12.3s`, `4m 05s`, `1h 02m`.
fn fmt_secs(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        let s = secs.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

fn time_prefix(at: f64) -> String {
    format!("[{at:>6.1}s] ")
}

/// Continuation lines (observations, further lines of a message) line up under the id.
const INDENT: &str = "                 ";

fn push_indented(s: &mut String, text: &str) {
    for line in text.lines() {
        s.push_str(INDENT);
        s.push_str(line);
        s.push('\n');
    }
}

/// The Plain rendering of one event: whole lines, each ending in a newline.
fn plain_lines(e: &Event, at: f64, phase_of: &HashMap<String, Phase>) -> String {
    let t = time_prefix(at);
    let phase = |id: &str| phase_of.get(id).copied().unwrap_or(Phase::Prepare);
    let mut s = String::new();
    match e {
        Event::ApplyStarted { plan_digest, steps, already_done } => {
            s.push_str(&format!("{t}apply  plan {plan_digest}: {steps} steps, {already_done} already done\n"));
        }
        Event::StepStarted { id, phase, .. } => {
            s.push_str(&format!("{t}start  {id} ({})\n", phase.title()));
        }
        Event::StepSkipped { id, reason } => {
            s.push_str(&format!("{t}skip   {id} ({reason})\n"));
        }
        Event::GateWaiting { id, observed, elapsed_secs } => {
            let seen = if observed.is_empty() { "not yet".to_string() } else { observed.join("; ") };
            s.push_str(&format!("{t}wait   {id}: {seen} ({})\n", fmt_secs(*elapsed_secs)));
        }
        Event::StepFinished { id, elapsed_secs, waiting } => {
            let how = if *waiting { ", waiting" } else { "" };
            s.push_str(&format!("{t}done   {id} ({}{how})\n", fmt_secs(*elapsed_secs)));
        }
        Event::StepFailed { id, error, observed } => {
            let mut lines = error.lines();
            let first = lines.next().unwrap_or("");
            s.push_str(&format!("{t}FAILED {id} ({}): {first}\n", phase(id).title()));
            for line in lines {
                push_indented(&mut s, line);
            }
            for o in observed {
                push_indented(&mut s, o);
            }
        }
        Event::Warning { message } => {
            let mut lines = message.lines();
            s.push_str(&format!("warning: {}\n", lines.next().unwrap_or("")));
            for line in lines {
                s.push_str("  ");
                s.push_str(line);
                s.push('\n');
            }
        }
        Event::ApplyFinished { ok, stopped_by, summary } => {
            let how = match (ok, stopped_by) {
                (true, _) => "ok".to_string(),
                (false, Some(signal)) => format!("STOPPED by {signal}"),
                (false, None) => "FAILED".to_string(),
            };
            s.push_str(&format!("{t}finish {how} after {}\n", fmt_secs(summary.total_secs)));
            s.push_str(&Reporter::summary_text(summary));
        }
    }
    s
}

impl Bars {
    fn new(mp: MultiProgress, total_steps: usize) -> Bars {
        // Until phase totals arrive, one bar for the whole plan.
        // Bars join the MultiProgress before anything is set on them (otherwise they draw
        // straight to stderr) and tick once so it shows them before their first step.
        let overall = mp.add(ProgressBar::new(total_steps as u64).with_style(bar_style()));
        overall.set_prefix("steps");
        overall.tick();
        Bars { mp, phases: Vec::new(), busy: HashMap::new(), key_of: HashMap::new(), overall: Some(overall) }
    }

    fn set_phase_totals(&mut self, totals: &[(Phase, usize)]) {
        if let Some(overall) = self.overall.take() {
            overall.finish_and_clear();
            self.mp.remove(&overall);
        }
        for (phase, n) in totals {
            if let Some((_, bar)) = self.phases.iter().find(|(p, _)| p == phase) {
                bar.set_length(*n as u64);
                continue;
            }
            // Bars stay above the spinners and in phase order.
            let index = self.phases.iter().filter(|(p, _)| p < phase).count();
            let bar = self.mp.insert(index, ProgressBar::new(*n as u64).with_style(bar_style()));
            bar.set_prefix(phase.title());
            bar.tick();
            self.phases.insert(index, (*phase, bar));
        }
    }

    fn println(&self, text: &str) {
        for line in text.lines() {
            let _ = self.mp.println(line);
        }
    }

    fn advance(&self, phase: Phase) {
        if let Some((_, bar)) = self.phases.iter().find(|(p, _)| *p == phase) {
            bar.inc(1);
            if bar.length().is_some_and(|len| bar.position() >= len) {
                bar.set_message("done");
            }
        } else if let Some(overall) = &self.overall {
            overall.inc(1);
        }
    }

    fn release(&mut self, id: &str) {
        let Some(key) = self.key_of.remove(id) else { return };
        if self.busy.get(&key).is_some_and(|(_, current)| current == id) {
            if let Some((spinner, _)) = self.busy.remove(&key) {
                spinner.finish_and_clear();
                self.mp.remove(&spinner);
            }
        }
    }

    fn render(
        &mut self,
        e: &Event,
        at: f64,
        phase_of: &HashMap<String, Phase>,
        operation_of: &HashMap<String, String>,
    ) {
        let phase = |id: &str| phase_of.get(id).copied().unwrap_or(Phase::Prepare);
        match e {
            Event::StepStarted { id, operation, target, phase } => {
                let key = target.clone().unwrap_or_else(|| id.clone());
                let msg = format!("{operation} ({})", phase.title());
                if let Some((spinner, current)) = self.busy.get_mut(&key) {
                    spinner.set_message(msg);
                    spinner.reset_elapsed();
                    *current = id.clone();
                } else {
                    let spinner = self.mp.add(ProgressBar::new_spinner().with_style(spinner_style()));
                    spinner.set_prefix(key.clone());
                    spinner.set_message(msg);
                    spinner.enable_steady_tick(Duration::from_millis(120));
                    self.busy.insert(key.clone(), (spinner, id.clone()));
                }
                self.key_of.insert(id.clone(), key);
            }
            Event::GateWaiting { id, observed, elapsed_secs } => {
                let Some(key) = self.key_of.get(id) else { return };
                if let Some((spinner, _)) = self.busy.get(key) {
                    let op = operation_of.get(id).map(String::as_str).unwrap_or(id);
                    let seen = observed.first().map(String::as_str).unwrap_or("not yet");
                    let more = if observed.len() > 1 { format!(" (+{} more)", observed.len() - 1) } else { String::new() };
                    spinner.set_message(format!("{op}: waiting {}: {seen}{more}", fmt_secs(*elapsed_secs)));
                }
            }
            Event::StepSkipped { id, .. } | Event::StepFinished { id, .. } => {
                self.println(&plain_lines(e, at, phase_of));
                self.advance(phase(id));
                self.release(id);
            }
            Event::StepFailed { id, .. } => {
                self.println(&plain_lines(e, at, phase_of));
                if let Some((_, bar)) = self.phases.iter().find(|(p, _)| *p == phase(id)) {
                    bar.set_message("FAILED");
                }
                self.release(id);
            }
            Event::ApplyStarted { .. } | Event::Warning { .. } => {
                self.println(&plain_lines(e, at, phase_of));
            }
            Event::ApplyFinished { .. } => {
                for (_, (spinner, _)) in self.busy.drain() {
                    spinner.finish_and_clear();
                    self.mp.remove(&spinner);
                }
                self.key_of.clear();
                for (_, bar) in &self.phases {
                    bar.abandon();
                }
                if let Some(overall) = &self.overall {
                    overall.abandon();
                }
                self.println(&plain_lines(e, at, phase_of));
            }
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos:>3}/{len:<3} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner} {prefix}: {msg} [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Folds events into per-phase wall-clock times and waiting against own work, so the
/// executor only emits events. [`Timings::observe`] stamps events with its own clock;
/// [`Timings::observe_at`] takes the time (seconds since the start of apply) from the caller.
#[derive(Debug)]
pub struct Timings {
    started: Instant,
    phase_of: HashMap<String, Phase>,
    started_at: HashMap<String, f64>,
    /// Steps that reported a gate wait: a failure of one of them was time spent waiting.
    waited: HashSet<String>,
    /// (phase, start, end, waiting) of every step that finished or failed.
    spans: Vec<(Phase, f64, f64, bool)>,
    steps_done: usize,
    steps_skipped: usize,
}

impl Default for Timings {
    fn default() -> Self {
        Timings::new()
    }
}

impl Timings {
    pub fn new() -> Self {
        Timings {
            started: Instant::now(),
            phase_of: HashMap::new(),
            started_at: HashMap::new(),
            waited: HashSet::new(),
            spans: Vec::new(),
            steps_done: 0,
            steps_skipped: 0,
        }
    }

    /// The phase of every step, so a finish or failure whose start was not seen still counts
    /// towards its phase.
    pub fn set_steps(&mut self, steps: &[(String, Phase)]) {
        for (id, phase) in steps {
            self.phase_of.entry(id.clone()).or_insert(*phase);
        }
    }

    pub fn observe(&mut self, e: &Event) {
        let at = self.started.elapsed().as_secs_f64();
        self.observe_at(e, at);
    }

    pub fn observe_at(&mut self, e: &Event, at: f64) {
        match e {
            Event::StepStarted { id, phase, .. } => {
                self.phase_of.insert(id.clone(), *phase);
                self.started_at.insert(id.clone(), at);
            }
            Event::StepSkipped { .. } => self.steps_skipped += 1,
            Event::GateWaiting { id, .. } => {
                self.waited.insert(id.clone());
            }
            Event::StepFinished { id, elapsed_secs, waiting } => {
                self.steps_done += 1;
                self.close(id, at, Some(*elapsed_secs), *waiting);
            }
            Event::StepFailed { id, .. } => {
                let waiting = self.waited.contains(id);
                self.close(id, at, None, waiting);
            }
            Event::ApplyStarted { .. } | Event::Warning { .. } | Event::ApplyFinished { .. } => {}
        }
    }

    fn close(&mut self, id: &str, at: f64, elapsed: Option<f64>, waiting: bool) {
        let start = match (self.started_at.remove(id), elapsed) {
            (Some(s), _) => s,
            (None, Some(el)) => (at - el).max(0.0),
            (None, None) => at,
        };
        let phase = self.phase_of.get(id).copied().unwrap_or(Phase::Prepare);
        self.waited.remove(id);
        self.spans.push((phase, start.min(at), at, waiting));
    }

    pub fn summary(&self, total_secs: f64, api_downtime_secs: f64, api_probes: u64, api_probe_failures: u64) -> Summary {
        let phases = Phase::ALL
            .into_iter()
            .filter_map(|phase| {
                let spans: Vec<(f64, f64)> = self.spans.iter().filter(|s| s.0 == phase).map(|s| (s.1, s.2)).collect();
                (!spans.is_empty()).then(|| PhaseTime { phase, secs: union_len(spans) })
            })
            .collect();
        let own_work_secs = union_len(self.spans.iter().filter(|s| !s.3).map(|s| (s.1, s.2)).collect());
        let busy_secs = union_len(self.spans.iter().map(|s| (s.1, s.2)).collect());
        Summary {
            phases,
            total_secs,
            waiting_secs: (busy_secs - own_work_secs).max(0.0),
            own_work_secs,
            api_downtime_secs,
            api_probes,
            api_probe_failures,
            steps_done: self.steps_done,
            steps_skipped: self.steps_skipped,
        }
    }
}

/// Length of the union of intervals.
fn union_len(mut spans: Vec<(f64, f64)>) -> f64 {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (s, e) in spans {
        match &mut current {
            Some((_, ce)) if s <= *ce => *ce = ce.max(e),
            _ => {
                if let Some((cs, ce)) = current {
                    total += ce - cs;
                }
                current = Some((s, e));
            }
        }
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
        /// Lines with the `[  12.3s] ` prefix replaced by `[t] `.
        fn lines(&self) -> Vec<String> {
            self.text()
                .lines()
                .map(|l| match (l.starts_with('['), l.find("s] ")) {
                    (true, Some(i)) => format!("[t] {}", &l[i + 3..]),
                    _ => l.to_string(),
                })
                .collect()
        }
    }

    fn started(id: &str, op: &str, target: Option<&str>, phase: Phase) -> Event {
        Event::StepStarted { id: id.into(), operation: op.into(), target: target.map(Into::into), phase }
    }

    fn finished(id: &str, secs: f64, waiting: bool) -> Event {
        Event::StepFinished { id: id.into(), elapsed_secs: secs, waiting }
    }

    fn wait(id: &str, obs: &[&str], secs: f64) -> Event {
        Event::GateWaiting { id: id.into(), observed: obs.iter().map(|s| s.to_string()).collect(), elapsed_secs: secs }
    }

    #[test]
    fn reporter_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Reporter>();
    }

    #[test]
    fn plain_lines_are_stable() {
        let buf = Buf::default();
        let r = Reporter::to_writer(Mode::Plain, 4, Box::new(buf.clone()));
        r.emit(Event::ApplyStarted { plan_digest: "sha256:abc".into(), steps: 4, already_done: 1 });
        r.emit(Event::StepSkipped { id: "backupApiModel".into(), reason: "already done".into() });
        r.emit(started("installCerts@k8s-master-x-0", "installCerts", Some("k8s-master-x-0"), Phase::Masters));
        r.emit(finished("installCerts@k8s-master-x-0", 2.5, false));
        r.emit(started("etcdHealthy@masters", "etcdHealthy", None, Phase::Masters));
        r.emit(wait("etcdHealthy@masters", &["k8s-master-x-1: unhealthy", "no leader"], 5.0));
        r.emit(Event::Warning { message: "autoscaler not found\nnothing to pause".into() });
        r.emit(Event::StepFailed {
            id: "etcdHealthy@masters".into(),
            error: "etcd did not form a quorum".into(),
            observed: vec!["k8s-master-x-1: unhealthy".into(), "k8s-master-x-2: unhealthy".into()],
        });
        assert_eq!(
            buf.lines(),
            vec![
                "[t] apply  plan sha256:abc: 4 steps, 1 already done",
                "[t] skip   backupApiModel (already done)",
                "[t] start  installCerts@k8s-master-x-0 (masters)",
                "[t] done   installCerts@k8s-master-x-0 (2.5s)",
                "[t] start  etcdHealthy@masters (masters)",
                "[t] wait   etcdHealthy@masters: k8s-master-x-1: unhealthy; no leader (5.0s)",
                "warning: autoscaler not found",
                "  nothing to pause",
                "[t] FAILED etcdHealthy@masters (masters): etcd did not form a quorum",
                "                 k8s-master-x-1: unhealthy",
                "                 k8s-master-x-2: unhealthy",
            ]
        );
        // The raw prefix is a fixed-width seconds counter.
        assert!(buf.text().starts_with("[   0.0s] apply  "), "{}", buf.text());
    }

    #[test]
    fn tty_into_a_writer_renders_plain() {
        let buf = Buf::default();
        let r = Reporter::to_writer(Mode::Tty, 1, Box::new(buf.clone()));
        r.set_phase_totals(&[(Phase::Finish, 1)]);
        r.emit(started("cleanup", "cleanup", None, Phase::Finish));
        r.emit(finished("cleanup", 60.0, false));
        assert_eq!(buf.lines(), vec!["[t] start  cleanup (finish)", "[t] done   cleanup (1m 00s)"]);
    }

    #[test]
    fn tty_bars_count_steps_per_phase_and_spinners_follow_nodes() {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        let r = Reporter::with_output(Mode::Tty, Output::Bars(Bars::new(mp, 4)));
        r.set_steps(&[
            ("backupApiModel".into(), Phase::Prepare),
            ("installCerts@k8s-master-0".into(), Phase::Masters),
            ("restartKubelet@k8s-master-0".into(), Phase::Masters),
            ("installCerts@k8s-agent-0".into(), Phase::Agents),
        ]);
        r.emit(Event::StepSkipped { id: "backupApiModel".into(), reason: "already done".into() });
        r.emit(started("installCerts@k8s-master-0", "installCerts", Some("k8s-master-0"), Phase::Masters));
        r.emit(started("installCerts@k8s-agent-0", "installCerts", Some("k8s-agent-0"), Phase::Agents));
        r.emit(finished("installCerts@k8s-master-0", 1.0, false));
        r.emit(started("restartKubelet@k8s-master-0", "restartKubelet", Some("k8s-master-0"), Phase::Masters));
        r.emit(wait("restartKubelet@k8s-master-0", &["kubelet activating"], 2.0));
        {
            let st = r.lock();
            let Output::Bars(bars) = &st.out else { panic!("bars") };
            let pos: Vec<(Phase, u64, Option<u64>)> = bars.phases.iter().map(|(p, b)| (*p, b.position(), b.length())).collect();
            assert_eq!(pos, vec![(Phase::Prepare, 1, Some(1)), (Phase::Masters, 1, Some(2)), (Phase::Agents, 0, Some(1))]);
            let mut busy: Vec<(&String, &String)> = bars.busy.iter().map(|(k, (_, id))| (k, id)).collect();
            busy.sort();
            assert_eq!(
                busy,
                vec![
                    (&"k8s-agent-0".to_string(), &"installCerts@k8s-agent-0".to_string()),
                    (&"k8s-master-0".to_string(), &"restartKubelet@k8s-master-0".to_string()),
                ]
            );
            assert!(bars.overall.is_none());
        }
        r.emit(Event::StepFailed { id: "installCerts@k8s-agent-0".into(), error: "ssh: timeout".into(), observed: vec![] });
        r.emit(Event::ApplyFinished { ok: false, stopped_by: None, summary: Summary::default() });
        let st = r.lock();
        let Output::Bars(bars) = &st.out else { panic!("bars") };
        assert!(bars.busy.is_empty());
    }

    #[test]
    fn gate_wait_lines_are_rate_limited_per_gate() {
        let buf = Buf::default();
        let r = Reporter::to_writer(Mode::Plain, 2, Box::new(buf.clone()));
        for secs in [0.0, 3.0, 9.9, 10.0, 15.0, 21.0] {
            r.emit(wait("nodesReady@k8s-agent-0", &["NotReady"], secs));
            r.emit(wait("etcdHealthy@preflight", &[], secs + 0.5));
        }
        let lines = buf.lines();
        let agent: Vec<&String> = lines.iter().filter(|l| l.contains("nodesReady@k8s-agent-0")).collect();
        assert_eq!(
            agent,
            vec![
                "[t] wait   nodesReady@k8s-agent-0: NotReady (0.0s)",
                "[t] wait   nodesReady@k8s-agent-0: NotReady (10.0s)",
                "[t] wait   nodesReady@k8s-agent-0: NotReady (21.0s)",
            ]
        );
        // Started again (a resumed run), the gate's first poll shows at once.
        r.emit(started("nodesReady@k8s-agent-0", "nodesReady", Some("k8s-agent-0"), Phase::Agents));
        r.emit(wait("nodesReady@k8s-agent-0", &["Ready=Unknown"], 1.0));
        assert_eq!(buf.lines().last().unwrap(), "[t] wait   nodesReady@k8s-agent-0: Ready=Unknown (1.0s)");
        let etcd: Vec<&String> = lines.iter().filter(|l| l.contains("etcdHealthy@preflight")).collect();
        assert_eq!(
            etcd,
            vec![
                "[t] wait   etcdHealthy@preflight: not yet (0.5s)",
                "[t] wait   etcdHealthy@preflight: not yet (10.5s)",
                "[t] wait   etcdHealthy@preflight: not yet (21.5s)",
            ]
        );
    }

    #[test]
    fn json_lines_parse_back_with_event_and_at() {
        let buf = Buf::default();
        let r = Reporter::to_writer(Mode::Json, 2, Box::new(buf.clone()));
        r.emit(Event::ApplyStarted { plan_digest: "sha256:abc".into(), steps: 2, already_done: 0 });
        r.emit(started("rebootVm@k8s-agent-1", "rebootVm", Some("k8s-agent-1"), Phase::Agents));
        for i in 0..3 {
            // Json is not rate limited: every poll is a line.
            r.emit(wait("nodesReady@k8s-agent-1", &["NotReady"], i as f64));
        }
        r.emit(finished("rebootVm@k8s-agent-1", 90.0, true));
        r.emit(Event::ApplyFinished { ok: true, stopped_by: None, summary: Summary { total_secs: 91.0, ..Summary::default() } });
        let text = buf.text();
        let values: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(values.len(), 7);
        for v in &values {
            assert!(v["event"].is_string(), "{v}");
            let at = v["at"].as_str().unwrap();
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
        }
        assert_eq!(values[0]["event"], "applyStarted");
        assert_eq!(values[0]["planDigest"], "sha256:abc");
        assert_eq!(values[1]["event"], "stepStarted");
        assert_eq!(values[1]["phase"], "agents");
        assert_eq!(values[1]["target"], "k8s-agent-1");
        assert_eq!(values[2]["event"], "gateWaiting");
        assert_eq!(values[2]["observed"][0], "NotReady");
        assert_eq!(values[5]["event"], "stepFinished");
        assert_eq!(values[5]["elapsedSecs"], 90.0);
        assert_eq!(values[5]["waiting"], true);
        assert_eq!(values[6]["event"], "applyFinished");
        assert_eq!(values[6]["summary"]["totalSecs"], 91.0);
        // Nothing but the event and `at`.
        let keys: Vec<&String> = values[4].as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["event", "id", "observed", "elapsedSecs", "at"]);
    }

    #[test]
    fn broken_pipe_never_panics() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        for mode in [Mode::Plain, Mode::Json, Mode::Tty] {
            let r = Reporter::to_writer(mode, 1, Box::new(Broken));
            r.emit(started("cleanup", "cleanup", None, Phase::Finish));
            r.emit(Event::StepFailed { id: "cleanup".into(), error: "x".into(), observed: vec![] });
            r.emit(Event::ApplyFinished { ok: false, stopped_by: None, summary: Summary::default() });
        }
    }

    #[test]
    fn timings_split_phases_and_waiting_from_own_work() {
        let mut t = Timings::new();
        let m0 = "installCerts@k8s-master-0";
        let r0 = "restartControlPlane@k8s-master-0";
        let g0 = "apiserverServesNewCert@k8s-master-0";
        let a0 = "rebootVm@k8s-agent-0";
        let a1 = "rebootVm@k8s-agent-1";
        let n1 = "nodesReady@k8s-agent-1";
        t.observe_at(&Event::StepSkipped { id: "backupApiModel".into(), reason: "already done".into() }, 0.0);
        // Masters: 0-4 own work, 4-6 own work, 6-16 waiting on a gate.
        t.observe_at(&started(m0, "installCerts", Some("k8s-master-0"), Phase::Masters), 0.0);
        t.observe_at(&finished(m0, 4.0, false), 4.0);
        t.observe_at(&started(r0, "restartControlPlane", Some("k8s-master-0"), Phase::Masters), 4.0);
        t.observe_at(&finished(r0, 2.0, false), 6.0);
        t.observe_at(&started(g0, "apiserverServesNewCert", Some("k8s-master-0"), Phase::Masters), 6.0);
        t.observe_at(&wait(g0, &["old cert"], 5.0), 11.0);
        t.observe_at(&finished(g0, 10.0, true), 16.0);
        // Agents, two reboots in parallel 20-50 and 20-40 (waiting), then a gate that fails 40-45.
        t.observe_at(&started(a0, "rebootVm", Some("k8s-agent-0"), Phase::Agents), 20.0);
        t.observe_at(&started(a1, "rebootVm", Some("k8s-agent-1"), Phase::Agents), 20.0);
        t.observe_at(&finished(a1, 20.0, true), 40.0);
        t.observe_at(&started(n1, "nodesReady", Some("k8s-agent-1"), Phase::Agents), 40.0);
        t.observe_at(&wait(n1, &["NotReady"], 1.0), 41.0);
        t.observe_at(&Event::StepFailed { id: n1.into(), error: "timed out".into(), observed: vec![] }, 45.0);
        t.observe_at(&finished(a0, 30.0, true), 50.0);
        // Finish: a finished step whose start was never seen counts back from its elapsed time.
        t.set_steps(&[("cleanup".into(), Phase::Finish)]);
        t.observe_at(&finished("cleanup", 5.0, false), 60.0);

        let s = t.summary(60.0, 3.0, 30, 2);
        let phases: Vec<(Phase, f64)> = s.phases.iter().map(|p| (p.phase, p.secs)).collect();
        assert_eq!(phases, vec![(Phase::Masters, 16.0), (Phase::Agents, 30.0), (Phase::Finish, 5.0)]);
        assert_eq!(s.own_work_secs, 4.0 + 2.0 + 5.0);
        assert_eq!(s.waiting_secs, 10.0 + 30.0);
        assert_eq!(s.total_secs, 60.0);
        assert_eq!((s.steps_done, s.steps_skipped), (6, 1));
        assert_eq!((s.api_downtime_secs, s.api_probes, s.api_probe_failures), (3.0, 30, 2));
    }

    #[test]
    fn own_work_wins_where_it_overlaps_waiting() {
        let mut t = Timings::new();
        t.observe_at(&started("rebootVm@k8s-agent-0", "rebootVm", Some("k8s-agent-0"), Phase::Agents), 0.0);
        t.observe_at(&started("installCerts@k8s-agent-1", "installCerts", Some("k8s-agent-1"), Phase::Agents), 5.0);
        t.observe_at(&finished("installCerts@k8s-agent-1", 10.0, false), 15.0);
        t.observe_at(&finished("rebootVm@k8s-agent-0", 20.0, true), 20.0);
        let s = t.summary(20.0, 0.0, 0, 0);
        assert_eq!((s.own_work_secs, s.waiting_secs), (10.0, 10.0));
        assert_eq!(s.phases[0].secs, 20.0);
    }

    #[test]
    fn summary_text_shows_phases_shares_and_downtime() {
        let summary = Summary {
            phases: vec![
                PhaseTime { phase: Phase::Prepare, secs: 12.0 },
                PhaseTime { phase: Phase::Masters, secs: 150.0 },
                PhaseTime { phase: Phase::FrontProxy, secs: 30.0 },
            ],
            total_secs: 200.0,
            waiting_secs: 150.0,
            own_work_secs: 40.0,
            api_downtime_secs: 4.5,
            api_probes: 100,
            api_probe_failures: 3,
            steps_done: 12,
            steps_skipped: 2,
        };
        let text = Reporter::summary_text(&summary);
        let expected = "\
phase               time  of total
prepare            12.0s    6%
masters           2m 30s   75%
front proxy        30.0s   15%
total             3m 20s
own work           40.0s   20%
waiting           2m 30s   75%  (gates and reboots)
other              10.0s    5%  (lock, re-read, between steps)
API downtime        4.5s        (3 of 100 probes failed)
steps         12 done, 2 skipped
";
        assert_eq!(text, expected, "\n{text}");
        let unprobed = Reporter::summary_text(&Summary::default());
        assert!(unprobed.contains("API downtime  not probed"), "{unprobed}");
        assert!(unprobed.contains("own work            0.0s    -%"), "{unprobed}");
    }

    #[test]
    fn phases_serialize_camel_case_with_titles() {
        assert_eq!(serde_json::to_string(&Phase::FrontProxy).unwrap(), "\"frontProxy\"");
        let titles: Vec<&str> = Phase::ALL.iter().map(|p| p.title()).collect();
        assert_eq!(titles, vec!["prepare", "preflight", "masters", "front proxy", "agents", "workloads", "finish"]);
    }

    #[test]
    fn mode_detection() {
        assert_eq!(Mode::choose(true, true, false, false), Mode::Json);
        assert_eq!(Mode::choose(false, true, false, false), Mode::Tty);
        assert_eq!(Mode::choose(false, true, true, false), Mode::Plain);
        assert_eq!(Mode::choose(false, true, false, true), Mode::Plain);
        assert_eq!(Mode::choose(false, false, false, false), Mode::Plain);
        assert_eq!(Mode::detect(true), Mode::Json);
    }

    #[test]
    fn reporter_summary_uses_its_timings() {
        let r = Reporter::to_writer(Mode::Json, 1, Box::new(Buf::default()));
        r.emit(Event::StepSkipped { id: "cleanup".into(), reason: "postcondition holds".into() });
        let s = r.summary(0.0, 0, 0);
        assert_eq!((s.steps_done, s.steps_skipped), (0, 1));
        assert!(s.total_secs >= 0.0);
    }
}
