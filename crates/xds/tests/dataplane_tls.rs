//! The data plane's side of mesh mTLS: the TLS contexts the control plane builds for sidecars
//! (upstream on every outbound cluster, downstream on every inbound filter chain) convert into
//! the Causeway proxy's TLS configuration, static bootstraps' PEM files too, and whatever the
//! proxy does not honour is refused naming the field.

mod common;

use causeway_xds::dataplane::tls::{
    downstream_tls_at, upstream_tls_at, CertificateSource, DownstreamTlsConfig, SanKind, SanMatch,
    StringMatch, TlsVersion, TrustedCaSource, UpstreamTlsConfig,
};
use causeway_xds::resources::{Resources, TypeUrl};
use common::{example, index_of};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use prost::Message;

const TD: &str = "causeway.local";
const ECHO: &str = "outbound|80||echo.demo.svc.cluster.local";

/// A sidecar's resources, the node made as `tests/build.rs` makes it.
fn sidecar(cluster: &str, workload: &str) -> Resources {
    common::sidecar_of(&index_of(&example()), cluster, workload)
}

fn all<M: Message + Default>(r: &Resources, t: TypeUrl) -> Vec<M> {
    common::decoded(r, t)
}

const SIDECARS: [(&str, &str); 2] = [("alpha", "client"), ("gamma", "greeter-gamma-1")];

fn sds(name: &str) -> CertificateSource {
    CertificateSource::Sds { name: name.into() }
}

fn root() -> TrustedCaSource {
    TrustedCaSource::Sds {
        name: "ROOTCA".into(),
    }
}

#[test]
fn every_sidecar_upstream_converts_with_mesh_sni_sds_secrets_and_exact_spiffe_ids() {
    for (cluster, workload) in SIDECARS {
        let r = sidecar(cluster, workload);
        let mut converted = 0;
        for c in all::<Cluster>(&r, TypeUrl::Cluster) {
            let Some(ts) = &c.transport_socket else {
                assert!(c.name.starts_with("inbound|"), "{} without mTLS", c.name);
                continue;
            };
            let cfg = upstream_tls_at(&format!("Cluster {}", c.name), "transport_socket", ts)
                .unwrap_or_else(|e| panic!("{workload}: {e}"));
            // outbound|<port>||<fqdn> → outbound_.<port>_._.<fqdn>
            let rest = c.name.strip_prefix("outbound|").expect("outbound cluster");
            let (port, fqdn) = rest.split_once("||").expect("name");
            assert_eq!(cfg.sni, format!("outbound_.{port}_._.{fqdn}"));
            assert_eq!(cfg.client_certificate, sds("default"));
            assert_eq!(cfg.trusted_ca, root());
            assert_eq!(
                (cfg.min_version, cfg.max_version),
                (TlsVersion::Tls13, TlsVersion::Tls13)
            );
            assert!(!cfg.expected_sans.is_empty(), "{cfg:?}");
            for san in &cfg.expected_sans {
                assert_eq!(san.kind, SanKind::Uri);
                let StringMatch::Exact(uri) = &san.matcher else {
                    panic!("not exact: {san:?}")
                };
                assert!(uri.starts_with(&format!("spiffe://{TD}/")), "{uri}");
            }
            assert_eq!(cfg.alpn, ["istio-peer-exchange", "istio"], "{}", c.name);
            converted += 1;
        }
        assert!(converted >= 2, "{workload}: {converted} upstreams");
    }
    let echo = echo_upstream();
    assert_eq!(echo.sni, "outbound_.80_._.echo.demo.svc.cluster.local");
    assert!(
        echo.expected_sans.contains(&SanMatch {
            kind: SanKind::Uri,
            matcher: StringMatch::Exact(format!("spiffe://{TD}/ns/demo/sa/echo")),
        }),
        "{echo:?}"
    );
}

