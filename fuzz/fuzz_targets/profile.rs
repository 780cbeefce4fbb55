//! The profile loader (`--profile FILE`): any text gives a checked profile or a diagnostic,
//! and a profile it accepts can be used: apply ends every new certificate at now + its
//! validity and every gate at now + its timeout, so both must be representable.
#![no_main]
use certrotate::diag::SourceFile;
use certrotate::model::profile::{GateKind, Profile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = SourceFile::from_text("profile.yaml", text);
    match Profile::from_source(&source) {
        Ok(profile) => {
            let _ = profile.digest();
            let now = time::OffsetDateTime::now_utc();
            for id in profile.certificates_in_scope() {
                let end = now.checked_add(profile.validity_for(id).as_time());
                assert!(end.is_some_and(|t| t.year() <= 9999), "{id:?}: validity {} passes the loader but no certificate can end then", profile.validity_for(id));
            }
            for gate in GateKind::ALL {
                let timing = profile.gates.timing(gate);
                assert!(std::time::Instant::now().checked_add(timing.timeout.as_std()).is_some(), "{gate:?}: timeout {} passes the loader but has no deadline", timing.timeout);
            }
        }
        Err(e) => {
            certrotate_fuzz::render(&e);
        }
    }
});
