//! The real binary, as users and CI gates run it.
//!
//! Goldens live in `tests/fixtures/golden/`; after an intended change of the
//! output, regenerate them with `UPDATE_GOLDEN=1 cargo test -p kube-hardener`
//! and review the diff.

// Helpers outside #[test] functions fail tests by panicking.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde::Deserialize;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary in the fixtures directory (so file names in output are
/// relative), with no configuration from the test runner's environment.
fn kh() -> Command {
    let mut cmd = assert_cmd::cargo_bin_cmd!("kube-hardener");
    cmd.current_dir(fixtures());
    for (key, _) in std::env::vars() {
        if key.starts_with("KUBE_HARDENER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("NO_COLOR");
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let output = cmd.output().expect("runs");
    Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

fn preview(args: &[&str]) -> Run {
    run(kh().arg("preview").args(args))
}

fn golden(name: &str, actual: &str) {
    let path = fixtures().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    if expected != actual {
        panic!(
            "output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Succeeds, says nothing on stderr, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = preview(args);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "");
    out.stdout
}

/// Fails with exit 2 and nothing on stdout; returns stderr.
fn bad(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert_eq!(
        out.code, 2,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.stdout, "", "nothing may be printed on bad input");
    out.stderr
}

// ---------------------------------------------------------------- outputs

#[test]
fn text_output_golden() {
    golden("inputs.txt", &ok(&["inputs"]));
}

#[test]
fn patch_output_golden() {
    golden("inputs.patch", &ok(&["-o", "patch", "inputs"]));
}

#[test]
fn yaml_output_golden() {
    golden("inputs.yaml", &ok(&["-o", "yaml", "inputs"]));
}

#[test]
fn diff_output_golden() {
    golden("inputs.diff", &ok(&["-o", "diff", "inputs"]));
}

#[test]
fn json_output_golden() {
    golden("inputs.json", &ok(&["-o", "json", "inputs"]));
}

#[test]
fn patch_output_is_one_json_array_per_object() {
    let out = ok(&["-o", "patch", "inputs"]);
    let json = json_entries(&ok(&["-o", "json", "inputs"]));
    let mut arrays: Vec<(String, Value)> = Vec::new();
    let mut body = String::new();
    let mut header = String::new();
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            if !header.is_empty() {
                arrays.push((
                    header.clone(),
                    serde_json::from_str(&body).expect("JSON array"),
                ));
            }
            header = h.to_owned();
            body.clear();
        } else {
            body.push_str(line);
        }
    }
    arrays.push((header, serde_json::from_str(&body).expect("JSON array")));
    assert_eq!(arrays.len(), json.len());
    for ((header, patch), entry) in arrays.iter().zip(&json) {
        assert_eq!(patch, &entry["patch"], "{header}");
        assert!(
            header.starts_with(entry["kind"].as_str().expect("kind")),
            "{header}"
        );
    }
}

fn json_entries(text: &str) -> Vec<Value> {
    match serde_json::from_str(text).expect("JSON output") {
        Value::Array(entries) => entries,
        other => panic!("expected an array, got {other}"),
    }
}

/// `-o yaml` is exactly the input with each object's patch (from `-o json`)
/// applied, document by document, List items included.
#[test]
fn yaml_output_equals_patches_applied_to_input() {
    let entries = json_entries(&ok(&["-o", "json", "inputs"]));
    let hardened = yaml_documents(&ok(&["-o", "yaml", "inputs"]));

    let mut inputs: Vec<(String, Vec<Value>)> = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures().join("inputs"))
        .expect("inputs")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).expect("read");
        let docs = if path.extension().is_some_and(|e| e == "json") {
            serde_json::Deserializer::from_str(&text)
                .into_iter::<Value>()
                .map(|v| v.expect("JSON"))
                .collect()
        } else {
            serde_norway::Deserializer::from_str(&text)
                .map(|d| {
                    let mut v = serde_norway::Value::deserialize(d).expect("YAML");
                    v.apply_merge().expect("merge keys");
                    serde_json::to_value(v).expect("JSON-compatible")
                })
                .collect()
        };
        let name = format!(
            "inputs/{}",
            path.file_name().expect("name").to_string_lossy()
        );
        inputs.push((name, docs));
    }

    let mut expected = Vec::new();
    for (file, docs) in &mut inputs {
        for (index, doc) in docs.iter_mut().enumerate() {
            if doc.is_null() {
                continue;
            }
            for entry in entries
                .iter()
                .filter(|e| e["file"] == json!(file) && e["document"] == json!(index + 1))
            {
                let patch: json_patch::Patch =
                    serde_json::from_value(entry["patch"].clone()).expect("patch");
                let target = match entry.get("item").and_then(Value::as_u64) {
                    Some(item) => &mut doc["items"][usize::try_from(item).expect("item") - 1],
                    None => &mut *doc,
                };
                json_patch::patch(target, &patch.0).expect("patch applies to the input");
            }
            expected.push(doc.clone());
        }
    }
    assert_eq!(hardened.len(), expected.len());
    for (got, want) in hardened.iter().zip(&expected) {
        assert_eq!(got, want);
    }
}

