//! Where a route or a TCP proxy sends its traffic: one cluster, or Envoy's `weighted_clusters`
//! (a `TrafficPolicy`'s blue-green or canary split) → [`ClusterSplit`], each request or connection
//! picking one cluster by weight.

use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::check::{unsupported, At};
use super::ConfigError;

/// One cluster, or several by weight.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum ClusterSplit {
    One(String),
    /// Clusters with their weights (at least one above 0), and the sum of the weights.
    Weighted {
        clusters: Vec<(String, u32)>,
        total: u64,
    },
}

impl ClusterSplit {
    /// The cluster for one request or connection, `roll` being a uniformly random number:
    /// Envoy's pick (`roll % total`, then the clusters' cumulative weights in order), so each
    /// cluster gets its weight's share.
    pub fn pick(&self, roll: u64) -> &str {
        match self {
            ClusterSplit::One(c) => c,
            ClusterSplit::Weighted { clusters, total } => {
                let mut left = roll % (*total).max(1);
                for (name, weight) in clusters {
                    let w = u64::from(*weight);
                    if left < w {
                        return name;
                    }
                    left -= w;
                }
                clusters.last().map_or("", |(c, _)| c.as_str())
            }
        }
    }

    /// Every cluster named, in order.
    pub fn clusters(&self) -> Vec<&str> {
        match self {
            ClusterSplit::One(c) => vec![c.as_str()],
            ClusterSplit::Weighted { clusters, .. } => {
                clusters.iter().map(|(c, _)| c.as_str()).collect()
            }
        }
    }

    fn weighted(at: &At<'_>, clusters: Vec<(String, u32)>) -> Result<Self, ConfigError> {
        if clusters.is_empty() {
            return Err(at.field("clusters").error("needs at least one cluster"));
        }
        let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err(at
                .field("clusters")
                .error("the weights add up to 0; at least one must be above 0"));
        }
        if total > u64::from(u32::MAX) {
            return Err(at
                .field("clusters")
                .error(format!("the weights add up to {total}, above 4294967295")));
        }
        Ok(ClusterSplit::Weighted { clusters, total })
    }
}

/// A cluster name of a weighted list: present, and not repeated.
fn cluster_name(at: &At<'_>, name: &str, seen: &[(String, u32)]) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(at.field("name").error("missing"));
    }
    if seen.iter().any(|(n, _)| n == name) {
        return Err(at
            .field("name")
            .error(format!("cluster {name:?} is listed twice")));
    }
    Ok(name.to_owned())
}

/// A route's `weighted_clusters`.
#[allow(deprecated)] // `total_weight`: honoured when set, as Envoy still does.
pub(crate) fn route_weighted(
    at: &At<'_>,
    w: &route::WeightedCluster,
) -> Result<ClusterSplit, ConfigError> {
    let route::WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    unsupported!(at, runtime_key_prefix, random_value_specifier);
    let mut out = Vec::with_capacity(clusters.len());
    for (i, c) in clusters.iter().enumerate() {
        let at = at.item("clusters", i);
        #[rustfmt::skip]
        let route::weighted_cluster::ClusterWeight {
            name, cluster_header, weight, metadata_match, request_headers_to_add,
            request_headers_to_remove, response_headers_to_add, response_headers_to_remove,
            typed_per_filter_config, host_rewrite_specifier,
        } = c;
        #[rustfmt::skip]
        unsupported!(
            at,
            cluster_header, metadata_match, request_headers_to_add, request_headers_to_remove,
            response_headers_to_add, response_headers_to_remove, typed_per_filter_config,
            host_rewrite_specifier,
        );
        let Some(weight) = weight else {
            return Err(at.field("weight").error("missing"));
        };
        let name = cluster_name(&at, name, &out)?;
        out.push((name, weight.value));
    }
    let split = ClusterSplit::weighted(at, out)?;
    if let (Some(declared), ClusterSplit::Weighted { total, .. }) = (total_weight, &split) {
        if u64::from(declared.value) != *total {
            return Err(at.field("total_weight").error(format!(
                "{} is not the sum of the weights ({total})",
                declared.value
            )));
        }
    }
    Ok(split)
}

/// A TCP proxy's `weighted_clusters`.
pub(crate) fn tcp_weighted(
    at: &At<'_>,
    w: &tcp::tcp_proxy::WeightedCluster,
) -> Result<ClusterSplit, ConfigError> {
    let tcp::tcp_proxy::WeightedCluster { clusters } = w;
    let mut out = Vec::with_capacity(clusters.len());
    for (i, c) in clusters.iter().enumerate() {
        let at = at.item("clusters", i);
        let tcp::tcp_proxy::weighted_cluster::ClusterWeight {
            name,
            weight,
            metadata_match,
        } = c;
        unsupported!(at, metadata_match);
        if *weight == 0 {
            // Envoy's own validation: a TCP proxy's weights are at least 1.
            return Err(at.field("weight").error("must be at least 1"));
        }
        let name = cluster_name(&at, name, &out)?;
        out.push((name, *weight));
    }
    ClusterSplit::weighted(at, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_weights_in_order() {
        let u = ClusterSplit::Weighted {
            clusters: vec![("blue".into(), 95), ("green".into(), 5), ("off".into(), 0)],
            total: 100,
        };
        let picks: Vec<&str> = (0..200).map(|r| u.pick(r)).collect();
        let green = picks.iter().filter(|p| **p == "green").count();
        assert_eq!(green, 10, "{picks:?}");
        assert!(!picks.contains(&"off"));
        assert_eq!(u.pick(94), "blue");
        assert_eq!(u.pick(95), "green");
        assert_eq!(u.pick(u64::MAX), u.pick(u64::MAX % 100));
        assert_eq!(ClusterSplit::One("a".into()).pick(7), "a");
        assert_eq!(u.clusters(), ["blue", "green", "off"]);
    }

    #[test]
    fn tcp_weights_are_at_least_one_and_names_unique() {
        let at = At::resource("Listener l");
        let split = |items: &[(&str, u32)]| tcp::tcp_proxy::WeightedCluster {
            clusters: items
                .iter()
                .map(
                    |(name, weight)| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                        name: (*name).to_owned(),
                        weight: *weight,
                        metadata_match: None,
                    },
                )
                .collect(),
        };
        assert_eq!(
            tcp_weighted(&at, &split(&[("a", 3), ("b", 1)])).expect("split"),
            ClusterSplit::Weighted {
                clusters: vec![("a".into(), 3), ("b".into(), 1)],
                total: 4
            }
        );
        let e = tcp_weighted(&at, &split(&[("a", 0)])).expect_err("zero");
        assert_eq!(e.field, "clusters[0].weight");
        let e = tcp_weighted(&at, &split(&[("a", 1), ("a", 2)])).expect_err("twice");
        assert_eq!(e.field, "clusters[1].name");
        let e = tcp_weighted(&at, &split(&[])).expect_err("empty");
        assert_eq!(e.field, "clusters");
    }
}
