//! Helpers of the conversion: where in a resource we are, refusing fields the proxy does not
//! honour, and the small shared messages (durations, addresses, metadata).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as pb;

use super::ConfigError;

/// A position inside one resource, for error messages.
#[derive(Clone)]
pub(super) struct At<'a> {
    resource: &'a str,
    path: String,
}

impl<'a> At<'a> {
    pub(super) fn resource(resource: &'a str) -> Self {
        At {
            resource,
            path: String::new(),
        }
    }

    /// The field `name` below this position.
    pub(super) fn field(&self, name: &str) -> At<'a> {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        At {
            resource: self.resource,
            path,
        }
    }

    /// Element `i` of the list field `name`.
    pub(super) fn item(&self, name: &str, i: usize) -> At<'a> {
        self.field(&format!("{name}[{i}]"))
    }

    pub(super) fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            resource: self.resource.to_owned(),
            field: if self.path.is_empty() {
                "(resource)".to_owned()
            } else {
                self.path.clone()
            },
            reason: reason.into(),
        }
    }

    /// Refuses field `name` unless it has its default (unset) value.
    pub(super) fn unsupported<T: Default + PartialEq>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), ConfigError> {
        if *value == T::default() {
            Ok(())
        } else {
            Err(self
                .field(name)
                .error("not supported by the Causeway proxy (leave it unset)"))
        }
    }
}

/// Refuses every listed field that is set: `unsupported!(at, field, field, …)`.
macro_rules! unsupported {
    ($at:expr, $($field:ident),+ $(,)?) => {
        $( $at.unsupported(stringify!($field), $field)?; )+
    };
}
pub(super) use unsupported;

pub(super) fn duration(at: &At<'_>, d: &pb::Duration) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(at.error(format!(
            "not a valid duration ({}s {}ns)",
            d.seconds, d.nanos
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration with Envoy's default when unset.
pub(super) fn duration_or(
    at: &At<'_>,
    d: &Option<pb::Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    d.as_ref().map_or(Ok(default), |d| duration(at, d))
}

/// A TCP socket address with a numeric IP and port (no names, pipes or internal addresses).
pub(super) fn socket_address(
    at: &At<'_>,
    a: &Option<core::Address>,
) -> Result<SocketAddr, ConfigError> {
    use core::address::Address as Kind;
    let Some(core::Address {
        address: Some(kind),
    }) = a
    else {
        return Err(at.error("missing"));
    };
    let Kind::SocketAddress(core::SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    }) = kind
    else {
        return Err(
            at.error("only socket addresses are supported (no pipes or internal addresses)")
        );
    };
    if *protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(at.field("protocol").error("only TCP is supported"));
    }
    unsupported!(at, resolver_name, ipv4_compat, network_namespace_filepath);
    let ip: IpAddr = address.parse().map_err(|_| {
        at.field("address")
            .error(format!("{address:?} is not an IP address"))
    })?;
    let port = match port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| at.field("port_value").error(format!("{p} is not a port")))?,
        Some(core::socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(at
                .field("named_port")
                .error("named ports are not supported"))
        }
        None => return Err(at.field("port_value").error("missing")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// A string field of Causeway's filter metadata (`filter_metadata["causeway"][key]`); other
/// metadata is for Envoy's own filters and carries nothing the proxy acts on.
pub(super) fn causeway_metadata(m: &Option<core::Metadata>, key: &str) -> Option<String> {
    let fields = &m.as_ref()?.filter_metadata.get("causeway")?.fields;
    match fields.get(key)?.kind.as_ref()? {
        pb::value::Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A `UInt32Value` with a default.
pub(super) fn u32_or(v: &Option<pb::UInt32Value>, default: u32) -> u32 {
    v.as_ref().map_or(default, |v| v.value)
}
