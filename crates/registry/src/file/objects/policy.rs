//! `AuthorizationPolicy` (causeway.io/v1alpha1), validated by [`policy_from_spec`], which the
//! Kubernetes registry shares.

use causeway_model::{
    AuthorizationPolicy, ClusterId, ObjectSource, PolicyAction, PolicyRule, PolicySource,
    PolicyTarget, SpiffeId,
};

use crate::file::documents::Doc;
use crate::file::fields::{namespace_of, required_name};
use crate::wire;
use crate::LoadError;

pub(in crate::file) fn parse_policy(doc: &Doc<'_>) -> Result<AuthorizationPolicy, LoadError> {
    let obj: wire::Object<wire::AuthorizationPolicySpec> =
        doc.typed(Some("AuthorizationPolicy"))?;
    let name = required_name(doc, "AuthorizationPolicy", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    policy_from_spec(&namespace, &name, &obj.spec, doc.source())
}

/// Validates an `AuthorizationPolicy` spec into the model: the one place where its selector,
/// action, principals, clusters, ports and paths are checked, whichever registry it came from.
/// Errors carry `source` (file, document, line), the object `AuthorizationPolicy
/// <namespace>/<name>` and the field path, e.g. `spec.rules[0].from[1].principals[0]`.
pub fn policy_from_spec(
    namespace: &str,
    name: &str,
    spec: &wire::AuthorizationPolicySpec,
    source: ObjectSource,
) -> Result<AuthorizationPolicy, LoadError> {
    let object = format!("AuthorizationPolicy {namespace}/{name}");
    let error = |field: String, reason: String| LoadError {
        file: source.file.clone(),
        document: Some(source.document),
        line: Some(source.line),
        object: Some(object.clone()),
        field: Some(field),
        reason,
    };
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => PolicyAction::Allow,
        Some("DENY") => PolicyAction::Deny,
        Some(other) => {
            return Err(error(
                "spec.action".into(),
                format!("{other:?} is not ALLOW or DENY"),
            ))
        }
    };
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        rules.push(PolicyRule {
            from: policy_sources(i, rule, &error)?,
            to: policy_targets(i, rule, &error)?,
        });
    }
    Ok(AuthorizationPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        action,
        rules,
        source,
    })
}

/// `spec.rules[i].from`: principals are SPIFFE IDs or prefixes of one ending in `*`, clusters
/// are cluster ids.
fn policy_sources(
    i: usize,
    rule: &wire::PolicyRule,
    error: &dyn Fn(String, String) -> LoadError,
) -> Result<Vec<PolicySource>, LoadError> {
    let mut from = Vec::new();
    for (j, src) in rule.from.iter().enumerate() {
        for (k, p) in src.principals.iter().enumerate() {
            let exact = p.strip_suffix('*').is_none();
            let valid = if exact {
                SpiffeId::parse(p).is_ok()
            } else {
                p.starts_with("spiffe://")
            };
            if !valid {
                return Err(error(
                    format!("spec.rules[{i}].from[{j}].principals[{k}]"),
                    format!("{p:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<sa>) or a prefix of one ending in '*'"),
                ));
            }
        }
        let mut clusters = Vec::new();
        for (k, c) in src.clusters.iter().enumerate() {
            clusters.push(ClusterId::new(c).map_err(|e| {
                error(
                    format!("spec.rules[{i}].from[{j}].clusters[{k}]"),
                    e.to_string(),
                )
            })?);
        }
        from.push(PolicySource {
            principals: src.principals.clone(),
            namespaces: src.namespaces.clone(),
            clusters,
        });
    }
    Ok(from)
}

/// `spec.rules[i].to`: ports are 1-65535, paths start with `/`.
fn policy_targets(
    i: usize,
    rule: &wire::PolicyRule,
    error: &dyn Fn(String, String) -> LoadError,
) -> Result<Vec<PolicyTarget>, LoadError> {
    let mut to = Vec::new();
    for (j, target) in rule.to.iter().enumerate() {
        if let Some(k) = target.ports.iter().position(|p| *p == 0) {
            return Err(error(
                format!("spec.rules[{i}].to[{j}].ports[{k}]"),
                "must be 1-65535".into(),
            ));
        }
        if let Some(k) = target.paths.iter().position(|p| !p.starts_with('/')) {
            return Err(error(
                format!("spec.rules[{i}].to[{j}].paths[{k}]"),
                "must start with '/'".into(),
            ));
        }
        to.push(PolicyTarget {
            ports: target.ports.clone(),
            paths: target.paths.clone(),
        });
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use causeway_model::{ClusterObjects, PolicyAction};

    use crate::file::parse_cluster_documents;

    const POLICY: &str = "\
apiVersion: v1
kind: Service
metadata: {name: other, namespace: demo}
spec: {ports: [{port: 80}]}
---
apiVersion: causeway.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: demo}
spec:
  selector: {app: greeter}
  action: DENY
  rules:
  - from:
    - principals: [spiffe://causeway.local/ns/demo/sa/client, spiffe://causeway.local/ns/ops/*]
      namespaces: [demo]
      clusters: [alpha]
    to:
    - ports: [8080]
      paths: [/api/*]
";

    #[test]
    fn parses_policy() {
        let mut objects = ClusterObjects::default();
        let mut errors = Vec::new();
        parse_cluster_documents(Path::new("p.yaml"), POLICY, &mut objects, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let p = &objects.policies[&("demo".to_owned(), "greeter-callers".to_owned())];
        assert_eq!(p.action, PolicyAction::Deny);
        assert_eq!(
            p.selector.as_ref().map(|s| s["app"].as_str()),
            Some("greeter")
        );
        let from = &p.rules[0].from[0];
        assert_eq!(from.principals.len(), 2);
        assert_eq!(from.clusters[0].as_str(), "alpha");
        assert_eq!(p.rules[0].to[0].ports, vec![8080]);
        assert_eq!(p.source.document, 1);
        assert_eq!(p.source.line, 6);
    }

    #[test]
    fn policy_errors_name_document_line_object_field() {
        let cases = [
            ("action: DENY", "action: MAYBE", "spec.action"),
            ("[8080]", "[0]", "spec.rules[0].to[0].ports[0]"),
            ("[/api/*]", "[api]", "spec.rules[0].to[0].paths[0]"),
            ("[alpha]", "[Alpha!]", "spec.rules[0].from[0].clusters[0]"),
            (
                "spiffe://causeway.local/ns/demo/sa/client,",
                "demo/client,",
                "spec.rules[0].from[0].principals[0]",
            ),
        ];
        for (from, to, field) in cases {
            let text = POLICY.replace(from, to);
            let mut objects = ClusterObjects::default();
            let mut errors = Vec::new();
            parse_cluster_documents(Path::new("p.yaml"), &text, &mut objects, &mut errors);
            assert_eq!(errors.len(), 1, "{to}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert_eq!(
                e.object.as_deref(),
                Some("AuthorizationPolicy demo/greeter-callers")
            );
            assert_eq!((e.document, e.line), (Some(1), Some(6)), "{e}");
        }
    }
}
