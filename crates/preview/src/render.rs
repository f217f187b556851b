//! Output formats. Each renderer returns the whole output as one string so
//! that nothing is printed before every object has been computed.

use std::fmt::Write as _;

use kube_hardener_engine::{Disposition, Outcome};
use serde::Serialize;
use serde_json::Value;

use crate::PreviewError;
use crate::process::{DocumentReport, ObjectReport};

/// `-o` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Per object: identity, patch operations, applied settings, warnings.
    #[default]
    Text,
    /// Per object: a `# Kind namespace/name (file: document N)` line, then
    /// its RFC 6902 patch as a JSON array (`[]` when unchanged).
    Patch,
    /// Every document, mutated or not, as multi-document YAML in input order.
    Yaml,
    /// Unified diff of each changed object's YAML, before and after.
    Diff,
    /// One JSON array with an entry per object.
    Json,
}

/// Renders the reports in `format`. `color` only affects `diff`.
pub fn render(
    reports: &[DocumentReport],
    format: Format,
    color: bool,
) -> Result<String, PreviewError> {
    render_owned(reports.to_vec(), format, color)
}

/// [`render`] taking the reports by value, which spares `yaml` a copy of
/// every document.
pub fn render_owned(
    reports: Vec<DocumentReport>,
    format: Format,
    color: bool,
) -> Result<String, PreviewError> {
    let mut output = Output::new(format);
    output.append(render_part(reports, format, color)?);
    Ok(output.finish())
}

/// The output of some consecutive documents: rendered on any thread, joined
/// in input order by [`Output`], so a preview never holds more than a few
/// pieces of its input as parsed documents.
#[derive(Debug, Default)]
pub struct Part {
    text: String,
    objects: usize,
    changed: usize,
    /// `json`: the entries, each already indented for the enclosing array.
    entries: Vec<String>,
}

impl Part {
    pub fn changed(&self) -> bool {
        self.changed > 0
    }
}

/// Renders the reports of some consecutive documents.
pub fn render_part(
    reports: Vec<DocumentReport>,
    format: Format,
    color: bool,
) -> Result<Part, PreviewError> {
    let objects = reports.iter().map(|r| r.objects.len()).sum();
    let changed = reports
        .iter()
        .flat_map(|r| &r.objects)
        .filter(|o| o.changed())
        .count();
    let mut part = Part {
        objects,
        changed,
        ..Part::default()
    };
    match format {
        Format::Text => part.text = text(&reports),
        Format::Patch => part.text = patch(&reports),
        Format::Diff => part.text = diff(&reports, color)?,
        Format::Json => part.entries = json_entries(&reports)?,
        Format::Yaml => {
            for report in reports {
                part.text.push_str("---\n");
                crate::yaml::write_document(&mut part.text, &report.into_mutated()?);
            }
        }
    }
    Ok(part)
}

/// The whole output, built from parts in input order. Parts are kept as they
/// came rather than appended to one buffer: a growing buffer of 80 MB would
/// briefly need 200 MB while it doubles.
#[derive(Debug)]
pub struct Output {
    format: Format,
    chunks: Vec<String>,
    objects: usize,
    changed: usize,
    entries: usize,
}

impl Output {
    pub fn new(format: Format) -> Self {
        let chunks = if format == Format::Json {
            vec!["[".to_owned()]
        } else {
            Vec::new()
        };
        Output {
            format,
            chunks,
            objects: 0,
            changed: 0,
            entries: 0,
        }
    }

    pub fn append(&mut self, part: Part) {
        self.objects += part.objects;
        self.changed += part.changed;
        if !part.text.is_empty() {
            // Kept until the end: the slack of a string grown by doubling
            // would be up to half of all the output held in memory.
            let mut text = part.text;
            text.shrink_to_fit();
            self.chunks.push(text);
        }
        if part.entries.is_empty() {
            return;
        }
        let mut joined = String::with_capacity(part.entries.iter().map(|e| e.len() + 2).sum());
        for entry in part.entries {
            joined.push_str(if self.entries == 0 { "\n" } else { ",\n" });
            joined.push_str(&entry);
            self.entries += 1;
        }
        self.chunks.push(joined);
    }

    pub fn changed(&self) -> bool {
        self.changed > 0
    }

