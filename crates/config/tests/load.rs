//! The loader against real files and environment variables (inside
//! `figment::Jail`, which serialises access to the process environment and
//! restores it afterwards).

// Helpers outside #[test] functions fail tests by panicking, and Jail's
// closures return figment's (large) error type by design.
#![allow(clippy::panic, clippy::result_large_err)]

use std::path::Path;

use figment::Jail;
use kube_hardener_config::{Config, ConfigError, DEFAULT_TOML, Origin};
use kube_hardener_engine::Setting;

fn load(file: Option<&str>) -> Result<Config, ConfigError> {
    Config::load(file.map(Path::new))
}

fn load_err(file: Option<&str>) -> ConfigError {
    match load(file) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(error) => error,
    }
}

#[test]
fn embedded_default_equals_config_default() {
    assert_eq!(
        Config::embedded_default().expect("default parses"),
        Config::default()
    );
}

#[test]
fn default_is_valid() {
    assert_eq!(Config::default().validate(), Vec::<(String, String)>::new());
}

/// Every key of `Config` (including `Option` ones, which the file can only
/// show commented out) appears in `config/default.toml` in its table, right
/// after a comment, so the shipped file is a complete reference.
#[test]
fn every_key_is_documented_in_default_toml() {
    let value = serde_json::to_value(Config::default()).expect("serialises");
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    assert!(keys.len() > 20, "suspiciously few keys: {keys:?}");

    for (table, key) in keys {
        let mut current = String::new();
        let mut previous = "";
        let mut found = false;
        for line in DEFAULT_TOML.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                current = name.to_owned();
            } else if current == table {
                let uncommented = trimmed.trim_start_matches('#').trim_start();
                if uncommented.starts_with(&format!("{key} = ")) {
                    assert!(
                        previous.starts_with('#'),
                        "[{table}] {key} has no comment right above it"
                    );
                    found = true;
                    break;
                }
            }
            previous = trimmed;
        }
        assert!(found, "[{table}] {key} is not in config/default.toml");
    }
}

fn collect_keys(value: &serde_json::Value, table: &str, out: &mut Vec<(String, String)>) {
    if let serde_json::Value::Object(map) = value {
        for (key, child) in map {
            if child.is_object() {
                let nested = if table.is_empty() {
                    key.clone()
                } else {
                    format!("{table}.{key}")
                };
                collect_keys(child, &nested, out);
            } else {
                out.push((table.to_owned(), key.clone()));
            }
        }
    }
}

#[test]
fn file_then_env_layering() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "kh.toml",
            r#"
            [hardening]
            fs_group = 1000
            run_as_user = 10001
            writable_paths = ["/tmp", "/var/cache/nginx"]
            [hardening.settings]
            capabilities = false
            [server]
            audit = true
            "#,
        )?;
        jail.set_env("KUBE_HARDENER_HARDENING__FS_GROUP", "2000");
        jail.set_env("KUBE_HARDENER_SERVER__OWN_NAMESPACE", "kube-hardener");
        let config = load(Some("kh.toml")).expect("loads");

        // env beats file
        assert_eq!(config.hardening.fs_group, Some(2000));
        // file beats default
        assert_eq!(config.hardening.run_as_user, Some(10001));
        assert_eq!(
            config.hardening.writable_paths,
            vec!["/tmp".to_owned(), "/var/cache/nginx".to_owned()]
        );
        assert!(!config.hardening.settings.is_on(Setting::Capabilities));
        assert!(config.server.audit);
        assert_eq!(
            config.server.own_namespace.as_deref(),
            Some("kube-hardener")
        );
        // untouched keys keep the default
        assert!(
            config
                .hardening
                .settings
                .is_on(Setting::ReadOnlyRootFilesystem)
        );
        assert_eq!(
            config.hardening.excluded_namespaces,
            Config::default().hardening.excluded_namespaces
        );
        assert_eq!(config.server.listen, "0.0.0.0:8443");
        Ok(())
    });
}

