//! Which optional APIs a member cluster serves: the MCS API (v1beta1 preferred, else
//! v1alpha1), the About API, and Causeway's AuthorizationPolicy and TrafficPolicy CRDs.

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
    /// Whether `trafficpolicies.causeway.io` is served.
    pub traffic_policies: bool,
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

/// Whether `group/version` serves every one of `resources` (a group version may hold other
/// APIs: `multicluster.x-k8s.io/v1alpha1` also has ClusterProfile, without MCS).
async fn serves(
    cluster: &ClusterId,
    client: &kube::Client,
    group_version: &str,
    resources: &[&str],
    limit: Duration,
) -> Result<bool, KubeError> {
    let action = format!("listing {group_version} resources");
    let list = bounded(
        cluster,
        &action,
        limit,
        client.list_api_group_resources(group_version),
    )
    .await?;
    Ok(resources
        .iter()
        .all(|r| list.resources.iter().any(|have| have.name == *r)))
}

/// The first of `preferred` versions of `group` (among `versions`) serving all `resources`.
async fn pick(
    cluster: &ClusterId,
    client: &kube::Client,
    group: &str,
    versions: &[&str],
    preferred: &[&str],
    resources: &[&str],
    limit: Duration,
) -> Result<Option<String>, KubeError> {
    for version in preferred.iter().filter(|p| versions.contains(p)) {
        if serves(
            cluster,
            client,
            &format!("{group}/{version}"),
            resources,
            limit,
        )
        .await?
        {
            return Ok(Some((*version).to_owned()));
        }
    }
    Ok(None)
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
    let newest_first = ["v1beta1", "v1alpha1"];
    for group in &groups.groups {
        let versions: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
        match group.name.as_str() {
            MCS_GROUP => {
                let kinds = ["serviceexports", "serviceimports"];
                served.mcs_version = pick(
                    cluster,
                    client,
                    MCS_GROUP,
                    &versions,
                    &newest_first,
                    &kinds,
                    limit,
                )
                .await?;
            }
            ABOUT_GROUP => {
                let kinds = ["clusterproperties"];
                served.about_version = pick(
                    cluster,
                    client,
                    ABOUT_GROUP,
                    &versions,
                    &newest_first,
                    &kinds,
                    limit,
                )
                .await?;
            }
            CAUSEWAY_GROUP => {
                // Each CRD is installed on its own (an older `causeway crds` had only one).
                for (kind, flag) in [
                    ("authorizationpolicies", &mut served.authorization_policies),
                    ("trafficpolicies", &mut served.traffic_policies),
                ] {
                    *flag = pick(
                        cluster,
                        client,
                        CAUSEWAY_GROUP,
                        &versions,
                        &["v1alpha1"],
                        &[kind],
                        limit,
                    )
                    .await?
                    .is_some();
                }
            }
            _ => {}
        }
    }
    Ok(served)
}
