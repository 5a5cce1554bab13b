//! Istio's locality refinements of `Locality` mode: `failoverPriority`, `failover` and
//! `distribute`, with the rules Istio's validation applies to them.

use std::collections::BTreeMap;

use causeway_model::{LocalityDistribute, LocalityPattern, RegionFailover, TrafficMode};

use super::Check;
use crate::wire;
use crate::LoadError;

/// Node labels that carry the locality; Istio refuses them in `failoverPriority` together with
/// `failover`, which already orders regions.
const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// The validated refinements.
pub(super) struct LocalityRules {
    pub(super) failover_priority: Vec<String>,
    pub(super) failover: Vec<RegionFailover>,
    pub(super) distribute: Vec<LocalityDistribute>,
}

pub(super) fn locality_rules(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
    mode: TrafficMode,
) -> Result<LocalityRules, LoadError> {
    let set = [
        ("spec.failoverPriority", !spec.failover_priority.is_empty()),
        ("spec.failover", !spec.failover.is_empty()),
        ("spec.distribute", !spec.distribute.is_empty()),
    ];
    if mode != TrafficMode::Locality {
        if let Some((field, _)) = set.iter().find(|(_, is_set)| *is_set) {
            return Err(check.error(
                *field,
                format!(
                    "only with mode Locality: mode {} sets the clusters' priorities itself",
                    mode.as_str()
                ),
            ));
        }
    }
    if set[1].1 && set[2].1 {
        return Err(check.error(
            "spec.distribute",
            "cannot be combined with spec.failover (as in Istio): distribute fixes the shares \
             between localities, failover the order of regions",
        ));
    }
    Ok(LocalityRules {
        failover_priority: failover_priority(check, spec)?,
        failover: failover(check, spec)?,
        distribute: distribute(check, spec)?,
    })
}

/// `spec.failoverPriority`: label keys, each once.
fn failover_priority(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Vec<String>, LoadError> {
    for (i, label) in spec.failover_priority.iter().enumerate() {
        let field = format!("spec.failoverPriority[{i}]");
        if label.is_empty() || label.chars().any(char::is_whitespace) {
            return Err(check.error(field, format!("{label:?} is not a label key")));
        }
        if let Some(first) = spec.failover_priority[..i].iter().position(|l| l == label) {
            return Err(check.error(
                field,
                format!(
                    "duplicate label {label:?}; first listed as spec.failoverPriority[{first}]"
                ),
            ));
        }
        if !spec.failover.is_empty() && TOPOLOGY_LABELS.contains(&label.as_str()) {
            return Err(check.error(
                field,
                format!(
                    "{label:?} cannot be used together with spec.failover, which already orders \
                     the regions (as in Istio)"
                ),
            ));
        }
    }
    Ok(spec.failover_priority.clone())
}

/// `spec.failover`: pairs of different regions (no zone, no wildcard), one entry per `from`.
fn failover(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Vec<RegionFailover>, LoadError> {
    let mut out: Vec<RegionFailover> = Vec::new();
    for (i, f) in spec.failover.iter().enumerate() {
        for (end, region) in [("from", &f.from), ("to", &f.to)] {
            let bad = region.is_empty()
                || region.contains(['/', '*'])
                || region.chars().any(char::is_whitespace);
            if bad {
                return Err(check.error(
                    format!("spec.failover[{i}].{end}"),
                    format!("{region:?} is not a region (no zone, no wildcard)"),
                ));
            }
        }
        if f.from == f.to {
            return Err(check.error(
                format!("spec.failover[{i}].to"),
                format!("must differ from spec.failover[{i}].from ({:?})", f.from),
            ));
        }
        if let Some(first) = out.iter().position(|o| o.from == f.from) {
            return Err(check.error(
                format!("spec.failover[{i}].from"),
                format!(
                    "region {:?} already fails over by spec.failover[{first}]",
                    f.from
                ),
            ));
        }
        out.push(RegionFailover {
            from: f.from.clone(),
            to: f.to.clone(),
        });
    }
    Ok(out)
}

fn pattern(check: &Check, field: &str, text: &str) -> Result<LocalityPattern, LoadError> {
    text.parse().map_err(|e| check.error(field, format!("{e}")))
}

/// `spec.distribute`: `from` groups that do not overlap; per entry, `to` groups that do not
/// overlap with shares of 1-100 adding up to 100.
fn distribute(
    check: &Check,
    spec: &wire::TrafficPolicySpec,
) -> Result<Vec<LocalityDistribute>, LoadError> {
    let mut out: Vec<LocalityDistribute> = Vec::new();
    for (i, d) in spec.distribute.iter().enumerate() {
        let from = pattern(check, &format!("spec.distribute[{i}].from"), &d.from)?;
        if let Some(first) = out.iter().position(|o| o.from.overlaps(&from)) {
            return Err(check.error(
                format!("spec.distribute[{i}].from"),
                format!(
                    "{from} overlaps spec.distribute[{first}].from ({}): a caller's locality \
                     must match one entry",
                    out[first].from
                ),
            ));
        }
        if d.to.is_empty() {
            return Err(check.error(
                format!("spec.distribute[{i}].to"),
                "must give at least one locality a share",
            ));
        }
        let mut to: BTreeMap<LocalityPattern, u32> = BTreeMap::new();
        let mut total: u64 = 0;
        for (text, weight) in &d.to {
            let field = format!("spec.distribute[{i}].to.{text}");
            let target = pattern(check, &field, text)?;
            if let Some(other) = to.keys().find(|t| t.overlaps(&target)) {
                return Err(check.error(field, format!("{target} overlaps {other}")));
            }
            if !(1..=100).contains(weight) {
                return Err(check.error(field, format!("{weight}: must be 1-100")));
            }
            total += u64::from(*weight);
            to.insert(target, *weight);
        }
        if total != 100 {
            return Err(check.error(
                format!("spec.distribute[{i}].to"),
                format!("the shares add up to {total}, not 100"),
            ));
        }
        out.push(LocalityDistribute { from, to });
    }
    Ok(out)
}
