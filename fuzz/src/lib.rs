//! What the fuzz targets share: the cluster they check input against (the repository's
//! Azure Stack Hub fixture, 3 masters and 2 agents) and the rendering of diagnostics.
//!
//! Rendering matters as much as parsing: certrotate prints every `InputError` through
//! miette, and a span that points outside the shown text makes that printing fail, so the
//! operator would lose the one message that says what is wrong with their file.

use certrotate::diag::SourceFile;
use certrotate::model::apimodel::ApiModel;
use certrotate::model::topology::Topology;
use std::sync::OnceLock;

/// The fixture's API model, as certrotate's own tests read it.
pub const FIXTURE_APIMODEL: &str = include_str!("../../tests/fixtures/azurestack-3m2a/apimodel.json");
/// The suffix the fixture's azuredeploy.json records.
pub const FIXTURE_SUFFIX: &str = "17329654";

/// The fixture cluster's topology, derived once per process.
pub fn fixture_topology() -> &'static Topology {
    static TOPO: OnceLock<Topology> = OnceLock::new();
    TOPO.get_or_init(|| {
        let model = ApiModel::parse(SourceFile::from_text("apimodel.json", FIXTURE_APIMODEL)).expect("fixture API model reads");
        Topology::derive_with_suffix(&model, FIXTURE_SUFFIX).expect("fixture topology derives")
    })
}

/// A fixed "now" inside the fixture certificates' validity, so runs repeat whatever the date.
pub fn fixed_now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_798_761_600).expect("2027-01-01 is a valid time")
}

/// Renders a diagnostic as certrotate prints it; panics (a finding) when it cannot be shown.
pub fn render(err: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, err)
        .expect("every diagnostic certrotate raises can be rendered");
    out
}

/// As [`render`], for a `miette::Report`.
pub fn render_report(report: &miette::Report) -> String {
    render(report.as_ref())
}
