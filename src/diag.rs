//! User-facing errors: every problem with an input file becomes a miette diagnostic that
//! names the file, points at the offending line, says what is wrong and what to do.
//! Modules that read files build `InputError`s through the helpers here, so that every
//! diagnostic looks the same whichever file it came from. What is particular to YAML inputs
//! (advice raised by value types, locating a key path) is in `yaml`.

pub mod yaml;

use miette::{Diagnostic, NamedSource, SourceSpan};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// An input file kept with its text, so that later checks can point into it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// Reads a file; a missing or unreadable file is an `InputError` naming it.
    pub fn read(path: &Path, what: &str) -> Result<Self, InputError> {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Ok(Self { path: path.to_path_buf(), text }),
                Err(e) => Err(InputError::plain(
                    path,
                    format!("the {what} {} is not UTF-8 text ({e})", path.display()),
                    format!("pass the {what} file itself, not a binary or an archive"),
                )),
            },
            Err(e) => Err(InputError::plain(
                path,
                format!("cannot read the {what} {}: {e}", path.display()),
                format!("check the path and its permissions; it must name a readable {what} file"),
            )),
        }
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into() }
    }

    /// The text shown around an error, with secrets and long PEM blocks shortened so that
    /// no key or password reaches the terminal; spans are mapped onto it.
    fn display(&self) -> RedactedText {
        RedactedText::new(&self.text)
    }

    /// An error pointing at a 1-based line and column (what serde_json and serde_yaml report).
    pub fn error_at_line_col(
        &self,
        line: usize,
        column: usize,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> InputError {
        let offset = offset_of_line_col(&self.text, line, column);
        self.error_at(offset..offset + token_len(&self.text, offset), message, help)
    }

    /// An error pointing at a byte range of the file.
    pub fn error_at(
        &self,
        range: std::ops::Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> InputError {
        let shown = self.display();
        let range = shown.map_range(range);
        InputError {
            file: self.path.clone(),
            message: message.into(),
            help: Some(help.into()),
            src: Some(NamedSource::new(self.path.display().to_string(), shown.text)),
            span: Some(SourceSpan::from(range)),
            label: None,
        }
    }

    /// An error about the value found by following `keys` (object keys, in order, from the
    /// top of the document), located in the text without a full parse. Falls back to the
    /// top of the file when a key is not found, so the file is still named.
    pub fn error_at_path(&self, keys: &[&str], message: impl Into<String>, help: impl Into<String>) -> InputError {
        let range = locate_keys(&self.text, keys).unwrap_or(0..0);
        self.error_at(range, message, help)
    }

    /// Turns a serde_json error into a diagnostic at its line and column.
    pub fn json_error(&self, err: &serde_json::Error, what: &str) -> InputError {
        let (message, help) = match err.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => (
                format!("{what} is not valid JSON: {}", strip_position(&err.to_string())),
                "fix the JSON syntax at the marked place (a missing comma, quote or bracket is the usual cause)".to_string(),
            ),
            _ => (
                format!("{what}: {}", strip_position(&err.to_string())),
                "correct the value at the marked place".to_string(),
            ),
        };
        self.error_at_line_col(err.line(), err.column(), message, help)
    }

    /// Turns a serde_yaml error into a diagnostic at its location.
    pub fn yaml_error(&self, err: &serde_yaml::Error, what: &str, help: &str) -> InputError {
        let message = format!("{what}: {}", strip_position(&err.to_string()));
        match err.location() {
            Some(loc) => self.error_at_line_col(loc.line(), loc.column(), message, help),
            None => self.error_at(0..0, message, help),
        }
    }
}

/// A problem with something the user gave us. Rendered by miette; exit code 1.
#[derive(Debug, Error, Diagnostic)]
#[error("{message}")]
pub struct InputError {
    pub file: PathBuf,
    pub message: String,
    #[help]
    pub help: Option<String>,
    #[source_code]
    pub src: Option<NamedSource<String>>,
    #[label("{}", label.as_deref().unwrap_or("here"))]
    /// Short text under the marked place; `None` shows "here".
    pub span: Option<SourceSpan>,
    pub label: Option<String>,
}

impl InputError {
    /// An error about a file as a whole (missing, unreadable, wrong kind).
    pub fn plain(file: &Path, message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            message: message.into(),
            help: Some(help.into()),
            src: None,
            span: None,
            label: None,
        }
    }
}

