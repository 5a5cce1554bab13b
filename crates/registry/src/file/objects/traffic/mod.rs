//! `TrafficPolicy` (causeway.io/v1alpha1), validated into [`causeway_model::TrafficPolicy`]:
//! here the service, callers, mode and clusters; in [`locality`] Istio's locality refinements;
//! in [`requests`] subsets, routes, retries, timeout and outlier detection. Checks across
//! policies (duplicates) are in `file::policies`; references to the mesh's clusters and
//! services are `causeway check`'s.

mod locality;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_model::{
    validate_dns_label, ClusterChoice, ClusterId, ObjectSource, ServiceKey, TrafficMode,
    TrafficPolicy,
};

use crate::file::documents::Doc;
use crate::file::fields::{namespace_of, parse_duration, required_name};
use crate::wire;
use crate::LoadError;

/// Parses one `TrafficPolicy` document.
pub(in crate::file) fn parse_traffic_policy(doc: &Doc<'_>) -> Result<TrafficPolicy, LoadError> {
    let obj: wire::Object<wire::TrafficPolicySpec> = doc.typed(Some("TrafficPolicy"))?;
    let name = required_name(doc, "TrafficPolicy", &obj.metadata)?;
    let namespace = namespace_of(&obj.metadata);
    traffic_policy_from_spec(&namespace, &name, &obj.spec, doc.source())
}

/// Where a policy is and what it is called, for its errors.
struct Check {
    source: ObjectSource,
    object: String,
}

impl Check {
    fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> LoadError {
        LoadError {
            file: self.source.file.clone(),
            document: Some(self.source.document),
            line: Some(self.source.line),
            object: Some(self.object.clone()),
            field: Some(field.into()),
            reason: reason.into(),
        }
    }

    fn cluster(&self, field: &str, name: &str) -> Result<ClusterId, LoadError> {
        ClusterId::new(name).map_err(|e| self.error(field, e.to_string()))
    }

    /// A duration longer than zero.
    fn duration(&self, field: &str, text: &str) -> Result<Duration, LoadError> {
        let d = parse_duration(text).map_err(|e| self.error(field, e))?;
        if d.is_zero() {
            return Err(self.error(field, format!("{text:?}: must be longer than 0")));
        }
        Ok(d)
    }
}

/// Validates a `TrafficPolicy` spec into the model: the one place where one policy's rules are
/// checked, whichever registry it came from (the mesh directory or a Kubernetes custom
/// resource). Errors carry `source`, the object `TrafficPolicy <namespace>/<name>` and the
/// field path, e.g. `spec.clusters[1].weight`.
pub fn traffic_policy_from_spec(
    namespace: &str,
    name: &str,
    spec: &wire::TrafficPolicySpec,
    source: ObjectSource,
) -> Result<TrafficPolicy, LoadError> {
    let check = Check {
        object: format!("TrafficPolicy {namespace}/{name}"),
        source,
    };
    validate_dns_label(&spec.service).map_err(|e| check.error("spec.service", e.to_string()))?;
    let mode = mode(&check, spec)?;
    let callers = callers(&check, spec)?;
    let clusters = clusters(&check, spec, mode)?;
    let rules = locality::locality_rules(&check, spec, mode)?;
    let subsets = requests::subsets(&check, spec)?;
    let routes = requests::routes(&check, spec, &subsets, &clusters, mode)?;
    let retries = requests::retries(&check, spec)?;
    let timeout = spec
        .timeout
        .as_deref()
        .map(|t| check.duration("spec.timeout", t))
        .transpose()?;
    let outlier_detection = requests::outlier_detection(&check, spec)?;
    Ok(TrafficPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service: ServiceKey::new(namespace, &spec.service),
        callers,
        mode,
        clusters,
        failover_priority: rules.failover_priority,
        failover: rules.failover,
        distribute: rules.distribute,
        subsets,
        routes,
        retries,
        timeout,
        outlier_detection,
        source: check.source,
    })
}

