use std::fmt;

use serde::Serialize;

/// Why a name is not a valid mesh identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than a DNS label allows.
    #[error("{0:?} is longer than 63 characters")]
    TooLong(String),
    /// The name has characters outside `[a-z0-9-]` or starts/ends with `-`.
    #[error("{0:?} must be lower-case letters, digits and '-', starting and ending with a letter or digit")]
    Invalid(String),
}

/// Checks that `name` is an RFC 1123 DNS label, the form Kubernetes uses for names and that we
/// use for cluster and network ids (they end up in SNI names and metric labels).
pub fn validate_dns_label(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::Empty);
    }
    if name.len() > 63 {
        return Err(IdError::TooLong(name.to_owned()));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(ok_char) || name.starts_with('-') || name.ends_with('-') {
        return Err(IdError::Invalid(name.to_owned()));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        /// (Shared text: every endpoint of a cluster carries its network and cluster, and a
        /// clone is a count, not a copy.)
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Builds the id after checking it is a DNS label.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_dns_label(&value)?;
                Ok(Self(value.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A cluster's id: `metadata.name` of its `Cluster` object, unique in the mesh.
    ClusterId
);
string_id!(
    /// A network: a set of endpoints that reach each other directly.
    NetworkId
);

impl ClusterId {
    /// The DNS SAN naming this cluster in workload certificates: `<cluster>.cluster.<trust-domain>`.
    /// Only the cluster's own intermediate CA issues it, so authorization by caller cluster can
    /// rely on it; the CA (which writes it) and the xDS RBAC builder (which matches it) share it.
    pub fn certificate_san(&self, trust_domain: &str) -> String {
        format!("{}.cluster.{trust_domain}", self.0)
    }

    /// The cluster named by a certificate DNS SAN of `trust_domain`, if `san` is one.
    pub fn from_certificate_san(san: &str, trust_domain: &str) -> Option<Self> {
        let cluster = san.strip_suffix(trust_domain)?.strip_suffix(".cluster.")?;
        Self::new(cluster).ok()
    }
}

/// A service's identity across the mesh: services are merged by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceKey {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The in-cluster host name, `<name>.<namespace>.svc.cluster.local`, used in SNI and routes.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// The MCS clusterset host name, `<name>.<namespace>.svc.clusterset.local`.
    pub fn clusterset_fqdn(&self) -> String {
        format!("{}.{}.svc.clusterset.local", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(ClusterId::new("east-1").is_ok());
        assert_eq!(ClusterId::new(""), Err(IdError::Empty));
        assert!(matches!(ClusterId::new("East"), Err(IdError::Invalid(_))));
        assert!(matches!(NetworkId::new("-a"), Err(IdError::Invalid(_))));
        // Nothing that could walk a path: the CA directory and file names use cluster ids.
        for id in ["a/b", "..", "a..b", "../root", ".", "a.b", "a\\b"] {
            assert!(
                matches!(ClusterId::new(id), Err(IdError::Invalid(_))),
                "{id}"
            );
        }
        assert!(matches!(
            NetworkId::new("a".repeat(64)),
            Err(IdError::TooLong(_))
        ));
    }

    #[test]
    fn certificate_san_round_trip() {
        let c = ClusterId::new("alpha").expect("id");
        assert_eq!(c.certificate_san("td.local"), "alpha.cluster.td.local");
        assert_eq!(
            ClusterId::from_certificate_san("alpha.cluster.td.local", "td.local"),
            Some(c)
        );
        assert_eq!(
            ClusterId::from_certificate_san("alpha.cluster.other", "td.local"),
            None
        );
        assert_eq!(
            ClusterId::from_certificate_san("alpha.td.local", "td.local"),
            None
        );
    }

    #[test]
    fn service_hosts() {
        let k = ServiceKey::new("shop", "cart");
        assert_eq!(k.fqdn(), "cart.shop.svc.cluster.local");
        assert_eq!(k.clusterset_fqdn(), "cart.shop.svc.clusterset.local");
        assert_eq!(k.to_string(), "shop/cart");
    }
}
