//! Traffic policies: how callers' traffic to one service is spread over clusters, localities
//! and subsets of its endpoints, and how it is retried, timed out and ejected.
//!
//! A `causeway.io/v1alpha1` `TrafficPolicy` is mesh-wide (it lives in `mesh.yaml` or under
//! `policies/`). Its modes are FSM's GlobalTrafficPolicy modes; its locality refinements are
//! Istio's `DestinationRule` `localityLbSetting`; subsets and weighted routes follow Istio's
//! `DestinationRule` subsets and `VirtualService` route weights.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::{ClusterId, LocalityPattern, ObjectSource, ServiceKey};

/// How a policy spreads a service's traffic over its clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum TrafficMode {
    /// Today's behaviour (the default): endpoints grouped by locality with Istio's priorities,
    /// optionally refined by `failoverPriority`, `failover` and `distribute`.
    #[default]
    Locality,
    /// Every listed cluster at one priority, traffic split by the clusters' weights.
    ActiveActive,
    /// The listed clusters in order, one priority each (the first is priority 0): all traffic
    /// goes to the first cluster with healthy endpoints.
    FailOver,
}

impl TrafficMode {
    /// The mode as the wire format spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficMode::Locality => "Locality",
            TrafficMode::ActiveActive => "ActiveActive",
            TrafficMode::FailOver => "FailOver",
        }
    }
}

/// One cluster of `spec.clusters`: in `ActiveActive` with its weight, in `FailOver` by its
/// position. Clusters not listed get no traffic in those modes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterChoice {
    /// The cluster.
    pub cluster: ClusterId,
    /// Its share in `ActiveActive` (at least 1); `None` in `FailOver`.
    pub weight: Option<u32>,
}

/// Istio's `localityLbSetting.failover` entry: when no endpoint of region `from` is healthy,
/// use region `to` next (before any other region).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionFailover {
    /// The callers' region.
    pub from: String,
    /// The region to fail over to.
    pub to: String,
}

/// Istio's `localityLbSetting.distribute` entry: callers in `from` send these shares (adding up
/// to 100) to the endpoints in each group of `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityDistribute {
    /// The callers' localities.
    pub from: LocalityPattern,
    /// Endpoint localities and their shares (1-100, adding up to 100).
    pub to: BTreeMap<LocalityPattern, u32>,
}

/// A named group of the service's endpoints, by endpoint labels (Istio's subset).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Name, unique in the policy; routes refer to it.
    pub name: String,
    /// Labels an endpoint must all have (at least one).
    pub labels: BTreeMap<String, String>,
}

impl Subset {
    /// Whether an endpoint with `labels` is in the subset.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One weighted destination of the service's traffic: a cluster, a subset, or both (blue-green
/// is 100/0 then 0/100, a canary 95/5). The routes of a policy add up to 100.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRoute {
    /// Only this cluster's endpoints; `None`: every cluster the mode allows.
    pub cluster: Option<ClusterId>,
    /// Only this subset's endpoints (a name in [`TrafficPolicy::subsets`]); `None`: all.
    pub subset: Option<String>,
    /// Percent of the requests (0-100).
    pub weight: u32,
}

/// When and how often a request is retried.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub attempts: u32,
    /// Each attempt must complete within this; `None`: only the request timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// Envoy `retry_on` conditions, in the order given, without duplicates.
    pub retry_on: Vec<String>,
}

impl RetryPolicy {
    /// The conditions retried when `retryOn` is not given: the request surely did not reach
    /// the application, or a gateway failed (Causeway's routes retry these today).
    pub const DEFAULT_RETRY_ON: [&'static str; 5] = [
        "connect-failure",
        "refused-stream",
        "reset",
        "unavailable",
        "gateway-error",
    ];

    /// Every condition `retryOn` accepts: the Envoy conditions both data planes honour.
    pub const CONDITIONS: [&'static str; 13] = [
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "refused-stream",
        "retriable-4xx",
        "retriable-status-codes",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    ];
}

