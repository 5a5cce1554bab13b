use std::collections::BTreeMap;

use serde_json::Value;

use super::*;

/// A sidecar's `/endpoints`: echo has a local pod and two pods in beta behind beta's gateway,
/// one of them ejected; greeter has carried no requests. Carries a field this command does
/// not know and an endpoint with only an address, as a newer proxy might.
const CAUSEWAY: &str = r#"{"clusters":[
 {"name":"outbound|8080||echo.demo.svc.cluster.local","service":"demo/echo",
  "loadBalancer":"peak-ewma","futureField":{"x":1},"endpoints":[
  {"address":"10.0.0.7:8080","sni":null,"pod":null,"cluster":"alpha","workload":"echo-0",
   "priority":0,"weight":1,"healthy":true,"ejected":false,"ejectedRemainingMs":null,
   "ewmaMs":0.84,"pending":1,"requests":120,"failures":0},
  {"address":"127.0.0.1:15443",
   "sni":"outbound_.8080_.ep-0123456789abcdef_.echo.demo.svc.cluster.local",
   "pod":"10.1.0.5:8080","cluster":"beta","workload":"echo-1","priority":1,"weight":1,
   "healthy":true,"ejected":true,"ejectedRemainingMs":1234,"ewmaMs":1.52,"pending":0,
   "requests":75,"failures":3},
  {"address":"127.0.0.1:15443",
   "sni":"outbound_.8080_.ep-fedcba9876543210_.echo.demo.svc.cluster.local",
   "pod":"10.1.0.6:8080","cluster":"beta","workload":"echo-2","priority":1,"weight":1,
   "healthy":false,"ejected":false,"ejectedRemainingMs":null,"ewmaMs":null,"pending":0,
   "requests":5,"failures":0}]},
 {"name":"outbound|9090||greeter.demo.svc.cluster.local","service":null,
  "loadBalancer":"round-robin","endpoints":[{"address":"10.0.0.9:9090"}]}]}"#;

/// Envoy's `/clusters?format=json` (proto3 JSON: zero values left out, 64-bit counts as
/// strings or numbers by version).
const ENVOY: &str = r#"{"cluster_statuses":[
 {"name":"outbound|8080||echo.demo.svc.cluster.local","added_via_api":true,"host_statuses":[
  {"address":{"socket_address":{"address":"10.0.0.7","port_value":8080}},
   "stats":[{"name":"cx_connect_fail"},{"value":"90","name":"rq_total"},
            {"value":"1","name":"rq_active","type":"GAUGE"},{"name":"rq_error"}],
   "health_status":{"eds_health_status":"HEALTHY"},"weight":1,"locality":{}},
  {"address":{"socket_address":{"address":"127.0.0.1","port_value":15443}},
   "stats":[{"value":30,"name":"rq_total"},{"value":"4","name":"rq_error"}],
   "health_status":{"eds_health_status":"HEALTHY","failed_outlier_check":true},
   "weight":1,"priority":1},
  {"address":{"socket_address":{"address":"10.0.0.8","port_value":8080}},
   "health_status":{"eds_health_status":"UNHEALTHY"},"weight":1}]},
 {"name":"xds-grpc","host_statuses":[
  {"address":{"socket_address":{"address":"127.0.0.1","port_value":15011}},
   "health_status":{"eds_health_status":"HEALTHY"},"weight":1}]}]}"#;

/// The rows of one cluster's table, each as column header -> cell, cut at the header's
/// column positions (so the columns must line up).
fn table(text: &str, cluster: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("cluster {cluster} ")));
    assert!(lines.next().is_some(), "no block for {cluster}:\n{text}");
    let header = lines.next().expect("a header line");
    let starts: Vec<(usize, &str)> = HEADER
        .iter()
        .map(|h| (header.find(h).expect("header column"), *h))
        .collect();
    lines
        .take_while(|l| !l.is_empty())
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(i, (start, name))| {
                    let end = starts.get(i + 1).map_or(line.len(), |(s, _)| *s);
                    let cell = line.get(*start..end.min(line.len())).unwrap_or("");
                    ((*name).to_owned(), cell.trim().to_owned())
                })
                .collect()
        })
        .collect()
}

fn causeway() -> Vec<Cluster> {
    parse_causeway(CAUSEWAY.as_bytes()).expect("sample parses")
}