fn echo_cluster() -> Cluster {
    all::<Cluster>(&sidecar("alpha", "client"), TypeUrl::Cluster)
        .into_iter()
        .find(|c| c.name == ECHO)
        .expect("echo cluster")
}

fn echo_upstream() -> UpstreamTlsConfig {
    let c = echo_cluster();
    upstream_tls_at(
        "Cluster echo",
        "transport_socket",
        c.transport_socket.as_ref().expect("mTLS"),
    )
    .expect("accepted")
}

#[test]
fn every_sidecar_inbound_chain_converts_requiring_a_client_certificate_of_the_trust_domain() {
    for (cluster, workload) in SIDECARS {
        let r = sidecar(cluster, workload);
        let mut converted = 0;
        for l in all::<Listener>(&r, TypeUrl::Listener) {
            let inbound = l.name.starts_with("inbound|");
            for (i, chain) in l.filter_chains.iter().enumerate() {
                let Some(ts) = &chain.transport_socket else {
                    assert!(!inbound, "{} without mTLS", l.name);
                    continue;
                };
                assert!(inbound, "{}: TLS on an outbound listener", l.name);
                let cfg = downstream_tls_at(
                    &format!("Listener {}", l.name),
                    &format!("filter_chains[{i}].transport_socket"),
                    ts,
                )
                .unwrap_or_else(|e| panic!("{workload}: {e}"));
                assert_eq!(
                    cfg,
                    DownstreamTlsConfig {
                        server_certificate: sds("default"),
                        trusted_ca: root(),
                        require_client_certificate: true,
                        accepted_sans: vec![SanMatch {
                            kind: SanKind::Uri,
                            matcher: StringMatch::Prefix(format!("spiffe://{TD}/")),
                        }],
                        alpn: ["istio-peer-exchange", "istio", "h2", "http/1.1"]
                            .map(String::from)
                            .to_vec(),
                        min_version: TlsVersion::Tls13,
                        max_version: TlsVersion::Tls13,
                    }
                );
                assert!(cfg.accepted_sans[0]
                    .matcher
                    .matches(&format!("spiffe://{TD}/ns/demo/sa/client")));
                assert!(!cfg.accepted_sans[0]
                    .matcher
                    .matches("spiffe://other.domain/ns/demo/sa/client"));
                converted += 1;
            }
        }
        assert!(converted >= 1, "{workload}: no inbound chain");
    }
}

fn file(path: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.into())),
        ..Default::default()
    })
}

fn uri_san(pattern: MatchPattern) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        ..Default::default()
    }
}

/// A static bootstrap's inbound context: PEM files, no SDS (as in `tests/inbound_refusals.rs`).
fn static_downstream() -> tls::DownstreamTlsContext {
    tls::DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_params: Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: file("/etc/causeway/server-chain.pem"),
                private_key: file("/etc/causeway/server-key.pem"),
                ..Default::default()
            }],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: file("/etc/causeway/root.pem"),
                        match_typed_subject_alt_names: vec![uri_san(MatchPattern::Prefix(
                            format!("spiffe://{TD}/"),
                        ))],
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn socket(any: envoy_types::pb::google::protobuf::Any) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

const LISTENER: &str = "Listener inbound|127.0.0.1:8080";
const CHAIN: &str = "filter_chains[0].transport_socket";

fn down(ctx: tls::DownstreamTlsContext) -> Result<DownstreamTlsConfig, String> {
    downstream_tls_at(LISTENER, CHAIN, &socket(pack_any(ctx))).map_err(|e| {
        assert_eq!(e.resource, LISTENER);
        e.field
    })
}

