//! `causeway link`: adds a Kubernetes cluster to the mesh, or updates its entry, in
//! `mesh.yaml` (the step `linkerd multicluster link` or `istioctl create-remote-secret` is in
//! other meshes).
//!
//! Nothing is written until the cluster has been checked with the kubeconfig the control plane
//! will use: its API server answers `/version`, and a SelfSubjectAccessReview for every
//! permission of [`causeway_kube::rbac::REQUIRED_ACCESS`] is allowed. `mesh.yaml` is then edited
//! as a stream of `---` documents: only the `Cluster` document of that cluster is
//! (re-)serialised, every other document keeps its text and comments. The result is loaded with
//! the registry's own loader before it atomically replaces the file, so a failed link never
//! breaks `mesh.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use causeway_kube::apis::{self, ServedApis};
use causeway_kube::client::client_config;
use causeway_kube::rbac::{
    AccessRequirement, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_ROLE, REQUIRED_ACCESS,
};
use causeway_kube::{KubeError, KubeconfigFile};
use causeway_model::{ClusterId, KubernetesSource, Locality, NetworkId};
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use yaml_serde::{Mapping, Value};

/// The manifest that grants [`REQUIRED_ACCESS`].
const CLUSTERROLE_MANIFEST: &str = "deploy/kubernetes/clusterrole.yaml";
/// `apiVersion` of Causeway's own kinds.
const CAUSEWAY_API: &str = "causeway.io/v1alpha1";

/// Flags of `causeway link`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Cluster id (a DNS label): `metadata.name` of its `Cluster` entry in mesh.yaml.
    #[arg(long, value_parser = parse_cluster)]
    pub name: ClusterId,
    /// Network of the cluster's endpoints.
    #[arg(long, value_parser = parse_network)]
    pub network: NetworkId,
    /// Default locality of its endpoints, REGION/ZONE[/SUBZONE]. Required for a new entry;
    /// kept from the existing entry when omitted.
    #[arg(long)]
    pub locality: Option<Locality>,
    /// Kubeconfig with the control plane's credentials for the cluster. An absolute path is
    /// stored as given; a relative one (to the current directory) is stored relative to the
    /// mesh directory when it lies inside it, else absolute.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Kubeconfig context to use (default: the file's current context).
    #[arg(long)]
    pub context: Option<String>,
    /// East-west gateway of the cluster, ADDR:PORT; repeatable. When given, replaces the
    /// entry's gateways; when omitted, an existing entry keeps its own.
    #[arg(long = "gateway", value_name = "ADDR:PORT")]
    pub gateways: Vec<SocketAddr>,
    /// Withdraw the cluster's endpoints once its API server has been unreachable this long
    /// (e.g. 5m); when omitted, an existing entry keeps its own setting.
    #[arg(long, value_parser = parse_ttl)]
    pub stale_endpoint_ttl: Option<String>,
    /// The mesh directory (its mesh.yaml must exist).
    #[arg(long, env = "CAUSEWAY_MESH_DIR")]
    pub mesh_dir: PathBuf,
    /// Time limit for each request to the API server, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_seconds: u64,
}

fn parse_cluster(s: &str) -> Result<ClusterId, String> {
    ClusterId::new(s).map_err(|e| format!("not a cluster id: {e}"))
}

fn parse_network(s: &str) -> Result<NetworkId, String> {
    NetworkId::new(s).map_err(|e| format!("not a network id: {e}"))
}

