//! The API model loader (`--apimodel apimodel.json`) and the topology every command derives
//! from it next: any text gives a cluster or a diagnostic.
#![no_main]
use certrotate::diag::SourceFile;
use certrotate::model::apimodel::ApiModel;
use certrotate::model::topology::Topology;
use certrotate::pki::{audit, catalogue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let model = match ApiModel::parse(SourceFile::from_text("apimodel.json", text)) {
        Ok(m) => m,
        Err(e) => {
            certrotate_fuzz::render(&e);
            return;
        }
    };
    // apply saves the model it read: what it writes must read back.
    ApiModel::parse(SourceFile::from_text("apimodel.json", model.to_json_string())).expect("a saved API model reads back");
    let topo = match Topology::derive_with_suffix(&model, certrotate_fuzz::FIXTURE_SUFFIX) {
        Ok(t) => t,
        Err(e) => {
            certrotate_fuzz::render(&e);
            return;
        }
    };
    let cat = catalogue::catalogue(&topo);
    if let Err(e) = audit::audit_certificate_profile(&model, &cat, certrotate_fuzz::fixed_now()) {
        certrotate_fuzz::render(&e);
    }
});