#[test]
fn the_table_shows_where_each_pod_is_reached_and_its_state() {
    let clusters = causeway();
    let text = render(&report(DataPlane::Causeway, &clusters, None));
    assert!(
        text.contains(
            "cluster outbound|8080||echo.demo.svc.cluster.local  service demo/echo  balancer \
             peak-ewma"
        ),
        "{text}"
    );
    let rows = table(&text, "outbound|8080||echo.demo.svc.cluster.local");
    let cells = |col: &str| -> Vec<&str> { rows.iter().map(|r| r[col].as_str()).collect() };
    assert_eq!(
        cells("ENDPOINT"),
        ["10.0.0.7:8080", "10.1.0.5:8080", "10.1.0.6:8080"],
        "pods by their own address:\n{text}"
    );
    assert_eq!(cells("VIA"), ["-", "127.0.0.1:15443", "127.0.0.1:15443"]);
    assert_eq!(cells("CLUSTER"), ["alpha", "beta", "beta"]);
    assert_eq!(cells("WORKLOAD"), ["echo-0", "echo-1", "echo-2"]);
    assert_eq!(cells("PRIORITY"), ["0", "1", "1"]);
    assert_eq!(cells("EWMA ms"), ["0.8", "1.5", "-"]);
    assert_eq!(cells("PENDING"), ["1", "0", "0"]);
    assert_eq!(cells("REQUESTS"), ["120", "75", "5"]);
    // 120, 75 and 5 of 200 requests.
    assert_eq!(cells("SHARE"), ["60.0%", "37.5%", "2.5%"]);
    let total: f64 = cells("SHARE")
        .iter()
        .map(|s| {
            s.trim_end_matches('%')
                .parse::<f64>()
                .expect("a percentage")
        })
        .sum();
    assert!((total - 100.0).abs() < 1e-9, "shares sum to {total}");
    // 1234 ms left is shown as 2 s, not rounded down to 1 s.
    assert_eq!(cells("STATE"), ["ok", "ejected (2s left)", "unhealthy"]);
}

#[test]
fn a_cluster_without_requests_has_no_share_and_defaults_fill_absent_fields() {
    let clusters = causeway();
    let text = render(&report(DataPlane::Causeway, &clusters, None));
    assert!(
        text.contains(
            "cluster outbound|9090||greeter.demo.svc.cluster.local  service -  balancer \
             round-robin"
        ),
        "{text}"
    );
    let rows = table(&text, "outbound|9090||greeter.demo.svc.cluster.local");
    assert_eq!(rows.len(), 1, "{text}");
    let row = &rows[0];
    assert_eq!(row["ENDPOINT"], "10.0.0.9:9090");
    assert_eq!(row["VIA"], "-");
    assert_eq!(row["EWMA ms"], "-");
    assert_eq!(row["SHARE"], "-");
    assert_eq!(
        row["STATE"], "ok",
        "absent `healthy` is not read as unhealthy"
    );
}