fn parse_ttl(s: &str) -> Result<String, String> {
    humantime::parse_duration(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a duration such as 30s, 5m or 1h: {e}"))
}

/// Checks the cluster, then adds or updates its entry in `mesh.yaml`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    causeway_trust::install_crypto_provider();
    let cluster = &args.name;
    let mesh_file = args.mesh_dir.join("mesh.yaml");
    let original = std::fs::read_to_string(&mesh_file).with_context(|| {
        format!(
            "cannot read {} (causeway link adds clusters to an existing mesh directory)",
            mesh_file.display()
        )
    })?;
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    let entry = Entry {
        name: cluster.clone(),
        network: args.network.clone(),
        locality: args.locality.clone(),
        gateways: args.gateways.clone(),
        kubeconfig: stored_kubeconfig_path(&args.kubeconfig, &cwd, &args.mesh_dir),
        context: args.context.clone().filter(|c| !c.is_empty()),
        stale_endpoint_ttl: args.stale_endpoint_ttl.clone(),
    };
    // Edit first (no network needed), so a missing --locality fails before anything else.
    let edited = edit_mesh(&original, &entry)
        .with_context(|| format!("{}: Cluster {cluster}", mesh_file.display()))?;

    let read_path = cwd.join(&args.kubeconfig);
    let kubeconfig =
        KubeconfigFile::read(cluster, &read_path, entry.context.clone()).map_err(kube_error)?;
    warn_if_readable_by_others(&read_path);
    let limit = Duration::from_secs(args.timeout_seconds.max(1));
    let report = check_cluster(cluster, &kubeconfig, limit).await?;
    println!(
        "cluster {cluster}: API server {} answers (Kubernetes {})",
        report.url, report.version
    );
    println!(
        "cluster {cluster}: the credentials have all {} permissions the control plane needs",
        REQUIRED_ACCESS.len()
    );
    print_served_apis(cluster, &report.served);

    write_mesh_file(&args.mesh_dir, &original, &edited.text, &entry)?;
    let verb = match edited.action {
        Action::Added => "added",
        Action::Updated => "updated",
    };
    println!("{verb} Cluster {cluster} in {}:", mesh_file.display());
    print!("{}", edited.document);
    if edited.dropped_comments {
        eprintln!("note: comments inside the previous Cluster {cluster} document were not kept");
    }
    let ignored = args.mesh_dir.join("clusters").join(cluster.as_str());
    if ignored.is_dir() {
        eprintln!(
            "warning: {} is ignored now that cluster {cluster} is read from its API server",
            ignored.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How `mesh.yaml` refers to the kubeconfig: absolute paths as given; a path relative to the
/// current directory relative to the mesh directory when it lies inside it (the directory stays
/// movable), else absolute. The control plane resolves relative paths against the mesh
/// directory. Symlinks are not resolved, so a rotated kubeconfig behind a link is still found.
fn stored_kubeconfig_path(given: &Path, cwd: &Path, mesh_dir: &Path) -> PathBuf {
    if given.is_absolute() {
        return given.to_path_buf();
    }
    let absolute = cwd.join(given);
    let mesh_dir = cwd.join(mesh_dir);
    let clean = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    };
    let (absolute, mesh_dir) = (clean(&absolute), clean(&mesh_dir));
    match absolute.strip_prefix(&mesh_dir) {
        Ok(inside) if !inside.as_os_str().is_empty() && !has_parent_dir(inside) => {
            inside.to_path_buf()
        }
        _ => absolute,
    }
}

fn has_parent_dir(p: &Path) -> bool {
    p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// A kubeconfig holds credentials: say so when others may read it.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} holds credentials but has mode {:o}; consider chmod 600",
                path.display(),
                mode & 0o777
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the cluster

/// What the check found out about a reachable cluster with sufficient credentials.
struct ClusterReport {
    /// The API server URL from the kubeconfig.
    url: String,
    /// Its `gitVersion`.
    version: String,
    /// Which optional APIs it serves.
    served: ServedApis,
}

/// Connects with `kubeconfig`, asks `/version`, reviews every required permission and
/// discovers the optional APIs. Fails when the server does not answer, when a review cannot be
/// made, or when any permission is denied (naming each).
async fn check_cluster(
    cluster: &ClusterId,
    kubeconfig: &KubeconfigFile,
    limit: Duration,
) -> anyhow::Result<ClusterReport> {
    let mut config = client_config(cluster, kubeconfig)
        .await
        .map_err(kube_error)?;
    config.connect_timeout = Some(limit);
    config.read_timeout = Some(limit);
    config.write_timeout = Some(limit);
    let url = config.cluster_url.to_string();
    let url = url.trim_end_matches('/').to_owned();
    let client = kube::Client::try_from(config).with_context(|| {
        format!(
            "cluster {cluster}: cannot build a client from {}",
            kubeconfig.path.display()
        )
    })?;
    let info = match tokio::time::timeout(limit, client.apiserver_version()).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            return Err(api_error(e).context(format!(
                "cluster {cluster}: the API server at {url} did not answer GET /version; mesh.yaml was not changed"
            )))
        }
        Err(_) => bail!(
            "cluster {cluster}: the API server at {url} did not answer GET /version within {} s; mesh.yaml was not changed",
            limit.as_secs()
        ),
    };
    let denied = check_access(cluster, &client, &url, limit).await?;
    if !denied.is_empty() {
        bail!("{}", missing_access_message(cluster, &denied));
    }
    let served = apis::discover(cluster, &client, limit)
        .await
        .map_err(kube_error)
        .with_context(|| {
            format!("cluster {cluster}: cannot list the API groups it serves; mesh.yaml was not changed")
        })?;
    Ok(ClusterReport {
        url,
        version: info.git_version,
        served,
    })
}

/// One permission the API server said no to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Denied {
    /// The requirement.
    requirement: AccessRequirement,
    /// The authorizer's reason or evaluation error, when it gave one.
    reason: Option<String>,
}

/// The SelfSubjectAccessReview asking about `requirement` in every namespace.
fn access_review(requirement: &AccessRequirement) -> SelfSubjectAccessReview {
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(requirement.resource_attributes()),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    }
}

