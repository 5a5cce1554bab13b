use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One problem with a mesh directory file: where it is (file, YAML document, line), which object
/// and field, and why. This is what `causeway check`, the debug API and the log show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct LoadError {
    /// File, relative to the mesh directory.
    pub file: PathBuf,
    /// Zero-based YAML document index inside the file, when the error is inside one.
    pub document: Option<usize>,
    /// One-based line in the file, when known.
    pub line: Option<usize>,
    /// The object, as `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// The field path, e.g. `spec.ports[0].port`, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl LoadError {
    /// An error about a whole file (unreadable, missing).
    pub fn file(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            document: None,
            line: None,
            object: None,
            field: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(doc) = self.document {
            write!(f, " (document {doc})")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}