#[test]
fn env_sets_nested_switches_and_lists() {
    Jail::expect_with(|jail| {
        jail.set_env("KUBE_HARDENER_HARDENING__SETTINGS__CAPABILITIES", "false");
        jail.set_env("KUBE_HARDENER_HARDENING__WRITABLE_PATHS", "[/tmp, /cache]");
        jail.set_env("KUBE_HARDENER_HARDENING__EXCLUDED_NAMESPACES", "[]");
        jail.set_env("kube_hardener_server__audit", "true");
        let config = load(None).expect("loads");
        assert!(!config.hardening.settings.is_on(Setting::Capabilities));
        assert_eq!(config.hardening.writable_paths, vec!["/tmp", "/cache"]);
        assert!(config.hardening.excluded_namespaces.is_empty());
        assert!(config.server.audit, "names are case-insensitive");
        Ok(())
    });
}

#[test]
fn config_file_variable_is_not_a_key() {
    Jail::expect_with(|jail| {
        jail.set_env("KUBE_HARDENER_CONFIG", "/nonexistent/config.toml");
        assert_eq!(load(None).expect("loads"), Config::default());
        Ok(())
    });
}

#[test]
fn unknown_key_in_file_names_key_and_file() {
    Jail::expect_with(|jail| {
        jail.create_file("kh.toml", "[hardening]\nfs_grup = 2000\n")?;
        let error = load_err(Some("kh.toml"));
        let problem = &error.problems()[0];
        assert_eq!(problem.key, "hardening.fs_grup");
        assert_eq!(problem.origin, Origin::File("kh.toml".into()));
        assert_eq!(
            error.to_string(),
            "invalid configuration: key `hardening.fs_grup` (from file kh.toml): unknown key; \
             expected one of: settings, run_as_user, run_as_group, fs_group, writable_paths, \
             excluded_namespaces, allow_pod_opt_out, mutate_workloads"
        );
        Ok(())
    });
}

#[test]
fn unknown_top_level_table_in_file() {
    Jail::expect_with(|jail| {
        jail.create_file("kh.toml", "[hardenning]\nfs_group = 2000\n")?;
        let error = load_err(Some("kh.toml"));
        assert_eq!(error.problems()[0].key, "hardenning");
        assert!(error.to_string().contains("(from file kh.toml)"), "{error}");
        Ok(())
    });
}

#[test]
fn variables_without_a_table_separator_are_not_configuration() {
    Jail::expect_with(|jail| {
        // Service links Kubernetes injects for a Service named `kube-hardener`,
        // and other tools' variables sharing the prefix.
        jail.set_env("KUBE_HARDENER_SERVICE_HOST", "10.96.0.12");
        jail.set_env("KUBE_HARDENER_PORT", "tcp://10.96.0.12:443");
        jail.set_env("KUBE_HARDENER_PORT_443_TCP_PROTO", "tcp");
        jail.set_env("KUBE_HARDENER_CACHE", "/var/cache/kh");
        jail.set_env("KUBE_HARDENER_HARDENING__FS_GROUP", "2000");
        let config = Config::load(None).expect("service links are not keys");
        assert_eq!(config.hardening.fs_group, Some(2000));
        Ok(())
    });
}

#[test]
fn unknown_nested_key_in_env() {
    Jail::expect_with(|jail| {
        jail.set_env("KUBE_HARDENER_HARDENING__SETTINGS__SECCOMP", "false");
        let error = load_err(None);
        assert_eq!(error.problems()[0].key, "hardening.settings.seccomp");
        assert_eq!(
            error.problems()[0].origin,
            Origin::Env("KUBE_HARDENER_HARDENING__SETTINGS__SECCOMP".to_owned())
        );
        Ok(())
    });
}