/// Reviews every requirement (concurrently); returns the denied ones in
/// [`REQUIRED_ACCESS`] order.
async fn check_access(
    cluster: &ClusterId,
    client: &kube::Client,
    url: &str,
    limit: Duration,
) -> anyhow::Result<Vec<Denied>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, requirement) in REQUIRED_ACCESS.iter().copied().enumerate() {
        let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        tasks.spawn(async move {
            let review = access_review(&requirement);
            let answer =
                tokio::time::timeout(limit, api.create(&PostParams::default(), &review)).await;
            (index, requirement, answer)
        });
    }
    let mut answers = Vec::with_capacity(REQUIRED_ACCESS.len());
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.context("an access review task failed")?);
    }
    answers.sort_by_key(|(index, _, _)| *index);
    let mut denied = Vec::new();
    let mut failed: Vec<(AccessRequirement, anyhow::Error)> = Vec::new();
    for (_, requirement, answer) in answers {
        match answer {
            Ok(Ok(review)) => {
                let status = review.status.unwrap_or_default();
                if !status.allowed {
                    let reason = [status.reason, status.evaluation_error]
                        .into_iter()
                        .flatten()
                        .filter(|r| !r.is_empty())
                        .collect::<Vec<_>>()
                        .join("; ");
                    denied.push(Denied {
                        requirement,
                        reason: (!reason.is_empty()).then_some(reason),
                    });
                }
            }
            Ok(Err(e)) => failed.push((requirement, review_failure(e))),
            Err(_) => failed.push((
                requirement,
                anyhow!("no answer within {} s", limit.as_secs()),
            )),
        }
    }
    if let Some((requirement, first)) = failed.into_iter().next() {
        return Err(first.context(format!(
            "cluster {cluster}: cannot check the credentials' permissions at {url} with a SelfSubjectAccessReview (asking about `{}`); mesh.yaml was not changed",
            short(&requirement)
        )));
    }
    Ok(denied)
}

/// A failed review request, with a hint for the usual causes.
fn review_failure(e: kube::Error) -> anyhow::Error {
    let hint = match &e {
        kube::Error::Api(status) if status.code == 401 => {
            Some("the API server does not accept the kubeconfig's credentials")
        }
        kube::Error::Api(status) if status.code == 403 => Some(
            "the credentials may not create selfsubjectaccessreviews.authorization.k8s.io (every authenticated user may, through system:basic-user, unless that was changed)",
        ),
        _ => None,
    };
    let e = api_error(e);
    match hint {
        Some(hint) => e.context(hint),
        None => e,
    }
}

/// A kube-rs error; an API server's `Status` as its message and code (kube-rs's own rendering
/// repeats the whole `Status` structure).
fn api_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(status) => anyhow!(
            "{} (HTTP {}{})",
            status.message,
            status.code,
            if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            }
        ),
        other => anyhow!("{}", error_chain(&other)),
    }
}

/// A Kubernetes registry error on one line (its message already names cluster and action).
fn kube_error(e: KubeError) -> anyhow::Error {
    match e {
        KubeError::Api {
            cluster,
            action,
            source,
        } => api_error(source).context(format!("cluster {cluster}: {action}")),
        other => anyhow!("{}", error_chain(&other)),
    }
}

/// An error and its sources on one line, without the repetitions of errors whose message
/// already ends with their source's (`client error (Connect): client error (Connect)`).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !last.ends_with(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        last = message;
        source = s.source();
    }
    out
}

/// `verb resource.group[/subresource]`, without the purpose.
fn short(requirement: &AccessRequirement) -> String {
    let full = requirement.to_string();
    match full.split_once(" (") {
        Some((head, _)) => head.to_owned(),
        None => full,
    }
}

/// Every denied permission, one a line, and how to grant them.
fn missing_access_message(cluster: &ClusterId, denied: &[Denied]) -> String {
    let mut message = format!(
        "cluster {cluster}: the kubeconfig's credentials lack {} of the {} permissions the control plane needs (cluster-wide):",
        denied.len(),
        REQUIRED_ACCESS.len()
    );
    for d in denied {
        message.push_str("\n  missing: ");
        message.push_str(&d.requirement.to_string());
        if let Some(reason) = &d.reason {
            message.push_str(&format!(" [{reason}]"));
        }
    }
    message.push_str(&format!(
        "\n{CLUSTERROLE_MANIFEST} grants exactly these: `kubectl apply -f {CLUSTERROLE_MANIFEST}` creates ClusterRole {CONTROL_PLANE_ROLE} bound to ServiceAccount {CONTROL_PLANE_NAMESPACE}/{CONTROL_PLANE_ROLE}; use a token of that ServiceAccount in the kubeconfig. mesh.yaml was not changed."
    ));
    message
}

