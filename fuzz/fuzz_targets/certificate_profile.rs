//! The `--certificate-profile FILE` reader with its checks against the fixture cluster: any
//! text gives certificates to install or a diagnostic.
#![no_main]
use certrotate::diag::SourceFile;
use certrotate::flow::supplied;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = SourceFile::from_text("certificate-profile.json", text);
    if let Err(report) = supplied::check(&source, certrotate_fuzz::fixture_topology(), certrotate_fuzz::fixed_now()) {
        certrotate_fuzz::render_report(&report);
    }
});
