//! `kube-hardener policy`: the configuration that drives the webhook, as a
//! native MutatingAdmissionPolicy and its binding (admissionregistration.k8s.io/v1).
//! The API server then fills in the same defaults itself, with CEL: no
//! webhook, no certificates, nothing to fail open. What CEL cannot express is
//! listed once, in [`differences`].
//!
//! A pure function of the configuration: no cluster is contacted.

mod cel;
pub mod differences;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;

use kube_hardener_config::{Config, EntryPoint};
use serde_json::{Value, json};

pub use differences::{DIFFERENCES, Difference};

/// Command-line arguments of `kube-hardener policy`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Name of the MutatingAdmissionPolicy.
    #[arg(long, default_value = "kube-hardener", value_parser = parse_name)]
    pub name: String,

    /// Name of its MutatingAdmissionPolicyBinding (default: the policy's name).
    #[arg(long, value_parser = parse_name)]
    pub binding_name: Option<String>,

    /// Bind only namespaces carrying this label (repeatable; all must match).
    /// Without it every namespace but the excluded ones is bound.
    #[arg(long = "namespace-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub namespace_labels: Vec<(String, String)>,

    /// What the API server does when the policy cannot be evaluated (e.g. a
    /// pod past the CEL cost budget): Ignore admits the pod unhardened, as the
    /// webhook's default does; Fail refuses it.
    #[arg(long, value_enum, default_value_t = FailurePolicy::Ignore)]
    pub failure_policy: FailurePolicy,

    /// IfNeeded runs the policy again after later mutations (sidecar
    /// injectors) so their containers are hardened too; the API server then
    /// also reruns it after its own change, which costs a second evaluation.
    /// Never evaluates once, for clusters where nothing mutates pods after it.
    #[arg(long, value_enum, default_value_t = Reinvocation::IfNeeded)]
    pub reinvocation_policy: Reinvocation,

    /// Print the table of differences from the webhook and exit.
    #[arg(long)]
    pub differences: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum Reinvocation {
    IfNeeded,
    Never,
}

impl Reinvocation {
    fn as_str(self) -> &'static str {
        match self {
            Reinvocation::IfNeeded => "IfNeeded",
            Reinvocation::Never => "Never",
        }
    }
}

fn parse_name(value: &str) -> Result<String, String> {
    // Object names of these kinds are DNS subdomains.
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(kube_hardener_engine::is_dns_label);
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not a valid object name (a DNS subdomain)"
        ))
    }
}

fn parse_label(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, label)) if !key.is_empty() => Ok((key.to_owned(), label.to_owned())),
        _ => Err(format!("`{value}` is not KEY=VALUE")),
    }
}

/// The configuration cannot be expressed as a native policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "server.audit is true: a MutatingAdmissionPolicy cannot only warn, so no policy is generated (use the webhook for a shadow run)"
    )]
    Audit,
    #[error("rendering YAML: {0}")]
    Yaml(String),
}

/// The generated objects and the differences this configuration runs into.
#[derive(Debug, Clone)]
pub struct Generated {
    pub policy: Value,
    pub binding: Value,
    pub notes: Vec<&'static Difference>,
}

/// The policy and binding for `config`.
pub fn generate(config: &Config, args: &PolicyArgs) -> Result<Generated, PolicyError> {
    if config.server.audit {
        return Err(PolicyError::Audit);
    }
    let policy = config.effective_policy(EntryPoint::Webhook);
    let program = cel::program(&policy);
    let excluded: Vec<&str> = policy
        .excluded_namespaces
        .iter()
        .map(String::as_str)
        .collect();
    let mut constraints = json!({
        "resourceRules": [{
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
        }],
    });
    if !excluded.is_empty() {
        constraints["namespaceSelector"] = json!({
            "matchExpressions": [{
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": excluded,
            }],
        });
    }
    let generated = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": args.name, "labels": {"app.kubernetes.io/name": "kube-hardener"}},
        "spec": {
            "failurePolicy": args.failure_policy.as_str(),
            // Other mutators may add containers after this policy ran; the
            // operations add only what is unset, so a rerun is safe.
            "reinvocationPolicy": args.reinvocation_policy.as_str(),
            "matchConstraints": constraints,
            "matchConditions": [{"name": "not-already-hardened", "expression": program.already_hardened}],
            "variables": program.variables.iter()
                .map(|(name, expression)| json!({"name": name, "expression": expression}))
                .collect::<Vec<_>>(),
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": {"expression": program.patch},
            }],
        },
    });
    let mut binding_spec = json!({"policyName": args.name});
    if !args.namespace_labels.is_empty() {
        let labels: BTreeMap<&str, &str> = args
            .namespace_labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        binding_spec["matchResources"] = json!({"namespaceSelector": {"matchLabels": labels}});
    }
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {
            "name": args.binding_name.as_deref().unwrap_or(&args.name),
            "labels": {"app.kubernetes.io/name": "kube-hardener"},
        },
        "spec": binding_spec,
    });
    Ok(Generated {
        policy: generated,
        binding,
        notes: differences::configured(config),
    })
}

