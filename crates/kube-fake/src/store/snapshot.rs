//! Lists at a resource version: `resourceVersion`/`resourceVersionMatch` semantics and
//! `limit`/`continue` pagination over one consistent snapshot.
//!
//! A snapshot at version N is the current objects overlaid with, for every key changed after
//! N, its state before the first such change (taken from the history). Cost is the page plus
//! the number of changes since N, never the square of the list size.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::{ObjKey, Store, Table};
use crate::error::ApiError;
use crate::resources::GroupResource;
use crate::selector::Selectors;

/// The list parameters that select a version and a page.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListRequest {
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub items: Vec<Arc<Value>>,
    /// Version of the snapshot the page was read from.
    pub rv: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// The objects of a table in key order, restricted to one namespace if given.
pub(crate) fn range<'a>(
    objects: &'a BTreeMap<ObjKey, Arc<Value>>,
    ns: Option<&'a str>,
) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
    let lower = match ns {
        Some(ns) => Bound::Included((ns.to_string(), String::new())),
        None => Bound::Unbounded,
    };
    objects
        .range((lower, Bound::Unbounded))
        .take_while(move |(k, _)| ns.is_none_or(|ns| k.0 == ns))
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: \"{s}\": invalid resource version"
        ))
    })
}

fn too_large(want: u64, current: u64) -> ApiError {
    ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {want}, current: {current}"),
    )
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}", key.0, key.1)});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    let bad = || {
        ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion")
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

impl Store {
    /// The version a list reads at, per `resourceVersion` and `resourceVersionMatch`.
    fn list_version(&self, table: &Table, req: &ListRequest) -> Result<u64, ApiError> {
        let current = self.rv;
        let rv = req.resource_version.as_deref().filter(|s| !s.is_empty());
        let Some(rv) = rv else {
            if req
                .resource_version_match
                .as_deref()
                .is_some_and(|m| !m.is_empty())
            {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            return Ok(current);
        };
        let n = parse_rv(rv)?;
        let exact = match req.resource_version_match.as_deref() {
            Some("Exact") => true,
            Some("NotOlderThan") => false,
            None | Some("") => req.limit.is_some() && n != 0,
            Some(other) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    &format!("resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""),
                ))
            }
        };
        if n > current {
            return Err(too_large(n, current));
        }
        if !exact {
            return Ok(current);
        }
        if n < table.compacted {
            return Err(ApiError::expired(
                "The resourceVersion for the provided list is too old.",
            ));
        }
        Ok(n)
    }

    /// Lists a resource at the requested version, filtered and paginated.
    pub fn list(
        &self,
        gr: &GroupResource,
        ns: Option<&str>,
        sel: &Selectors,
        req: &ListRequest,
    ) -> Result<ListPage, ApiError> {
        let table = self.table(gr)?;
        let (rv, after) = match req.continue_token.as_deref().filter(|s| !s.is_empty()) {
            Some(token) => {
                if req
                    .resource_version
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && r != "0")
                {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, key) = decode_continue(token)?;
                if rv < table.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(key))
            }
            None => (self.list_version(table, req)?, None),
        };
        let overlay = overlay_at(table, rv);
        let limit = req.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last: Option<ObjKey> = None;
        let mut remaining = 0u64;
        let mut more = false;
        visit(table, &overlay, ns, after.as_ref(), |key, obj| {
            if !sel.matches(obj) {
                return true;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining += 1;
                // Counting the rest is only needed when the real server reports it.
                return sel.is_empty();
            }
            items.push(obj.clone());
            last = Some(key.clone());
            true
        });
        let continue_token = match (more, &last) {
            (true, Some(key)) => Some(encode_continue(rv, key)),
            _ => None,
        };
        Ok(ListPage {
            items,
            rv,
            remaining: (more && sel.is_empty()).then_some(remaining),
            continue_token,
        })
    }
}

/// For every key changed after `rv`, its state at `rv` (`None`: it did not exist then).
fn overlay_at(table: &Table, rv: u64) -> BTreeMap<ObjKey, Option<Arc<Value>>> {
    let mut overlay = BTreeMap::new();
    let first = table.history.partition_point(|c| c.rv <= rv);
    for change in table.history.range(first..) {
        overlay
            .entry(change.key.clone())
            .or_insert_with(|| change.before());
    }
    overlay
}

/// Visits the snapshot's objects in key order after `after`, while `f` returns true.
fn visit(
    table: &Table,
    overlay: &BTreeMap<ObjKey, Option<Arc<Value>>>,
    ns: Option<&str>,
    after: Option<&ObjKey>,
    mut f: impl FnMut(&ObjKey, &Arc<Value>) -> bool,
) {
    let lower = match (after, ns) {
        (Some(k), _) => Bound::Excluded(k.clone()),
        (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
        (None, None) => Bound::Unbounded,
    };
    let in_ns = |k: &ObjKey| ns.is_none_or(|ns| k.0 == ns);
    let mut cur = table
        .objects
        .range((lower.clone(), Bound::Unbounded))
        .take_while(|(k, _)| in_ns(k))
        .peekable();
    let mut over = overlay
        .range((lower, Bound::Unbounded))
        .take_while(|(k, _)| in_ns(k))
        .peekable();
    loop {
        let (key, obj) = match (cur.peek(), over.peek()) {
            (None, None) => return,
            (Some((ck, cv)), None) => {
                let item = ((*ck).clone(), Some((*cv).clone()));
                cur.next();
                item
            }
            (None, Some((ok, ov))) => {
                let item = ((*ok).clone(), (*ov).clone());
                over.next();
                item
            }
            (Some((ck, cv)), Some((ok, ov))) => {
                if ck < ok {
                    let item = ((*ck).clone(), Some((*cv).clone()));
                    cur.next();
                    item
                } else {
                    let item = ((*ok).clone(), (*ov).clone());
                    if ck == ok {
                        cur.next();
                    }
                    over.next();
                    item
                }
            }
        };
        if let Some(obj) = obj {
            if !f(&key, &obj) {
                return;
            }
        }
    }
}