/// A copy of a file's text in which JSON/YAML string values holding PEM blocks or named like
/// secrets (`secret`, `password`, `...PrivateKey`) are replaced by a short placeholder, with
/// the replacements recorded so byte ranges of the original can be mapped onto the copy.
struct RedactedText {
    text: String,
    /// (original range, range in `text`) of each replacement, in order.
    replaced: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl RedactedText {
    fn new(original: &str) -> Self {
        static SECRET_VALUE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let re = SECRET_VALUE.get_or_init(|| {
            regex::Regex::new(concat!(
                r#"(?P<pem>"(?:[^"\\]|\\.)*-----BEGIN (?:[^"\\]|\\.)*")"#,
                r#"|(?i:"[a-z_]*(?:secret|password|privatekey)"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*")"#,
            ))
            .expect("static regex")
        });
        let mut text = String::with_capacity(original.len());
        let mut replaced = Vec::new();
        let mut last = 0;
        for caps in re.captures_iter(original) {
            let (m, placeholder) = match (caps.name("pem"), caps.name("value")) {
                (Some(pem), _) if pem.as_str().contains("PRIVATE KEY") => (pem, "\"<redacted>\""),
                (Some(pem), _) => (pem, "\"<PEM certificate>\""),
                (None, Some(value)) => (value, "\"<redacted>\""),
                (None, None) => continue,
            };
            text.push_str(&original[last..m.start()]);
            let new_start = text.len();
            text.push_str(placeholder);
            replaced.push((m.start()..m.end(), new_start..text.len()));
            last = m.end();
        }
        text.push_str(&original[last..]);
        Self { text, replaced }
    }

    fn map_offset(&self, offset: usize) -> usize {
        let mut shift: isize = 0;
        for (orig, new) in &self.replaced {
            if offset < orig.start {
                break;
            }
            if offset < orig.end {
                return new.start;
            }
            shift = new.end as isize - orig.end as isize;
        }
        (offset as isize + shift).max(0) as usize
    }

    fn map_range(&self, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let start = self.map_offset(range.start);
        let end = self.map_offset(range.end).max(start);
        // A range inside a replaced value points at the whole placeholder.
        match self.replaced.iter().find(|(o, _)| o.start <= range.start && range.start < o.end) {
            Some((_, new)) => new.clone(),
            None => start..end,
        }
    }
}

/// Byte offset of a 1-based (line, column) position; columns count characters.
pub fn offset_of_line_col(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col = column.saturating_sub(1);
            return offset + l.char_indices().nth(col).map(|(b, _)| b).unwrap_or(l.len());
        }
        offset += l.len();
    }
    text.len()
}

/// 1-based line number of a byte offset.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn token_len(text: &str, offset: usize) -> usize {
    let rest = &text[offset.min(text.len())..];
    let len = rest
        .char_indices()
        .find(|(_, c)| matches!(c, ',' | '\n' | '}' | ']'))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    len.max(1).min(rest.len())
}

/// serde's messages end with " at line L column C"; the span already shows that.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Finds the byte range of the value under a path of object keys in JSON or YAML text by
/// looking for each key, in order, after the previous one. Good enough to point a human
/// at the right line of a well-formed file; never used to read values.
pub fn locate_keys(text: &str, keys: &[&str]) -> Option<std::ops::Range<usize>> {
    let mut pos = 0;
    let mut key_end = 0;
    for key in keys {
        let (start, end) = find_key(text, pos, key)?;
        pos = end;
        key_end = end;
        let _ = start;
    }
    // Point at the value that follows the key.
    let rest = &text[key_end..];
    let skip = rest.find(|c: char| !(c == ':' || c == '"' || c == '\'' || c.is_whitespace())).unwrap_or(0);
    let value_start = key_end + skip;
    Some(value_start..value_start + token_len(text, value_start))
}

fn find_key(text: &str, from: usize, key: &str) -> Option<(usize, usize)> {
    let candidates = [format!("\"{key}\""), format!("'{key}'"), key.to_string()];
    let mut best: Option<(usize, usize)> = None;
    for cand in &candidates {
        let mut search = from;
        while let Some(i) = text[search..].find(cand.as_str()) {
            let start = search + i;
            let end = start + cand.len();
            let before_ok = start == 0
                || matches!(text[..start].chars().last(), Some(c) if c.is_whitespace() || c == '{' || c == ',' || c == '-');
            let after = text[end..].trim_start_matches([' ', '\t']);
            if before_ok && after.starts_with(':') {
                if best.is_none_or(|(b, _)| start < b) {
                    best = Some((start, end));
                }
                break;
            }
            search = end;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_json_keys() {
        let text = "{\n  \"a\": {\"count\": 1},\n  \"properties\": {\n    \"masterProfile\": {\n      \"count\": 2\n    }\n  }\n}";
        let r = locate_keys(text, &["properties", "masterProfile", "count"]).unwrap();
        assert_eq!(&text[r.clone()], "2");
        assert_eq!(line_of_offset(text, r.start), 5);
    }

    #[test]
    fn locates_yaml_keys() {
        let text = "validity:\n  leaf: 1y\nrenewBefore: -3d\n";
        let r = locate_keys(text, &["renewBefore"]).unwrap();
        assert_eq!(&text[r], "-3d");
    }

    #[test]
    fn secrets_never_reach_the_shown_source() {
        let text = "{\n  \"caCertificate\": \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\",\n  \"caPrivateKey\": \"-----BEGIN RSA PRIVATE KEY-----\\nBBBB\\n-----END RSA PRIVATE KEY-----\\n\",\n  \"secret\": \"hunter2\",\n  \"count\": 2\n}";
        let src = SourceFile::from_text("apimodel.json", text);
        let at = text.find("2\n}").unwrap();
        let err = src.error_at(at..at + 1, "bad count", "fix it");
        let shown = err.src.as_ref().unwrap().inner().clone();
        assert!(!shown.contains("BBBB") && !shown.contains("hunter2") && !shown.contains("AAAA"), "{shown}");
        assert!(shown.contains("\"secret\": \"<redacted>\""), "{shown}");
        let span = err.span.unwrap();
        assert_eq!(&shown[span.offset()..span.offset() + span.len()], "2");
    }

    #[test]
    fn line_col_to_offset() {
        let text = "ab\ncd\nef";
        assert_eq!(offset_of_line_col(text, 2, 2), 4);
        assert_eq!(offset_of_line_col(text, 9, 1), text.len());
    }
}