/// Passive health checking: endpoints that fail in a row are ejected for a while (and without
/// it, traffic never fails over between priorities).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx (or connection failures) that eject an endpoint; 0 turns this off.
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 (or connection failures) that eject an endpoint; 0: off.
    pub consecutive_gateway_failure: u32,
    /// How often ejections are evaluated.
    pub interval: Duration,
    /// How long a first ejection lasts (longer for each repeated one).
    pub base_ejection_time: Duration,
    /// At most this percent of the endpoints are ejected at once (0-100).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    /// The detection Causeway's clusters have today.
    fn default() -> Self {
        Self {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 2,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(5),
            max_ejection_percent: 100,
        }
    }
}

/// A `causeway.io/v1alpha1` `TrafficPolicy`: for the callers it applies to, which clusters,
/// localities and subsets of one service get its traffic, and the service's retries, timeout
/// and outlier detection. Validated where it is read; references to clusters and services of
/// the mesh are checked mesh-wide (see [`TrafficPolicy::unknown_clusters`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Namespace of the policy and of its service.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The service it shapes the traffic to.
    pub service: ServiceKey,
    /// The caller clusters it applies to (not empty); `None`: every caller.
    pub callers: Option<Vec<ClusterId>>,
    /// How traffic is spread over clusters.
    pub mode: TrafficMode,
    /// `ActiveActive`: the clusters and weights; `FailOver`: the order; empty in `Locality`.
    pub clusters: Vec<ClusterChoice>,
    /// Istio's `failoverPriority`: endpoint label keys, most important first; endpoints that
    /// share more leading labels with the caller get a better priority. `Locality` mode only.
    pub failover_priority: Vec<String>,
    /// Istio's region failover order. `Locality` mode only.
    pub failover: Vec<RegionFailover>,
    /// Istio's weighted distribution between localities. `Locality` mode only.
    pub distribute: Vec<LocalityDistribute>,
    /// Named groups of endpoints, for routes.
    pub subsets: Vec<Subset>,
    /// Weighted split of the requests over clusters and subsets (adding up to 100); empty: no
    /// split.
    pub routes: Vec<TrafficRoute>,
    /// Retries; `None`: the data plane's default.
    pub retries: Option<RetryPolicy>,
    /// Whole-request timeout, retries included; `None`: the data plane's default.
    pub timeout: Option<Duration>,
    /// Outlier detection; `None`: the data plane's default ([`OutlierDetection::default`]).
    pub outlier_detection: Option<OutlierDetection>,
    /// Declaration site.
    pub source: ObjectSource,
}

impl TrafficPolicy {
    /// Whether the policy applies to callers in cluster `caller`.
    pub fn applies_to(&self, caller: &ClusterId) -> bool {
        self.callers.as_ref().is_none_or(|c| c.contains(caller))
    }

    /// Every cluster the policy names: its callers, its clusters and its routes' clusters.
    pub fn referenced_clusters(&self) -> BTreeSet<ClusterId> {
        let callers = self.callers.iter().flatten();
        let listed = self.clusters.iter().map(|c| &c.cluster);
        let routed = self.routes.iter().filter_map(|r| r.cluster.as_ref());
        callers.chain(listed).chain(routed).cloned().collect()
    }

    /// The clusters the policy names that are not in `known` (sorted, each once): what
    /// `causeway check` reports as unknown clusters.
    pub fn unknown_clusters(&self, known: &BTreeSet<ClusterId>) -> Vec<ClusterId> {
        self.referenced_clusters()
            .into_iter()
            .filter(|c| !known.contains(c))
            .collect()
    }

    /// Whether the policy's service is among `services` (a policy that matches no service does
    /// nothing, which `causeway check` reports).
    pub fn matches_a_service(&self, services: &BTreeSet<ServiceKey>) -> bool {
        services.contains(&self.service)
    }

