//! What the sidecar tests share: a mesh PKI written to PEM files, plaintext backends that
//! record what reaches them, HTTP and TLS clients, snapshot builders, running proxies and a
//! metrics reader. Every wait is bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use causeway_proxy::config::{SharedSnapshot, Snapshot};
use causeway_proxy::credentials::MeshCredentials;
use causeway_proxy::metrics::Metrics;
use causeway_proxy::worker::{WorkerLimits, Workers};
use causeway_trust::verify::SpiffeServerVerifier;
use causeway_xds::dataplane::http::{
    Codec, HttpManagerConfig, PathMatch, RetryBackoff, RetryConfig, RetryOn, RouteAction,
    RouteConfig, RouteTable, VirtualHostConfig,
};
use causeway_xds::dataplane::tls::{
    CertificateSource, DownstreamTlsConfig, SanKind, SanMatch, StringMatch, TlsVersion,
    TrustedCaSource, UpstreamTlsConfig,
};
use causeway_xds::dataplane::{
    ChainAction, ChainMatch, ClusterConfig, EndpointConfig, EndpointSource, FilterChainConfig,
    LbPolicy, ListenerConfig, LoadAssignmentConfig, LocalityEndpoints, TcpProxyConfig,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod clients;
mod config;
mod pki;
mod servers;

pub use clients::*;
pub use config::*;
pub use pki::*;
pub use servers::*;

pub const TD: &str = "causeway.test";

/// How long any single exchange of a test may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);
