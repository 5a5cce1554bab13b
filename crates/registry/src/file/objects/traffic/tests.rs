use std::path::Path;
use std::time::Duration;

use causeway_model::{ServiceKey, TrafficMode, TrafficPolicy};

use crate::file::policies::{check_traffic_policies, parse_policy_documents};
use crate::LoadError;

const FILE: &str = "policies/shop.yaml";

/// The example.
const FAIL_OVER: &str = "\
apiVersion: causeway.io/v1alpha1
kind: TrafficPolicy
metadata: {name: checkout, namespace: shop}
spec:
  service: checkout
  callers: {clusters: [bj1]}
  mode: FailOver
  clusters:
  - {name: sh1}
  - {name: bj1}
";

const ACTIVE_ACTIVE: &str = "\
apiVersion: causeway.io/v1alpha1
kind: TrafficPolicy
metadata: {name: cart, namespace: shop}
spec:
  service: cart
  mode: ActiveActive
  clusters:
  - {name: sh1, weight: 3}
  - {name: bj1, weight: 1}
  subsets:
  - {name: blue, labels: {version: v1}}
  - {name: green, labels: {version: v2}}
  routes:
  - {subset: blue, weight: 95}
  - {cluster: bj1, subset: green, weight: 5}
  retries: {attempts: 2, perTryTimeout: 250ms, retryOn: \"5xx, reset\"}
  timeout: 2s
  outlierDetection: {consecutive5xx: 5, interval: 10s, maxEjectionPercent: 50}
";

const LOCALITY: &str = "\
apiVersion: causeway.io/v1alpha1
kind: TrafficPolicy
metadata: {name: search}
spec:
  service: search
  failoverPriority: [topology.kubernetes.io/region, topology.kubernetes.io/zone]
  distribute:
  - from: us-east/us-east-1a/*
    to: {\"us-east/us-east-1a/*\": 80, \"us-east/us-east-1b/*\": 20}
  - from: us-west
    to: {\"us-west/*\": 100}
";

fn parse(text: &str) -> (Vec<TrafficPolicy>, Vec<LoadError>) {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    parse_policy_documents(Path::new(FILE), text, &mut policies, &mut errors);
    errors.extend(check_traffic_policies(&policies));
    (policies, errors)
}

fn one(text: &str) -> TrafficPolicy {
    let (mut policies, errors) = parse(text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(policies.len(), 1);
    policies.remove(0)
}

fn names<T: ToString>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

#[test]
fn parses_fail_over() {
    let p = one(FAIL_OVER);
    assert_eq!(p.service, ServiceKey::new("shop", "checkout"));
    assert_eq!(p.mode, TrafficMode::FailOver);
    assert_eq!(names(p.clusters.iter().map(|c| &c.cluster)), ["sh1", "bj1"]);
    assert!(p.clusters.iter().all(|c| c.weight.is_none()));
    assert_eq!(
        p.callers.as_deref().map(names),
        Some(vec!["bj1".to_owned()])
    );
    assert_eq!(
        (p.source.file.as_path(), p.source.line),
        (Path::new(FILE), 1)
    );
    assert!(p.retries.is_none() && p.timeout.is_none() && p.outlier_detection.is_none());
}

#[test]
fn parses_active_active_with_routes_retries_and_outlier_detection() {
    let p = one(ACTIVE_ACTIVE);
    assert_eq!(p.mode, TrafficMode::ActiveActive);
    assert_eq!(p.callers, None);
    let weights: Vec<_> = p.clusters.iter().map(|c| c.weight).collect();
    assert_eq!(weights, [Some(3), Some(1)]);
    assert_eq!(
        p.subset("green").map(|s| s.labels["version"].as_str()),
        Some("v2")
    );
    assert_eq!(p.routes[0].subset.as_deref(), Some("blue"));
    assert_eq!(p.routes[0].cluster, None);
    assert_eq!(
        p.routes[1].cluster.as_ref().map(|c| c.as_str()),
        Some("bj1")
    );
    assert_eq!(p.routes.iter().map(|r| r.weight).sum::<u32>(), 100);
    let retries = p.retries.expect("retries");
    assert_eq!(retries.attempts, 2);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(retries.retry_on, ["5xx", "reset"]);
    assert_eq!(p.timeout, Some(Duration::from_secs(2)));
    let od = p.outlier_detection.expect("outlier detection");
    assert_eq!((od.consecutive_5xx, od.consecutive_gateway_failure), (5, 2));
    assert_eq!(
        (od.interval, od.base_ejection_time),
        (Duration::from_secs(10), Duration::from_secs(5))
    );
    assert_eq!(od.max_ejection_percent, 50);
}

#[test]
fn parses_locality_with_istio_refinements_and_defaults() {
    let p = one(LOCALITY);
    assert_eq!(p.mode, TrafficMode::Locality, "the default");
    assert_eq!(p.service, ServiceKey::new("default", "search"));
    assert!(p.clusters.is_empty());
    assert_eq!(p.failover_priority.len(), 2);
    assert_eq!(p.distribute[0].from.to_string(), "us-east/us-east-1a/*");
    assert_eq!(
        names(p.distribute[0].to.keys()),
        ["us-east/us-east-1a/*", "us-east/us-east-1b/*"]
    );
    assert_eq!(p.distribute[1].from.to_string(), "us-west/*");

    let failover = LOCALITY
        .replace("distribute:", "failover: [{from: us-east, to: us-west}]\n  x:")
        .replace("  x:\n  - from: us-east/us-east-1a/*\n    to: {\"us-east/us-east-1a/*\": 80, \"us-east/us-east-1b/*\": 20}\n  - from: us-west\n    to: {\"us-west/*\": 100}\n", "")
        .replace("[topology.kubernetes.io/region, topology.kubernetes.io/zone]", "[topology.istio.io/network]");
    let p = one(&failover);
    assert_eq!(
        (p.failover[0].from.as_str(), p.failover[0].to.as_str()),
        ("us-east", "us-west")
    );
    assert_eq!(p.failover_priority, ["topology.istio.io/network"]);

    let retries = one(&ACTIVE_ACTIVE.replace(", retryOn: \"5xx, reset\"", "")).retries;
    assert_eq!(
        retries.map(|r| r.retry_on),
        Some(names(causeway_model::RetryPolicy::DEFAULT_RETRY_ON))
    );
}

/// Each validation error names the file, line, document, object and field.
#[test]
fn errors_name_file_line_object_and_field() {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        // (policy, replace, with, field, reason)
        (FAIL_OVER, "mode: FailOver", "mode: Failover", "spec.mode", "\"Failover\" is not Locality (the default), ActiveActive or FailOver"),
        (ACTIVE_ACTIVE, "{name: bj1, weight: 1}", "{name: bj1}", "spec.clusters[1].weight", "missing: mode ActiveActive"),
        (ACTIVE_ACTIVE, "{name: bj1, weight: 1}", "{name: bj1, weight: 0}", "spec.clusters[1].weight", "must be at least 1"),
        (ACTIVE_ACTIVE, "  clusters:\n  - {name: sh1, weight: 3}\n  - {name: bj1, weight: 1}\n", "", "spec.clusters", "mode ActiveActive needs at least one cluster"),
        (FAIL_OVER, "{name: bj1}", "{name: bj1, weight: 2}", "spec.clusters[1].weight", "mode FailOver takes no weights"),
        (FAIL_OVER, "{name: bj1}", "{name: sh1}", "spec.clusters[1].name", "duplicate cluster \"sh1\"; first listed as spec.clusters[0]"),
        (FAIL_OVER, "{name: bj1}", "{name: BJ1}", "spec.clusters[1].name", "\"BJ1\" must be lower-case"),
        (ACTIVE_ACTIVE, "subset: blue, weight: 95", "subset: blue, weight: 90", "spec.routes", "the weights add up to 95, not 100"),
        (ACTIVE_ACTIVE, "subset: blue, weight: 95", "subset: red, weight: 95", "spec.routes[0].subset", "undefined subset \"red\"; spec.subsets defines blue, green"),
        (ACTIVE_ACTIVE, "{cluster: bj1, subset: green", "{cluster: gz1, subset: green", "spec.routes[1].cluster", "gz1 is not in spec.clusters, so mode ActiveActive gives it no traffic"),
        (ACTIVE_ACTIVE, "{cluster: bj1, subset: green, weight: 5}", "{subset: blue, weight: 5}", "spec.routes[1]", "the same cluster and subset as spec.routes[0]"),
        (ACTIVE_ACTIVE, "timeout: 2s", "timeout: 2 parsecs", "spec.timeout", "\"2 parsecs\" is not a duration such as 250ms"),
        (ACTIVE_ACTIVE, "timeout: 2s", "timeout: 0s", "spec.timeout", "must be longer than 0"),
        (ACTIVE_ACTIVE, "perTryTimeout: 250ms", "perTryTimeout: soon", "spec.retries.perTryTimeout", "\"soon\" is not a duration"),
        (ACTIVE_ACTIVE, "interval: 10s", "interval: 10", "spec.outlierDetection.interval", "\"10\" is not a duration"),
        (ACTIVE_ACTIVE, "retryOn: \"5xx, reset\"", "retryOn: \"5xx, sometimes\"", "spec.retries.retryOn", "\"sometimes\" is not a retry condition"),
        (ACTIVE_ACTIVE, "maxEjectionPercent: 50", "maxEjectionPercent: 101", "spec.outlierDetection.maxEjectionPercent", "101: must be 0-100"),
        (ACTIVE_ACTIVE, "- {name: green, labels: {version: v2}}", "- {name: blue, labels: {version: v2}}", "spec.subsets[1].name", "duplicate subset \"blue\""),
        (ACTIVE_ACTIVE, "- {name: green, labels: {version: v2}}", "- {name: all, labels: {version: v2}}", "spec.subsets[1].name", "\"all\" is reserved"),
        (ACTIVE_ACTIVE, "- {name: green, labels: {version: v2}}", "- {name: ep-1, labels: {version: v2}}", "spec.subsets[1].name", "\"ep-1\" is reserved"),
        (FAIL_OVER, "callers: {clusters: [bj1]}", "callers: {clusters: []}", "spec.callers.clusters", "must list at least one cluster; omit spec.callers"),
        (FAIL_OVER, "callers: {clusters: [bj1]}", "callers: {clusters: [bj1, bj1]}", "spec.callers.clusters[1]", "duplicate cluster \"bj1\""),
        (FAIL_OVER, "service: checkout", "service: Checkout", "spec.service", "\"Checkout\" must be lower-case"),
        (FAIL_OVER, "mode: FailOver", "mode: FailOver\n  failoverPriority: [zone]", "spec.failoverPriority", "only with mode Locality: mode FailOver sets the clusters' priorities itself"),
        (LOCALITY, "from: us-west\n", "from: us-east\n", "spec.distribute[1].from", "us-east/* overlaps spec.distribute[0].from (us-east/us-east-1a/*)"),
        (LOCALITY, "\"us-east/us-east-1b/*\": 20", "\"us-east/us-east-1b/*\": 10", "spec.distribute[0].to", "the shares add up to 90, not 100"),
        (LOCALITY, "\"us-west/*\": 100", "\"us-west/*/x\": 100", "spec.distribute[1].to.us-west/*/x", "the wildcard '*' may appear once, as the last segment"),
        (LOCALITY, "distribute:", "failover: [{from: us-east, to: eu}]\n  distribute:", "spec.distribute", "cannot be combined with spec.failover"),
        (LOCALITY, "failoverPriority: [topology.kubernetes.io/region, topology.kubernetes.io/zone]\n  distribute:\n  - from: us-east/us-east-1a/*\n    to: {\"us-east/us-east-1a/*\": 80, \"us-east/us-east-1b/*\": 20}\n  - from: us-west\n    to: {\"us-west/*\": 100}\n", "failover: [{from: us-east, to: us-east}]\n", "spec.failover[0].to", "must differ from spec.failover[0].from"),
        (LOCALITY, "distribute:\n  - from: us-east/us-east-1a/*\n    to: {\"us-east/us-east-1a/*\": 80, \"us-east/us-east-1b/*\": 20}\n  - from: us-west\n    to: {\"us-west/*\": 100}\n", "failover: [{from: us-east, to: us-west}]\n", "spec.failoverPriority[0]", "cannot be used together with spec.failover"),
        (LOCALITY, "service: search", "service: search\n  clusters: [{name: a}]", "spec.clusters", "only with mode ActiveActive or FailOver"),
    ];
    for (policy, replace, with, field, reason) in cases {
        assert!(policy.contains(replace), "{replace}");
        let text = format!("# a comment\n---\n{}", policy.replace(replace, with));
        let (policies, errors) = parse(&text);
        assert_eq!(errors.len(), 1, "{with}: {errors:?}");
        assert!(policies.is_empty());
        let e = &errors[0];
        assert_eq!(e.file, Path::new(FILE), "{e}");
        assert_eq!((e.document, e.line), (Some(0), Some(3)), "{e}");
        let kind_and_name = policy.lines().nth(2).unwrap_or_default();
        let object = if kind_and_name.contains("namespace: shop") {
            let name = if policy == &FAIL_OVER {
                "checkout"
            } else {
                "cart"
            };
            format!("TrafficPolicy shop/{name}")
        } else {
            "TrafficPolicy default/search".to_owned()
        };
        assert_eq!(e.object.as_deref(), Some(object.as_str()), "{e}");
        assert_eq!(e.field.as_deref(), Some(*field), "{e}");
        assert!(e.reason.contains(reason), "{with}: {e}");
        assert!(e.to_string().starts_with(&format!("{FILE}:")), "{e}");
    }
    // A typo: unknown fields are refused, at their own line.
    let (_, errors) = parse(&FAIL_OVER.replace("mode: FailOver", "mod: FailOver"));
    let e = &errors[0];
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(7), Some("spec.mod")),
        "{e}"
    );
    assert!(e.reason.contains("unknown field `mod`"), "{e}");
}