#[test]
fn static_bootstrap_certificates_and_roots_come_from_files() {
    let cfg = down(static_downstream()).expect("accepted");
    assert_eq!(
        cfg.server_certificate,
        CertificateSource::Files {
            chain_path: "/etc/causeway/server-chain.pem".into(),
            key_path: "/etc/causeway/server-key.pem".into(),
        }
    );
    assert_eq!(
        cfg.trusted_ca,
        TrustedCaSource::File {
            path: "/etc/causeway/root.pem".into()
        }
    );
    assert!(cfg.require_client_certificate);
    // Envoy's default maximum for a server is TLS 1.3.
    assert_eq!(cfg.max_version, TlsVersion::Tls13);
    assert!(cfg.alpn.is_empty());

    // Inline key material is refused, and never quoted.
    let mut ctx = static_downstream();
    if let Some(c) = &mut ctx.common_tls_context {
        c.tls_certificates[0].private_key = Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(
                "-----BEGIN PRIVATE KEY----- secret".into(),
            )),
            ..Default::default()
        });
    }
    let e = downstream_tls_at(LISTENER, CHAIN, &socket(pack_any(ctx))).expect_err("inline");
    assert_eq!(
        e.field,
        format!(
            "{CHAIN}.typed_config.common_tls_context.tls_certificates[0].private_key.inline_string"
        )
    );
    assert!(!e.to_string().contains("secret"), "{e}");
}

/// The echo cluster's upstream context, to change and convert again.
fn echo_context() -> tls::UpstreamTlsContext {
    let ts = echo_cluster().transport_socket.expect("mTLS");
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!("typed config")
    };
    tls::UpstreamTlsContext::decode(&*any.value).expect("tls")
}

fn up(ctx: tls::UpstreamTlsContext) -> Result<UpstreamTlsConfig, String> {
    upstream_tls_at(
        &format!("Cluster {ECHO}"),
        "transport_socket",
        &socket(pack_any(ctx)),
    )
    .map_err(|e| {
        assert_eq!(e.resource, format!("Cluster {ECHO}"));
        assert!(e.reason.len() > 5, "{e}");
        e.field
    })
}

const COMMON: &str = "transport_socket.typed_config.common_tls_context";

fn combined(
    ctx: &mut tls::UpstreamTlsContext,
) -> &mut tls::common_tls_context::CombinedCertificateValidationContext {
    match ctx
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    {
        Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(c)) => c,
        other => panic!("combined validation context: {other:?}"),
    }
}

fn sans(ctx: &mut tls::UpstreamTlsContext) -> &mut Vec<tls::SubjectAltNameMatcher> {
    &mut combined(ctx)
        .default_validation_context
        .as_mut()
        .expect("default validation context")
        .match_typed_subject_alt_names
}

#[test]
fn fields_the_proxy_does_not_honour_are_refused_naming_the_field() {
    assert!(up(echo_context()).is_ok());

    let mut ctx = echo_context();
    ctx.allow_renegotiation = true;
    assert_eq!(
        up(ctx),
        Err("transport_socket.typed_config.allow_renegotiation".into())
    );

    let mut ctx = static_downstream();
    ctx.session_ticket_keys_type = Some(
        tls::downstream_tls_context::SessionTicketKeysType::SessionTicketKeys(
            tls::TlsSessionTicketKeys::default(),
        ),
    );
    assert_eq!(
        down(ctx),
        Err(format!("{CHAIN}.typed_config.session_ticket_keys"))
    );

    let mut ts = echo_cluster().transport_socket.expect("mTLS");
    ts.name = "envoy.transport_sockets.alts".into();
    let e = upstream_tls_at("Cluster echo", "transport_socket", &ts).expect_err("alts");
    assert_eq!(e.field, "transport_socket.name");
    assert!(e.reason.contains("envoy.transport_sockets.alts"), "{e}");

    let mut ctx = echo_context();
    sans(&mut ctx)[0] = uri_san(MatchPattern::Contains("/sa/echo".into()));
    assert_eq!(
        up(ctx),
        Err(format!(
            "{COMMON}.combined_validation_context.default_validation_context\
             .match_typed_subject_alt_names[0].matcher.contains"
        ))
    );

    // A downstream context where an upstream one belongs.
    let ts = socket(pack_any(static_downstream()));
    let e = upstream_tls_at("Cluster echo", "transport_socket", &ts).expect_err("wrong type");
    assert_eq!(e.field, "transport_socket.typed_config");
    assert!(e.reason.contains("DownstreamTlsContext"), "{e}");
}

