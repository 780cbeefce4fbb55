//! `plan`, `show` and `graph`: refresh the cluster, diff it against the profile, build the
//! action graph, render it, and save it as a sealed plan file; render saved plans offline.

use super::args::{ClusterArgs, GraphArgs, PlanArgs, ShowArgs, ShowFormat};
use super::status::{discover, read_cluster};
use super::Outcome;
use crate::flow::{self, discover::Discovered, planner::{MadePlan, PlanInputs}};
use crate::model::profile::Profile;
use crate::plan::file::PlanFile;
use crate::plan::render::{self, PlanView};
use crate::plan::review;
use is_terminal::IsTerminal;
use miette::{miette, IntoDiagnostic};

pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn run_plan(a: &PlanArgs) -> miette::Result<Outcome> {
    let (_, made) = make_plan(&a.cluster)?;
    if a.json {
        println!("{}", render::json(&PlanView::from_plan_file(&made.plan)).into_diagnostic()?);
    } else {
        print!("{}", render::human(&PlanView::from_plan_file(&made.plan), colour_wanted()));
    }
    if let Some(out) = &a.out {
        made.plan.write_atomic(out).map_err(|e| miette!(help = "choose a writable path for --out", "cannot save the plan to {}: {e}", out.display()))?;
        if !a.json {
            println!("\nSaved the plan to {}. Review it with `certrotate show {}`; apply exactly it with `certrotate apply {}`.", out.display(), out.display(), out.display());
        }
    }
    Ok(if a.detailed_exitcode && made.has_changes { Outcome::Attention } else { Outcome::Ok })
}

/// Discovers and reads the cluster and makes a sealed plan of it; the discovered cluster is
/// returned too, for an apply that goes on with it.
pub fn make_plan(args: &ClusterArgs) -> miette::Result<(Discovered, MadePlan)> {
    let profile = Profile::load(&args.model.profile)?;
    let now = time::OffsetDateTime::now_utc();
    let cluster = discover(args)?;
    // The operator's certificates are checked before the cluster is contacted: a bad file
    // costs nothing but a message.
    let supplied = match &args.model.certificate_profile {
        Some(path) => Some(flow::supplied::load(path, &cluster.topology, now)?),
        None => None,
    };
    let read = read_cluster(args, &cluster)?;
    let inputs = PlanInputs {
        profile,
        supplied,
        resource_group: args.azure.resource_group.clone(),
        subscription_id: args.azure.subscription_id.clone(),
        now,
    };
    let made = flow::planner::make_plan(&cluster, &read, inputs)?;
    Ok((cluster, made))
}

pub fn run_show(a: &ShowArgs) -> miette::Result<Outcome> {
    let plan = PlanFile::read(&a.plan_file)?;
    let view = PlanView::from_plan_file(&plan);
    let document = match a.format {
        ShowFormat::Markdown => Some(review::markdown_for_file(&plan, &a.plan_file)),
        ShowFormat::Html => Some(review::html(&plan, &a.plan_file)),
        ShowFormat::Text => None,
    };
    if let Some(document) = document {
        use std::io::Write as _;
        // Piped into `head` or a closed pager, a failed write is the reader's choice, not a panic.
        let _ = std::io::stdout().write_all(document.as_bytes());
        return Ok(Outcome::Ok);
    }
    if a.json {
        println!("{}", render::json(&view).into_diagnostic()?);
    } else {
        println!(
            "Plan for {} ({}), made {} by certrotate {} with profile {}.\n",
            plan.cluster.dns_prefix, plan.cluster.apiserver_fqdn, plan.created_at, plan.tool_version, plan.profile.name
        );
        if let Some(s) = &plan.supplied_certificates {
            println!("Certificates supplied by {} ({}); apply reads them from there.\n", s.path.display(), s.digest);
        }
        print!("{}", render::human(&view, colour_wanted()));
    }
    Ok(Outcome::Ok)
}

pub fn run_graph(a: &GraphArgs) -> miette::Result<Outcome> {
    let plan = PlanFile::read(&a.plan_file)?;
    print!("{}", render::dot(&plan.graph));
    Ok(Outcome::Ok)
}