fn print_served_apis(cluster: &ClusterId, served: &ServedApis) {
    match &served.mcs_version {
        Some(v) => println!("cluster {cluster}: serves the MCS API {}/{v}", apis::MCS_GROUP),
        None => eprintln!(
            "warning: cluster {cluster} serves no MCS API ({}: neither v1beta1 nor v1alpha1): its ServiceExports cannot be read, so none of its services is exported unless the mesh uses `discovery: sameness`, and no ServiceImports are written to it; install the MCS CRDs (sigs.k8s.io/mcs-api) to fix this",
            apis::MCS_GROUP
        ),
    }
    if served.authorization_policies {
        println!(
            "cluster {cluster}: serves authorizationpolicies.{}",
            apis::CAUSEWAY_GROUP
        );
    } else {
        eprintln!(
            "warning: cluster {cluster} does not serve authorizationpolicies.{}: no AuthorizationPolicy is read from it until `causeway crds | kubectl apply -f -` installs the CRD",
            apis::CAUSEWAY_GROUP
        );
    }
    if let Some(v) = &served.about_version {
        println!(
            "cluster {cluster}: serves the About API {}/{v} (its ClusterProperty cluster.clusterset.k8s.io must name {cluster})",
            apis::ABOUT_GROUP
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Editing mesh.yaml

/// The `Cluster` entry `causeway link` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: ClusterId,
    network: NetworkId,
    /// `None`: keep the existing entry's (required for a new one).
    locality: Option<Locality>,
    /// Empty: keep the existing entry's (none for a new one).
    gateways: Vec<SocketAddr>,
    /// As stored in `spec.kubernetes.kubeconfig`.
    kubeconfig: PathBuf,
    /// `None`: the kubeconfig's current context.
    context: Option<String>,
    /// `None`: keep the existing entry's (none for a new one).
    stale_endpoint_ttl: Option<String>,
}

/// Whether the entry was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Added,
    Updated,
}

/// `mesh.yaml` after the edit.
#[derive(Debug)]
struct Edited {
    /// The whole new file.
    text: String,
    /// The Cluster document as written.
    document: String,
    action: Action,
    /// The replaced document had comments between its fields (they are lost).
    dropped_comments: bool,
}

/// One document of a YAML stream, as byte ranges of the original text.
#[derive(Debug, Clone, Copy)]
struct Chunk<'a> {
    /// The `---` line (with its line break); empty for the first document.
    marker: &'a str,
    /// Everything up to the next marker.
    body: &'a str,
}

impl Chunk<'_> {
    /// Content after `---` on the marker line, unless it is only a comment.
    fn inline(&self) -> &str {
        let rest = self.marker.trim_end().get(3..).unwrap_or("").trim();
        if rest.starts_with('#') {
            ""
        } else {
            rest
        }
    }

    /// The document's YAML as the registry reads it.
    fn yaml(&self) -> String {
        let inline = self.inline();
        if inline.is_empty() {
            self.body.to_owned()
        } else {
            format!("{inline}\n{}", self.body)
        }
    }
}

/// A document separator, as the registry recognises it.
fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches('\n').trim_end_matches('\r');
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Splits `text` into documents; concatenating every chunk's marker and body gives `text`.
fn split_stream(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut marker = "";
    let mut body_start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_marker(line) {
            chunks.push(Chunk {
                marker,
                body: &text[body_start..offset],
            });
            marker = &text[offset..offset + line.len()];
            body_start = offset + line.len();
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        marker,
        body: &text[body_start..],
    });
    chunks
}

/// A blank line, a comment or a document end: text around a document's content.
fn is_trivia(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || t == "..."
}

/// `(leading, content, trailing)` of a body: comment and blank lines before and after the
/// content are kept when the document is replaced.
fn trim_trivia(body: &str) -> (&str, &str, &str) {
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let first = lines
        .iter()
        .position(|l| !is_trivia(l))
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|l| !is_trivia(l))
        .map_or(first, |i| i + 1)
        .max(first);
    let len = |ls: &[&str]| ls.iter().map(|l| l.len()).sum::<usize>();
    let (a, b) = (len(&lines[..first]), len(&lines[..last]));
    (&body[..a], &body[a..b], &body[b..])
}

/// The `Cluster` named `name` in a parsed document, if it is one.
fn is_cluster_named(doc: &Value, name: &ClusterId) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some("Cluster")
        && doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            == Some(name.as_str())
}

fn key(k: &str) -> Value {
    Value::String(k.to_owned())
}

