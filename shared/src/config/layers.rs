//! The layers of a configuration, later wins: `config/default.toml` (compiled
//! in) → the `--config` file → `OVERWATCH__SECTION__KEY` environment variables.
//!
//! A section chosen by `kind` (a tagged variant such as `cold_storage`) is
//! replaced whole when a later layer names another kind, so the earlier kind's
//! fields do not linger as unknown keys of the new one.

use std::path::Path;

use super::{ConfigError, ENV_PREFIX};

const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The merged layers as one TOML table, before it is typed.
pub(super) fn merged(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<toml::Table, ConfigError> {
    let mut root: toml::Table = DEFAULT_TOML
        .parse()
        .map_err(|e| ConfigError::new("<defaults>", format!("{e}")))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let key = toml_error_key(&text, &e);
            ConfigError::new(
                key,
                format!("{} is not valid TOML: {}", path.display(), e.message()),
            )
        })?;
        merge(&mut root, table);
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // A variant's `kind` first: it clears the fields of the kind it replaces,
    // and the fields set beside it then belong to the new kind.
    env.sort_by_key(|(k, _)| (!k.ends_with("__KIND"), k.clone()));
    for (name, value) in env {
        apply_env(&mut root, &name, &value)?;
    }
    Ok(root)
}

/// serde reports an unknown field at its parent's path; name the field itself.
pub(super) fn unknown_field_key(path: &str, message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let field = &rest[..rest.find('`')?];
    Some(if path == "." || path.is_empty() {
        field.to_string()
    } else if path == field || path.ends_with(&format!(".{field}")) {
        path.to_string()
    } else {
        format!("{path}.{field}")
    })
}

/// Best effort: the key on the line a TOML syntax error points at.
fn toml_error_key(text: &str, err: &toml::de::Error) -> String {
    err.span()
        .and_then(|span| {
            let start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line = text[start..].lines().next()?;
            let key = line.split('=').next()?.trim();
            (!key.is_empty()).then(|| key.to_string())
        })
        .unwrap_or_else(|| "--config".to_string())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !other_kind(b, &o) => {
                merge(b, o)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `over` names a different `kind` than `base`: it replaces the section whole.
fn other_kind(base: &toml::Table, over: &toml::Table) -> bool {
    matches!((base.get("kind"), over.get("kind")), (Some(a), Some(b)) if a != b)
}

fn apply_env(root: &mut toml::Table, name: &str, raw: &str) -> Result<(), ConfigError> {
    let parts: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let key = parts.join(".");
    let malformed = || {
        ConfigError::new(
            key.clone(),
            format!("environment variable {name} must look like OVERWATCH__SECTION__KEY"),
        )
    };
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(malformed());
    }
    let Some((last, sections)) = parts.split_last() else {
        return Err(malformed());
    };
    let mut table = root;
    for s in sections {
        let entry = table
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::new(
                    key,
                    format!("{name}: `{s}` is not a section"),
                ))
            }
        };
    }
    let bad = |what: &str| ConfigError::new(key.clone(), format!("{name}={raw:?} is not {what}"));
    let value = match table.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
        }
        Some(toml::Value::Array(_)) | Some(toml::Value::Table(_)) | None => {
            parse_fragment(raw).unwrap_or_else(|| toml::Value::String(raw.to_string()))
        }
        Some(toml::Value::Datetime(_)) => parse_fragment(raw).ok_or_else(|| bad("a datetime"))?,
    };
    if last == "kind" && table.get("kind").is_some_and(|k| *k != value) {
        table.clear();
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_fragment(raw: &str) -> Option<toml::Value> {
    let mut t: toml::Table = format!("v = {raw}").parse().ok()?;
    t.remove("v")
}
