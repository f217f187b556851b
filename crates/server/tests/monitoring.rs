//! The chart's dashboard and alerts query only what the server exports: every
//! metric name, label name and exact label value in their PromQL is checked
//! against a live `/metrics` scrape. A renamed metric or label fails here,
//! not silently on an operator's empty dashboard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::start_default;

const REVIEW: &str = include_str!("fixtures/pod-create-review.json");

/// Labels Prometheus attaches to every scraped series (from the target and
/// the ServiceMonitor), and `up`, which it makes itself.
const TARGET_LABELS: [&str; 6] = [
    "job",
    "namespace",
    "pod",
    "instance",
    "service",
    "container",
];
const PROMETHEUS_METRICS: [&str; 1] = ["up"];

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/kube-hardener")
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
    Other,
}

fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let mut value = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    value.push(ch);
                }
                i += 1;
            }
            i += 1;
            out.push(Token::Str(value));
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '$' {
            // A Grafana variable (`$__rate_interval`).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Other);
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`5m`, `0.99`, `1e3`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Other);
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// A label matcher: the label, and its value when matched exactly (`=`).
type Matcher = (String, Option<String>);

/// What one PromQL expression asks of the exporter.
#[derive(Debug, Default)]
struct Query {
    /// Metric names, each with its matchers.
    selectors: Vec<(String, Vec<Matcher>)>,
    /// Labels named in `by (...)` / `without (...)`.
    grouping: Vec<String>,
}

fn parse(expr: &str) -> Query {
    let tokens = tokens(expr);
    let mut query = Query::default();
    let mut i = 0;
    while i < tokens.len() {
        match (&tokens[i], tokens.get(i + 1)) {
            (Token::Ident(word), Some(Token::Punct('('))) if word == "by" || word == "without" => {
                i += 2;
                while let Some(token) = tokens.get(i) {
                    i += 1;
                    match token {
                        Token::Ident(label) => query.grouping.push(label.clone()),
                        Token::Punct(')') => break,
                        _ => {}
                    }
                }
            }
            (Token::Ident(metric), Some(Token::Punct('{'))) => {
                i += 2;
                let mut matchers = Vec::new();
                while let Some(token) = tokens.get(i) {
                    match token {
                        Token::Punct('}') => {
                            i += 1;
                            break;
                        }
                        Token::Ident(label) => {
                            // label, operator (one or two characters), string
                            let mut j = i + 1;
                            let mut op = String::new();
                            while let Some(Token::Punct(c)) = tokens.get(j) {
                                op.push(*c);
                                j += 1;
                            }
                            let value = match tokens.get(j) {
                                Some(Token::Str(value)) => value.clone(),
                                other => panic!("{expr}: matcher {label} then {other:?}"),
                            };
                            matchers.push((label.clone(), (op == "=").then_some(value)));
                            i = j + 1;
                        }
                        _ => i += 1,
                    }
                }
                query.selectors.push((metric.clone(), matchers));
            }
            (Token::Ident(metric), next)
                if !matches!(next, Some(Token::Punct('(')))
                    && metric.contains('_')
                    && !matches!(metric.as_str(), "group_left" | "group_right") =>
            {
                panic!("{expr}: {metric} without a label selector (job and namespace expected)");
            }
            _ => i += 1,
        }
    }
    query
}

/// Series of a text exposition: metric name → label name → values seen.
fn exported(metrics: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, _value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let entry = out.entry(name.to_owned()).or_default();
        for token in labels_of(labels) {
            entry.entry(token.0).or_default().insert(token.1);
        }
    }
    out
}

fn labels_of(labels: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (label, rest) in labels.split(",").filter_map(|pair| pair.split_once('=')) {
        out.push((label.to_owned(), rest.trim_matches('"').to_owned()));
    }
    out
}

/// The `expr:` of every alert, with the chart's template actions replaced by a
/// placeholder (they fill in job, namespace and thresholds).
fn alert_expressions() -> Vec<String> {
    let template = std::fs::read_to_string(chart().join("templates/prometheusrule.yaml")).unwrap();
    template
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(|expr| without_actions(expr.trim()))
        .collect()
}

fn without_actions(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        out.push_str("TEMPLATED");
        match rest[start..].find("}}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => panic!("unclosed action in {text}"),
        }
    }
    out.push_str(rest);
    out
}

fn dashboard_expressions() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

#[test]
fn the_query_scanner_sees_names_labels_and_values() {
    let query = parse(
        r#"sum by (namespace, pod) (increase(kube_hardener_reviews_total{job="j",outcome="error",pod=~"a.*"}[10m])) > 0"#,
    );
    assert_eq!(query.grouping, ["namespace", "pod"]);
    assert_eq!(
        query.selectors,
        [(
            "kube_hardener_reviews_total".to_owned(),
            vec![
                ("job".to_owned(), Some("j".to_owned())),
                ("outcome".to_owned(), Some("error".to_owned())),
                ("pod".to_owned(), None),
            ]
        )]
    );
    let exported = exported(
        "# TYPE x counter\nx_total{outcome=\"error\",operation=\"CREATE\"} 0\nx_bucket{le=\"+Inf\"} 1\n# EOF\n",
    );
    assert!(exported["x_total"]["outcome"].contains("error"));
    assert!(exported["x_bucket"]["le"].contains("+Inf"));
}

#[actix_web::test]
async fn every_metric_and_label_the_dashboard_and_alerts_query_is_exported() {
    let server = start_default().await;
    // A patched review with a warning and a malformed request: the labelled
    // families that exist only after an event get their series.
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    assert_eq!(server.post_review(&review).await.status, 200);
    server.request("POST", "/mutate", b"nope").await;
    let metrics = server.metrics().await;
    let exported = exported(&metrics);
    server.stop().await.unwrap();

    let alerts = alert_expressions();
    let panels = dashboard_expressions();
    assert_eq!(alerts.len(), 7, "alert rules in prometheusrule.yaml");
    assert!(panels.len() >= 12, "dashboard queries: {panels:?}");

    let mut problems = Vec::new();
    for expr in alerts.iter().chain(&panels) {
        let query = parse(expr);
        assert!(!query.selectors.is_empty(), "no metric in {expr}");
        let mut labels_in_scope: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
        for (metric, matchers) in &query.selectors {
            if PROMETHEUS_METRICS.contains(&metric.as_str()) {
                continue;
            }
            let Some(series) = exported.get(metric) else {
                problems.push(format!("{expr}: {metric} is not exported"));
                continue;
            };
            labels_in_scope.extend(series.keys().map(String::as_str));
            for (label, value) in matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                match (series.get(label), value) {
                    (None, _) => problems.push(format!("{expr}: {metric} has no label {label}")),
                    (Some(values), Some(value)) if !values.contains(value) => problems.push(
                        format!("{expr}: {metric} never has {label}={value:?} (has {values:?})"),
                    ),
                    _ => {}
                }
            }
        }
        for label in &query.grouping {
            if !labels_in_scope.contains(label.as_str()) {
                problems.push(format!(
                    "{expr}: grouping label {label} is on no queried series"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n\nexported:\n{metrics}");
}
