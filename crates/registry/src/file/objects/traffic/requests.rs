//! What a policy does to the requests: subsets of endpoints, weighted routes over clusters and
//! subsets, retries and outlier detection.

use causeway_model::{
    validate_dns_label, ClusterChoice, OutlierDetection, RetryPolicy, Subset, TrafficMode,
    TrafficRoute,
};

use super::Check;
use crate::file::fields::join;
use crate::wire;
use crate::LoadError;

/// `spec.subsets`: names that are DNS labels (not the reserved `all` or `ep-…`), each once; at least one label each.
pub(super) fn subsets(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Vec<Subset>, LoadError> {
    let mut out: Vec<Subset> = Vec::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        validate_dns_label(&s.name)
            .map_err(|e| check.error(format!("spec.subsets[{i}].name"), e.to_string()))?;
        // `all` names a route to a whole cluster and `ep-` the per-endpoint SNIs of gateways.
        if s.name == "all" || s.name.starts_with("ep-") {
            return Err(check.error(
                format!("spec.subsets[{i}].name"),
                format!(
                    "{:?} is reserved (`all` and names starting with `ep-`)",
                    s.name
                ),
            ));
        }
        if let Some(first) = out.iter().position(|o| o.name == s.name) {
            return Err(check.error(
                format!("spec.subsets[{i}].name"),
                format!(
                    "duplicate subset {:?}; first defined as spec.subsets[{first}]",
                    s.name
                ),
            ));
        }
        if s.labels.is_empty() {
            return Err(check.error(
                format!("spec.subsets[{i}].labels"),
                "must select endpoints by at least one label",
            ));
        }
        if let Some(key) = s.labels.keys().find(|k| k.is_empty()) {
            return Err(check.error(
                format!("spec.subsets[{i}].labels"),
                format!("{key:?} is not a label key"),
            ));
        }
        out.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
        });
    }
    Ok(out)
}

/// `spec.routes`: each to a defined subset and, when the mode lists clusters, to a listed
/// cluster; each destination once; weights 0-100 adding up to 100.
pub(super) fn routes(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
    subsets: &[Subset],
    clusters: &[ClusterChoice],
    mode: TrafficMode,
) -> Result<Vec<TrafficRoute>, LoadError> {
    let mut out: Vec<TrafficRoute> = Vec::new();
    let mut total: u64 = 0;
    for (i, r) in spec.routes.iter().enumerate() {
        let cluster = match &r.cluster {
            None => None,
            Some(name) => Some(check.cluster(&format!("spec.routes[{i}].cluster"), name)?),
        };
        if let Some(c) = &cluster {
            if mode != TrafficMode::Locality && !clusters.iter().any(|l| l.cluster == *c) {
                return Err(check.error(
                    format!("spec.routes[{i}].cluster"),
                    format!(
                        "{c} is not in spec.clusters, so mode {} gives it no traffic",
                        mode.as_str()
                    ),
                ));
            }
        }
        if let Some(name) = &r.subset {
            if !subsets.iter().any(|s| s.name == *name) {
                let defined = if subsets.is_empty() {
                    "the policy defines none".to_owned()
                } else {
                    format!(
                        "spec.subsets defines {}",
                        join(subsets.iter().map(|s| &s.name))
                    )
                };
                return Err(check.error(
                    format!("spec.routes[{i}].subset"),
                    format!("undefined subset {name:?}; {defined}"),
                ));
            }
        }
        if r.weight > 100 {
            return Err(check.error(
                format!("spec.routes[{i}].weight"),
                format!("{}: must be 0-100 (percent of the requests)", r.weight),
            ));
        }
        let route = TrafficRoute {
            cluster,
            subset: r.subset.clone(),
            weight: r.weight,
        };
        let same = |o: &TrafficRoute| o.cluster == route.cluster && o.subset == route.subset;
        if let Some(first) = out.iter().position(same) {
            return Err(check.error(
                format!("spec.routes[{i}]"),
                format!("the same cluster and subset as spec.routes[{first}]"),
            ));
        }
        total += u64::from(r.weight);
        out.push(route);
    }
    if !out.is_empty() && total != 100 {
        return Err(check.error(
            "spec.routes",
            format!("the weights add up to {total}, not 100"),
        ));
    }
    Ok(out)
}

/// `spec.retries`: `retryOn` a comma-separated list of the conditions the data planes honour
/// (default [`RetryPolicy::DEFAULT_RETRY_ON`]).
pub(super) fn retries(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Option<RetryPolicy>, LoadError> {
    let Some(r) = &spec.retries else {
        return Ok(None);
    };
    let per_try_timeout = r
        .per_try_timeout
        .as_deref()
        .map(|t| check.duration("spec.retries.perTryTimeout", t))
        .transpose()?;
    let retry_on = match r.retry_on.as_deref() {
        None => RetryPolicy::DEFAULT_RETRY_ON.map(str::to_owned).to_vec(),
        Some(text) => retry_conditions(check, text)?,
    };
    Ok(Some(RetryPolicy {
        attempts: r.attempts,
        per_try_timeout,
        retry_on,
    }))
}

fn retry_conditions(check: &Check, text: &str) -> Result<Vec<String>, LoadError> {
    let field = "spec.retries.retryOn";
    let mut out: Vec<String> = Vec::new();
    for condition in text.split(',').map(str::trim) {
        if !RetryPolicy::CONDITIONS.contains(&condition) {
            return Err(check.error(
                field,
                format!(
                    "{condition:?} is not a retry condition ({})",
                    RetryPolicy::CONDITIONS.join(", ")
                ),
            ));
        }
        if out.iter().any(|c| c == condition) {
            return Err(check.error(field, format!("{condition:?} is listed twice")));
        }
        out.push(condition.to_owned());
    }
    Ok(out)
}

/// `spec.outlierDetection`: today's detection for every field left out; durations longer than
/// 0; `maxEjectionPercent` 0-100.
pub(super) fn outlier_detection(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Option<OutlierDetection>, LoadError> {
    let Some(o) = &spec.outlier_detection else {
        return Ok(None);
    };
    let default = OutlierDetection::default();
    let interval = o
        .interval
        .as_deref()
        .map(|t| check.duration("spec.outlierDetection.interval", t))
        .transpose()?;
    let base_ejection_time = o
        .base_ejection_time
        .as_deref()
        .map(|t| check.duration("spec.outlierDetection.baseEjectionTime", t))
        .transpose()?;
    let max_ejection_percent = o
        .max_ejection_percent
        .unwrap_or(default.max_ejection_percent);
    if max_ejection_percent > 100 {
        return Err(check.error(
            "spec.outlierDetection.maxEjectionPercent",
            format!("{max_ejection_percent}: must be 0-100"),
        ));
    }
    Ok(Some(OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(default.consecutive_5xx),
        consecutive_gateway_failure: o
            .consecutive_gateway_failure
            .unwrap_or(default.consecutive_gateway_failure),
        interval: interval.unwrap_or(default.interval),
        base_ejection_time: base_ejection_time.unwrap_or(default.base_ejection_time),
        max_ejection_percent,
    }))
}
