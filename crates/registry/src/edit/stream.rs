//! The `---` document stream of `mesh.yaml`, split so that every byte is kept, and the comment
//! and blank lines around a document that survive its replacement.

/// One document of a YAML stream, as byte ranges of the original text.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk<'a> {
    /// The `---` line (with its line break); empty for the first document.
    pub(super) marker: &'a str,
    /// Everything up to the next marker.
    pub(super) body: &'a str,
}

impl Chunk<'_> {
    /// Content after `---` on the marker line, unless it is only a comment.
    fn inline(&self) -> &str {
        let rest = self.marker.trim_end().get(3..).unwrap_or("").trim();
        if rest.starts_with('#') {
            ""
        } else {
            rest
        }
    }

    /// The document's YAML as the registry reads it.
    pub(super) fn yaml(&self) -> String {
        let inline = self.inline();
        if inline.is_empty() {
            self.body.to_owned()
        } else {
            format!("{inline}\n{}", self.body)
        }
    }
}

/// A document separator, as the registry recognises it.
fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches('\n').trim_end_matches('\r');
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Splits `text` into documents; concatenating every chunk's marker and body gives `text`.
pub(super) fn split_stream(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut marker = "";
    let mut body_start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_marker(line) {
            chunks.push(Chunk {
                marker,
                body: &text[body_start..offset],
            });
            marker = &text[offset..offset + line.len()];
            body_start = offset + line.len();
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        marker,
        body: &text[body_start..],
    });
    chunks
}

/// A blank line, a comment or a document end: text around a document's content.
fn is_trivia(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t == "..."
}

/// `(leading, content, trailing)` of a body: comment and blank lines before and after the
/// content are kept when the document is replaced.
fn trim_trivia(body: &str) -> (&str, &str, &str) {
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let first = lines
        .iter()
        .position(|l| !is_trivia(l))
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|l| !is_trivia(l))
        .map_or(first, |i| i + 1)
        .max(first);
    let len = |ls: &[&str]| ls.iter().map(|l| l.len()).sum::<usize>();
    let (a, b) = (len(&lines[..first]), len(&lines[..last]));
    (&body[..a], &body[a..b], &body[b..])
}

/// `text` with `document` appended as a new document.
pub(super) fn append_document(text: &str, chunks: &[Chunk<'_>], document: &str) -> String {
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    // A stream that ends with `---` already opens an empty document for it.
    let open = chunks
        .last()
        .is_some_and(|c| !c.marker.is_empty() && c.body.trim().is_empty() && c.inline().is_empty());
    if !open && !out.trim().is_empty() {
        out.push_str("---\n");
    }
    out.push_str(document);
    out
}

/// The stream with chunk `index` replaced by `document` (its leading and trailing comments
/// kept), and whether comments inside the replaced content were dropped.
pub(super) fn replace_document(
    chunks: &[Chunk<'_>],
    index: usize,
    document: &str,
) -> (String, bool) {
    let capacity = chunks
        .iter()
        .map(|c| c.marker.len() + c.body.len())
        .sum::<usize>();
    let mut out = String::with_capacity(capacity + document.len());
    let mut dropped_comments = false;
    for (i, chunk) in chunks.iter().enumerate() {
        if i != index {
            out.push_str(chunk.marker);
            out.push_str(chunk.body);
            continue;
        }
        if chunk.inline().is_empty() {
            out.push_str(chunk.marker);
        } else {
            out.push_str("---\n");
        }
        let (leading, content, trailing) = trim_trivia(chunk.body);
        dropped_comments = content
            .lines()
            .any(|l| l.trim_start().starts_with('#') || l.contains(" #"));
        out.push_str(leading);
        out.push_str(document);
        out.push_str(trailing);
    }
    (out, dropped_comments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::tests::MESH;

    #[test]
    fn splitting_keeps_every_byte() {
        for text in [
            MESH,
            "",
            "a: 1",
            "---\na: 1\n---\n",
            "--- # x\r\na: 1\r\n---\r\nb: 2",
        ] {
            let joined: String = split_stream(text)
                .iter()
                .map(|c| format!("{}{}", c.marker, c.body))
                .collect();
            assert_eq!(joined, text);
        }
        assert_eq!(split_stream(MESH).len(), 3);
        assert_eq!(split_stream("---\na: 1\n").len(), 2, "empty first document");
    }
}
