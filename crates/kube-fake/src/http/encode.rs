//! Response bodies: objects in a requested version, lists whose items omit `apiVersion`/`kind`
//! (as the real server emits built-in lists), watch event lines, Status errors.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::store::ListPage;

/// The body type of every response.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How objects are shown: in which version, with or without type fields, or metadata only.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// `apiVersion` to present (the requested version, which may differ from storage).
    pub api_version: String,
    pub kind: String,
    /// `Accept: ...;as=PartialObjectMetadata[List]`: only metadata.
    pub meta_only: bool,
    /// List items keep `apiVersion`/`kind`: true for custom resources, which the real server
    /// stores as unstructured JSON; built-in lists omit them.
    pub typed_items: bool,
}

impl View {
    /// The object as served (`include_type`: with `apiVersion`/`kind`).
    pub fn item<'a>(&'a self, obj: &'a Value, include_type: bool) -> ItemView<'a> {
        ItemView {
            obj,
            view: self,
            include_type,
        }
    }

    /// `apiVersion`/`kind` of objects shown in this view.
    pub fn types(&self) -> (&str, &str) {
        if self.meta_only {
            ("meta.k8s.io/v1", "PartialObjectMetadata")
        } else {
            (&self.api_version, &self.kind)
        }
    }

    /// Content type of responses in this view.
    pub fn content_type(&self, list: bool) -> &'static str {
        match (self.meta_only, list) {
            (false, _) => "application/json",
            (true, false) => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            (true, true) => "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        }
    }
}

/// Serialises a stored object without copying it, rewriting or omitting the type fields.
pub(crate) struct ItemView<'a> {
    obj: &'a Value,
    view: &'a View,
    include_type: bool,
}

impl Serialize for ItemView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(map) = self.obj.as_object() else {
            return self.obj.serialize(s);
        };
        let (api_version, kind) = self.view.types();
        let mut out = s.serialize_map(None)?;
        if self.include_type {
            out.serialize_entry("apiVersion", api_version)?;
            out.serialize_entry("kind", kind)?;
        }
        for (k, v) in map {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => out.serialize_entry(k, v)?,
                _ if self.view.meta_only => {}
                _ => out.serialize_entry(k, v)?,
            }
        }
        out.end()
    }
}

/// A response with a JSON body.
pub(crate) fn json_response(code: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ct =
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(CONTENT_TYPE, ct);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    resp
}

/// A JSON value response.
pub(crate) fn value_response(code: u16, v: &Value) -> Response<Body> {
    json_response(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

/// A `Status` failure response.
pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    value_response(e.code, &e.to_status())
}

/// One stored object, in the view.
pub(crate) fn object_response(code: u16, view: &View, obj: &Value) -> Response<Body> {
    let body = serde_json::to_vec(&view.item(obj, true)).unwrap_or_default();
    json_response(code, view.content_type(false), body)
}

#[derive(Serialize)]
struct ListOut<'a> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: Value,
    items: Vec<ItemView<'a>>,
}

/// A list page: `<Kind>List` with list metadata; built-in items omit `apiVersion`/`kind`.
pub(crate) fn list_response(view: &View, page: &ListPage) -> Response<Body> {
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let Some(m) = metadata.as_object_mut() {
        if let Some(c) = &page.continue_token {
            m.insert("continue".into(), Value::from(c.clone()));
        }
        if let Some(r) = page.remaining {
            m.insert("remainingItemCount".into(), Value::from(r));
        }
    }
    let (api_version, kind) = if view.meta_only {
        ("meta.k8s.io/v1", "PartialObjectMetadataList".to_string())
    } else {
        (view.api_version.as_str(), format!("{}List", view.kind))
    };
    let out = ListOut {
        kind,
        api_version,
        metadata,
        items: page
            .items
            .iter()
            .map(|o| view.item(o, view.typed_items && !view.meta_only))
            .collect(),
    };
    json_response(
        200,
        view.content_type(true),
        serde_json::to_vec(&out).unwrap_or_default(),
    )
}

/// A list of objects that is not a page of the store (deletecollection's answer).
pub(crate) fn plain_list_response(view: &View, rv: u64, items: &[Arc<Value>]) -> Response<Body> {
    let page = ListPage {
        items: items.to_vec(),
        rv,
        continue_token: None,
        remaining: None,
    };
    list_response(view, &page)
}

#[derive(Serialize)]
struct EventOut<'a, T: Serialize> {
    #[serde(rename = "type")]
    ty: &'a str,
    object: T,
}

/// One watch event line (`{"type":..,"object":..}\n`); objects include `apiVersion`/`kind`.
pub(crate) fn event_line(out: &mut Vec<u8>, ty: &str, view: &View, obj: &Value) {
    // Writing JSON into a Vec cannot fail for these types.
    let _ = serde_json::to_writer(
        &mut *out,
        &EventOut {
            ty,
            object: view.item(obj, true),
        },
    );
    out.push(b'\n');
}

/// A BOOKMARK line whose object has only `apiVersion`, `kind` and `metadata.resourceVersion`
/// (plus the `k8s.io/initial-events-end` annotation when it ends the initial events).
pub(crate) fn bookmark_line(out: &mut Vec<u8>, view: &View, rv: u64, initial_end: bool) {
    let (api_version, kind) = view.types();
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if let (true, Some(m)) = (initial_end, metadata.as_object_mut()) {
        m.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    let _ = serde_json::to_writer(
        &mut *out,
        &EventOut {
            ty: "BOOKMARK",
            object,
        },
    );
    out.push(b'\n');
}

/// An in-stream ERROR line carrying a Status (e.g. 410 Expired).
pub(crate) fn error_line(out: &mut Vec<u8>, e: &ApiError) {
    let _ = serde_json::to_writer(
        &mut *out,
        &EventOut {
            ty: "ERROR",
            object: e.to_status(),
        },
    );
    out.push(b'\n');
}
