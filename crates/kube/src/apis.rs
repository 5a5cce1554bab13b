//! Which optional APIs a member cluster serves: the MCS API (v1beta1 preferred, else
//! v1alpha1), the About API, and Causeway's AuthorizationPolicy CRD.

use std::time::Duration;

use causeway_model::ClusterId;
use kube::discovery::ApiResource;
use serde::Serialize;

use crate::error::bounded;
use crate::KubeError;

/// The MCS API group.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The About API group.
pub const ABOUT_GROUP: &str = "about.k8s.io";
/// Causeway's API group.
pub const CAUSEWAY_GROUP: &str = "causeway.io";

/// The optional APIs of one cluster, as its discovery documents list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServedApis {
    /// MCS version used for ServiceExports and ServiceImports, if the cluster serves one.
    pub mcs_version: Option<String>,
    /// About API version, if served.
    pub about_version: Option<String>,
    /// Whether `authorizationpolicies.causeway.io` is served.
    pub authorization_policies: bool,
}

impl ServedApis {
    /// The ServiceExport resource, when MCS is served.
    pub fn service_export(&self) -> Option<ApiResource> {
        self.mcs_version
            .as_deref()
            .map(|v| resource(MCS_GROUP, v, "ServiceExport", "serviceexports"))
    }

    /// The ServiceImport resource, when MCS is served.
    pub fn service_import(&self) -> Option<ApiResource> {
        self.mcs_version
            .as_deref()
            .map(|v| resource(MCS_GROUP, v, "ServiceImport", "serviceimports"))
    }

    /// The ClusterProperty resource, when the About API is served.
    pub fn cluster_property(&self) -> Option<ApiResource> {
        self.about_version
            .as_deref()
            .map(|v| resource(ABOUT_GROUP, v, "ClusterProperty", "clusterproperties"))
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// Asks the cluster which of the optional APIs it serves.
pub async fn discover(
    cluster: &ClusterId,
    client: &kube::Client,
    limit: Duration,
) -> Result<ServedApis, KubeError> {
    let groups = bounded(
        cluster,
        "listing API groups",
        limit,
        client.list_api_groups(),
    )
    .await?;
    let mut served = ServedApis::default();
    for group in &groups.groups {
        let versions: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
        let pick = |preferred: &[&'static str]| {
            preferred
                .iter()
                .find(|p| versions.contains(p))
                .map(|p| (*p).to_owned())
        };
        match group.name.as_str() {
            MCS_GROUP => served.mcs_version = pick(&["v1beta1", "v1alpha1"]),
            ABOUT_GROUP => served.about_version = pick(&["v1beta1", "v1alpha1"]),
            CAUSEWAY_GROUP if versions.contains(&"v1alpha1") => {
                let list = bounded(
                    cluster,
                    "listing causeway.io/v1alpha1 resources",
                    limit,
                    client.list_api_group_resources("causeway.io/v1alpha1"),
                )
                .await?;
                served.authorization_policies = list
                    .resources
                    .iter()
                    .any(|r| r.name == "authorizationpolicies");
            }
            _ => {}
        }
    }
    Ok(served)
}
