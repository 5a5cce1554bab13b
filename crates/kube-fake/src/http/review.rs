//! TokenReview, SelfSubjectAccessReview and SelfSubjectReview: answered, never stored.

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use super::encode::{value_response, Body};
use super::route::ResourcePath;
use super::write::{parse_json, read_body};
use crate::auth::{Permissions, User};
use crate::error::ApiError;
use crate::ids;
use crate::resources::GroupResource;
use crate::server::{lock, Inner};

/// Answers a review `kind` for the caller.
pub(crate) async fn handle(
    inner: &Inner,
    req: Request<Incoming>,
    kind: &str,
    user: &User,
    perms: &Permissions,
) -> Result<Response<Body>, ApiError> {
    let mut body = parse_json(&read_body(req).await?)?;
    let status = match kind {
        "TokenReview" => token_review(inner, &body)?,
        "SelfSubjectAccessReview" => access_review(&body, user, perms)?,
        _ => json!({"userInfo": user.to_json()}),
    };
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    map.insert("status".into(), status);
    map.entry("metadata")
        .or_insert_with(|| json!({"creationTimestamp": null}));
    Ok(value_response(201, &body))
}

fn token_review(inner: &Inner, body: &Value) -> Result<Value, ApiError> {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "TokenReview",
                "",
                "spec.token: Required value: token must be provided",
            )
        })?;
    let audiences: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(lock(&inner.auth).review(token, &audiences))
}

fn access_review(body: &Value, user: &User, perms: &Permissions) -> Result<Value, ApiError> {
    let Some(attrs) = body.pointer("/spec/resourceAttributes") else {
        // Non-resource URLs (discovery and the like) are open to every authenticated user.
        if body.pointer("/spec/nonResourceAttributes").is_some() {
            return Ok(
                json!({"allowed": true, "reason": "non-resource URLs are allowed for authenticated users"}),
            );
        }
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            "spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    let s = |k: &str| attrs.get(k).and_then(Value::as_str).unwrap_or_default();
    let resource = if s("subresource").is_empty() {
        s("resource").to_string()
    } else {
        format!("{}/{}", s("resource"), s("subresource"))
    };
    let allowed = perms.allows(s("verb"), s("group"), &resource);
    Ok(if allowed {
        json!({"allowed": true, "reason": format!("allowed by the fake API server's rules for User \"{}\"", user.name)})
    } else {
        json!({"allowed": false})
    })
}

/// `POST .../serviceaccounts/{name}/token` (TokenRequest): issues a token for an existing
/// service account, bound to `spec.boundObjectRef` when it names a pod.
pub(crate) async fn token_request(
    inner: &Inner,
    req: Request<Incoming>,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    let ns = path.namespace.clone().unwrap_or_default();
    let sa = path.name.clone().unwrap_or_default();
    lock(&inner.store).get(&GroupResource::new("", "serviceaccounts"), &ns, &sa)?;
    let body = parse_json(&read_body(req).await?)?;
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|| vec!["https://kubernetes.default.svc.cluster.local".to_string()]);
    let bound = |k: &str| {
        spec.pointer(&format!("/boundObjectRef/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (pod, pod_uid) = match bound("kind").as_str() {
        "Pod" => (bound("name"), bound("uid")),
        _ => (String::new(), String::new()),
    };
    let refs: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let token =
        lock(&inner.auth).issue_service_account_token(&ns, &sa, &pod, &pod_uid, &refs, issuer);
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let expires = expires
        .replace_nanosecond(0)
        .unwrap_or(expires)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let out = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": sa, "namespace": ns, "creationTimestamp": ids::now_rfc3339()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(value_response(201, &out))
}
