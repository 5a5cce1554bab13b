//! GET of one object, list, and watch requests.

use std::time::Duration;

use hyper::Response;

use super::encode::{list_response, object_response, Body};
use super::watch::{self, WatchSpec};
use super::Ctx;
use crate::error::ApiError;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::server::lock;
use crate::store::{ListRequest, WatchStart};

fn selectors(ctx: &Ctx) -> Result<Selectors, ApiError> {
    let mut fields = ctx
        .query
        .get("fieldSelector")
        .unwrap_or_default()
        .to_string();
    // A watch on one named object is a watch with a name field selector.
    if let Some(name) = &ctx.path.name {
        let sep = if fields.is_empty() { "" } else { "," };
        fields = format!("metadata.name={name}{sep}{fields}");
    }
    Ok(Selectors {
        labels: LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(&fields)?,
    })
}

/// GET of one object.
pub(crate) fn get(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let name = ctx.path.name.as_deref().unwrap_or_default();
    let obj = lock(&ctx.inner.store).get(&ctx.gr(), ctx.ns().unwrap_or_default(), name)?;
    Ok(object_response(200, &ctx.view, &obj))
}

/// A list, at the requested version, paginated.
pub(crate) fn list(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let sel = selectors(ctx)?;
    let limit = match ctx.query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit: Invalid value: \"{l}\"")))?,
        ),
        None => None,
    };
    let req = ListRequest {
        resource_version: ctx.query.get("resourceVersion").map(str::to_string),
        resource_version_match: ctx.query.get("resourceVersionMatch").map(str::to_string),
        limit,
        continue_token: ctx.query.get("continue").map(str::to_string),
    };
    let page = lock(&ctx.inner.store).list(&ctx.gr(), ctx.ns(), &sel, &req)?;
    Ok(list_response(&ctx.view, &page))
}

fn invalid_list_options(msg: &str) -> ApiError {
    ApiError::invalid("ListOptions", "", msg)
}

/// Where a watch starts, per `resourceVersion` and `sendInitialEvents`, validated as the real
/// server does. Returns the start and whether the initial-events-end bookmark is due.
fn watch_start(ctx: &Ctx, bookmarks: bool) -> Result<(WatchStart, bool), ApiError> {
    let rv = ctx.query.get("resourceVersion").filter(|s| !s.is_empty());
    let send_initial = ctx.query.flag("sendInitialEvents");
    let rv_match = ctx
        .query
        .get("resourceVersionMatch")
        .filter(|s| !s.is_empty());
    if let Some(send) = send_initial {
        if rv_match != Some("NotOlderThan") {
            return Err(invalid_list_options(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if send && !bookmarks {
            return Err(invalid_list_options(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    } else if rv_match.is_some() {
        return Err(invalid_list_options(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let n = match rv {
        None | Some("0") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: \"{s}\": invalid resource version"
            ))
        })?),
    };
    Ok(match (send_initial, n) {
        (Some(true), Some(n)) => {
            let current = lock(&ctx.inner.store).resource_version();
            if n > current {
                return Err(ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {n}, current: {current}"),
                ));
            }
            (WatchStart::InitialState, true)
        }
        (Some(true), None) => (WatchStart::InitialState, true),
        (Some(false), None) => (WatchStart::Now, false),
        (Some(false), Some(n)) | (None, Some(n)) => (WatchStart::After(n), false),
        // Legacy semantics: no version means the current state first, as ADDED events.
        (None, None) => (WatchStart::InitialState, false),
    })
}

/// A watch: the streaming response.
pub(crate) fn watch(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let sel = selectors(ctx)?;
    let bookmarks = ctx.query.flag("allowWatchBookmarks").unwrap_or(false);
    let (start, initial_end) = watch_start(ctx, bookmarks)?;
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(t) => {
            let secs = t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: Invalid value: \"{t}\""))
            })?;
            // 0 means "no timeout requested", as on the real server.
            (secs > 0).then(|| Duration::from_secs(secs))
        }
        None => None,
    };
    let spec = WatchSpec {
        gr: ctx.gr(),
        ns: ctx.path.namespace.clone(),
        sel,
        start,
        initial_end,
        bookmarks,
        timeout,
        view: ctx.view.clone(),
    };
    Ok(watch::respond(&ctx.inner, spec))
}