#[test]
fn wrong_type_names_key_and_source() {
    Jail::expect_with(|jail| {
        jail.create_file("kh.toml", "[hardening.settings]\ncapabilities = \"no\"\n")?;
        let error = load_err(Some("kh.toml"));
        assert_eq!(
            error.to_string(),
            "invalid configuration: key `hardening.settings.capabilities` (from file kh.toml): \
             expected a boolean, found string \"no\""
        );

        jail.set_env("KUBE_HARDENER_SERVER__MAX_BODY_BYTES", "lots");
        let error = load_err(None);
        assert_eq!(error.problems()[0].key, "server.max_body_bytes");
        assert_eq!(
            error.problems()[0].origin,
            Origin::Env("KUBE_HARDENER_SERVER__MAX_BODY_BYTES".to_owned())
        );
        Ok(())
    });
}

#[test]
fn bad_enum_value_names_key() {
    Jail::expect_with(|jail| {
        jail.set_env("KUBE_HARDENER_SERVER__LOG_FORMAT", "xml");
        let error = load_err(None);
        assert_eq!(error.problems()[0].key, "server.log_format");
        assert!(error.to_string().contains("xml"), "{error}");
        Ok(())
    });
}

#[test]
fn zero_ids_are_rejected_with_their_source() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "kh.toml",
            "[hardening]\nrun_as_user = 0\nrun_as_group = 2147483648\n",
        )?;
        jail.set_env("KUBE_HARDENER_HARDENING__FS_GROUP", "0");
        let error = load_err(Some("kh.toml"));
        let rendered: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            vec![
                "key `hardening.run_as_user` (from file kh.toml): must be between 1 and \
                 2147483647, got 0 (0 is root: injecting it would defeat the purpose)",
                "key `hardening.run_as_group` (from file kh.toml): must be between 1 and \
                 2147483647, got 2147483648",
                "key `hardening.fs_group` (from environment variable \
                 KUBE_HARDENER_HARDENING__FS_GROUP): must be between 1 and 2147483647, got 0 \
                 (0 is root: injecting it would defeat the purpose)",
            ]
        );
        // several problems: one per line
        assert!(
            error
                .to_string()
                .starts_with("invalid configuration:\n  - key `hardening.run_as_user`")
        );
        Ok(())
    });
}

#[test]
fn negative_id_from_env() {
    Jail::expect_with(|jail| {
        jail.set_env("KUBE_HARDENER_HARDENING__RUN_AS_GROUP", "-5");
        let error = load_err(None);
        assert_eq!(error.problems()[0].key, "hardening.run_as_group");
        assert!(error.to_string().contains("got -5"), "{error}");
        Ok(())
    });
}

#[test]
fn writable_path_problems_name_the_list_element() {
    Jail::expect_with(|jail| {
        jail.set_env(
            "KUBE_HARDENER_HARDENING__WRITABLE_PATHS",
            "[/tmp, tmp, /a/../b, /c:d, /tmp/, /, /proc/x]",
        );
        let error = load_err(None);
        let got: Vec<(String, String)> = error
            .problems()
            .iter()
            .map(|p| (p.key.clone(), p.message.clone()))
            .collect();
        let env = Origin::Env("KUBE_HARDENER_HARDENING__WRITABLE_PATHS".to_owned());
        assert!(error.problems().iter().all(|p| p.origin == env), "{error}");
        assert_eq!(
            got,
            vec![
                (
                    "hardening.writable_paths[1]".into(),
                    "`tmp` must be an absolute path".into()
                ),
                (
                    "hardening.writable_paths[2]".into(),
                    "`/a/../b` must not contain `.` or `..` components".into()
                ),
                (
                    "hardening.writable_paths[3]".into(),
                    "`/c:d` must not contain `:`".into()
                ),
                (
                    "hardening.writable_paths[4]".into(),
                    "`/tmp/` is listed twice".into()
                ),
                (
                    "hardening.writable_paths[5]".into(),
                    "`/` must not be the root directory".into()
                ),
                (
                    "hardening.writable_paths[6]".into(),
                    "`/proc/x` must not be in /proc, /sys or /dev, which the container runtime sets up"
                        .into()
                ),
            ]
        );
        Ok(())
    });
}