/// The two objects as a multi-document YAML stream.
pub fn to_yaml(generated: &Generated) -> Result<String, PolicyError> {
    let mut out = String::from(
        "# Generated by `kube-hardener policy` from the kube-hardener configuration.\n",
    );
    for object in [&generated.policy, &generated.binding] {
        out.push_str("---\n");
        out.push_str(
            &serde_norway::to_string(object)
                .map_err(|error| PolicyError::Yaml(error.to_string()))?,
        );
    }
    Ok(out)
}

/// Runs `kube-hardener policy`: YAML on stdout, notes on stderr.
pub fn run(args: &PolicyArgs, config: &Config) -> ExitCode {
    if args.differences {
        print!("{}", differences::markdown_table());
        return ExitCode::SUCCESS;
    }
    let rendered = generate(config, args).and_then(|generated| {
        let yaml = to_yaml(&generated)?;
        Ok((generated.notes, yaml))
    });
    match rendered {
        Ok((notes, yaml)) => {
            for note in notes {
                eprintln!(
                    "kube-hardener policy: note ({}): the webhook {}; the policy: {}",
                    note.name, note.webhook, note.policy
                );
            }
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(yaml.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("kube-hardener policy: writing the policy: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("kube-hardener policy: {error}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PolicyArgs,
    }

    fn args(argv: &[&str]) -> PolicyArgs {
        Cli::try_parse_from(std::iter::once("policy").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn objects_carry_names_scope_and_exclusions() {
        let mut config = Config::default();
        config.server.own_namespace = Some("kube-hardener".into());
        let generated = generate(
            &config,
            &args(&[
                "--name",
                "harden",
                "--namespace-label",
                "team=a",
                "--failure-policy",
                "Fail",
            ]),
        )
        .unwrap();
        let spec = &generated.policy["spec"];
        assert_eq!(generated.policy["metadata"]["name"], "harden");
        assert_eq!(spec["failurePolicy"], "Fail");
        assert_eq!(spec["reinvocationPolicy"], "IfNeeded");
        let never = generate(&config, &args(&["--reinvocation-policy", "Never"])).unwrap();
        assert_eq!(never.policy["spec"]["reinvocationPolicy"], "Never");
        assert_eq!(
            spec["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]["values"],
            json!([
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "kube-hardener"
            ])
        );
        assert_eq!(generated.binding["metadata"]["name"], "harden");
        assert_eq!(generated.binding["spec"]["policyName"], "harden");
        assert_eq!(
            generated.binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"],
            json!({"team": "a"})
        );
        assert!(generated.notes.is_empty());
        assert_eq!(spec["mutations"][0]["patchType"], "JSONPatch");
    }

    #[test]
    fn audit_is_refused_and_bad_arguments_are_named() {
        let mut config = Config::default();
        config.server.audit = true;
        assert_eq!(
            generate(&config, &args(&[])).unwrap_err(),
            PolicyError::Audit
        );
        assert!(Cli::try_parse_from(["policy", "--name", "Bad_Name"]).is_err());
        assert!(Cli::try_parse_from(["policy", "--namespace-label", "novalue"]).is_err());
    }

    #[test]
    fn yaml_is_two_documents_that_round_trip() {
        let generated = generate(&Config::default(), &args(&[])).unwrap();
        let yaml = to_yaml(&generated).unwrap();
        let documents: Vec<Value> = yaml
            .split("\n---\n")
            .skip(1)
            .map(|doc| serde_norway::from_str(doc).unwrap())
            .collect();
        assert_eq!(documents, [generated.policy, generated.binding]);
    }
}