/// A second run over the hardened output changes nothing.
#[test]
fn hardened_output_is_a_fixed_point() {
    let hardened = ok(&["-o", "yaml", "inputs"]);
    let out = run(kh()
        .args(["preview", "--exit-code", "-o", "json", "-"])
        .write_stdin(hardened));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        json_entries(&out.stdout)
            .iter()
            .all(|e| e["patch"] == json!([]))
    );
}

#[test]
fn diff_is_plain_when_piped_and_coloured_on_request() {
    let plain = ok(&["-o", "diff", "inputs/mixed.yaml"]);
    assert!(!plain.contains('\x1b'));
    assert!(plain.contains("\n+  securityContext:\n"), "{plain}");
    let coloured = ok(&["-o", "diff", "--color", "always", "inputs/mixed.yaml"]);
    assert!(coloured.contains("\x1b[32m+"), "{coloured}");
    assert!(
        coloured.starts_with("\x1b[1m--- Pod default/plain"),
        "{coloured}"
    );
    let never = ok(&["-o", "diff", "--color", "never", "inputs/mixed.yaml"]);
    assert_eq!(never, plain);
}

// ---------------------------------------------------------------- exit codes

#[test]
fn exit_code_flag_reports_changes() {
    assert_eq!(preview(&["--exit-code", "inputs/mixed.yaml"]).code, 1);
    // Without the flag, changes are not a failure.
    assert_eq!(preview(&["inputs/mixed.yaml"]).code, 0);
    // Only pass-through and excluded objects: nothing would change.
    let out = run(kh()
        .args(["preview", "--exit-code", "-"])
        .write_stdin("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("unchanged (Service is not a Pod or workload)")
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn error_messages_name_file_and_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec:\n  containers: [{name: a, image: b}]\n";
    let cases: [(&str, String, &str); 7] = [
        (
            "syntax.yaml",
            format!("{good}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n"),
            "kube-hardener preview: {dir}/syntax.yaml: document 2: invalid YAML: ",
        ),
        (
            "nokind.yaml",
            format!("{good}---\n# a comment\n---\napiVersion: v1\nmetadata: {{name: x}}\n"),
            "kube-hardener preview: {dir}/nokind.yaml: document 3: missing `kind`\n",
        ),
        (
            "kindnum.yaml",
            "kind: 42\n".to_owned(),
            "kube-hardener preview: {dir}/kindnum.yaml: document 1: `kind` must be a string, found a number\n",
        ),
        (
            "scalar.yaml",
            "just a string\n".to_owned(),
            "kube-hardener preview: {dir}/scalar.yaml: document 1: expected a Kubernetes object (a mapping), found a string\n",
        ),
        (
            "broken.json",
            "{\"kind\": \"Pod\"}\n{\"kind\": }".to_owned(),
            "kube-hardener preview: {dir}/broken.json: document 2: invalid JSON: expected value at line 2 column 10\n",
        ),
        (
            "list.yaml",
            "kind: List\nitems:\n  - kind: Service\n  - metadata: {name: x}\n".to_owned(),
            "kube-hardener preview: {dir}/list.yaml: document 1, item 2: missing `kind`\n",
        ),
        (
            "engine.yaml",
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: {}\n".to_owned(),
            "kube-hardener preview: {dir}/engine.yaml: document 1: ",
        ),
    ];
    let dir_name = dir.path().display().to_string();
    for (name, body, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write");
        // a good file first: its output must not leak out either
        let stderr = bad(kh().args(["preview", "inputs/mixed.yaml"]).arg(&path));
        let expected = expected.replace("{dir}", &dir_name);
        assert!(
            stderr.starts_with(&expected),
            "{name}: got {stderr:?}, expected {expected:?}"
        );
    }
}

#[test]
fn yaml_syntax_error_includes_line_and_column() {
    let stderr = bad(kh()
        .args(["preview", "-"])
        .write_stdin("kind: Pod\nmetadata:\n  name: a\n   bad: indent\n"));
    assert!(
        stderr.starts_with("kube-hardener preview: <stdin>: document 1: invalid YAML: "),
        "{stderr}"
    );
    assert!(stderr.contains("line 4 column"), "{stderr}");
}

#[test]
fn unreadable_inputs_name_the_path() {
    let stderr = bad(kh().args(["preview", "does/not/exist.yaml"]));
    assert!(
        stderr.starts_with("kube-hardener preview: does/not/exist.yaml: cannot read: "),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join("image.yaml");
    std::fs::write(&binary, b"kind: Pod\n\xff\xfe").expect("write");
    let stderr = bad(kh().arg("preview").arg(&binary));
    assert!(
        stderr.ends_with("image.yaml: not UTF-8 text (invalid byte at offset 10)\n"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_2() {
    let out = preview(&["--namespace-annotation", "novalue", "inputs"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("expected KEY=VALUE"), "{}", out.stderr);
    assert_eq!(preview(&["-o", "xml", "inputs"]).code, 2);
}

// ---------------------------------------------------------------- inputs

#[test]
fn reads_stdin_by_default_and_with_dash() {
    let pod = std::fs::read_to_string(fixtures().join("inputs/mixed.yaml")).expect("read");
    let by_default = run(kh()
        .args(["preview", "-o", "json"])
        .write_stdin(pod.clone()));
    let with_dash = run(kh().args(["preview", "-o", "json", "-"]).write_stdin(pod));
    assert_eq!(by_default.code, 0, "{}", by_default.stderr);
    assert_eq!(by_default.stdout, with_dash.stdout);
    let entries = json_entries(&by_default.stdout);
    assert_eq!(entries.len(), 5);
    assert!(entries.iter().all(|e| e["file"] == "<stdin>"));
}

#[test]
fn reads_json_from_stdin() {
    let json = std::fs::read_to_string(fixtures().join("inputs/pods.json")).expect("read");
    let out = run(kh().args(["preview", "-o", "json"]).write_stdin(json));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let entries = json_entries(&out.stdout);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["kind"], "DaemonSet");
}

#[test]
fn directories_are_read_recursively_in_sorted_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: a, image: b}}]\n"
        )
    };
    for (path, body) in [
        ("b/z.yml", pod("bz")),
        ("a.yaml", pod("a")),
        ("b/a.json", "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"ba\"},\"spec\":{\"containers\":[{\"name\":\"a\",\"image\":\"b\"}]}}".to_owned()),
        ("README.md", "# not a manifest".to_owned()),
        (".hidden/x.yaml", "not: [valid".to_owned()),
    ] {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, body).expect("write");
    }
    let out = run(kh().args(["preview", "-o", "json"]).arg(dir.path()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let names: Vec<Value> = json_entries(&out.stdout)
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("a"), json!("ba"), json!("bz")]);
}

