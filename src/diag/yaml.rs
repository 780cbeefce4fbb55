//! Diagnostics for YAML inputs (profiles, and saved plans, which embed a profile): serde_yaml
//! errors turned into `InputError`s whose help line carries the advice the value types gave,
//! and a locator that finds a key path in YAML text so a check that relates several fields
//! can point at the line to change.
//!
//! Value types raise advice inside their serde error message with `with_help`; serde_yaml
//! passes the message through unchanged, and `yaml_diagnostic` splits it back out.

use super::{locate_keys, InputError, SourceFile};

/// Separates the problem from the advice inside a serde error message raised by a newtype,
/// so the diagnostic can show the advice as miette's help line.
const HELP_MARKER: &str = "\u{2003}help: ";

/// Appends advice to a serde error message; `yaml_diagnostic` splits it back out.
pub(crate) fn with_help(message: impl Into<String>, help: impl Into<String>) -> String {
    format!("{}{HELP_MARKER}{}", message.into(), help.into())
}

/// Turns a serde_yaml error in a profile file into a diagnostic, separating advice raised
/// by the profile's newtypes from the problem so that miette shows it as help.
pub(crate) fn diagnostic_from_yaml(source: &SourceFile, err: &serde_yaml::Error) -> InputError {
    yaml_diagnostic(source, err, "invalid profile", generic_help)
}

/// As `SourceFile::yaml_error`, but advice raised by a value type through `with_help` (after
/// `HELP_MARKER`) becomes the help line; otherwise `default_help(message)` does. The plan
/// reader uses it too, since plans embed a profile.
pub(crate) fn yaml_diagnostic(
    source: &SourceFile,
    err: &serde_yaml::Error,
    what: &str,
    default_help: impl Fn(&str) -> String,
) -> InputError {
    let full = err.to_string();
    let without_position = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (message, help) = match without_position.split_once(HELP_MARKER) {
        Some((message, help)) => (message.to_string(), help.to_string()),
        None => (without_position.to_string(), default_help(without_position)),
    };
    // serde prefixes nested messages with the dotted path to the value, which is helpful.
    let message = format!("{what}: {message}");
    match err.location() {
        Some(loc) => source.error_at_line_col(loc.line(), loc.column(), message, help),
        None => source.error_at(0..0, message, help),
    }
}

fn generic_help(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the field or correct its spelling; the fields a profile accepts are listed in schemas/profile.schema.json".into()
    } else if message.contains("unknown variant") {
        "use one of the values listed above".into()
    } else if message.contains("missing field") {
        "add the missing field at the marked place".into()
    } else if message.contains("invalid type") {
        "write a value of the expected type at the marked place; see schemas/profile.schema.json".into()
    } else {
        "fix the YAML at the marked place (indentation and a missing `:` are the usual causes)".into()
    }
}

/// Points at the first of several settings that is written in the file, so a cross-field
/// error lands on a line the user wrote; falls back to the top of the file.
pub(crate) fn point_at_first_present(source: &SourceFile, paths: &[&[&str]], message: String, help: String) -> InputError {
    for path in paths {
        if let Some(range) = locate_yaml_path(&source.text, path) {
            return source.error_at(range, message, help);
        }
    }
    source.error_at(0..0, message, help)
}

/// Finds the value of a key path in block- or flow-style YAML by indentation: each key is
/// looked for among the children of the previous one, so `ca` under `validity` is not taken
/// for the top-level `ca`. Good enough to point at a line; never used to read values.
pub fn locate_yaml_path(text: &str, keys: &[&str]) -> Option<std::ops::Range<usize>> {
    let lines: Vec<(usize, &str)> = {
        let mut offset = 0;
        text.split_inclusive('\n')
            .map(|line| {
                let start = offset;
                offset += line.len();
                (start, line.trim_end_matches(['\n', '\r']))
            })
            .collect()
    };
    let indent_of = |line: &str| line.len() - line.trim_start_matches(' ').len();
    let is_content = |line: &str| {
        let t = line.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };

    // The block being searched: lines [from, to) whose content is indented more than `parent`.
    let (mut from, mut to, mut parent_indent): (usize, usize, isize) = (0, lines.len(), -1);
    let mut found: Option<std::ops::Range<usize>> = None;
    for (depth, key) in keys.iter().enumerate() {
        let child_indent = lines[from..to]
            .iter()
            .filter(|(_, l)| is_content(l))
            .map(|(_, l)| indent_of(l))
            .find(|&i| i as isize > parent_indent);
        let Some(child_indent) = child_indent else {
            // The parent's value is inline (flow style): search the rest of its line.
            let (start, line) = *lines.get(from.checked_sub(1)?)?;
            let line_range = start..start + line.len();
            return locate_keys(&text[line_range.clone()], &keys[depth..])
                .map(|r| r.start + line_range.start..r.end + line_range.start);
        };
        let hit = lines.iter().enumerate().take(to).skip(from).find_map(|(i, &(start, line))| {
            if !is_content(line) || indent_of(line) != child_indent {
                return None;
            }
            let rest = line[child_indent..].strip_prefix("- ").unwrap_or(&line[child_indent..]);
            let unquoted = rest.trim_start_matches(['"', '\'']);
            let key_start = start + line.len() - unquoted.len();
            let after = unquoted.strip_prefix(key)?.trim_start_matches(['"', '\'']);
            let value = after.strip_prefix(':')?;
            // A trailing comment is not part of the value.
            let value = value.split(" #").next().unwrap_or_default();
            let value_start = start + (line.len() - after.len()) + 1 + (value.len() - value.trim_start().len());
            Some((i, key_start, value_start, value.trim().len()))
        });
        let (line_index, key_start, value_start, value_len) = hit?;
        // The block of this key ends at the next line indented no deeper than the key.
        let end = (line_index + 1..to)
            .find(|&j| is_content(lines[j].1) && indent_of(lines[j].1) <= child_indent)
            .unwrap_or(to);
        found = Some(if value_len > 0 {
            value_start..value_start + value_len
        } else {
            key_start..key_start + key.len()
        });
        from = line_index + 1;
        to = end;
        parent_indent = child_indent as isize;
    }
    found
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_path_locator_respects_nesting() {
        let text = "validity:\n  ca: 30y\n  leaf: 2y\nca:\n  policy: rotateWhenExpiring\n  within: 40y\nfrontProxy: {ca: {policy: always}, client: false}\n";
        let r = locate_yaml_path(text, &["ca", "within"]).unwrap();
        assert_eq!(&text[r], "40y");
        let r = locate_yaml_path(text, &["validity", "ca"]).unwrap();
        assert_eq!(&text[r], "30y");
        let r = locate_yaml_path(text, &["frontProxy", "client"]).unwrap();
        assert_eq!(&text[r], "false");
        let commented = "name: x  # the name\nrenewBefore: 1y   # too long\n\"gates\":\n  'timeout': 5s\n";
        let r = locate_yaml_path(commented, &["renewBefore"]).unwrap();
        assert_eq!(&commented[r], "1y");
        let r = locate_yaml_path(commented, &["gates", "timeout"]).unwrap();
        assert_eq!(&commented[r], "5s");
        assert!(locate_yaml_path(text, &["gates", "timeout"]).is_none());
    }
}
