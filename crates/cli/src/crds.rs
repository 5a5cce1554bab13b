//! `causeway crds`: the CustomResourceDefinitions of Causeway's kinds, generated from the Rust
//! types, for `causeway crds | kubectl apply -f -`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

/// Prints every CRD as a multi-document YAML stream on stdout.
pub fn run() -> anyhow::Result<ExitCode> {
    let yaml = causeway_kube::crd::crds_yaml()?;
    let mut out = std::io::stdout().lock();
    out.write_all(yaml.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}