#[test]
fn json_carries_every_field_with_via_and_share() {
    let clusters = causeway();
    let json = serde_json::to_value(report(DataPlane::Causeway, &clusters, None)).expect("json");
    assert_eq!(json["dataPlane"], "causeway");
    let echo = &json["clusters"][0];
    assert_eq!(echo["name"], "outbound|8080||echo.demo.svc.cluster.local");
    assert_eq!(echo["service"], "demo/echo");
    assert_eq!(echo["loadBalancer"], "peak-ewma");
    assert_eq!(echo["requests"], 200);
    let eps = echo["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 3);

    let ejected = &eps[1];
    assert_eq!(ejected["pod"], "10.1.0.5:8080");
    assert_eq!(ejected["address"], "127.0.0.1:15443");
    assert_eq!(ejected["via"], "127.0.0.1:15443");
    assert_eq!(ejected["cluster"], "beta");
    assert_eq!(ejected["workload"], "echo-1");
    assert_eq!(
        ejected["sni"],
        "outbound_.8080_.ep-0123456789abcdef_.echo.demo.svc.cluster.local"
    );
    assert_eq!(ejected["ejected"], true);
    assert_eq!(ejected["ejectedRemainingMs"], 1234);
    assert_eq!(ejected["ewmaMs"], 1.52);
    assert_eq!(ejected["failures"], 3);
    assert_eq!(ejected["priority"], 1);
    assert_eq!(ejected["weight"], 1);

    assert_eq!(
        eps[0]["via"],
        Value::Null,
        "a local pod is reached directly"
    );
    assert_eq!(eps[2]["ewmaMs"], Value::Null, "no response yet");
    assert_eq!(eps[2]["healthy"], false);

    let shares: Vec<f64> = eps
        .iter()
        .map(|e| e["share"].as_f64().expect("share"))
        .collect();
    for (got, want) in shares.iter().zip([0.6, 0.375, 0.025]) {
        assert!((got - want).abs() < 1e-9, "share {got}, want {want}");
    }
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!(json["clusters"][1]["endpoints"][0]["share"], 0.0);
}

#[test]
fn the_cluster_filter_keeps_names_containing_it() {
    let clusters = causeway();
    let text = render(&report(DataPlane::Causeway, &clusters, Some("greeter")));
    assert!(text.contains("greeter.demo.svc.cluster.local"), "{text}");
    assert!(!text.contains("echo"), "{text}");
    let json =
        serde_json::to_value(report(DataPlane::Causeway, &clusters, Some("|8080|"))).expect("json");
    let names: Vec<&str> = json["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["outbound|8080||echo.demo.svc.cluster.local"]);
    let none = render(&report(DataPlane::Causeway, &clusters, Some("nothing")));
    assert_eq!(none, "no cluster name contains `nothing`\n");
}

#[test]
fn envoy_clusters_show_the_same_columns_without_ewma() {
    let clusters = envoy::parse(ENVOY.as_bytes()).expect("envoy sample parses");
    let text = render(&report(DataPlane::Envoy, &clusters, Some("echo")));
    assert!(text.starts_with("Envoy proxy"), "{text}");
    assert!(!text.contains("xds-grpc"), "{text}");
    assert!(
        text.contains("cluster outbound|8080||echo.demo.svc.cluster.local  service -  balancer -"),
        "{text}"
    );
    let rows = table(&text, "outbound|8080||echo.demo.svc.cluster.local");
    let cells = |col: &str| -> Vec<&str> { rows.iter().map(|r| r[col].as_str()).collect() };
    assert_eq!(
        cells("ENDPOINT"),
        ["10.0.0.7:8080", "127.0.0.1:15443", "10.0.0.8:8080"]
    );
    assert_eq!(cells("VIA"), ["-", "-", "-"]);
    assert_eq!(cells("PRIORITY"), ["0", "1", "0"]);
    assert_eq!(cells("EWMA ms"), ["-", "-", "-"]);
    assert_eq!(cells("PENDING"), ["1", "0", "0"]);
    assert_eq!(cells("REQUESTS"), ["90", "30", "0"]);
    // 90 and 30 of 120 requests.
    assert_eq!(cells("SHARE"), ["75.0%", "25.0%", "0.0%"]);
    assert_eq!(cells("STATE"), ["ok", "ejected", "unhealthy"]);

    let json =
        serde_json::to_value(report(DataPlane::Envoy, &clusters, Some("echo"))).expect("json");
    assert_eq!(json["dataPlane"], "envoy");
    let ejected = &json["clusters"][0]["endpoints"][1];
    assert_eq!(ejected["failures"], 4);
    assert_eq!(ejected["ejected"], true);
    assert_eq!(ejected["ejectedRemainingMs"], Value::Null);
    assert_eq!(ejected["ewmaMs"], Value::Null);
}

#[test]
fn an_envoy_stat_that_is_not_a_count_is_refused() {
    let bad = r#"{"cluster_statuses":[{"name":"c","host_statuses":[
        {"stats":[{"name":"rq_total","value":"many"}]}]}]}"#;
    let err = envoy::parse(bad.as_bytes()).expect_err("not a count");
    assert!(format!("{err:#}").contains("\"many\""), "{err:#}");
}

/// Serves `routes` (path -> body; a query must match too when given) on a loopback port.
async fn admin(routes: &'static [(&'static str, &'static str)]) -> SocketAddr {
    use axum::http::{StatusCode, Uri};
    let app = axum::Router::new().fallback(move |uri: Uri| async move {
        let asked = uri.path_and_query().map_or("", |p| p.as_str()).to_owned();
        match routes.iter().find(|(path, _)| *path == asked) {
            Some((_, body)) => (StatusCode::OK, *body),
            None => (StatusCode::NOT_FOUND, "not found"),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_proxy_without_endpoints_is_read_as_envoy() {
    let causeway_admin = admin(&[("/endpoints", CAUSEWAY)]).await;
    let (plane, clusters) = fetch(causeway_admin).await.expect("causeway");
    assert_eq!(plane, DataPlane::Causeway);
    assert_eq!(clusters.len(), 2);

    let envoy_admin = admin(&[("/clusters?format=json", ENVOY)]).await;
    let (plane, clusters) = fetch(envoy_admin).await.expect("envoy");
    assert_eq!(plane, DataPlane::Envoy);
    assert_eq!(clusters[0].endpoints[0].requests, 90);

    let neither = admin(&[]).await;
    let err = fetch(neither).await.expect_err("neither");
    assert!(format!("{err:#}").contains("serves neither"), "{err:#}");
}
