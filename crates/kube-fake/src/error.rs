//! Errors: [`FakeError`] for callers of the fake, [`ApiError`] for what the API answers.

use serde_json::{json, Value};

/// Everything that can go wrong when driving the fake server from a test.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The listening socket could not be opened (port in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address the server tried to listen on.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The self-signed CA or serving certificate could not be generated.
    #[error("cannot generate the fake API server's TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS server configuration was rejected by rustls.
    #[error("cannot configure TLS for the fake API server: {0}")]
    Tls(#[from] rustls::Error),
    /// An object could not be turned into JSON.
    #[error("cannot serialise the object to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The API itself refused the operation, with the Status the HTTP API would answer.
    #[error("the fake API server refused the request: {0}")]
    Api(#[from] ApiError),
    /// `start_again` was called while the server is listening.
    #[error("the fake API server is already listening on {0}")]
    AlreadyRunning(std::net::SocketAddr),
}

/// A Kubernetes `Status` failure: HTTP code, machine-readable reason and message.
///
/// The HTTP layer serialises it exactly as the real API server does, so kube-rs turns it
/// into `kube::Error::Api`; direct-store calls return it inside [`FakeError::Api`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (404, 409, ...).
    pub code: u16,
    /// Kubernetes reason (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: String,
    /// Human-readable message, worded like the real API server's.
    pub message: String,
    /// Optional `details` object (`name`, `group`, `kind`).
    pub details: Option<Value>,
}

impl ApiError {
    /// A failure with the given code, reason and message and no details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// Adds the `details` block (`name`, `group`, `kind` as the real server fills it).
    pub fn with_details(mut self, group: &str, plural: &str, name: &str) -> Self {
        let mut d = serde_json::Map::new();
        if !name.is_empty() {
            d.insert("name".into(), Value::from(name));
        }
        if !group.is_empty() {
            d.insert("group".into(), Value::from(group));
        }
        d.insert("kind".into(), Value::from(plural));
        self.details = Some(Value::Object(d));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a path the server does not serve (unknown group, version or resource).
    pub fn not_served() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_empty_details()
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_empty_details()
    }

    /// 410 Expired, as for a compacted continue token or resource version.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 422 Invalid with a field error, worded as the real validation errors.
    pub fn invalid(kind: &str, name: &str, field_error: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field_error}"),
        )
    }

    /// The reason the real API server gives for a bare HTTP code.
    pub fn reason_for(code: u16) -> &'static str {
        match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "",
        }
    }

    /// A failure for an arbitrary code (fault injection), with the matching reason.
    pub fn from_code(code: u16) -> Self {
        let reason = Self::reason_for(code);
        let message = match code {
            500 => "Internal error occurred: injected by the fake API server".to_string(),
            503 => "the server is currently unable to handle the request".to_string(),
            429 => "Too many requests, please try again later.".to_string(),
            _ => format!("fault injected by the fake API server (HTTP {code})"),
        };
        Self::new(code, reason, message)
    }

    fn with_empty_details(mut self) -> Self {
        self.details = Some(json!({}));
        self
    }

    /// The `Status` object as JSON, exactly as the real API server emits it.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(d), Some(map)) = (&self.details, s.as_object_mut()) {
            map.insert("details".into(), d.clone());
        }
        s
    }
}