    /// The output's pieces, in order, with its closing text added.
    pub fn finish_chunks(mut self) -> Vec<String> {
        match self.format {
            Format::Text => {
                let plural = if self.objects == 1 { "" } else { "s" };
                self.chunks.push(format!(
                    "{} object{plural}: {} would change, {} unchanged\n",
                    self.objects,
                    self.changed,
                    self.objects - self.changed
                ));
            }
            Format::Json => {
                self.chunks
                    .push(if self.entries == 0 { "]\n" } else { "\n]\n" }.to_owned());
            }
            Format::Patch | Format::Yaml | Format::Diff => {}
        }
        self.chunks
    }

    /// The whole output as one string.
    pub fn finish(self) -> String {
        self.finish_chunks().concat()
    }
}

fn objects(reports: &[DocumentReport]) -> impl Iterator<Item = &ObjectReport> {
    reports.iter().flat_map(|r| r.objects.iter())
}

/// Why an object is left as it is, in words.
pub fn unchanged_reason(object: &ObjectReport) -> String {
    object
        .outcome
        .disposition
        .reason()
        .unwrap_or_else(|| "already hardened".to_owned())
}

fn compact(value: &impl Serialize) -> String {
    // Serialising a serde_json::Value or a patch operation cannot fail: they
    // are trees of strings, numbers and maps with string keys.
    serde_json::to_string(value).unwrap_or_default()
}