fn mode(check: &Check, spec: &wire::TrafficPolicySpec) -> Result<TrafficMode, LoadError> {
    match spec.mode.as_deref() {
        None | Some("Locality") => Ok(TrafficMode::Locality),
        Some("ActiveActive") => Ok(TrafficMode::ActiveActive),
        Some("FailOver") => Ok(TrafficMode::FailOver),
        Some(other) => Err(check.error(
            "spec.mode",
            format!("{other:?} is not Locality (the default), ActiveActive or FailOver"),
        )),
    }
}

/// `spec.callers.clusters`: at least one cluster, each once.
fn callers(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Option<Vec<ClusterId>>, LoadError> {
    let Some(callers) = &spec.callers else {
        return Ok(None);
    };
    if callers.clusters.is_empty() {
        return Err(check.error(
            "spec.callers.clusters",
            "must list at least one cluster; omit spec.callers to apply to every caller",
        ));
    }
    let mut ids: Vec<ClusterId> = Vec::new();
    for (i, name) in callers.clusters.iter().enumerate() {
        let field = format!("spec.callers.clusters[{i}]");
        let id = check.cluster(&field, name)?;
        if let Some(first) = ids.iter().position(|c| *c == id) {
            return Err(check.error(
                field,
                format!(
                    "duplicate cluster {name:?}; first listed as spec.callers.clusters[{first}]"
                ),
            ));
        }
        ids.push(id);
    }
    Ok(Some(ids))
}

/// `spec.clusters`: none in `Locality` mode; in `ActiveActive` each with a weight of at least
/// 1; in `FailOver` without weights; each cluster once.
fn clusters(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
    mode: TrafficMode,
) -> Result<Vec<ClusterChoice>, LoadError> {
    let listed = !spec.clusters.is_empty();
    match mode {
        TrafficMode::Locality if listed => {
            return Err(check.error(
                "spec.clusters",
                "only with mode ActiveActive or FailOver; mode Locality (the default) spreads \
                 traffic by locality over every cluster",
            ))
        }
        TrafficMode::ActiveActive | TrafficMode::FailOver if !listed => {
            return Err(check.error(
                "spec.clusters",
                format!("mode {} needs at least one cluster", mode.as_str()),
            ))
        }
        _ => {}
    }
    let mut seen: BTreeMap<ClusterId, usize> = BTreeMap::new();
    let mut choices = Vec::new();
    let mut total: u64 = 0;
    for (i, c) in spec.clusters.iter().enumerate() {
        let cluster = check.cluster(&format!("spec.clusters[{i}].name"), &c.name)?;
        if let Some(first) = seen.get(&cluster) {
            return Err(check.error(
                format!("spec.clusters[{i}].name"),
                format!(
                    "duplicate cluster {:?}; first listed as spec.clusters[{first}]",
                    c.name
                ),
            ));
        }
        seen.insert(cluster.clone(), i);
        let field = format!("spec.clusters[{i}].weight");
        let reason = match (mode, c.weight) {
            (TrafficMode::ActiveActive, None) => {
                Some("missing: mode ActiveActive splits traffic by the clusters' weights")
            }
            (TrafficMode::ActiveActive, Some(0)) => {
                Some("must be at least 1 (leave a cluster out to give it no traffic)")
            }
            (TrafficMode::FailOver, Some(_)) => Some(
                "mode FailOver takes no weights: all traffic goes to the first listed cluster \
                 with healthy endpoints",
            ),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(check.error(field, reason));
        }
        total += u64::from(c.weight.unwrap_or(0));
        choices.push(ClusterChoice {
            cluster,
            weight: c.weight,
        });
    }
    if total > u64::from(u32::MAX) {
        return Err(check.error(
            "spec.clusters",
            format!("the weights add up to {total}, more than {}", u32::MAX),
        ));
    }
    Ok(choices)
}
