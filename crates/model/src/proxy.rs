use std::fmt;

use serde::Serialize;

use crate::ClusterId;

/// What a proxy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyRole {
    /// Beside one workload.
    #[default]
    Sidecar,
    /// A cluster's east-west gateway.
    Gateway,
}

/// Who a proxy is: the input of its view, besides the mesh index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyIdentity {
    /// Cluster it runs in.
    pub cluster: ClusterId,
    /// Namespace of its workload.
    pub namespace: String,
    /// Workload name (a WorkloadEntry name in the mesh directory).
    pub workload: String,
    /// Sidecar or gateway.
    pub role: ProxyRole,
}

/// Why a SPIFFE ID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Not `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[error("{0:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// Trust domain.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl SpiffeId {
    /// Builds an id from its parts.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses the URI form.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        let err = || SpiffeIdError::Shape(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(err)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Self::new(*td, *ns, *sa))
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_round_trip() {
        let id = SpiffeId::parse("spiffe://mesh.local/ns/shop/sa/cart").expect("valid");
        assert_eq!(id, SpiffeId::new("mesh.local", "shop", "cart"));
        assert_eq!(id.to_string(), "spiffe://mesh.local/ns/shop/sa/cart");
        for bad in [
            "http://x/ns/a/sa/b",
            "spiffe://x/ns/a",
            "spiffe://x/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://x/ns/a/sa/b/c",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