fn operation_line(operation: &json_patch::PatchOperation) -> String {
    let Ok(Value::Object(op)) = serde_json::to_value(operation) else {
        return compact(operation);
    };
    let field = |name: &str| {
        op.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut line = format!("{:<7} {}", field("op"), field("path"));
    if let Some(from) = op.get("from").and_then(Value::as_str) {
        let _ = write!(line, " from {from}");
    }
    if let Some(value) = op.get("value") {
        let _ = write!(line, " {}", compact(value));
    }
    line
}

fn text(reports: &[DocumentReport]) -> String {
    let mut out = String::new();
    for object in objects(reports) {
        let _ = writeln!(out, "{} ({})", object.identity(), object.location);
        let Outcome {
            patch,
            applied,
            warnings,
            ..
        } = &object.outcome;
        if patch.0.is_empty() {
            let _ = writeln!(out, "  unchanged ({})", unchanged_reason(object));
        } else {
            let _ = writeln!(out, "  patch:");
            for operation in &patch.0 {
                let _ = writeln!(out, "    {}", operation_line(operation));
            }
        }
        if !applied.is_empty() {
            let names: Vec<&str> = applied.iter().map(|s| s.name()).collect();
            let _ = writeln!(out, "  applied: {}", names.join(", "));
        }
        for warning in warnings {
            let _ = writeln!(out, "  warning: {warning}");
        }
    }
    out
}

fn patch(reports: &[DocumentReport]) -> String {
    let mut out = String::new();
    for object in objects(reports) {
        let _ = writeln!(out, "# {} ({})", object.identity(), object.location);
        if object.outcome.patch.0.is_empty() {
            out.push_str("[]\n");
            continue;
        }
        out.push_str("[\n");
        let last = object.outcome.patch.0.len() - 1;
        for (index, operation) in object.outcome.patch.0.iter().enumerate() {
            let comma = if index == last { "" } else { "," };
            let _ = writeln!(out, "  {}{comma}", compact(operation));
        }
        out.push_str("]\n");
    }
    out
}

fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    crate::yaml::write_document(&mut out, value);
    out
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn diff(reports: &[DocumentReport], color: bool) -> Result<String, PreviewError> {
    let mut out = String::new();
    let pairs = reports
        .iter()
        .flat_map(|report| report.objects.iter().map(move |object| (report, object)));
    for (report, object) in pairs {
        let Some(mutated) = report.mutated_object(object)? else {
            continue;
        };
        let original = report.original_object(object);
        let before = to_yaml(original);
        let after = to_yaml(&mutated);
        let header = format!("{} ({})", object.identity(), object.location);
        let unified = similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{header} as written"),
                &format!("{header} hardened"),
            )
            .to_string();
        if color {
            for line in unified.lines() {
                let style = if line.starts_with("---") || line.starts_with("+++") {
                    BOLD
                } else if line.starts_with("@@") {
                    CYAN
                } else if line.starts_with('-') {
                    RED
                } else if line.starts_with('+') {
                    GREEN
                } else {
                    ""
                };
                if style.is_empty() {
                    let _ = writeln!(out, "{line}");
                } else {
                    let _ = writeln!(out, "{style}{line}{RESET}");
                }
            }
        } else {
            out.push_str(&unified);
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct JsonWarning<'a> {
    kind: &'static str,
    field: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonObject<'a> {
    file: &'a str,
    document: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<usize>,
    api_version: Option<&'a str>,
    kind: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    disposition: &'static str,
    changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    patch: &'a json_patch::Patch,
    applied: Vec<&'static str>,
    warnings: Vec<JsonWarning<'a>>,
}

/// One pretty-printed entry per object, indented as an element of the
/// top-level array (exactly what pretty-printing the whole array gives).
fn json_entries(reports: &[DocumentReport]) -> Result<Vec<String>, PreviewError> {
    objects(reports)
        .map(|object| {
            let outcome = &object.outcome;
            JsonObject {
                file: &object.location.file,
                document: object.location.document,
                item: object.location.item,
                api_version: object.api_version.as_deref(),
                kind: &object.kind,
                namespace: object.namespace.as_deref(),
                name: object.name.as_deref(),
                disposition: Disposition::label(&outcome.disposition),
                changed: object.changed(),
                reason: (!object.changed()).then(|| unchanged_reason(object)),
                patch: &outcome.patch,
                applied: outcome.applied.iter().map(|s| s.name()).collect(),
                warnings: outcome
                    .warnings
                    .iter()
                    .map(|w| JsonWarning {
                        kind: w.kind.label(),
                        field: &w.field,
                        message: &w.message,
                    })
                    .collect(),
            }
        })
        .map(|entry| {
            let pretty =
                serde_json::to_string_pretty(&entry).map_err(|e| PreviewError::Render {
                    what: "JSON output".to_owned(),
                    message: e.to_string(),
                })?;
            let mut indented = String::with_capacity(pretty.len() + pretty.len() / 8);
            for (index, line) in pretty.lines().enumerate() {
                if index > 0 {
                    indented.push('\n');
                }
                indented.push_str("  ");
                indented.push_str(line);
            }
            Ok(indented)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Location;
    use kube_hardener_engine::{Setting, Warning, WarningKind};
    use serde_json::json;

    fn location(document: usize, item: Option<usize>) -> Location {
        Location {
            file: "in.yaml".to_owned(),
            document,
            item,
        }
    }

    /// A hand-made outcome, so the renderers are tested independently of
    /// what the engine decides.
    fn changed_pod() -> DocumentReport {
        let original = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/securityContext", "value": {"runAsNonRoot": true}},
            {"op": "add", "path": "/metadata/annotations", "value": {"kube-hardener.io/applied": "runAsNonRoot"}}
        ]))
        .expect("patch");
        DocumentReport {
            location: location(1, None),
            original,
            objects: vec![ObjectReport {
                location: location(1, None),
                kind: "Pod".to_owned(),
                api_version: Some("v1".to_owned()),
                namespace: Some("default".to_owned()),
                name: Some("web".to_owned()),
                outcome: Outcome {
                    disposition: Disposition::Hardened,
                    patch,
                    applied: vec![Setting::RunAsNonRoot],
                    warnings: vec![Warning {
                        kind: WarningKind::Privileged,
                        field: "spec.containers[0].securityContext.privileged".to_owned(),
                        message: "privileged container".to_owned(),
                    }],
                },
            }],
            is_list: false,
        }
    }

    fn service_list() -> DocumentReport {
        let original = json!({"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}}]});
        DocumentReport {
            location: location(2, None),
            original,
            objects: vec![ObjectReport {
                location: location(2, Some(1)),
                kind: "Service".to_owned(),
                api_version: Some("v1".to_owned()),
                namespace: Some("default".to_owned()),
                name: Some("svc".to_owned()),
                outcome: Outcome {
                    disposition: Disposition::UnsupportedKind("Service".to_owned()),
                    ..Outcome::default()
                },
            }],
            is_list: true,
        }
    }

    fn reports() -> Vec<DocumentReport> {
        vec![changed_pod(), service_list()]
    }

    #[test]
    fn text_lists_operations_settings_warnings_and_reasons() {
        let out = render(&reports(), Format::Text, false).expect("renders");
        assert_eq!(
            out,
            "Pod default/web (in.yaml: document 1)\n\
             \x20 patch:\n\
             \x20   add     /spec/securityContext {\"runAsNonRoot\":true}\n\
             \x20   add     /metadata/annotations {\"kube-hardener.io/applied\":\"runAsNonRoot\"}\n\
             \x20 applied: runAsNonRoot\n\
             \x20 warning: spec.containers[0].securityContext.privileged: privileged container\n\
             Service default/svc (in.yaml: document 2, item 1)\n\
             \x20 unchanged (Service is not a Pod or workload)\n\
             2 objects: 1 would change, 1 unchanged\n"
        );
    }

    #[test]
    fn patch_output_is_one_parseable_array_per_object() {
        let out = render(&reports(), Format::Patch, false).expect("renders");
        let mut arrays = Vec::new();
        let mut current = String::new();
        for line in out.lines() {
            if line.starts_with('#') {
                if !current.is_empty() {
                    arrays.push(std::mem::take(&mut current));
                }
            } else {
                current.push_str(line);
            }
        }
        arrays.push(current);
        let parsed: Vec<Value> = arrays
            .iter()
            .map(|a| serde_json::from_str(a).expect("valid JSON"))
            .collect();
        assert_eq!(parsed[0].as_array().map(Vec::len), Some(2));
        assert_eq!(parsed[1], json!([]));
        assert!(out.starts_with("# Pod default/web (in.yaml: document 1)\n[\n  {\"op\":\"add\""));
    }

    #[test]
    fn yaml_keeps_lists_and_order() {
        let out = render(&reports(), Format::Yaml, false).expect("renders");
        assert_eq!(
            render_owned(reports(), Format::Yaml, false).expect("renders"),
            out
        );
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&out)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(docs[1]["kind"], "List");
        assert_eq!(docs[1]["items"][0]["kind"], "Service");
    }

    #[test]
    fn diff_shows_only_changed_objects_and_colours_on_request() {
        let plain = render(&reports(), Format::Diff, false).expect("renders");
        assert!(plain.starts_with("--- Pod default/web (in.yaml: document 1) as written\n+++ Pod default/web (in.yaml: document 1) hardened\n@@"), "{plain}");
        assert!(
            plain.contains("\n+spec:\n") || plain.contains("\n+  securityContext:\n"),
            "{plain}"
        );
        assert!(!plain.contains("Service"));
        assert!(!plain.contains('\x1b'));

        let coloured = render(&reports(), Format::Diff, true).expect("renders");
        assert!(coloured.contains("\x1b[32m+"), "{coloured}");
        assert!(coloured.contains("\x1b[36m@@"), "{coloured}");
    }

    #[test]
    fn json_has_one_entry_per_object_with_all_fields() {
        let out = render(&reports(), Format::Json, false).expect("renders");
        let parsed: Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(
            parsed[0],
            json!({
                "file": "in.yaml", "document": 1, "apiVersion": "v1", "kind": "Pod",
                "namespace": "default", "name": "web", "disposition": "hardened", "changed": true,
                "patch": [
                    {"op": "add", "path": "/spec/securityContext", "value": {"runAsNonRoot": true}},
                    {"op": "add", "path": "/metadata/annotations", "value": {"kube-hardener.io/applied": "runAsNonRoot"}}
                ],
                "applied": ["runAsNonRoot"],
                "warnings": [{"kind": "privileged", "field": "spec.containers[0].securityContext.privileged", "message": "privileged container"}]
            })
        );
        assert_eq!(parsed[1]["item"], 1);
        assert_eq!(parsed[1]["disposition"], "unsupported-kind");
        assert_eq!(parsed[1]["reason"], "Service is not a Pod or workload");
    }

    #[test]
    fn reasons_for_every_disposition() {
        let mut object = changed_pod().objects.remove(0);
        let cases = [
            (Disposition::Hardened, "already hardened"),
            (
                Disposition::ExcludedNamespace("kube-system".into()),
                "namespace kube-system is excluded by the configuration",
            ),
            (
                Disposition::SkippedAll,
                "opted out with kube-hardener.io/skip: all",
            ),
            (
                Disposition::UnsupportedKind("Secret".into()),
                "Secret is not a Pod or workload",
            ),
        ];
        for (disposition, reason) in cases {
            object.outcome.disposition = disposition;
            assert_eq!(unchanged_reason(&object), reason);
        }
    }
}