#[test]
fn list_items_are_hardened_and_stay_in_the_list() {
    let entries = json_entries(&ok(&["-o", "json", "inputs/list.yaml"]));
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0]["item"].clone(), entries[0]["changed"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(
        (entries[1]["item"].clone(), entries[1]["changed"].clone()),
        (json!(2), json!(false))
    );
    let docs = yaml_documents(&ok(&["-o", "yaml", "inputs/list.yaml"]));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "List");
    assert_eq!(
        docs[0]["items"][0]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
}

#[test]
fn real_world_helm_output_is_read() {
    let entries = json_entries(&ok(&["-o", "json", "inputs/helm-template.yaml"]));
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        vec![
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "CustomResourceDefinition"
        ]
    );
    let docs = yaml_documents(&ok(&["-o", "yaml", "inputs/helm-template.yaml"]));
    // long strings, block scalars and quoted `#` survive; merge keys are resolved
    assert_eq!(
        docs[1]["data"]["long-line"].as_str().map(str::len),
        Some(219)
    );
    assert!(
        docs[1]["data"]["nginx.conf"]
            .as_str()
            .expect("conf")
            .contains("worker_connections 1024;")
    );
    let template = &docs[2]["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["env"][0]["value"],
        "hello: world # not a comment"
    );
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/instance"],
        "release"
    );
    // the CRD passes through untouched
    assert_eq!(entries[3]["disposition"], "unsupported-kind");
}

