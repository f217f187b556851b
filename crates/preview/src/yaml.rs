//! Block-style YAML for JSON values, in the layout `kubectl` prints
//! (sequences at their key's indentation).
//!
//! Written for this crate rather than going through a general serializer
//! because it is several times faster on large inputs, and because the only
//! input is a JSON tree: every scalar is a string, number, bool or null, so
//! the one delicate part is deciding when a string must be quoted. A string is
//! left plain only when no YAML 1.1 or 1.2 reader could take it for anything
//! else; otherwise it is written double-quoted with JSON escapes, which YAML
//! reads identically.

use std::fmt::Write as _;

use serde_json::Value;

/// Appends `value` as one YAML document body (no `---`).
pub fn write_document(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) if !map.is_empty() => write_map(out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(out, items, 0),
        scalar => {
            write_scalar(out, scalar, 2);
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, width: usize) {
    out.extend(std::iter::repeat_n(' ', width));
}

/// A map whose first key starts at the cursor (already indented), the other
/// keys at `width`.
fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, width: usize) {
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 {
            indent(out, width);
        }
        if is_plain_safe(key) {
            out.push_str(key);
        } else {
            write_quoted(out, key);
        }
        out.push(':');
        match value {
            Value::Object(child) if !child.is_empty() => {
                out.push('\n');
                indent(out, width + 2);
                write_map(out, child, width + 2);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                indent(out, width);
                write_seq(out, items, width);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, width + 2);
                out.push('\n');
            }
        }
    }
}

/// A sequence whose first `- ` starts at the cursor, the others at `width`.
fn write_seq(out: &mut String, items: &[Value], width: usize) {
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            indent(out, width);
        }
        out.push_str("- ");
        match item {
            Value::Object(child) if !child.is_empty() => write_map(out, child, width + 2),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, width + 2),
            scalar => {
                write_scalar(out, scalar, width + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar or empty collection; `width` is the indentation of a block
/// string's lines.
fn write_scalar(out: &mut String, value: &Value, width: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s, width),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn write_string(out: &mut String, s: &str, width: usize) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if is_literal_block_safe(s) {
        // Scripts and config files stay readable as literal blocks.
        out.push_str(if s.ends_with('\n') { "|" } else { "|-" });
        let body = s.strip_suffix('\n').unwrap_or(s);
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                indent(out, width);
                out.push_str(line);
            }
        }
    } else {
        write_quoted(out, s);
    }
}

fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // C0, DEL, C1, the BOM and the YAML line/paragraph separators
            // are escaped so the output is plain printable text.
            c if c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Words a YAML 1.1 or 1.2 reader resolves to null or a boolean.
const RESERVED: &[&str] = &[
    "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n",
];

/// True when `s` written bare reads back as the same string everywhere.
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Numbers, signs and `.inf`/`.nan`-like forms start with these; a string
    // starting with them is quoted rather than second-guessing each reader's
    // number grammar (YAML 1.1 also has octal, sexagesimal and `1_000`).
    if !(first.is_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if RESERVED.iter().any(|word| s.eq_ignore_ascii_case(word)) {
        return false;
    }
    if s.ends_with(' ') || s.ends_with(':') || s.contains(": ") || s.contains(" #") {
        return false;
    }
    // Only block style is written, where `[]{},'"` after the first
    // character are ordinary text.
    !s.chars()
        .any(|c| c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}' | '\u{85}'))
}

