//! `causeway crds`: the CustomResourceDefinitions of Causeway's kinds (AuthorizationPolicy and
//! TrafficPolicy), generated from the Rust types, for `causeway crds | kubectl apply -f -`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

/// Prints every CRD as a multi-document YAML stream on stdout.
pub fn run() -> anyhow::Result<ExitCode> {
    write(&mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

/// Writes every CRD as a multi-document YAML stream to `out`.
fn write(out: &mut impl Write) -> anyhow::Result<()> {
    let yaml = causeway_kube::crd::crds_yaml()?;
    out.write_all(yaml.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_every_causeway_crd_as_one_yaml_stream() {
        let mut out = Vec::new();
        write(&mut out).expect("written");
        let text = String::from_utf8(out).expect("UTF-8");
        let docs: Vec<&str> = text.split("---\n").filter(|d| !d.is_empty()).collect();
        assert_eq!(docs.len(), 2, "{text}");
        for doc in &docs {
            assert!(
                doc.starts_with(
                    "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
                ),
                "{doc}"
            );
        }
        assert!(docs[0].contains("\n  name: authorizationpolicies.causeway.io\n"));
        assert!(docs[1].contains("\n  name: trafficpolicies.causeway.io\n"));
        assert!(docs[1].contains("- cwtraffic\n"), "{}", docs[1]);
        assert!(docs[1].contains("jsonPath: .spec.mode\n"), "{}", docs[1]);
    }
}