// ---------------------------------------------------------------- namespaces

#[test]
fn namespace_objects_in_the_input_decide_for_their_objects() {
    let entries = json_entries(&ok(&["-o", "json", "inputs/namespaces.yaml"]));
    assert_eq!(entries[0]["name"], "ignored");
    assert_eq!(entries[0]["disposition"], "skipped-all");
    assert_eq!(entries[0]["patch"], json!([]));
    assert_eq!(entries[3]["name"], "migrate");
    let applied = entries[3]["applied"].as_array().expect("applied");
    assert!(
        !applied.contains(&json!("readOnlyRootFilesystem")),
        "{applied:?}"
    );
    assert!(applied.contains(&json!("capabilities")), "{applied:?}");
}

#[test]
fn namespace_annotation_flag_applies_where_the_input_has_no_namespace_object() {
    let entries = json_entries(&ok(&[
        "-o",
        "json",
        "--namespace-annotation",
        "kube-hardener.io/skip=all",
        "inputs/namespaces.yaml",
        "inputs/list.yaml",
    ]));
    let by_name = |name: &str| {
        entries
            .iter()
            .find(|e| e["name"] == name)
            .expect(name)
            .clone()
    };
    // team-b has no Namespace object: the flag applies
    assert_eq!(by_name("worker")["disposition"], "skipped-all");
    // team-d has one (skip readOnlyRootFilesystem only): the flag does not apply
    assert_eq!(by_name("migrate")["disposition"], "hardened");
    assert_eq!(by_name("migrate")["changed"], true);
}

#[test]
fn objects_without_namespace_are_in_the_namespace_flag() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b}]\n";
    let out = run(kh()
        .args(["preview", "-o", "json", "--namespace", "kube-system"])
        .write_stdin(pod));
    let entries = json_entries(&out.stdout);
    assert_eq!(entries[0]["namespace"], "kube-system");
    assert_eq!(entries[0]["disposition"], "excluded-namespace");
    let out = run(kh().args(["preview", "-o", "json"]).write_stdin(pod));
    assert_eq!(json_entries(&out.stdout)[0]["namespace"], "default");
}

// ---------------------------------------------------------------- config

fn pod_security_context(out: &str) -> Value {
    let docs = yaml_documents(out);
    docs[0]["spec"]["securityContext"].clone()
}

const POD: &str =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b}]\n";

