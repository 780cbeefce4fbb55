//! Properties over many generated inputs: durations print and parse back to themselves, and
//! no input, however mangled, makes profile loading, plan reading or the YAML locator panic.

use certrotate::diag::SourceFile;
use certrotate::diag::yaml::locate_yaml_path;
use certrotate::model::profile::{Duration, Profile};
use certrotate::plan::file::PlanFile;
use proptest::prelude::*;

/// Lines that look like profile YAML, mixed with noise, so parsing gets past the first line.
fn profile_like_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("name: p".to_string()),
        Just("ca:".to_string()),
        Just("  policy: rotateWhenExpiring".to_string()),
        Just("  within: 1y".to_string()),
        Just("validity: {ca: 1d, leaf: 2y}".to_string()),
        Just("masters: {strategy: all-at-once}".to_string()),
        Just("scope: [ca, apiserver]".to_string()),
        Just("gates:\n  nodesReady:\n    interval: 1h".to_string()),
        Just("key: {algorithm: ecdsa-p256}".to_string()),
        "[ -~]{0,30}",
        "\\PC{0,12}",
    ];
    proptest::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("ca".to_string()), Just("é".to_string()), Just("within".to_string()), "[a-zé]{1,3}"]
}

/// Indented `key: value` lines with multi-byte keys and values, flow maps and comments.
fn yaml_like_text() -> impl Strategy<Value = String> {
    let line = (0usize..6, key(), prop_oneof![Just(String::new()), "\\PC{0,6}", Just("{ca: é, within: 1y}".into())], any::<bool>())
        .prop_map(|(indent, key, value, comment)| {
            format!("{}{key}: {value}{}", " ".repeat(indent), if comment { " # ünïcode" } else { "" })
        });
    proptest::collection::vec(line, 0..10).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn durations_print_and_parse_back(seconds in 1u64..4_000_000_000_000) {
        let d = Duration::from_secs(seconds).unwrap();
        // Up to 1000 years parse back to themselves; longer spans are refused (no certificate
        // can end past year 9999), whatever their spelling.
        match d.to_string().parse::<Duration>() {
            Ok(parsed) => prop_assert_eq!(parsed, d),
            Err(e) => prop_assert!(seconds > 1000 * 365 * 86_400 && e.contains("too large"), "{}: {}", d, e),
        }
    }

    #[test]
    fn loading_any_text_returns_a_profile_or_a_diagnostic(text in profile_like_text()) {
        let source = SourceFile::from_text("p.yaml", text);
        if let Err(err) = Profile::from_source(&source) {
            prop_assert!(!err.message.is_empty());
            prop_assert!(err.help.is_some());
        }
    }

    #[test]
    fn the_locator_never_panics(text in yaml_like_text(), a in key(), b in key()) {
        if let Some(range) = locate_yaml_path(&text, &[&a, &b]) {
            prop_assert!(text.get(range).is_some(), "the range must fall on character boundaries");
        }
    }

    #[test]
    fn reading_any_text_as_a_plan_returns_a_diagnostic(text in "\\PC{0,200}") {
        prop_assert!(PlanFile::from_source(&SourceFile::from_text("p.yaml", text)).is_err());
    }
}
