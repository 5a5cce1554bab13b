//! A cluster's `health_checks` → [`HealthCheckConfig`]: Envoy's connect-only TCP health check
//! (through the cluster's transport socket, so with upstream TLS a check is a whole mTLS
//! handshake with the endpoint — behind a gateway, with the pod itself), one interval, and the
//! thresholds that mark an endpoint unhealthy and healthy again. This is how a dead gateway or
//! network is found without waiting for requests to fail.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;

use super::check::{duration, unsupported, At};
use super::ConfigError;

/// Active health checking of a cluster's endpoints (those that do not opt out).
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Between the end of one check and the start of the next.
    pub interval: Duration,
    /// A check that has not connected (and finished the handshake) by then failed.
    pub timeout: Duration,
    /// Failed checks in a row that mark an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that mark it healthy again.
    pub healthy_threshold: u32,
    /// Close the pooled connections of an endpoint marked unhealthy (Envoy's
    /// `close_connections_on_host_health_failure`): requests on a dead path are reset and
    /// retried instead of waiting.
    pub close_connections_on_failure: bool,
}

/// The cluster's `health_checks` (at most one, a connect-only TCP check) and
/// `close_connections_on_host_health_failure`.
pub(super) fn health_check(
    at: &At<'_>,
    checks: &[core::HealthCheck],
    close_connections: bool,
) -> Result<Option<HealthCheckConfig>, ConfigError> {
    let check = match checks {
        [] if close_connections => {
            return Err(at
                .field("close_connections_on_host_health_failure")
                .error("set without health_checks"))
        }
        [] => return Ok(None),
        [one] => one,
        _ => {
            return Err(at
                .item("health_checks", 1)
                .error("the Causeway proxy runs one health check per cluster"))
        }
    };
    let at = at.item("health_checks", 0);
    #[allow(deprecated)]
    #[rustfmt::skip]
    let core::HealthCheck {
        timeout, interval, unhealthy_threshold, healthy_threshold, reuse_connection,
        no_traffic_interval, health_checker,
        initial_jitter, interval_jitter, interval_jitter_percent, alt_port,
        no_traffic_healthy_interval, unhealthy_interval, unhealthy_edge_interval,
        healthy_edge_interval, event_log_path, event_logger, event_service,
        always_log_health_check_failures, always_log_health_check_success, tls_options,
        transport_socket_match_criteria,
    } = check;
    #[rustfmt::skip]
    unsupported!(
        at,
        initial_jitter, interval_jitter, interval_jitter_percent, alt_port,
        no_traffic_healthy_interval, unhealthy_interval, unhealthy_edge_interval,
        healthy_edge_interval, event_log_path, event_logger, event_service,
        always_log_health_check_failures, always_log_health_check_success, tls_options,
        transport_socket_match_criteria,
    );
    let required = |field: &str, d: &Option<envoy_types::pb::google::protobuf::Duration>| {
        let Some(d) = d else {
            return Err(at.field(field).error("missing"));
        };
        let d = duration(&at.field(field), d)?;
        if d.is_zero() {
            return Err(at.field(field).error("must be longer than 0"));
        }
        Ok(d)
    };
    let interval = required("interval", interval)?;
    let timeout = required("timeout", timeout)?;
    // Envoy checks idle clusters every `no_traffic_interval` (60 s unless set); the Causeway
    // proxy checks at one interval, so the two must agree.
    if required("no_traffic_interval", no_traffic_interval)? != interval {
        return Err(at.field("no_traffic_interval").error(
            "must equal interval: the Causeway proxy checks at one interval, traffic or not",
        ));
    }
    // A connect-only check opens a connection per check; keeping it would check nothing.
    if reuse_connection.as_ref().is_none_or(|r| r.value) {
        return Err(at
            .field("reuse_connection")
            .error("must be false: each check is a new connection"));
    }
    let threshold =
        |field: &str, v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| match v
            .as_ref()
            .map(|v| v.value)
        {
            Some(n) if n >= 1 => Ok(n),
            Some(_) => Err(at.field(field).error("must be at least 1")),
            None => Err(at.field(field).error("missing")),
        };
    let unhealthy_threshold = threshold("unhealthy_threshold", unhealthy_threshold)?;
    let healthy_threshold = threshold("healthy_threshold", healthy_threshold)?;
    use core::health_check::HealthChecker as H;
    match health_checker {
        Some(H::TcpHealthCheck(tcp)) => {
            let core::health_check::TcpHealthCheck {
                send,
                receive,
                proxy_protocol_config,
            } = tcp;
            let at = at.field("tcp_health_check");
            unsupported!(at, send, receive, proxy_protocol_config);
        }
        Some(H::HttpHealthCheck(_)) => {
            return Err(at
                .field("http_health_check")
                .error("not supported by the Causeway proxy (a connect-only tcp_health_check)"))
        }
        Some(H::GrpcHealthCheck(_)) => {
            return Err(at
                .field("grpc_health_check")
                .error("not supported by the Causeway proxy (a connect-only tcp_health_check)"))
        }
        Some(H::CustomHealthCheck(_)) => {
            return Err(at
                .field("custom_health_check")
                .error("not supported by the Causeway proxy (a connect-only tcp_health_check)"))
        }
        None => return Err(at.field("health_checker").error("missing")),
    }
    Ok(Some(HealthCheckConfig {
        interval,
        timeout,
        unhealthy_threshold,
        healthy_threshold,
        close_connections_on_failure: close_connections,
    }))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};

    use super::*;

    fn ms(n: i32) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: 0,
            nanos: n * 1_000_000,
        })
    }

    fn check() -> core::HealthCheck {
        core::HealthCheck {
            timeout: ms(200),
            interval: ms(300),
            no_traffic_interval: ms(300),
            unhealthy_threshold: Some(UInt32Value { value: 2 }),
            healthy_threshold: Some(UInt32Value { value: 3 }),
            reuse_connection: Some(BoolValue { value: false }),
            health_checker: Some(core::health_check::HealthChecker::TcpHealthCheck(
                Default::default(),
            )),
            ..Default::default()
        }
    }

    fn convert(
        checks: &[core::HealthCheck],
        close: bool,
    ) -> Result<Option<HealthCheckConfig>, ConfigError> {
        health_check(&At::resource("Cluster c"), checks, close)
    }

    #[test]
    fn a_connect_only_tcp_check_is_honoured() {
        let got = convert(&[check()], true)
            .expect("accepted")
            .expect("a check");
        assert_eq!(
            got,
            HealthCheckConfig {
                interval: Duration::from_millis(300),
                timeout: Duration::from_millis(200),
                unhealthy_threshold: 2,
                healthy_threshold: 3,
                close_connections_on_failure: true,
            }
        );
        assert_eq!(convert(&[], false).expect("none"), None);
    }

    #[test]
    fn what_is_not_honoured_is_refused_with_the_field() {
        let mut http = check();
        http.health_checker = Some(core::health_check::HealthChecker::HttpHealthCheck(
            Default::default(),
        ));
        let mut idle = check();
        idle.no_traffic_interval = Some(PbDuration {
            seconds: 60,
            nanos: 0,
        });
        let mut reuse = check();
        reuse.reuse_connection = None;
        let mut jitter = check();
        jitter.interval_jitter = ms(10);
        let mut zero = check();
        zero.unhealthy_threshold = Some(UInt32Value { value: 0 });
        let mut payload = check();
        payload.health_checker = Some(core::health_check::HealthChecker::TcpHealthCheck(
            core::health_check::TcpHealthCheck {
                send: Some(core::health_check::Payload::default()),
                ..Default::default()
            },
        ));
        let cases = [
            (vec![http], false, "health_checks[0].http_health_check"),
            (vec![idle], false, "health_checks[0].no_traffic_interval"),
            (vec![reuse], false, "health_checks[0].reuse_connection"),
            (vec![jitter], false, "health_checks[0].interval_jitter"),
            (vec![zero], false, "health_checks[0].unhealthy_threshold"),
            (
                vec![payload],
                false,
                "health_checks[0].tcp_health_check.send",
            ),
            (vec![check(), check()], false, "health_checks[1]"),
            (vec![], true, "close_connections_on_host_health_failure"),
        ];
        for (checks, close, field) in cases {
            let e = convert(&checks, close).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.resource, "Cluster c");
        }
    }
}
