//! The HTTP front: routing, authentication and authorisation, fault injection, request
//! counting; then discovery, reads, writes and reviews.

mod discovery;
mod encode;
mod read;
mod review;
mod route;
mod watch;
mod write;

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION};
use hyper::{Method, Request, Response};

pub(crate) use encode::Body;
use encode::{error_response, json_response, value_response, View};
use route::{Query, ResourcePath, Route};

use crate::auth::{forbidden, unauthorized, Permissions, User};
use crate::error::ApiError;
use crate::faults::Fault;
use crate::resources::{GroupResource, ResourceType, REVIEW_RESOURCES};
use crate::server::{lock, Inner};

/// A request abandoned under the hang fault; hyper closes its connection unanswered.
#[derive(Debug, thiserror::Error)]
#[error("request abandoned unanswered: the fake API server's hang fault was lifted")]
pub(crate) struct Abandoned;

/// Everything a resource handler needs about one request.
pub(crate) struct Ctx {
    pub inner: Arc<Inner>,
    pub path: ResourcePath,
    pub ty: ResourceType,
    pub query: Query,
    pub view: View,
    pub verb: &'static str,
}

impl Ctx {
    pub fn gr(&self) -> GroupResource {
        self.ty.gr()
    }

    /// The namespace of the request, for namespaced resources.
    pub fn ns(&self) -> Option<&str> {
        self.path.namespace.as_deref()
    }
}

/// Serves one request.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abandoned> {
    let route = route::route(req.uri().path());
    let query = Query::parse(req.uri().query());
    let watch = query.flag("watch").unwrap_or(false);
    count(&inner, &route, req.method(), watch, req.uri().path());
    match inner.faults.current() {
        Fault::None => {}
        Fault::Hang => {
            let mut faults = inner.faults.subscribe();
            // Resolves when the fault is lifted (or the server is dropped).
            let _ = faults.wait_for(|f| *f != Fault::Hang).await;
            return Err(Abandoned);
        }
        Fault::Status(code) => return Ok(error_response(&ApiError::from_code(code))),
    }
    match route {
        Route::Version => return Ok(value_response(200, &discovery::version())),
        Route::Health => return Ok(json_response(200, "text/plain", b"ok".to_vec())),
        _ => {}
    }
    let (user, perms) = match authenticate(&inner, &req) {
        Ok(u) => u,
        Err(e) => return Ok(error_response(&e)),
    };
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = match route {
        Route::Resource(path) => resource(inner, req, path, query, accept, user, perms).await,
        other => discovery_response(&inner, &other, accept.as_deref()),
    };
    Ok(resp.unwrap_or_else(|e| error_response(&e)))
}

fn count(inner: &Inner, route: &Route, method: &Method, watch: bool, path: &str) {
    let (verb, group, resource) = match route {
        Route::Resource(p) => {
            let verb = route::verb(method, p, watch).unwrap_or("unknown");
            let res = match &p.subresource {
                Some(s) => format!("{}/{s}", p.plural),
                None => p.plural.clone(),
            };
            (verb, p.group.clone(), res)
        }
        _ => ("get", String::new(), path.to_string()),
    };
    inner.count_request(verb, &group, &resource);
}

fn authenticate(inner: &Inner, req: &Request<Incoming>) -> Result<(User, Permissions), ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(unauthorized)?
        .trim();
    lock(&inner.auth).authenticate(token)
}

fn discovery_response(
    inner: &Inner,
    route: &Route,
    accept: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let entries = discovery::entries(lock(&inner.store).types());
    let aggregated = discovery::wants_aggregated(accept);
    let v = match route {
        Route::CoreVersions if aggregated => return Ok(aggregated_response(&entries, true)),
        Route::Groups if aggregated => return Ok(aggregated_response(&entries, false)),
        Route::CoreVersions => discovery::core_versions(&inner.addr.to_string()),
        Route::Groups => discovery::group_list(&entries),
        Route::Group(g) => discovery::group(&entries, g)?,
        Route::GroupVersion(g, v) => discovery::resource_list(&entries, g, v)?,
        _ => return Err(ApiError::not_served()),
    };
    Ok(value_response(200, &v))
}

fn aggregated_response(entries: &[discovery::Entry], core: bool) -> Response<Body> {
    let v = discovery::aggregated(entries, core);
    json_response(
        200,
        discovery::AGGREGATED_CONTENT_TYPE,
        serde_json::to_vec(&v).unwrap_or_default(),
    )
}

/// Resolves the resource, checks scope and permission, and dispatches by verb.
async fn resource(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    path: ResourcePath,
    query: Query,
    accept: Option<String>,
    user: User,
    perms: Permissions,
) -> Result<Response<Body>, ApiError> {
    let watch = query.flag("watch").unwrap_or(false);
    let verb = route::verb(req.method(), &path, watch).ok_or_else(ApiError::method_not_allowed)?;
    if let Some((_, _, kind, _)) = REVIEW_RESOURCES
        .iter()
        .find(|(g, v, _, p)| *g == path.group && *v == path.version && *p == path.plural)
    {
        authorize(&perms, &user, verb, &path)?;
        if verb != "create" {
            return Err(ApiError::method_not_allowed());
        }
        return review::handle(&inner, req, kind, &user, &perms).await;
    }
    let ty = lock(&inner.store)
        .resolve(&path.group, &path.version, &path.plural)?
        .clone();
    check_scope(&ty, &path)?;
    authorize(&perms, &user, verb, &path)?;
    let meta_only = accept
        .as_deref()
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let view = View {
        api_version: crate::resources::api_version(&ty.group, &path.version),
        kind: ty.kind.clone(),
        meta_only,
        typed_items: ty.normalize.is_none(),
    };
    if path.subresource.as_deref() == Some("token") {
        if verb != "create" {
            return Err(ApiError::method_not_allowed());
        }
        return review::token_request(&inner, req, &path).await;
    }
    let ctx = Ctx {
        inner,
        path,
        ty,
        query,
        view,
        verb,
    };
    match verb {
        "get" => read::get(&ctx),
        "list" => read::list(&ctx),
        "watch" => read::watch(&ctx),
        "deletecollection" => write::delete_collection(&ctx, req).await,
        _ => write::handle(&ctx, req).await,
    }
}

/// Namespaced resources need a namespace to address one object; cluster-scoped ones never
/// take one; only `status` is a known subresource.
fn check_scope(ty: &ResourceType, path: &ResourcePath) -> Result<(), ApiError> {
    if !ty.namespaced && path.namespace.is_some() {
        return Err(ApiError::not_served());
    }
    if ty.namespaced && path.namespace.is_none() && path.name.is_some() {
        return Err(ApiError::not_served());
    }
    match path.subresource.as_deref() {
        None => Ok(()),
        Some("status") if ty.status_subresource => Ok(()),
        Some("token") if ty.group.is_empty() && ty.plural == "serviceaccounts" => Ok(()),
        Some(_) => Err(ApiError::not_served()),
    }
}

fn authorize(
    perms: &Permissions,
    user: &User,
    verb: &str,
    path: &ResourcePath,
) -> Result<(), ApiError> {
    let resource = match &path.subresource {
        Some(s) => format!("{}/{s}", path.plural),
        None => path.plural.clone(),
    };
    if perms.allows(verb, &path.group, &resource) {
        return Ok(());
    }
    Err(forbidden(
        &user.name,
        verb,
        &path.group,
        &resource,
        path.namespace.as_deref(),
        path.name.as_deref(),
    ))
}
