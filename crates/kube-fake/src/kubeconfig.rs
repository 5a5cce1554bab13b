//! A kubeconfig for one server, context and token.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

/// YAML kubeconfig with a cluster, user and context all named `context`, current-context set;
/// `ca_pem` becomes `certificate-authority-data` when the server speaks TLS.
pub(crate) fn render(url: &str, context: &str, token: &str, ca_pem: Option<&str>) -> String {
    let mut cluster = json!({"server": url});
    if let (Some(pem), Some(c)) = (ca_pem, cluster.as_object_mut()) {
        c.insert(
            "certificate-authority-data".into(),
            STANDARD.encode(pem).into(),
        );
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
        "current-context": context,
        "preferences": {},
    });
    // Serialising a JSON value to YAML cannot fail; fall back to JSON (valid YAML) anyway.
    yaml_serde::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}