#[test]
fn config_file_and_environment_are_layered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kh.toml");
    std::fs::write(&file, "[hardening]\nfs_group = 1000\nrun_as_user = 10001\n").expect("write");

    // --config
    let out = run(kh()
        .args(["preview", "-o", "yaml", "--config"])
        .arg(&file)
        .write_stdin(POD));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sc = pod_security_context(&out.stdout);
    assert_eq!(
        (sc["fsGroup"].clone(), sc["runAsUser"].clone()),
        (json!(1000), json!(10001))
    );
    assert_eq!(sc["fsGroupChangePolicy"], "OnRootMismatch");

    // KUBE_HARDENER_CONFIG, overridden key by key by KUBE_HARDENER_* variables
    let out = run(kh()
        .args(["preview", "-o", "yaml"])
        .env("KUBE_HARDENER_CONFIG", &file)
        .env("KUBE_HARDENER_HARDENING__FS_GROUP", "2000")
        .write_stdin(POD));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sc = pod_security_context(&out.stdout);
    assert_eq!(
        (sc["fsGroup"].clone(), sc["runAsUser"].clone()),
        (json!(2000), json!(10001))
    );

    // a switch and a list from the environment
    let out = run(kh()
        .args(["preview", "-o", "yaml"])
        .env(
            "KUBE_HARDENER_HARDENING__SETTINGS__SECCOMP_PROFILE",
            "false",
        )
        .env("KUBE_HARDENER_HARDENING__WRITABLE_PATHS", "[/tmp,/cache]")
        .write_stdin(POD));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let docs = yaml_documents(&out.stdout);
    assert!(
        docs[0]["spec"]["securityContext"]
            .get("seccompProfile")
            .is_none()
    );
    let mounts: Vec<&str> = docs[0]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, vec!["/tmp", "/cache"]);
}

#[test]
fn preview_shows_workloads_even_when_the_webhook_would_not_mutate_them() {
    let out = run(kh()
        .args(["preview", "--exit-code", "inputs/list.yaml"])
        .env("KUBE_HARDENER_HARDENING__MUTATE_WORKLOADS", "false"));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let help = preview(&["--help"]);
    assert!(
        help.stdout
            .contains("Workload templates are always shown hardened"),
        "{}",
        help.stdout
    );
}

