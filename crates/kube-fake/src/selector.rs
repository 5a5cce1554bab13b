//! Label and field selectors, parsed once per request and matched against stored JSON.

use serde_json::Value;

use crate::error::ApiError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector` (requirements are ANDed; empty matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

/// A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

fn parse_error(s: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: found '{s}', {why}"))
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn checked_value(raw: &str, whole: &str) -> Result<String, ApiError> {
    let v = raw.trim();
    if valid_value(v) {
        Ok(v.to_string())
    } else {
        Err(parse_error(whole, "invalid label value"))
    }
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_error(whole, "expected a parenthesised set of values"))?;
    inner.split(',').map(|v| checked_value(v, whole)).collect()
}

fn parse_int(raw: &str, whole: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse()
        .map_err(|_| parse_error(whole, "the value of > and < must be an integer"))
}

fn parse_label_req(s: &str) -> Result<LabelReq, ApiError> {
    let whole = s.trim();
    if let Some(key) = whole.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(LabelReq::NotExists(key.to_string()))
        } else {
            Err(parse_error(whole, "invalid label key"))
        };
    }
    let key_end = whole
        .find(|c: char| c.is_whitespace() || "=!<>(".contains(c))
        .unwrap_or(whole.len());
    let key = &whole[..key_end];
    if !valid_key(key) {
        return Err(parse_error(whole, "invalid label key"));
    }
    let key_s = key.to_string();
    let rest = whole[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(LabelReq::Exists(key_s));
    }
    if let Some(v) = rest.strip_prefix("==") {
        return Ok(LabelReq::Equals(key_s, checked_value(v, whole)?));
    }
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(LabelReq::NotEquals(key_s, checked_value(v, whole)?));
    }
    if let Some(v) = rest.strip_prefix('=') {
        return Ok(LabelReq::Equals(key_s, checked_value(v, whole)?));
    }
    if let Some(v) = rest.strip_prefix('>') {
        return Ok(LabelReq::GreaterThan(key_s, parse_int(v, whole)?));
    }
    if let Some(v) = rest.strip_prefix('<') {
        return Ok(LabelReq::LessThan(key_s, parse_int(v, whole)?));
    }
    if let Some(v) = rest.strip_prefix("notin") {
        return Ok(LabelReq::NotIn(key_s, parse_set(v, whole)?));
    }
    if let Some(v) = rest.strip_prefix("in") {
        return Ok(LabelReq::In(key_s, parse_set(v, whole)?));
    }
    Err(parse_error(
        whole,
        "expected one of: '=', '==', '!=', 'in', 'notin', '<', '>'",
    ))
}

impl LabelSelector {
    /// Parses the `labelSelector` query value (empty → match everything).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let reqs = split_top_level(s)
            .into_iter()
            .map(parse_label_req)
            .collect::<Result<_, _>>()?;
        Ok(Self { reqs })
    }

    /// True when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            LabelReq::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::GreaterThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelReq::LessThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// Splits on unescaped `sep`, keeping escapes for a later unescape.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let cur = parts.last_mut();
        match (c, cur) {
            ('\\', Some(cur)) => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (c, _) if c == sep => parts.push(String::new()),
            (c, Some(cur)) => cur.push(c),
            (_, None) => {}
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finds the first unescaped operator in a field requirement: (start, len, is_equal).
fn find_field_op(s: &str) -> Option<(usize, usize, bool)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => return Some((i, 2, false)),
            b'=' if bytes.get(i + 1) == Some(&b'=') => return Some((i, 2, true)),
            b'=' => return Some((i, 1, true)),
            _ => i += 1,
        }
    }
    None
}

impl FieldSelector {
    /// Parses the `fieldSelector` query value (empty → match everything).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_unescaped(s, ',') {
            let (at, len, equal) = find_field_op(&part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ))
            })?;
            let path = part[..at].trim().to_string();
            if path.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; empty field path"
                )));
            }
            reqs.push((path, equal, unescape(part[at + len..].trim())));
        }
        Ok(Self { reqs })
    }

    /// True when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether the object's fields satisfy every requirement (missing fields read as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, equal, want)| {
            let got = field_value(obj, path);
            (got == *want) == *equal
        })
    }
}

/// The value of a dotted field path as the string a field selector compares.
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Label and field selector together, as a watch or list applies them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether the object passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// True when neither selector restricts anything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1", "priority": 5}})
    }

    #[test]
    fn label_operators() {
        let p = pod(json!({"app": "web", "tier": "front", "n": "7"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "app notin (db)",
            "tier",
            "!missing",
            "app=web,tier=front",
            "n>3",
            "n<9",
            "missing!=x",
            "missing notin (a)",
            "app in(web)",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s).unwrap().matches(&p),
                "{s} should match"
            );
        }
        let no = [
            "app=db",
            "app in (db)",
            "app notin (web)",
            "missing",
            "!app",
            "n>7",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(
                !LabelSelector::parse(s).unwrap().matches(&p),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for s in ["app in web", "=x", "app=(x", "a b", "n>x"] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors_on_any_path() {
        let p = pod(json!({}));
        for s in [
            "metadata.name=p",
            "metadata.namespace==ns",
            "spec.nodeName=n1",
            "spec.priority=5",
            "spec.missing=",
            "metadata.name!=q,spec.nodeName=n1",
        ] {
            assert!(FieldSelector::parse(s).unwrap().matches(&p), "{s}");
        }
        for s in ["metadata.name=q", "spec.nodeName!=n1", "spec.missing=x"] {
            assert!(!FieldSelector::parse(s).unwrap().matches(&p), "{s}");
        }
        assert_eq!(FieldSelector::parse("nonsense").unwrap_err().code, 400);
    }

    #[test]
    fn escaped_field_values() {
        let o = json!({"metadata": {"name": "a,b=c"}});
        assert!(FieldSelector::parse(r"metadata.name=a\,b\=c")
            .unwrap()
            .matches(&o));
    }
}