/// The Cluster document for `entry`, starting from the existing one (its other fields and
/// their order kept) or a new one.
fn cluster_document(existing: Option<&Value>, entry: &Entry) -> anyhow::Result<Value> {
    let mut root = match existing {
        Some(Value::Mapping(m)) => m.clone(),
        _ => {
            let mut m = Mapping::new();
            m.insert(key("apiVersion"), key(CAUSEWAY_API));
            m.insert(key("kind"), key("Cluster"));
            let mut meta = Mapping::new();
            meta.insert(key("name"), key(entry.name.as_str()));
            m.insert(key("metadata"), Value::Mapping(meta));
            m
        }
    };
    let mut spec = match root.get("spec") {
        Some(Value::Mapping(s)) => s.clone(),
        _ => Mapping::new(),
    };
    spec.insert(key("network"), key(entry.network.as_str()));
    match &entry.locality {
        Some(l) => {
            spec.insert(key("locality"), key(&l.to_string()));
        }
        None if spec.contains_key("locality") => {}
        None => bail!("--locality REGION/ZONE is required for a new cluster entry"),
    }
    if !entry.gateways.is_empty() {
        let gateways = entry
            .gateways
            .iter()
            .map(|g| {
                let mut m = Mapping::new();
                m.insert(key("address"), key(&g.ip().to_string()));
                m.insert(key("port"), Value::Number(g.port().into()));
                Value::Mapping(m)
            })
            .collect();
        spec.insert(key("gateways"), Value::Sequence(gateways));
    }
    let path = entry.kubeconfig.to_str().ok_or_else(|| {
        anyhow!(
            "kubeconfig path {} is not UTF-8 and cannot be written to mesh.yaml",
            entry.kubeconfig.display()
        )
    })?;
    let mut kubernetes = Mapping::new();
    kubernetes.insert(key("kubeconfig"), key(path));
    if let Some(context) = &entry.context {
        kubernetes.insert(key("context"), key(context));
    }
    spec.insert(key("kubernetes"), Value::Mapping(kubernetes));
    if let Some(ttl) = &entry.stale_endpoint_ttl {
        spec.insert(key("staleEndpointTtl"), key(ttl));
    }
    root.insert(key("spec"), Value::Mapping(spec));
    Ok(Value::Mapping(root))
}

/// `text` with `entry`'s Cluster document added (at the end) or replaced (in place).
fn edit_mesh(text: &str, entry: &Entry) -> anyhow::Result<Edited> {
    let chunks = split_stream(text);
    let mut found: Option<(usize, Value)> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        // Documents that do not parse are left alone (the final load reports them).
        let Ok(doc) = yaml_serde::from_str::<Value>(&chunk.yaml()) else {
            continue;
        };
        if is_cluster_named(&doc, &entry.name) {
            if found.is_some() {
                bail!(
                    "mesh.yaml declares Cluster {} more than once; fix that first",
                    entry.name
                );
            }
            found = Some((i, doc));
        }
    }
    let document = yaml_serde::to_string(&cluster_document(found.as_ref().map(|(_, d)| d), entry)?)
        .context("cannot serialise the Cluster document")?;
    let Some((index, _)) = found else {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        // A stream that ends with `---` already opens an empty document for it.
        let open = chunks.last().is_some_and(|c| {
            !c.marker.is_empty() && c.body.trim().is_empty() && c.inline().is_empty()
        });
        if !open && !out.trim().is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&document);
        return Ok(Edited {
            text: out,
            document,
            action: Action::Added,
            dropped_comments: false,
        });
    };
    let mut out = String::with_capacity(text.len() + document.len());
    let mut dropped_comments = false;
    for (i, chunk) in chunks.iter().enumerate() {
        if i != index {
            out.push_str(chunk.marker);
            out.push_str(chunk.body);
            continue;
        }
        if chunk.inline().is_empty() {
            out.push_str(chunk.marker);
        } else {
            out.push_str("---\n");
        }
        let (leading, content, trailing) = trim_trivia(chunk.body);
        dropped_comments = content
            .lines()
            .any(|l| l.trim_start().starts_with('#') || l.contains(" #"));
        out.push_str(leading);
        out.push_str(&document);
        out.push_str(trailing);
    }
    Ok(Edited {
        text: out,
        document,
        action: Action::Updated,
        dropped_comments,
    })
}