#[test]
fn two_policies_for_the_same_service_and_callers_are_refused() {
    let second = |callers: &str| {
        FAIL_OVER
            .replace("name: checkout, namespace", "name: checkout-2, namespace")
            .replace("callers: {clusters: [bj1]}", callers)
    };
    for (callers, overlap) in [
        ("callers: {clusters: [sh1, bj1]}", "callers in cluster bj1"),
        ("callers: {clusters: [bj1]}", "callers in cluster bj1"),
    ] {
        let text = format!("{FAIL_OVER}---\n{}", second(callers));
        let (policies, errors) = parse(&text);
        assert_eq!(policies.len(), 2);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.document, e.line), (Some(1), Some(12)), "{e}");
        assert_eq!(e.object.as_deref(), Some("TrafficPolicy shop/checkout-2"));
        assert_eq!(e.field.as_deref(), Some("spec.callers"));
        assert!(
            e.reason
                .contains(&format!("for service shop/checkout and {overlap}")),
            "{e}"
        );
        assert!(
            e.reason
                .contains("TrafficPolicy shop/checkout at policies/shop.yaml (document 0, line 1)"),
            "{e}"
        );
    }
    // Every caller twice.
    let everyone = FAIL_OVER.replace("  callers: {clusters: [bj1]}\n", "");
    let text = format!(
        "{everyone}---\n{}",
        everyone.replace("name: checkout,", "name: again,")
    );
    let (_, errors) = parse(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].reason.contains("and every caller"),
        "{}",
        errors[0]
    );
    // Disjoint callers, a default beside specific callers, another service: all fine.
    let text = format!(
        "{FAIL_OVER}---\n{}---\n{}---\n{}",
        second("callers: {clusters: [sh1]}"),
        everyone.replace("name: checkout,", "name: everyone,"),
        everyone
            .replace("name: checkout,", "name: cart,")
            .replace("service: checkout", "service: cart"),
    );
    let (policies, errors) = parse(&text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(policies.len(), 4);
    // The same name twice.
    let (_, errors) = parse(&format!(
        "{FAIL_OVER}---\n{}",
        FAIL_OVER.replace("[bj1]", "[sh1]")
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field.as_deref(), Some("metadata.name"));
    assert!(errors[0]
        .reason
        .starts_with("duplicate object; first declared at policies/shop.yaml"));
}

/// Gateways route a subset's SNI for every caller alike: one name, one set of labels.
#[test]
fn a_subset_name_selects_the_same_labels_in_every_policy_of_a_service() {
    let for_sh1 = ACTIVE_ACTIVE.replace(
        "  mode: ActiveActive",
        "  callers: {clusters: [sh1]}\n  mode: ActiveActive",
    );
    let other = |labels: &str| {
        ACTIVE_ACTIVE
            .replace("name: cart, namespace", "name: cart-bj1, namespace")
            .replace(
                "  mode: ActiveActive",
                "  callers: {clusters: [bj1]}\n  mode: ActiveActive",
            )
            .replace("{name: green, labels: {version: v2}}", labels)
    };
    let (_, errors) = parse(&format!(
        "{for_sh1}---\n{}",
        other("{name: green, labels: {version: v2}}")
    ));
    assert!(errors.is_empty(), "{errors:?}");
    let (_, errors) = parse(&format!(
        "{for_sh1}---\n{}",
        other("{name: green, labels: {version: v3}}")
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        e.object.as_deref(),
        Some("TrafficPolicy shop/cart-bj1"),
        "{e}"
    );
    assert_eq!(e.field.as_deref(), Some("spec.subsets[1].labels"), "{e}");
    assert!(
        e.reason.contains(
            "subset \"green\" of service shop/cart has other labels in TrafficPolicy shop/cart"
        ),
        "{e}"
    );
}

#[test]
fn other_kinds_do_not_belong_in_policies() {
    let (_, errors) =
        parse("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("kind"));
    assert!(
        errors[0]
            .reason
            .contains("only TrafficPolicy objects belong in policies/"),
        "{}",
        errors[0]
    );
    let (_, errors) = parse(&FAIL_OVER.replace("causeway.io/v1alpha1", "causeway.io/v1"));
    assert_eq!(errors[0].field.as_deref(), Some("apiVersion"));
}