#[test]
fn unknown_config_key_is_an_error_naming_it_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kh.toml");
    std::fs::write(&file, "[hardening]\nfs_grup = 2000\n").expect("write");
    let stderr = bad(kh().args(["preview", "--config"]).arg(&file).arg("inputs"));
    assert!(
        stderr.starts_with(&format!(
            "kube-hardener: invalid configuration: key `hardening.fs_grup` (from file {}): unknown key",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn bad_environment_values_name_the_variable() {
    let stderr = bad(kh()
        .args(["preview", "inputs"])
        .env("KUBE_HARDENER_HARDENING__RUN_AS_USER", "0"));
    assert_eq!(
        stderr,
        "kube-hardener: invalid configuration: key `hardening.run_as_user` (from environment \
         variable KUBE_HARDENER_HARDENING__RUN_AS_USER): must be between 1 and 2147483647, got 0 \
         (0 is root: injecting it would defeat the purpose)\n"
    );
    let stderr = bad(kh()
        .args(["preview", "inputs"])
        .env("KUBE_HARDENER_SERVER__AUDITT", "true"));
    assert!(
        stderr.contains("key `server.auditt` (from environment variable KUBE_HARDENER_SERVER__AUDITT): unknown key"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let stderr = bad(kh().args(["preview", "--config", "nope.toml", "inputs"]));
    assert!(
        stderr.starts_with("kube-hardener: cannot read configuration file nope.toml: "),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- quick start

/// The README's quick start: `cargo run -- preview examples/`.
#[test]
fn quick_start_hardens_the_shipped_examples() {
    let out = run(kh()
        .current_dir(workspace_root())
        .args(["preview", "examples/"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    golden("examples.txt", &out.stdout);

    let out = run(kh()
        .current_dir(workspace_root())
        .args(["preview", "-o", "json", "examples/"]));
    let entries = json_entries(&out.stdout);
    let applied = |name: &str| -> Vec<String> {
        let entry = entries.iter().find(|e| e["name"] == name).expect(name);
        entry["applied"]
            .as_array()
            .expect("applied")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let all = [
        "runAsNonRoot",
        "seccompProfile",
        "allowPrivilegeEscalation",
        "capabilities",
        "readOnlyRootFilesystem",
    ];
    assert_eq!(applied("web"), all);
    assert_eq!(applied("api"), all);
    // Windows: only runAsNonRoot
    assert_eq!(applied("iis"), ["runAsNonRoot"]);
    // the legacy namespace opted out of two settings
    assert_eq!(
        applied("nightly-report"),
        ["runAsNonRoot", "seccompProfile", "allowPrivilegeEscalation"]
    );
}

#[test]
fn every_subcommand_refuses_a_bad_configuration() {
    for subcommand in ["serve", "preview"] {
        let stderr = bad(kh()
            .arg(subcommand)
            .env("KUBE_HARDENER_HARDENING__FS_GROUP", "0")
            .env("KUBE_HARDENER_SERVER__LISTEN", "nowhere")
            .write_stdin(POD));
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            vec![
                "kube-hardener: invalid configuration:",
                "  - key `hardening.fs_group` (from environment variable \
                 KUBE_HARDENER_HARDENING__FS_GROUP): must be between 1 and 2147483647, got 0 \
                 (0 is root: injecting it would defeat the purpose)",
                "  - key `server.listen` (from environment variable KUBE_HARDENER_SERVER__LISTEN): \
                 `nowhere` is not an IP:port address (e.g. 0.0.0.0:8443 or [::]:8443)",
            ],
            "{subcommand}"
        );
    }
}

#[test]
fn empty_config_variable_means_no_file() {
    let out = run(kh()
        .args(["preview", "--exit-code", "-"])
        .env("KUBE_HARDENER_CONFIG", "")
        .write_stdin(POD));
    assert_eq!(out.code, 1, "{}", out.stderr);
}

/// Runs the binary on a pseudo-terminal (util-linux `script`, part of every
/// Debian base system) so that `--color auto` sees a TTY.
fn on_terminal(args: &str, no_color: Option<&str>) -> String {
    let binary = Path::new(env!("CARGO_BIN_EXE_kube-hardener"));
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &format!("{} {args}", binary.display()), "/dev/null"])
        .current_dir(fixtures())
        .stdin(std::process::Stdio::null())
        .env_remove("NO_COLOR");
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let output = cmd.output().expect("script runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn diff_is_coloured_on_a_terminal_unless_no_color_is_set() {
    let args = "preview -o diff inputs/mixed.yaml";
    let coloured = on_terminal(args, None);
    assert!(coloured.contains("\x1b[32m+"), "{coloured}");
    // NO_COLOR set to anything non-empty turns colour off; empty does not.
    let plain = on_terminal(args, Some("1"));
    assert!(plain.contains("+  securityContext:"), "{plain}");
    assert!(!plain.contains('\x1b'), "{plain}");
    assert!(on_terminal(args, Some("")).contains("\x1b[32m+"));
    // --color never wins over the terminal
    assert!(!on_terminal(&format!("{args} --color never"), None).contains('\x1b'));
}

// ---------------------------------------------------------------- policy

#[test]
fn policy_output_golden() {
    let out = run(kh().arg("policy"));
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "", "the default configuration needs no note");
    let documents = yaml_documents(&out.stdout);
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    );
    golden("policy.yaml", &out.stdout);
}

#[test]
fn policy_notes_features_without_a_native_equivalent() {
    let out = run(kh()
        .arg("policy")
        .env("KUBE_HARDENER_IMAGES__RESOLVE", "true")
        .env("KUBE_HARDENER_HARDENING__MUTATE_WORKLOADS", "true"));
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("note (image-aware)"), "{}", out.stderr);
    assert!(
        out.stderr.contains("note (workload-templates)"),
        "{}",
        out.stderr
    );
    assert_eq!(yaml_documents(&out.stdout).len(), 2);
}

#[test]
fn policy_refuses_audit_and_prints_the_differences() {
    let stderr = bad(kh()
        .arg("policy")
        .env("KUBE_HARDENER_SERVER__AUDIT", "true"));
    assert!(stderr.contains("server.audit"), "{stderr}");
    let out = run(kh().args(["policy", "--differences"]));
    assert_eq!(out.code, 0);
    let docs = std::fs::read_to_string(workspace_root().join("docs/native-policy.md")).unwrap();
    assert!(
        docs.contains(&out.stdout),
        "docs/native-policy.md lacks the table"
    );
    assert!(out.stdout.contains("`hashed-volume-names`"));
}