    /// The subset named `name`.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy of `policies` for `caller`'s traffic to `service`: the one that lists
    /// `caller` among its callers, else the one without callers; the first of each, in
    /// `policies`' order. (Validation ensures at most one of each; when policies from several
    /// registries break that, `causeway check` reports the later ones.)
    pub fn select<'a>(
        policies: &'a [TrafficPolicy],
        service: &ServiceKey,
        caller: &ClusterId,
    ) -> Option<&'a TrafficPolicy> {
        let mut default = None;
        for p in policies.iter().filter(|p| &p.service == service) {
            match &p.callers {
                Some(callers) if callers.contains(caller) => return Some(p),
                Some(_) => {}
                None => default = default.or(Some(p)),
            }
        }
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).expect("cluster id")
    }

    fn policy(callers: Option<&[&str]>) -> TrafficPolicy {
        TrafficPolicy {
            namespace: "shop".into(),
            name: "checkout".into(),
            service: ServiceKey::new("shop", "checkout"),
            callers: callers.map(|c| c.iter().map(|s| id(s)).collect()),
            mode: TrafficMode::FailOver,
            clusters: vec![
                ClusterChoice {
                    cluster: id("sh1"),
                    weight: None,
                },
                ClusterChoice {
                    cluster: id("bj1"),
                    weight: None,
                },
            ],
            failover_priority: Vec::new(),
            failover: Vec::new(),
            distribute: Vec::new(),
            subsets: vec![Subset {
                name: "blue".into(),
                labels: BTreeMap::from([("version".into(), "v1".into())]),
            }],
            routes: vec![TrafficRoute {
                cluster: Some(id("gz1")),
                subset: Some("blue".into()),
                weight: 100,
            }],
            retries: None,
            timeout: None,
            outlier_detection: None,
            source: ObjectSource::default(),
        }
    }

    #[test]
    fn applies_to_its_callers_or_everyone() {
        assert!(policy(None).applies_to(&id("any")));
        let p = policy(Some(&["bj1"]));
        assert!(p.applies_to(&id("bj1")));
        assert!(!p.applies_to(&id("sh1")));
    }

    #[test]
    fn unknown_clusters_are_every_named_cluster_not_known() {
        let p = policy(Some(&["bj1", "xa1"]));
        let known = BTreeSet::from([id("bj1"), id("sh1")]);
        assert_eq!(p.unknown_clusters(&known), vec![id("gz1"), id("xa1")]);
        let all = BTreeSet::from([id("bj1"), id("sh1"), id("gz1"), id("xa1")]);
        assert!(p.unknown_clusters(&all).is_empty());
        assert_eq!(p.referenced_clusters(), all);
    }

    #[test]
    fn select_prefers_the_caller_specific_policy() {
        let mut specific = policy(Some(&["bj1"]));
        specific.name = "from-bj1".into();
        let everyone = policy(None);
        let mut other_service = policy(Some(&["sh1"]));
        other_service.service = ServiceKey::new("shop", "cart");
        let policies = [everyone, specific, other_service];
        let checkout = ServiceKey::new("shop", "checkout");
        let pick = |caller: &str| {
            TrafficPolicy::select(&policies, &checkout, &id(caller)).map(|p| p.name.as_str())
        };
        assert_eq!(pick("bj1"), Some("from-bj1"));
        assert_eq!(pick("sh1"), Some("checkout"));
        assert_eq!(
            TrafficPolicy::select(&policies[2..], &checkout, &id("sh1")),
            None
        );
        assert!(policies[0].matches_a_service(&BTreeSet::from([checkout])));
        assert!(!policies[2].matches_a_service(&BTreeSet::new()));
    }

    #[test]
    fn subsets_match_by_labels_and_defaults_are_today_s() {
        let p = policy(None);
        let blue = p.subset("blue").expect("blue");
        let labels = BTreeMap::from([
            ("version".to_owned(), "v1".to_owned()),
            ("app".to_owned(), "checkout".to_owned()),
        ]);
        assert!(blue.matches(&labels));
        assert!(!blue.matches(&BTreeMap::new()));
        assert!(p.subset("green").is_none());
        assert_eq!(TrafficMode::default(), TrafficMode::Locality);
        assert_eq!(TrafficMode::FailOver.as_str(), "FailOver");
        let od = OutlierDetection::default();
        assert_eq!((od.consecutive_5xx, od.max_ejection_percent), (3, 100));
    }
}
