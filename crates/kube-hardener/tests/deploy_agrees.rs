//! The shipped manifests agree with the binary: the ConfigMap restates no
//! default, and the namespaces the webhook registration never sends are
//! exactly those the configuration excludes (the defaults plus the webhook's
//! own namespace), wherever each list is written down.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use kube_hardener_config::{Config, DEFAULT_TOML, EntryPoint};
use serde_json::Value;

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(workspace().join(path)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `config.toml` of deploy/base/configmap.yaml, as a TOML table.
fn configmap_toml() -> toml::Table {
    let configmap = yaml("deploy/base/configmap.yaml");
    configmap["data"]["config.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_configmap_lists_only_what_differs_from_the_embedded_default() {
    let defaults: toml::Table = DEFAULT_TOML.parse().unwrap();
    for (table, values) in configmap_toml() {
        let values = values.as_table().unwrap();
        for (key, value) in values {
            let default = defaults
                .get(&table)
                .and_then(|t| t.get(key))
                .unwrap_or_else(|| panic!("{table}.{key} is not a configuration key"));
            assert_ne!(
                value, default,
                "deploy/base/configmap.yaml restates the default of {table}.{key}"
            );
        }
    }
}

#[test]
fn every_list_of_excluded_namespaces_agrees() {
    let deployment = yaml("deploy/base/deployment.yaml");
    let own = yaml("deploy/base/namespace.yaml")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    // The deployment tells the binary its own namespace from the downward API.
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let own_from_env = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KUBE_HARDENER_SERVER__OWN_NAMESPACE")
        .expect("the deployment sets KUBE_HARDENER_SERVER__OWN_NAMESPACE");
    assert_eq!(
        own_from_env["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    // What the binary excludes with the shipped configuration...
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, configmap_toml().to_string()).unwrap();
    let mut config = Config::load(Some(&file)).unwrap();
    config.server.own_namespace = Some(own.clone());
    let excluded: BTreeSet<String> = config
        .effective_policy(EntryPoint::Webhook)
        .excluded_namespaces
        .into_iter()
        .collect();
    // ...equals what the API server never sends it...
    let registration = yaml("deploy/base/mutatingwebhookconfiguration.yaml");
    for webhook in registration["webhooks"].as_array().unwrap() {
        let expressions = webhook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        let not_in: BTreeSet<String> = expressions
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
            .expect("a NotIn on kubernetes.io/metadata.name")["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(not_in, excluded, "webhook {}", webhook["name"]);
    }
    // ...and the engine's own default is the embedded file's.
    assert_eq!(
        kube_hardener_config::Policy::default().excluded_namespaces,
        Config::embedded_default()
            .unwrap()
            .hardening
            .excluded_namespaces
    );
}

/// The chart's values for the three configuration tables, as JSON.
fn chart_values() -> Value {
    yaml("deploy/helm/kube-hardener/values.yaml")
}

/// The chart names every configuration key, with the binary's default (null
/// for the keys unset by default), so `helm show values` is the whole
/// configuration and cannot drift from config/default.toml. The one value
/// that differs is the base ConfigMap's, said the same way in both.
#[test]
fn the_chart_values_are_the_embedded_default_configuration() {
    let defaults = serde_json::to_value(Config::embedded_default().unwrap()).unwrap();
    let values = chart_values();
    let overrides = configmap_toml();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/helm/kube-hardener/values.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let mut compared = 0;
    for table in ["hardening", "server", "images"] {
        let default_table = defaults[table].as_object().unwrap();
        let value_table = values[table].as_object().unwrap();
        let keys =
            |map: &serde_json::Map<String, Value>| map.keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(
            keys(value_table),
            keys(default_table),
            "keys of {table} in values.yaml"
        );
        let schema_table = schema["properties"][table]["properties"]
            .as_object()
            .unwrap();
        assert_eq!(
            keys(schema_table),
            keys(default_table),
            "keys of {table} in values.schema.json"
        );
        for (key, default) in default_table {
            let expected = overrides
                .get(table)
                .and_then(|t| t.get(key))
                .map(|v| serde_json::to_value(v).unwrap())
                .unwrap_or_else(|| default.clone());
            assert_eq!(value_table[key], expected, "{table}.{key} in values.yaml");
            compared += 1;
        }
    }
    assert!(compared > 40, "only {compared} keys compared");
}