#[test]
fn upstream_identities_are_never_widened_and_tls_is_1_3_only() {
    let mut ctx = echo_context();
    sans(&mut ctx)[0] = uri_san(MatchPattern::Prefix(format!("spiffe://{TD}/")));
    assert_eq!(
        up(ctx),
        Err(format!(
            "{COMMON}.combined_validation_context.default_validation_context\
             .match_typed_subject_alt_names[0].matcher.prefix"
        ))
    );

    let mut ctx = echo_context();
    sans(&mut ctx).clear();
    assert_eq!(
        up(ctx),
        Err(format!(
            "{COMMON}.combined_validation_context.default_validation_context\
             .match_typed_subject_alt_names"
        ))
    );

    let mut ctx = echo_context();
    if let Some(p) = ctx
        .common_tls_context
        .as_mut()
        .and_then(|c| c.tls_params.as_mut())
    {
        p.tls_minimum_protocol_version = tls::tls_parameters::TlsProtocol::TlSv12 as i32;
    }
    assert_eq!(
        up(ctx),
        Err(format!("{COMMON}.tls_params.tls_minimum_protocol_version"))
    );

    // Unset, an upstream's maximum is Envoy's TLS 1.2 for clients.
    let mut ctx = echo_context();
    if let Some(p) = ctx
        .common_tls_context
        .as_mut()
        .and_then(|c| c.tls_params.as_mut())
    {
        p.tls_maximum_protocol_version = tls::tls_parameters::TlsProtocol::TlsAuto as i32;
    }
    assert_eq!(
        up(ctx),
        Err(format!("{COMMON}.tls_params.tls_maximum_protocol_version"))
    );

    // No TLS parameters at all: Envoy's minimum is TLS 1.2.
    let mut ctx = echo_context();
    if let Some(c) = ctx.common_tls_context.as_mut() {
        c.tls_params = None;
    }
    assert_eq!(
        up(ctx),
        Err(format!("{COMMON}.tls_params.tls_minimum_protocol_version"))
    );
}

#[test]
fn secrets_come_from_the_agent_only() {
    // Over ADS: the control plane serves no secrets.
    let mut ctx = echo_context();
    if let Some(s) = combined(&mut ctx)
        .validation_context_sds_secret_config
        .as_mut()
        .and_then(|s| s.sds_config.as_mut())
    {
        s.config_source_specifier = Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        ));
    }
    assert_eq!(
        up(ctx),
        Err(format!(
            "{COMMON}.combined_validation_context.validation_context_sds_secret_config\
             .sds_config.ads"
        ))
    );

    // A secret the agent does not serve.
    let mut ctx = echo_context();
    if let Some(c) = ctx.common_tls_context.as_mut() {
        c.tls_certificate_sds_secret_configs[0].name = "file-cert:/etc/certs/cert.pem".into();
    }
    assert_eq!(
        up(ctx),
        Err(format!(
            "{COMMON}.tls_certificate_sds_secret_configs[0].name"
        ))
    );

    // Another cluster than the agent's.
    let mut ctx = echo_context();
    if let Some(core::config_source::ConfigSourceSpecifier::ApiConfigSource(api)) = ctx
        .common_tls_context
        .as_mut()
        .and_then(|c| c.tls_certificate_sds_secret_configs[0].sds_config.as_mut())
        .and_then(|s| s.config_source_specifier.as_mut())
    {
        if let Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
            &mut api.grpc_services[0].target_specifier
        {
            g.cluster_name = "xds-grpc".into();
        }
    }
    assert_eq!(
        up(ctx),
        Err(format!(
            "{COMMON}.tls_certificate_sds_secret_configs[0].sds_config.api_config_source\
             .grpc_services[0].envoy_grpc.cluster_name"
        ))
    );
}
