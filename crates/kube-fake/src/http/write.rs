//! POST, PUT, PATCH and DELETE on resources.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Response};
use serde_json::Value;

use super::encode::{object_response, plain_list_response, Body};
use super::Ctx;
use crate::error::ApiError;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::server::lock;
use crate::store::{ListRequest, Patch, Preconditions, WriteOpts};

/// The real server's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Reads the whole request body (413 past the limit).
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body could not be read: {e}"),
            )
        })
}

/// Parses a JSON request body.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).or_else(|_| {
        yaml_serde::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    })
}

fn write_opts(ctx: &Ctx, req: &Request<Incoming>) -> WriteOpts {
    // Like the real server, an unnamed writer is recorded under its user agent's program name.
    let agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split('/').next())
        .filter(|a| !a.is_empty());
    let field_manager = ctx.query.get("fieldManager").map(str::to_string);
    let is_apply = content_type(req) == "application/apply-patch+yaml";
    WriteOpts {
        direct: false,
        dry_run: ctx.query.dry_run(),
        field_manager: field_manager
            .or_else(|| (!is_apply).then(|| agent.map(str::to_string)).flatten()),
        trusted: false,
    }
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("application/json")
        .trim()
        .to_ascii_lowercase()
}

/// create, update and patch.
pub(crate) async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let opts = write_opts(ctx, &req);
    let ctype = content_type(&req);
    let name = ctx.path.name.clone().unwrap_or_default();
    let status = ctx.path.subresource.is_some();
    match ctx.verb {
        "create" => {
            if ctx.ty.namespaced && ctx.ns().is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let obj = parse_json(&read_body(req).await?)?;
            let v = ctx.path.version.clone();
            let created = lock(&ctx.inner.store).create(&ctx.gr(), &v, ctx.ns(), obj, &opts)?;
            Ok(object_response(201, &ctx.view, &created))
        }
        "update" => {
            let obj = parse_json(&read_body(req).await?)?;
            let v = ctx.path.version.clone();
            let updated = lock(&ctx.inner.store).update(
                &ctx.gr(),
                &v,
                ctx.ns(),
                &name,
                obj,
                status,
                &opts,
            )?;
            Ok(object_response(200, &ctx.view, &updated))
        }
        "patch" => {
            let body = read_body(req).await?;
            let patch = parse_patch(&ctype, &body)?;
            let v = ctx.path.version.clone();
            let (obj, created) = lock(&ctx.inner.store).patch(
                &ctx.gr(),
                &v,
                ctx.ns(),
                &name,
                patch,
                status,
                &opts,
            )?;
            Ok(object_response(
                if created { 201 } else { 200 },
                &ctx.view,
                &obj,
            ))
        }
        "delete" => {
            if status {
                return Err(ApiError::method_not_allowed());
            }
            let (pre, dry) = delete_options(ctx, &read_body(req).await?)?;
            let deleted = lock(&ctx.inner.store).delete(&ctx.gr(), ctx.ns(), &name, &pre, dry)?;
            Ok(object_response(200, &ctx.view, &deleted))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_patch(ctype: &str, body: &[u8]) -> Result<Patch, ApiError> {
    match ctype {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            Ok(Patch::Merge(parse_json(body)?))
        }
        "application/json-patch+json" => serde_json::from_slice(body)
            .map(Patch::Json)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}"))),
        "application/apply-patch+yaml" => Ok(Patch::Apply(parse_apply(body)?)),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
        )),
    }
}

/// DeleteOptions from the body (`preconditions`, `dryRun`) and the query.
fn delete_options(ctx: &Ctx, body: &[u8]) -> Result<(Preconditions, bool), ApiError> {
    let mut dry = ctx.query.dry_run();
    let mut pre = Preconditions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = parse_json(body)?;
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        pre.uid = s("/preconditions/uid");
        pre.resource_version = s("/preconditions/resourceVersion");
        dry |= v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    }
    Ok((pre, dry))
}

/// DELETE on a collection: deletes every matching object and returns them as a list.
pub(crate) async fn delete_collection(
    ctx: &Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, dry) = delete_options(ctx, &read_body(req).await?)?;
    let sel = Selectors {
        labels: LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or_default())?,
    };
    let mut store = lock(&ctx.inner.store);
    let page = store.list(&ctx.gr(), ctx.ns(), &sel, &ListRequest::default())?;
    let mut deleted = Vec::with_capacity(page.items.len());
    for obj in &page.items {
        let ns = crate::store::meta_str(obj, "namespace");
        let name = crate::store::meta_str(obj, "name").unwrap_or_default();
        deleted.push(store.delete(&ctx.gr(), ns, name, &Preconditions::default(), dry)?);
    }
    let rv = store.resource_version();
    drop(store);
    Ok(plain_list_response(&ctx.view, rv, &deleted))
}