/// True when `s` can be written as a `|` / `|-` literal block and read back
/// unchanged: several lines, at most one trailing newline, no line starting
/// with a space or tab (that would need an indentation indicator), no
/// whitespace-only lines, no other control characters.
fn is_literal_block_safe(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    if !body.contains('\n') || body.ends_with('\n') || body.starts_with([' ', '\t']) {
        return false;
    }
    let bad_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}' | '\u{85}')
    };
    if body.chars().any(bad_char) {
        return false;
    }
    body.split('\n')
        .all(|line| line.is_empty() || !line.chars().all(|c| c == ' ' || c == '\t'))
        && body
            .split('\n')
            .next()
            .is_some_and(|first| !first.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn to_yaml(value: &Value) -> String {
        let mut out = String::new();
        write_document(&mut out, value);
        out
    }

    fn read(text: &str) -> Value {
        Value::deserialize(serde_norway::Deserializer::from_str(text))
            .unwrap_or_else(|e| panic!("not valid YAML ({e}):\n{text}"))
    }

    const TRICKY: &[&str] = &[
        "",
        " ",
        " a",
        "a ",
        "a",
        "true",
        "True",
        "yes",
        "No",
        "ON",
        "off",
        "y",
        "N",
        "~",
        "null",
        "Null",
        "1",
        "-1",
        "+1",
        "1.5",
        ".5",
        "1e3",
        "0x1F",
        "0o17",
        "0777",
        "1_000",
        "12:30",
        ".inf",
        "-.inf",
        ".NaN",
        "2001-12-14",
        "-",
        "- a",
        "--",
        "---",
        "...",
        "a: b",
        "a:b",
        "a #b",
        "a#b",
        "#x",
        "key:",
        "?",
        "? a",
        ":",
        ",",
        "[x]",
        "{x}",
        "*a",
        "&a",
        "!t",
        "%p",
        "@x",
        "`x",
        "|",
        ">",
        "'",
        "\"",
        "a'b",
        "a\"b",
        "back\\slash",
        "tab\there",
        "\ttab",
        "multi\nline",
        "multi\nline\n",
        "trailing\n\n",
        "\nleading",
        " indented\nblock",
        "ends with space \nx",
        "blank\n \nline",
        "cr\r\nlf",
        "bell\u{7}",
        "del\u{7f}",
        "nel\u{85}x",
        "bom\u{feff}",
        "ls\u{2028}",
        "ünïcode",
        "日本語",
        "emoji 🚀",
        "/tmp",
        "/var/cache/nginx",
        "kube-hardener.io/applied",
        "runAsNonRoot,seccompProfile",
        "registry.example.com/web:1.2",
        "--upstream=127.0.0.1:8080",
        "0 3 * * *",
        "hello: world # not a comment",
        "#!/bin/sh\necho hi\n",
        "x\n\ny\n",
    ];

    #[test]
    fn every_tricky_string_round_trips_as_value_and_key() {
        for s in TRICKY {
            let value = json!({ *s: *s, "list": [*s, {*s: [*s]}], "nested": {"k": *s} });
            let text = to_yaml(&value);
            assert_eq!(read(&text), value, "{s:?} written as:\n{text}");
        }
    }

    /// Strings mixing the characters that matter to YAML readers.
    fn yamlish() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "[ a-zA-Z0-9:#\\-?,\\[\\]{}&*!|>'\"%@`~.+\n\t\r/_\u{7f}\u{85}\u{feff}é]{0,12}",
        )
        .unwrap_or_else(|e| panic!("regex: {e}"))
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_round_trip(key in yamlish(), value in yamlish(), any in ".{0,20}") {
            let doc = json!({ key.clone(): value, "any": any, "list": [key] });
            proptest::prop_assert_eq!(read(&to_yaml(&doc)), doc);
        }
    }

    #[test]
    fn scalars_collections_and_numbers_round_trip() {
        let value = json!({
            "null": null, "t": true, "f": false, "int": -42, "big": 18446744073709551615u64,
            "float": 1.5, "tiny": 1e-7, "emptyMap": {}, "emptyList": [], "listOfLists": [[1, 2], [], [[3]]],
            "listOfMaps": [{"a": 1, "b": {"c": [1]}}, {}],
        });
        assert_eq!(read(&to_yaml(&value)), value);
        for top in [
            json!("text"),
            json!(3),
            json!(null),
            json!([]),
            json!({}),
            json!([1, [2]]),
        ] {
            assert_eq!(read(&to_yaml(&top)), top);
        }
    }

    #[test]
    fn layout_matches_kubectl() {
        let value = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "annotations": {"kube-hardener.io/applied": "runAsNonRoot"}},
            "spec": {
                "containers": [{"name": "app", "args": ["--port", "8080"], "securityContext": {"capabilities": {"drop": ["ALL"]}}}],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
            "data": {"script": "#!/bin/sh\necho hi\n", "replicas": "3"},
        });
        assert_eq!(
            to_yaml(&value),
            "apiVersion: v1\n\
             kind: Pod\n\
             metadata:\n\
             \x20 name: web\n\
             \x20 annotations:\n\
             \x20   kube-hardener.io/applied: runAsNonRoot\n\
             spec:\n\
             \x20 containers:\n\
             \x20 - name: app\n\
             \x20   args:\n\
             \x20   - \"--port\"\n\
             \x20   - \"8080\"\n\
             \x20   securityContext:\n\
             \x20     capabilities:\n\
             \x20       drop:\n\
             \x20       - ALL\n\
             \x20 volumes:\n\
             \x20 - name: tmp\n\
             \x20   emptyDir: {}\n\
             data:\n\
             \x20 script: |\n\
             \x20   #!/bin/sh\n\
             \x20   echo hi\n\
             \x20 replicas: \"3\"\n"
        );
    }
}