#[test]
fn server_values_are_validated() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "kh.toml",
            r#"
            [server]
            listen = "localhost:8443"
            max_body_bytes = 0
            client_timeout_ms = 0
            own_namespace = "Kube_Hardener"
            "#,
        )?;
        let error = load_err(Some("kh.toml"));
        let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "server.listen",
                "server.max_body_bytes",
                "server.client_timeout_ms",
                "server.own_namespace"
            ]
        );
        assert!(
            error
                .problems()
                .iter()
                .all(|p| p.origin == Origin::File("kh.toml".into()))
        );
        assert!(
            error
                .to_string()
                .contains("`localhost:8443` is not an IP:port address"),
            "{error}"
        );
        Ok(())
    });
}

#[test]
fn excluded_namespaces_must_be_names() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "kh.toml",
            "[hardening]\nexcluded_namespaces = [\"ok\", \"Not OK\", \"\"]\n",
        )?;
        let error = load_err(Some("kh.toml"));
        let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "hardening.excluded_namespaces[1]",
                "hardening.excluded_namespaces[2]"
            ]
        );
        Ok(())
    });
}

#[test]
fn redirect_hosts_must_be_host_names_or_domain_wildcards() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "kh.toml",
            "[images]\nredirect_hosts = [\"blobs.example.com\", \"*.cdn.example\", \"10.0.0.7\", \
             \"*.com\", \"https://x.example\", \"Upper.example\", \"x.example:443\", \"\", \
             \"*\", \"a..b\", \"-a.example\"]\n",
        )?;
        let error = load_err(Some("kh.toml"));
        let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            (3..=10)
                .map(|i| format!("images.redirect_hosts[{i}]"))
                .collect::<Vec<_>>()
        );
        assert!(
            error
                .to_string()
                .contains("`*.com`: a wildcard needs a domain of at least two labels"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("`x.example:443` is not a lower-case host name"),
            "{error}"
        );
        jail.create_file(
            "many.toml",
            &format!(
                "[images]\nredirect_hosts = [{}]\n",
                vec!["\"a.example\""; 65].join(", ")
            ),
        )?;
        let error = load_err(Some("many.toml"));
        assert!(
            error.to_string().contains("at most 64 hosts, got 65"),
            "{error}"
        );
        // The embedded default passes (default_is_valid) and lists public storage hosts.
        let config = load(None).map_err(|e| e.to_string())?;
        assert!(
            config
                .images
                .redirect_hosts
                .contains(&"production.cloudflare.docker.com".to_owned())
        );
        Ok(())
    });
}

#[test]
fn missing_file_is_an_error_naming_it() {
    Jail::expect_with(|_| {
        let error = load_err(Some("does-not-exist.toml"));
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(
            error
                .to_string()
                .starts_with("cannot read configuration file does-not-exist.toml: "),
            "{error}"
        );
        Ok(())
    });
}

#[test]
fn directory_is_not_a_config_file() {
    Jail::expect_with(|jail| {
        jail.create_dir("conf.d")?;
        let error = load_err(Some("conf.d"));
        assert!(
            error.to_string().contains("conf.d: is a directory"),
            "{error}"
        );
        Ok(())
    });
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    Jail::expect_with(|jail| {
        jail.create_file("kh.toml", "[hardening]\nfs_group = = 3\n")?;
        let error = load_err(Some("kh.toml"));
        let message = error.to_string();
        assert!(message.contains("file kh.toml"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        Ok(())
    });
}

#[test]
fn oversized_file_is_refused() {
    Jail::expect_with(|jail| {
        let big = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
        jail.create_file("big.toml", &big)?;
        assert!(matches!(
            load_err(Some("big.toml")),
            ConfigError::TooLarge { .. }
        ));
        Ok(())
    });
}
