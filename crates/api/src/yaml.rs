//! YAML as every part of weft reads and writes it (config files, manifests,
//! `weftctl -o yaml`), on `serde-saphyr`.
//!
//! Reading follows YAML 1.2 as `serde_yaml` did: only `true`/`false` are
//! booleans (`yes`, `on` stay strings), and errors are one line ending in
//! `at line L, column C`.
//!
//! A file of several `---`-separated documents is split by [`documents`] so
//! that each document is parsed, and fails, on its own: one invalid document
//! does not hide the valid ones around it, and its error still gives the
//! line in the whole file.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use serde_saphyr::Error;
pub use serde_saphyr::ser_error::Error as SerError;

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    }
}

/// Parses a text of one document (an empty text is null).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// Writes `value` as one YAML document (no `---`), ending in a newline.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, SerError> {
    serde_saphyr::to_string(value)
}

/// One document of a multi-document text, as [`documents`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    /// Its position among the documents of the text, from 0.
    pub index: usize,
    /// The line (from 0) of the text where `text` starts.
    pub line: usize,
    /// Its text: the `---` line that starts it, if any, comments and
    /// directives before that, and the `...` that ends it, if any.
    pub text: &'a str,
}

impl Document<'_> {
    /// Parses the document (an empty one is null). Error positions count
    /// lines in the whole text, not in the document.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match from_str(self.text) {
            Err(_) if self.line > 0 => {
                // Parse again behind as many empty lines as precede the
                // document, so the error names the line of the file.
                let mut padded = "\n".repeat(self.line);
                padded.push_str(self.text);
                from_str(&padded)
            }
            result => result,
        }
    }
}

/// Whether `line` (without its line break) is the marker `marker` (`---` or
/// `...`): at column 0, followed by nothing, a blank, or a comment or (for
/// `---`) content of the document.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// Splits a YAML stream into its documents, as a YAML parser would see them:
/// a line starting with `---` (then nothing, a comment or content) starts a
/// document, a line `...` ends one. Blank lines, comments and `%` directives
/// before a `---` belong to the document it starts; text before the first
/// `---` (or after a `...`) is a document of its own only if it holds more
/// than those. Document markers cannot occur inside a document in YAML (not
/// even in block scalars, which must be indented), so this never cuts one.
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    // The pending document: where it starts, and what it holds so far.
    let mut start = text.strip_prefix('\u{feff}').map_or(0, |_| 3);
    let mut start_line = 0;
    let mut explicit = false; // started by `---`
    let mut content = false; // has a line other than blank, comment, directive
    let mut directive = false; // has a `%` line
    let mut offset = start;
    let mut push = |from: usize, to: usize, line: usize| {
        docs.push(Document {
            index: docs.len(),
            line,
            text: &text[from..to],
        })
    };
    for (n, line) in text[offset..].split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") {
            if explicit || content {
                push(start, offset, start_line);
                start = offset;
                start_line = n;
            }
            // Otherwise the lines so far are this document's preamble.
            explicit = true;
            content = false;
            directive = false;
        } else if is_marker(bare, "...") {
            let end = offset + line.len();
            if explicit || content || directive {
                push(start, end, start_line);
            }
            start = end;
            start_line = n + 1;
            explicit = false;
            content = false;
            directive = false;
        } else if bare.starts_with('%') && !explicit && !content {
            directive = true;
        } else {
            let trimmed = bare.trim();
            if !trimmed.is_empty() && !trimmed.starts_with('#') {
                content = true;
            }
        }
        offset += line.len();
    }
    // A directive with no document after it is kept, for the parser to refuse.
    if explicit || content || directive {
        push(start, text.len(), start_line);
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn texts(text: &str) -> Vec<(usize, &str)> {
        documents(text).iter().map(|d| (d.line, d.text)).collect()
    }

    #[test]
    fn splits_on_document_markers() {
        assert_eq!(texts(""), vec![]);
        assert_eq!(texts("\n  \n# only a comment\n"), vec![]);
        assert_eq!(texts("a: 1\n"), vec![(0, "a: 1\n")]);
        assert_eq!(
            texts("a: 1\n---\nb: 2\n--- # two\nc: 3"),
            vec![(0, "a: 1\n"), (1, "---\nb: 2\n"), (3, "--- # two\nc: 3")]
        );
        // A leading `---`, with comments and directives before it.
        assert_eq!(
            texts("# head\n%YAML 1.2\n---\na: 1\n"),
            vec![(0, "# head\n%YAML 1.2\n---\na: 1\n")]
        );
        // Empty documents count, as they do for a YAML parser.
        assert_eq!(
            texts("---\n---\na: 1\n---\n"),
            vec![(0, "---\n"), (1, "---\na: 1\n"), (3, "---\n")]
        );
        // `...` ends a document; what follows is a new one only with content.
        assert_eq!(
            texts("a: 1\n...\n# c\n---\nb: 2\n...\nc: 3\n...\n# end\n"),
            vec![
                (0, "a: 1\n...\n"),
                (2, "# c\n---\nb: 2\n...\n"),
                (6, "c: 3\n...\n")
            ]
        );
        // Content on the `---` line; CRLF; a BOM.
        assert_eq!(
            texts("\u{feff}--- {a: 1}\r\n---\r\nb: 2\r\n"),
            vec![(0, "--- {a: 1}\r\n"), (1, "---\r\nb: 2\r\n")]
        );
        // Not markers: indented, or more than the marker.
        assert_eq!(
            texts("a: |\n  ---\n  ...\nb: ----\n---x: 1\n"),
            vec![(0, "a: |\n  ---\n  ...\nb: ----\n---x: 1\n")]
        );
    }

    #[test]
    fn each_document_parses_on_its_own() {
        let text = "a: 1\n---\nb: [1, 2\nc: 3\n---\n\n---\nd: yes\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0].parse::<Value>().unwrap(), json!({"a": 1}));
        let err = docs[1].parse::<Value>().unwrap_err().to_string();
        assert!(err.contains("line 4, column 2"), "{err}");
        assert_eq!(docs[2].parse::<Value>().unwrap(), Value::Null);
        // YAML 1.2: `yes` is a string.
        assert_eq!(docs[3].parse::<Value>().unwrap(), json!({"d": "yes"}));
    }

    #[test]
    fn writes_what_it_reads() {
        let value =
            json!({"kind": "X", "labels": {"a": "true", "b": "1", "c": ""}, "n": [1, 2.5, null]});
        let text = to_string(&value).unwrap();
        assert_eq!(from_str::<Value>(&text).unwrap(), value);
        assert_eq!(from_str::<Value>("").unwrap(), Value::Null);
    }
}