/// Replaces `DIR/mesh.yaml` with `text` once it loads with the registry's loader and holds
/// `entry` as expected, and only if the file still reads `original`.
fn write_mesh_file(dir: &Path, original: &str, text: &str, entry: &Entry) -> anyhow::Result<()> {
    use std::io::Write;
    let target = dir.join("mesh.yaml");
    let staging = tempfile::Builder::new()
        .prefix(".causeway-link-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?;
    let staged = staging.path().join("mesh.yaml");
    let mut file = std::fs::File::create(&staged)
        .with_context(|| format!("cannot create {}", staged.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", staged.display()))?;
    drop(file);
    if let Ok(meta) = std::fs::metadata(&target) {
        std::fs::set_permissions(&staged, meta.permissions())
            .with_context(|| format!("cannot set the mode of {}", staged.display()))?;
    }
    let loaded = causeway_registry::load_mesh_file(staging.path()).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow!(
            "{} would not load after linking cluster {}, so it was not changed:\n{}",
            target.display(),
            entry.name,
            list.join("\n")
        )
    })?;
    let expected = KubernetesSource {
        kubeconfig: entry.kubeconfig.clone(),
        context: entry.context.clone(),
    };
    let linked = loaded.cluster(&entry.name);
    if linked.and_then(|c| c.kubernetes.as_ref()) != Some(&expected) {
        bail!(
            "{} would not hold cluster {} as linked after the edit ({linked:?}); it was not changed",
            target.display(),
            entry.name
        );
    }
    if let Some(networks) = &loaded.mesh.networks {
        if !networks.contains(&entry.network) {
            let names: Vec<&str> = networks.iter().map(NetworkId::as_str).collect();
            bail!(
                "network {} is not among the Mesh's spec.networks [{}] in {}; add it there first (mesh.yaml was not changed)",
                entry.network,
                names.join(", "),
                target.display()
            );
        }
    }
    let current = std::fs::read_to_string(&target)
        .with_context(|| format!("cannot read {}", target.display()))?;
    if current != original {
        bail!(
            "{} changed while causeway link ran; nothing was written, run it again",
            target.display()
        );
    }
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot replace {}", target.display()))?;
    // Make the rename durable; failing to is not worth failing the link for.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "\
# The demo mesh.
apiVersion: causeway.io/v1alpha1
kind: Mesh
metadata:
  name: demo
spec:
  trustDomain: causeway.local   # SPIFFE trust domain
  networks: [net-a, net-b]
---
# alpha: a host cluster
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata:
  name: alpha
spec:
  network: net-a
  locality: us-east/us-east-1a   # where the racks are
  gateways:
  - address: 127.1.255.1
    port: 15443
---
# beta comes next
apiVersion: causeway.io/v1alpha1
kind: Cluster
metadata: {name: beta}
spec:
  network: net-b
  locality: eu-west/eu-west-1a
  kubernetes:
    kubeconfig: /etc/beta.yaml
    context: old
  staleEndpointTtl: 10m
# the end
";

    fn entry(name: &str, network: &str, locality: Option<&str>) -> Entry {
        Entry {
            name: ClusterId::new(name).expect("id"),
            network: NetworkId::new(network).expect("id"),
            locality: locality.map(|l| l.parse().expect("locality")),
            gateways: Vec::new(),
            kubeconfig: PathBuf::from("kubeconfigs/c.yaml"),
            context: None,
            stale_endpoint_ttl: None,
        }
    }

    fn load(text: &str) -> causeway_model::MeshConfig {
        causeway_registry::parse_mesh_documents(Path::new("mesh.yaml"), text)
            .unwrap_or_else(|e| panic!("does not load: {e:?}\n{text}"))
    }

    /// The text of every document except the one of `name`, in order.
    fn others(text: &str, name: &str) -> Vec<String> {
        let id = ClusterId::new(name).expect("id");
        split_stream(text)
            .iter()
            .filter(|c| {
                yaml_serde::from_str::<Value>(&c.yaml())
                    .map_or(true, |d| !is_cluster_named(&d, &id))
            })
            .map(|c| format!("{}{}", c.marker, c.body))
            .collect()
    }

    #[test]
    fn splitting_keeps_every_byte() {
        for text in [
            MESH,
            "",
            "a: 1",
            "---\na: 1\n---\n",
            "--- # x\r\na: 1\r\n---\r\nb: 2",
        ] {
            let joined: String = split_stream(text)
                .iter()
                .map(|c| format!("{}{}", c.marker, c.body))
                .collect();
            assert_eq!(joined, text);
        }
        assert_eq!(split_stream(MESH).len(), 3);
        assert_eq!(split_stream("---\na: 1\n").len(), 2, "empty first document");
    }

    #[test]
    fn a_new_cluster_is_appended_and_the_rest_is_unchanged() {
        let mut e = entry("gamma", "net-b", Some("eu-west/eu-west-1b"));
        e.gateways = vec!["127.3.255.1:15443".parse().expect("addr")];
        e.context = Some("gamma-admin".into());
        e.stale_endpoint_ttl = Some("5m".into());
        let edited = edit_mesh(MESH, &e).expect("edit");
        assert_eq!(edited.action, Action::Added);
        assert!(edited.text.starts_with(MESH), "{}", edited.text);
        assert_eq!(
            edited.text[MESH.len()..],
            format!("---\n{}", edited.document)
        );
        let mesh = load(&edited.text);
        assert_eq!(mesh.clusters.len(), 3);
        let gamma = &mesh.clusters[2];
        assert_eq!(gamma.id.as_str(), "gamma");
        assert_eq!(gamma.network.as_str(), "net-b");
        assert_eq!(gamma.locality.to_string(), "eu-west/eu-west-1b");
        assert_eq!(gamma.gateways.len(), 1);
        assert_eq!(gamma.gateways[0].to_string(), "127.3.255.1:15443");
        assert_eq!(
            gamma.kubernetes,
            Some(KubernetesSource {
                kubeconfig: PathBuf::from("kubeconfigs/c.yaml"),
                context: Some("gamma-admin".into()),
            })
        );
        assert_eq!(gamma.stale_endpoint_ttl, Some(Duration::from_secs(300)));
        // Fields in the usual order.
        let order: Vec<usize> = [
            "apiVersion:",
            "kind:",
            "metadata:",
            "spec:",
            "network:",
            "locality:",
            "gateways:",
            "kubernetes:",
            "staleEndpointTtl:",
        ]
        .iter()
        .map(|k| {
            edited
                .document
                .find(k)
                .unwrap_or_else(|| panic!("{k} in {}", edited.document))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", edited.document);
    }

    #[test]
    fn a_new_cluster_needs_a_locality_and_nothing_is_produced_without_one() {
        let err = edit_mesh(MESH, &entry("gamma", "net-b", None)).expect_err("no locality");
        assert!(err.to_string().contains("--locality"), "{err}");
    }

    #[test]
    fn appending_handles_missing_newline_and_trailing_marker() {
        let e = entry("gamma", "net-b", Some("eu-west/eu-west-1b"));
        let bare = MESH.trim_end();
        let edited = edit_mesh(bare, &e).expect("edit");
        assert_eq!(edited.text, format!("{bare}\n---\n{}", edited.document));
        load(&edited.text);
        let open = format!("{MESH}---\n");
        let edited = edit_mesh(&open, &e).expect("edit");
        assert_eq!(edited.text, format!("{open}{}", edited.document));
        assert_eq!(load(&edited.text).clusters.len(), 3);
    }

    #[test]
    fn updating_replaces_only_that_document_and_keeps_comments_elsewhere() {
        let mut e = entry("alpha", "net-b", None);
        e.context = Some("ctx".into());
        let edited = edit_mesh(MESH, &e).expect("edit");
        assert_eq!(edited.action, Action::Updated);
        assert_eq!(others(&edited.text, "alpha"), others(MESH, "alpha"));
        for kept in [
            "# The demo mesh.\n",
            "trustDomain: causeway.local   # SPIFFE trust domain\n",
            "---\n# alpha: a host cluster\napiVersion",
            "# beta comes next\n",
            "# the end\n",
        ] {
            assert!(
                edited.text.contains(kept),
                "{kept:?} lost:\n{}",
                edited.text
            );
        }
        assert!(edited.dropped_comments, "the locality comment is gone");
        let mesh = load(&edited.text);
        let names: Vec<&str> = mesh.clusters.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"], "order kept");
        let alpha = &mesh.clusters[0];
        assert_eq!(alpha.network.as_str(), "net-b", "network replaced");
        assert_eq!(
            alpha.locality.to_string(),
            "us-east/us-east-1a",
            "locality kept"
        );
        assert_eq!(alpha.gateways.len(), 1, "gateways kept");
        assert_eq!(
            alpha.kubernetes,
            Some(KubernetesSource {
                kubeconfig: PathBuf::from("kubeconfigs/c.yaml"),
                context: Some("ctx".into()),
            })
        );
        let beta_before = &load(MESH).clusters[1];
        let beta_after = &mesh.clusters[1];
        assert_eq!(
            (beta_after.kubernetes.clone(), beta_after.stale_endpoint_ttl),
            (
                beta_before.kubernetes.clone(),
                beta_before.stale_endpoint_ttl
            )
        );
        // Linking again with the same settings changes nothing more.
        let again = edit_mesh(&edited.text, &e).expect("edit");
        assert_eq!(again.text, edited.text);
        assert!(!again.dropped_comments);
    }

    #[test]
    fn updating_replaces_the_context_gateways_and_keeps_an_unset_ttl() {
        let mut e = entry("beta", "net-b", Some("eu-west/eu-west-1c"));
        e.gateways = vec![
            "10.0.0.1:15443".parse().expect("addr"),
            "[fd00::1]:15443".parse().expect("addr"),
        ];
        let edited = edit_mesh(MESH, &e).expect("edit");
        assert!(edited.text.ends_with("# the end\n"), "{}", edited.text);
        let beta = load(&edited.text).clusters[1].clone();
        assert_eq!(beta.locality.to_string(), "eu-west/eu-west-1c");
        let gateways: Vec<String> = beta.gateways.iter().map(ToString::to_string).collect();
        assert_eq!(gateways, ["10.0.0.1:15443", "[fd00::1]:15443"]);
        assert_eq!(
            beta.kubernetes.and_then(|k| k.context),
            None,
            "the context checked (the file's current one) is the one stored"
        );
        assert_eq!(
            beta.stale_endpoint_ttl,
            Some(Duration::from_secs(600)),
            "ttl kept"
        );
        assert!(
            edited.document.contains("metadata:\n  name: beta\n"),
            "{}",
            edited.document
        );
    }

    #[test]
    fn a_duplicate_entry_is_refused() {
        let text = format!("{MESH}---\napiVersion: causeway.io/v1alpha1\nkind: Cluster\nmetadata: {{name: beta}}\nspec: {{network: net-b, locality: a/b}}\n");
        let err = edit_mesh(&text, &entry("beta", "net-b", None)).expect_err("duplicate");
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn inline_marker_content_is_read_like_the_registry_does() {
        let text = "apiVersion: causeway.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {trustDomain: t}\n--- {apiVersion: causeway.io/v1alpha1, kind: Cluster, metadata: {name: a}, spec: {network: n, locality: r/z}}\n";
        let edited = edit_mesh(text, &entry("a", "n", None)).expect("edit");
        assert_eq!(edited.action, Action::Updated);
        let mesh = load(&edited.text);
        assert_eq!(mesh.clusters.len(), 1);
        assert!(mesh.clusters[0].kubernetes.is_some());
    }

    #[test]
    fn writing_validates_before_replacing() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write");
        let e = entry("gamma", "net-a", Some("us-east/us-east-1c"));
        let edited = edit_mesh(MESH, &e).expect("edit");
        write_mesh_file(dir.path(), MESH, &edited.text, &e).expect("write");
        let written = std::fs::read_to_string(dir.path().join("mesh.yaml")).expect("read");
        assert_eq!(written, edited.text);
        assert!(causeway_registry::load_mesh_file(dir.path()).is_ok());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("mesh.yaml")]);

        // A network the Mesh does not declare, a result that does not load, and a file that
        // changed meanwhile all leave mesh.yaml as it was.
        let undeclared = entry("delta", "net-z", Some("us-east/us-east-1c"));
        let edited2 = edit_mesh(&written, &undeclared).expect("edit");
        let err = write_mesh_file(dir.path(), &written, &edited2.text, &undeclared)
            .expect_err("undeclared network");
        assert!(err.to_string().contains("net-z"), "{err}");
        let broken = written.replace("trustDomain: causeway.local", "trustDomain: [1]");
        let err = write_mesh_file(dir.path(), &written, &broken, &e).expect_err("broken");
        assert!(err.to_string().contains("would not load"), "{err}");
        let err = write_mesh_file(dir.path(), MESH, &edited.text, &e).expect_err("changed");
        assert!(err.to_string().contains("changed while"), "{err}");
        let after = std::fs::read_to_string(dir.path().join("mesh.yaml")).expect("read");
        assert_eq!(after, written);
    }

    #[test]
    fn kubeconfig_paths_are_stored_so_the_control_plane_finds_the_same_file() {
        let cwd = Path::new("/home/op");
        let stored = |given: &str, mesh: &str| {
            stored_kubeconfig_path(Path::new(given), cwd, Path::new(mesh))
        };
        assert_eq!(
            stored("/etc/kc.yaml", "mesh"),
            PathBuf::from("/etc/kc.yaml")
        );
        assert_eq!(stored("kc.yaml", "mesh"), PathBuf::from("/home/op/kc.yaml"));
        assert_eq!(
            stored("mesh/kubeconfigs/a.yaml", "mesh"),
            PathBuf::from("kubeconfigs/a.yaml")
        );
        assert_eq!(stored("./mesh/a.yaml", "./mesh/"), PathBuf::from("a.yaml"));
        assert_eq!(
            stored("mesh/../kc.yaml", "mesh"),
            PathBuf::from("/home/op/mesh/../kc.yaml")
        );
        assert_eq!(
            stored("a.yaml", "/srv/mesh"),
            PathBuf::from("/home/op/a.yaml")
        );
        assert_eq!(
            stored("/srv/mesh/a.yaml", "/srv/mesh"),
            PathBuf::from("/srv/mesh/a.yaml")
        );
    }

    #[test]
    fn missing_permissions_are_each_named_with_the_manifest() {
        let denied: Vec<Denied> = REQUIRED_ACCESS
            .iter()
            .filter(|r| {
                r.resource == "pods" && r.verb == "watch"
                    || r.subresource.is_some() && r.verb == "patch"
            })
            .map(|r| Denied {
                requirement: *r,
                reason: None,
            })
            .collect();
        assert_eq!(denied.len(), 3);
        let message = missing_access_message(&ClusterId::new("c").expect("id"), &denied);
        assert!(message.contains("lack 3 of the"), "{message}");
        for line in [
            "missing: watch pods (",
            "missing: patch serviceexports.multicluster.x-k8s.io/status (",
            "missing: patch serviceimports.multicluster.x-k8s.io/status (",
        ] {
            assert!(message.contains(line), "{line:?} in {message}");
        }
        assert!(message.contains(CLUSTERROLE_MANIFEST), "{message}");
        assert_eq!(short(&denied[0].requirement), "watch pods");
    }

    #[test]
    fn error_chains_are_not_repeated() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let root = E("tcp connect error: refused", None);
        let mid = E("client error (Connect)", Some(Box::new(root)));
        let top = E("ServiceError: client error (Connect)", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "ServiceError: client error (Connect): tcp connect error: refused"
        );
    }

    #[test]
    fn an_access_review_asks_about_every_namespace() {
        let review = access_review(&REQUIRED_ACCESS[0]);
        let attrs = review
            .spec
            .resource_attributes
            .expect("resource attributes");
        assert_eq!(attrs.namespace, None);
        assert_eq!(attrs.verb.as_deref(), Some(REQUIRED_ACCESS[0].verb));
        assert!(review.spec.non_resource_attributes.is_none());
    }
}
