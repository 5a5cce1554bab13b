//! Resources in a canonical form: decoded, maps in key order, nested `Any`s that hold maps
//! decoded the same way. Two builds of equal content print equally; any other difference shows.

use std::collections::BTreeMap;

use causeway_xds::resources::{Resources, TypeUrl};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3::Rbac as RbacRules;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetRbac;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// Metadata with its maps in key order.
fn canon_metadata(m: Option<Metadata>) -> String {
    let Some(m) = m else {
        return "-".into();
    };
    let sorted: BTreeMap<String, BTreeMap<String, String>> = m
        .filter_metadata
        .into_iter()
        .map(|(k, s)| {
            let fields = s
                .fields
                .into_iter()
                .map(|(f, v)| (f, format!("{v:?}")))
                .collect();
            (k, fields)
        })
        .collect();
    format!(
        "{sorted:?} typed={:?}",
        sorted_keys(m.typed_filter_metadata)
    )
}

fn sorted_keys<V: std::fmt::Debug>(
    m: std::collections::HashMap<String, V>,
) -> BTreeMap<String, String> {
    m.into_iter().map(|(k, v)| (k, format!("{v:?}"))).collect()
}

/// RBAC rules with their policies in name order.
fn canon_rules(rules: Option<RbacRules>) -> String {
    let Some(mut r) = rules else {
        return "-".into();
    };
    let policies = sorted_keys(std::mem::take(&mut r.policies));
    format!("{r:?} policies={policies:?}")
}

/// An `Any` in canonical form: decoded and canonicalised when its type holds maps, else its
/// bytes (deterministic without maps).
fn canon_any(any: &Any) -> String {
    let url = any.type_url.as_str();
    let decoded = if url.ends_with("filters.http.rbac.v3.RBAC") {
        HttpRbac::decode(&*any.value).ok().map(|mut r| {
            let rules = canon_rules(r.rules.take());
            format!("{r:?} rules={rules}")
        })
    } else if url.ends_with("filters.network.rbac.v3.RBAC") {
        NetRbac::decode(&*any.value).ok().map(|mut r| {
            let rules = canon_rules(r.rules.take());
            format!("{r:?} rules={rules}")
        })
    } else if url.ends_with("HttpConnectionManager") {
        HttpConnectionManager::decode(&*any.value)
            .ok()
            .map(|mut m| {
                for f in &mut m.http_filters {
                    if let Some(http_filter::ConfigType::TypedConfig(a)) = &mut f.config_type {
                        a.value = canon_any(a).into_bytes();
                    }
                }
                format!("{m:?}")
            })
    } else {
        None
    };
    format!(
        "{url} {}",
        decoded.unwrap_or_else(|| format!("{:?}", any.value))
    )
}

/// A resource's content, independent of map order.
pub fn canonical(t: TypeUrl, any: &Any) -> String {
    match t {
        TypeUrl::Cluster => {
            let mut c = Cluster::decode(&*any.value).expect("cluster");
            let meta = canon_metadata(c.metadata.take());
            // A static cluster's inline endpoints carry metadata too.
            let mut inline = Vec::new();
            for group in c
                .load_assignment
                .iter_mut()
                .flat_map(|la| &mut la.endpoints)
            {
                for e in &mut group.lb_endpoints {
                    inline.push(canon_metadata(e.metadata.take()));
                }
            }
            format!("{c:?} meta={meta} inline={inline:?}")
        }
        TypeUrl::ClusterLoadAssignment => {
            let mut cla = ClusterLoadAssignment::decode(&*any.value).expect("cla");
            let mut metas = Vec::new();
            for group in &mut cla.endpoints {
                for e in &mut group.lb_endpoints {
                    metas.push(canon_metadata(e.metadata.take()));
                }
            }
            format!("{cla:?} meta={metas:?}")
        }
        TypeUrl::Listener => {
            let mut l = Listener::decode(&*any.value).expect("listener");
            let meta = canon_metadata(l.metadata.take());
            for chain in &mut l.filter_chains {
                for f in &mut chain.filters {
                    if let Some(filter::ConfigType::TypedConfig(a)) = &mut f.config_type {
                        a.value = canon_any(a).into_bytes();
                    }
                }
            }
            format!("{l:?} meta={meta}")
        }
    }
}

/// (type, name) → (version, canonical content).
pub fn contents(r: &Resources) -> BTreeMap<(TypeUrl, String), (String, String)> {
    r.by_type
        .iter()
        .flat_map(|(t, m)| {
            m.iter().map(move |(name, res)| {
                (
                    (*t, name.clone()),
                    (res.version.clone(), canonical(*t, &res.body)),
                )
            })
        })
        .collect()
}
