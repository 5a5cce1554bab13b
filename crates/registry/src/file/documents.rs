//! YAML documents: splitting a stream on `---`, each document's place (file, index, first line)
//! for error messages, typed deserialisation with field paths, and the document's type.

use std::path::Path;

use causeway_model::ObjectSource;
use serde::de::DeserializeOwned;

use crate::wire;
use crate::LoadError;

/// Where one YAML document sits, for error messages.
pub(super) struct Doc<'a> {
    pub(super) file: &'a Path,
    pub(super) index: usize,
    pub(super) start_line: usize,
    pub(super) text: &'a str,
}

impl Doc<'_> {
    pub(super) fn source(&self) -> ObjectSource {
        ObjectSource {
            file: self.file.to_path_buf(),
            document: self.index,
            line: self.start_line,
        }
    }

    pub(super) fn error(
        &self,
        object: Option<&str>,
        field: Option<&str>,
        reason: impl Into<String>,
    ) -> LoadError {
        LoadError {
            file: self.file.to_path_buf(),
            document: Some(self.index),
            line: Some(self.start_line),
            object: object.map(str::to_owned),
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// Deserializes the document into `T`, reporting the failing field path and line.
    pub(super) fn typed<T: DeserializeOwned>(&self, object: Option<&str>) -> Result<T, LoadError> {
        let de = yaml_serde::Deserializer::from_str(self.text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .location()
                .map(|l| self.start_line + l.line().saturating_sub(1));
            LoadError {
                file: self.file.to_path_buf(),
                document: Some(self.index),
                line: line.or(Some(self.start_line)),
                object: object.map(str::to_owned),
                field: (path != ".").then_some(path),
                reason: strip_location(&inner.to_string()),
            }
        })
    }
}

/// yaml_serde appends "at line X column Y" relative to the document; we report file lines.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Splits a multi-document YAML stream on `---` lines, keeping each document's first line
/// number. Written by hand because the YAML parser does not report where each document of a
/// stream starts, and errors must name file lines.
pub(super) fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
                start = i + 1;
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines().any(|l| {
                !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "..."
            })
        })
        .collect()
}

/// Reads the type of a document and checks its `apiVersion`.
pub(super) fn type_of(doc: &Doc<'_>) -> Result<(String, String), LoadError> {
    let meta: wire::TypeMeta = doc.typed(None)?;
    let kind = meta
        .kind
        .ok_or_else(|| doc.error(None, Some("kind"), "missing"))?;
    let api = meta
        .api_version
        .ok_or_else(|| doc.error(None, Some("apiVersion"), "missing"))?;
    Ok((api, kind))
}

pub(super) fn expect_api(
    doc: &Doc<'_>,
    kind: &str,
    api: &str,
    expected: &str,
) -> Result<(), LoadError> {
    if api == expected {
        Ok(())
    } else {
        Err(doc.error(
            Some(kind),
            Some("apiVersion"),
            format!("{kind} must have apiVersion {expected}, not {api}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_lines() {
        let docs = split_documents("# c\n---\na: 1\n---\n\n---\nb: 2\nc: 3\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0, 3);
        assert_eq!(docs[1].0, 7);
    }
}
