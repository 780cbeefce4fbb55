//! The saved-plan reader (`certrotate apply PLAN`): any text gives a plan or a diagnostic.
#![no_main]
use certrotate::diag::SourceFile;
use certrotate::plan::file::PlanFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Non-UTF-8 is refused by SourceFile::read before any parser sees it.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = SourceFile::from_text("plan.yaml", text);
    match PlanFile::from_source(&source) {
        // A plan that reads back is one apply may write again (its journal keeps a copy).
        Ok(plan) => {
            let yaml = plan.to_yaml().expect("a plan that was read can be written");
            PlanFile::from_source(&SourceFile::from_text("plan.yaml", yaml)).expect("a written plan reads back");
        }
        Err(e) => {
            certrotate_fuzz::render(&e);
        }
    }
});
