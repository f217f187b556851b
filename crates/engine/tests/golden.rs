//! Golden files: each directory under `fixtures/` holds an `input.yaml`, and
//! optionally a `namespace.yaml` (the Namespace whose annotations apply), a
//! `policy.yaml` (overrides of the `[hardening]` table) and an `old.yaml`
//! (then the case is an ephemeral-containers update from `old` to `input`).
//! The outcome and the patched object are compared with the reviewed
//! snapshot in `tests/snapshots/`.

// Test helpers outside #[test] functions fail loudly on broken fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kube_hardener_engine::{
    Context, Disposition, Outcome, Policy, harden, harden_new_ephemeral_containers,
};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct Golden {
    disposition: String,
    applied: Vec<String>,
    warnings: Vec<String>,
    patch: Value,
    output: Value,
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = fs::read_to_string(path).ok()?;
    Some(serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .expect("fixtures directory")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn run(dir: &Path) -> (Value, Outcome, Context<'static>, Policy) {
    let input: Value = read_yaml(&dir.join("input.yaml")).expect("input.yaml");
    let policy: Policy = read_yaml(&dir.join("policy.yaml")).unwrap_or_default();
    let namespace: Option<Value> = read_yaml(&dir.join("namespace.yaml"));
    let ctx = match namespace {
        None => Context::default(),
        Some(ns) => {
            let name: &'static str = Box::leak(
                ns["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
                    .into_boxed_str(),
            );
            let annotations: BTreeMap<String, String> =
                serde_json::from_value(ns["metadata"]["annotations"].clone()).unwrap_or_default();
            Context {
                namespace: Some(name),
                namespace_annotations: Some(Box::leak(Box::new(annotations))),
                images: None,
            }
        }
    };
    let outcome = match read_yaml::<Value>(&dir.join("old.yaml")) {
        Some(old) => harden_new_ephemeral_containers(&input, &old, &ctx, &policy),
        None => harden(&input, &ctx, &policy),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    (input, outcome, ctx, policy)
}

#[test]
fn golden_files() {
    let cases = cases();
    assert!(cases.len() >= 25, "fixtures missing: {}", cases.len());
    for dir in cases {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned();
        let (input, outcome, ctx, policy) = run(&dir);
        let mut output = input.clone();
        json_patch::patch(&mut output, &outcome.patch).unwrap_or_else(|e| panic!("{name}: {e}"));

        // Asking the image query first (as the server does, from one parse)
        // leaves the hardening exactly as it is without the question.
        if !dir.join("old.yaml").exists() {
            let parsed = kube_hardener_engine::parse(&input, &ctx, &policy).unwrap();
            let query = parsed.image_query().unwrap();
            assert_eq!(
                query,
                kube_hardener_engine::image_query(&input, &ctx, &policy).unwrap(),
                "{name}"
            );
            assert_eq!(
                parsed.harden(None),
                outcome,
                "{name}: the query changed the outcome"
            );
        }

        // Every hardened golden object is a fixed point.
        if outcome.disposition == Disposition::Hardened && !dir.join("old.yaml").exists() {
            let again = harden(&output, &ctx, &policy).unwrap();
            assert!(
                again.is_empty(),
                "{name}: second pass patched {}",
                again.patch
            );
            assert!(again.applied.is_empty(), "{name}");
        }
        for warning in &outcome.warnings {
            assert!(
                warning.to_string().chars().count() < 200,
                "{name}: {warning}"
            );
        }

        let golden = Golden {
            disposition: format!("{:?}", outcome.disposition),
            applied: outcome
                .applied
                .iter()
                .map(|s| s.name().to_owned())
                .collect(),
            warnings: outcome
                .warnings
                .iter()
                .map(|w| format!("[{}] {w}", w.kind.label()))
                .collect(),
            patch: serde_json::to_value(&outcome.patch).expect("patch serializes"),
            output,
        };
        insta::assert_yaml_snapshot!(name, golden);
    }
}
