//! The canonical manifest text (spec §4.7)
//!
//! The manifest is first turned into TOML values by its serde derive (the one schema; `toml` is
//! built with `preserve_order`, so keys keep the struct's order), and this module only lays the
//! values out: a table's plain keys first, then its sub-tables and arrays of tables in order,
//! `[ext]` as the `toml` crate writes it. Nothing here names a manifest field but `ext`.

use toml::Value;

/// The free-form extension table, written by the `toml` crate with sorted keys (spec §4.7, 5)
const EXTENSIONS: &str = "ext";

/// The canonical text of a manifest's TOML table
pub(super) fn canonical_text(table: &toml::Table) -> String {
    let mut out = String::new();
    write_table(&mut out, "", table);
    out
}

/// Tables and non-empty arrays of tables are written as sections after the plain keys
fn is_section(v: &Value) -> bool {
    match v {
        Value::Table(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_table),
        _ => false,
    }
}

fn write_table(out: &mut String, path: &str, table: &toml::Table) {
    for (key, value) in table.iter().filter(|(_, v)| !is_section(v)) {
        out.push_str(key);
        out.push_str(" = ");
        write_value(out, value);
        out.push('\n');
    }
    for (key, value) in table.iter().filter(|(_, v)| is_section(v)) {
        let path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match value {
            Value::Table(t) if path == EXTENSIONS && t.is_empty() => {}
            Value::Table(_) if path == EXTENSIONS => {
                let mut wrapper = toml::Table::new();
                wrapper.insert(path, sorted(value));
                // Serializing a table of plain TOML values cannot fail.
                let text = toml::to_string(&wrapper).unwrap_or_default();
                out.push('\n');
                out.push_str(&text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            Value::Table(t) => {
                out.push_str(&format!("\n[{path}]\n"));
                write_table(out, &path, t);
            }
            Value::Array(items) => {
                for item in items.iter().filter_map(Value::as_table) {
                    out.push_str(&format!("\n[[{path}]]\n"));
                    write_table(out, &path, item);
                }
            }
            _ => {}
        }
    }
}

/// A plain value: basic strings, decimal integers, shortest round-trip floats; an array one
/// item per line (`[]` when empty)
fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(&toml_string(s)),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&toml_float(*f)),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Datetime(d) => out.push_str(&d.to_string()),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push_str("[\n");
            for item in items {
                out.push_str("    ");
                write_value(out, item);
                out.push_str(",\n");
            }
            out.push(']');
        }
        // Inline tables do not occur outside `[ext]`; written as TOML would.
        Value::Table(_) => out.push_str(&value.to_string()),
    }
}

/// A TOML basic string with every character TOML requires escaped
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A copy with every table's keys in sorted order, so the text does not depend
/// on whether `toml` was built with `preserve_order`
fn sorted(v: &Value) -> Value {
    match v {
        Value::Table(t) => {
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            Value::Table(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&t[k.as_str()])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        v => v.clone(),
    }
}

/// The shortest decimal that reads back as the same `f64`, always TOML-float-shaped
fn toml_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        s + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_string_escapes_round_trip_through_the_toml_parser() {
        let nasty = "quote \" backslash \\ nl \n tab \t cr \r bell \u{7} del \u{7f} é 🐕";
        let doc = format!("x = {}", toml_string(nasty));
        let table: toml::Table = doc.parse().unwrap();
        assert_eq!(table["x"].as_str(), Some(nasty));
    }

    #[test]
    fn toml_float_round_trips_exactly() {
        for x in [
            0.001,
            1.0,
            1e-5,
            1e20,
            123.0,
            -0.0,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
        ] {
            let doc = format!("x = {}", toml_float(x));
            let table: toml::Table = doc.parse().unwrap();
            let back = table["x"].as_float().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:?} -> {doc}");
        }
    }
}
