//! Category schemas: loaded from the files in `schemas/`, the single source of truth for rows,
//! Kafka topics and ClickHouse DDL.
//!
//! A schema file is TOML: `category`, `event_time`, `snapshot_key`, `sort_key`, `kafka_key` and a
//! list of `[[field]]` tables with `name`, `dtype`, `nullable` (default false), `low_cardinality`,
//! `unit`, `allowed` and `description`. Every nullable field gets a companion `<field>_state`
//! column whose value is `ok` or `missing`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Suffix of the quarantine topic and table of a category (seed, DataOps rule).
pub const UNQUALIFIED_SUFFIX: &str = "_unqualified";
/// Suffix of the state column of a nullable field.
pub const STATE_SUFFIX: &str = "_state";
/// Name of the deterministic row id column that every category row carries.
pub const ROW_ID: &str = "row_id";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "schema {path}: field {field}: unknown dtype {dtype:?} (known: string, float64, int64, uint32, timestamp)"
    )]
    UnknownDtype {
        path: PathBuf,
        field: String,
        dtype: String,
    },
    #[error("schema {path}: field {field} is declared twice")]
    DuplicateField { path: PathBuf, field: String },
    #[error("schema {path}: field {field}: {message}")]
    InvalidField {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("schema {path}: category {category} is defined twice (also in {other})")]
    DuplicateCategory {
        path: PathBuf,
        category: String,
        other: PathBuf,
    },
    #[error("schema directory {dir} holds no schema files (*.toml)")]
    Empty { dir: PathBuf },
    #[error("category {0} is not defined in the loaded schemas")]
    UnknownCategory(String),
}

/// The column type of a category field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    String,
    Float64,
    Int64,
    UInt32,
    /// Nanoseconds since the Unix epoch, UTC. JSON: an integer.
    Timestamp,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "float64" => Self::Float64,
            "int64" => Self::Int64,
            "uint32" => Self::UInt32,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::String => "string",
            Self::Float64 => "float64",
            Self::Int64 => "int64",
            Self::UInt32 => "uint32",
            Self::Timestamp => "timestamp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldSpec {
    pub name: String,
    pub dtype: Dtype,
    pub nullable: bool,
    pub low_cardinality: bool,
    pub unit: Option<String>,
    /// For string fields: the only values allowed (empty = any non-empty string).
    pub allowed: Vec<String>,
    pub description: String,
}

impl FieldSpec {
    /// The `<field>_state` column of a nullable field.
    pub fn state_column(&self) -> Option<String> {
        self.nullable
            .then(|| format!("{}{STATE_SUFFIX}", self.name))
    }
}

/// One category schema, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategorySchema {
    pub category: String,
    pub description: String,
    pub event_time: String,
    pub snapshot_key: Vec<String>,
    pub sort_key: Vec<String>,
    pub kafka_key: String,
    pub fields: Vec<FieldSpec>,
    #[serde(skip)]
    pub source: PathBuf,
    /// `<field>_state` of each field of `fields` (same index; `None` when not nullable),
    /// computed once at load so that validating a row formats no names.
    #[serde(skip)]
    pub state_names: Vec<Option<String>>,
    /// `,"<field>":` of each field and `,"<field>_state":` of each nullable one (same index),
    /// JSON-escaped once at load: a row written by the connector escapes only its values.
    #[serde(skip)]
    pub(crate) json_keys: Vec<(String, Option<String>)>,
}

/// `,"<name>":`, escaped as JSON.
fn json_key(name: &str) -> String {
    let quoted = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
    format!(",{quoted}:")
}

impl CategorySchema {
    pub fn topic(&self) -> String {
        self.category.clone()
    }

    pub fn unqualified_topic(&self) -> String {
        format!("{}{UNQUALIFIED_SUFFIX}", self.category)
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Columns in storage order: row_id, the fields, then the state columns of nullable fields.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = vec![ROW_ID.to_string()];
        cols.extend(self.fields.iter().map(|f| f.name.clone()));
        cols.extend(self.state_names.iter().flatten().cloned());
        cols
    }

    /// Parses and validates one schema from TOML text; `path` names it in errors.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, SchemaError> {
        let raw: RawSchema = toml::from_str(text).map_err(|e| SchemaError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.validate(path)
    }

    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    category: String,
    #[serde(default)]
    description: String,
    event_time: String,
    snapshot_key: Vec<String>,
    sort_key: Vec<String>,
    kafka_key: String,
    #[serde(rename = "field")]
    fields: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    dtype: String,
    #[serde(default)]
    nullable: bool,
    #[serde(default)]
    low_cardinality: bool,
    unit: Option<String>,
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    description: String,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl RawSchema {
    fn validate(self, path: &Path) -> Result<CategorySchema, SchemaError> {
        let parse_err = |message: String| SchemaError::Parse {
            path: path.to_path_buf(),
            message,
        };
        if !is_identifier(&self.category) {
            return Err(parse_err(format!(
                "category {:?} must be lowercase letters, digits and _",
                self.category
            )));
        }
        let mut seen = HashSet::new();
        let mut fields = Vec::with_capacity(self.fields.len());
        for raw in self.fields {
            let invalid = |message: String| SchemaError::InvalidField {
                path: path.to_path_buf(),
                field: raw.name.clone(),
                message,
            };
            if !is_identifier(&raw.name) {
                return Err(invalid(
                    "a field name must be lowercase letters, digits and _".into(),
                ));
            }
            if raw.name == ROW_ID || raw.name.ends_with(STATE_SUFFIX) {
                return Err(invalid(format!(
                    "the names {ROW_ID} and *{STATE_SUFFIX} are reserved for generated columns"
                )));
            }
            if !seen.insert(raw.name.clone()) {
                return Err(SchemaError::DuplicateField {
                    path: path.to_path_buf(),
                    field: raw.name,
                });
            }
            let dtype = Dtype::parse(&raw.dtype).ok_or_else(|| SchemaError::UnknownDtype {
                path: path.to_path_buf(),
                field: raw.name.clone(),
                dtype: raw.dtype.clone(),
            })?;
            if raw.low_cardinality && dtype != Dtype::String {
                return Err(invalid(
                    "low_cardinality applies to string fields only".into(),
                ));
            }
            if !raw.allowed.is_empty() && dtype != Dtype::String {
                return Err(invalid("allowed applies to string fields only".into()));
            }
            fields.push(FieldSpec {
                name: raw.name,
                dtype,
                nullable: raw.nullable,
                low_cardinality: raw.low_cardinality,
                unit: raw.unit,
                allowed: raw.allowed,
                description: raw.description,
            });
        }
        if fields.is_empty() {
            return Err(parse_err("a schema needs at least one [[field]]".into()));
        }
        let schema = CategorySchema {
            category: self.category,
            description: self.description,
            event_time: self.event_time,
            snapshot_key: self.snapshot_key,
            sort_key: self.sort_key,
            kafka_key: self.kafka_key,
            state_names: fields.iter().map(FieldSpec::state_column).collect(),
            json_keys: fields
                .iter()
                .map(|f| (json_key(&f.name), f.state_column().as_deref().map(json_key)))
                .collect(),
            fields,
            source: path.to_path_buf(),
        };
        let require = |role: &str, name: &str, want: Option<Dtype>| -> Result<(), SchemaError> {
            match schema.field(name) {
                None => Err(parse_err(format!(
                    "{role} names {name:?}, which is not a field"
                ))),
                // The snapshot key may hold nullable fields (the seed leaves
                // indicator_identifier nullable); sorting and partitioning keys may not.
                Some(f) if f.nullable && role != "snapshot_key" => Err(parse_err(format!(
                    "{role} field {name:?} must not be nullable"
                ))),
                Some(f) if want.is_some_and(|w| w != f.dtype) => Err(parse_err(format!(
                    "{role} field {name:?} must have dtype {}",
                    want.unwrap_or(f.dtype)
                ))),
                Some(_) => Ok(()),
            }
        };
        require("event_time", &schema.event_time, Some(Dtype::Timestamp))?;
        require("ingestion_time", "ingestion_time", Some(Dtype::Timestamp))?;
        require(
            "source_system_name",
            "source_system_name",
            Some(Dtype::String),
        )?;
        require("kafka_key", &schema.kafka_key, Some(Dtype::String))?;
        for k in &schema.snapshot_key {
            require("snapshot_key", k, None)?;
        }
        for k in &schema.sort_key {
            require("sort_key", k, None)?;
        }
        Ok(schema)
    }
}

/// All category schemas of a directory, by category name.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    schemas: BTreeMap<String, CategorySchema>,
}

impl SchemaSet {
    /// Loads and validates every `*.toml` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, SchemaError> {
        let entries = std::fs::read_dir(dir).map_err(|source| SchemaError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SchemaError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(SchemaError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        let mut set = Self::default();
        for path in paths {
            set.insert(CategorySchema::load(&path)?)?;
        }
        Ok(set)
    }

    pub fn insert(&mut self, schema: CategorySchema) -> Result<(), SchemaError> {
        if let Some(other) = self.schemas.get(&schema.category) {
            return Err(SchemaError::DuplicateCategory {
                path: schema.source.clone(),
                category: schema.category.clone(),
                other: other.source.clone(),
            });
        }
        self.schemas.insert(schema.category.clone(), schema);
        Ok(())
    }

    pub fn get(&self, category: &str) -> Result<&CategorySchema, SchemaError> {
        self.schemas
            .get(category)
            .ok_or_else(|| SchemaError::UnknownCategory(category.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &CategorySchema> {
        self.schemas.values()
    }

    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    /// Every Kafka topic the schemas define: each category and its quarantine twin.
    pub fn topics(&self) -> Vec<String> {
        self.iter()
            .flat_map(|s| [s.topic(), s.unqualified_topic()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_schemas() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
    }

    const MINIMAL: &str = r#"
category = "x_data"
event_time = "t"
snapshot_key = ["source_system_name"]
sort_key = ["source_system_name", "t"]
kafka_key = "source_system_name"
[[field]]
name = "source_system_name"
dtype = "string"
[[field]]
name = "ingestion_time"
dtype = "timestamp"
[[field]]
name = "t"
dtype = "timestamp"
"#;

    #[test]
    fn repo_schemas_load_with_the_seed_fields() {
        let set = SchemaSet::load_dir(&repo_schemas()).expect("repo schemas are valid");
        assert_eq!(set.len(), 4);
        let tick = set.get("tick_market_data").unwrap();
        let names: Vec<_> = tick.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "source_system_name",
                "component_instance_name",
                "ingestion_time",
                "exchange_identifier",
                "symbol_identifier",
                "symbol_type",
                "price",
                "price_unit",
                "size",
                "size_unit",
                "tick_time"
            ]
        );
        assert!(tick.fields.iter().all(|f| !f.nullable));
        let l2 = set.get("l2_market_data").unwrap();
        assert!(l2.field("exchange_identifier").unwrap().nullable);
        assert!(l2.field("symbol_type").unwrap().nullable);
        assert!(l2.columns().contains(&"symbol_type_state".to_string()));
        let econ = set.get("numeric_economic_data").unwrap();
        assert!(econ.field("publisher_identifier").is_some());
        assert_eq!(
            set.topics(),
            [
                "indicators_market_data",
                "indicators_market_data_unqualified",
                "l2_market_data",
                "l2_market_data_unqualified",
                "numeric_economic_data",
                "numeric_economic_data_unqualified",
                "tick_market_data",
                "tick_market_data_unqualified"
            ]
        );
    }

    #[test]
    fn unknown_dtype_names_file_and_field() {
        let text = MINIMAL.replace(
            "name = \"t\"\ndtype = \"timestamp\"",
            "name = \"t\"\ndtype = \"datetime\"",
        );
        let err = CategorySchema::from_toml(Path::new("x.toml"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SchemaError::UnknownDtype { .. }), "{msg}");
        assert!(msg.contains("x.toml") && msg.contains("field t") && msg.contains("datetime"));
    }

    #[test]
    fn duplicate_field_names_file_and_field() {
        let text = format!("{MINIMAL}[[field]]\nname = \"t\"\ndtype = \"timestamp\"\n");
        let err = CategorySchema::from_toml(Path::new("dup.toml"), &text).unwrap_err();
        assert!(matches!(err, SchemaError::DuplicateField { ref field, .. } if field == "t"));
        assert!(err.to_string().contains("dup.toml"));
    }

    #[test]
    fn unknown_keys_and_bad_roles_are_errors() {
        let text = format!("colour = \"red\"\n{MINIMAL}");
        let err = CategorySchema::from_toml(Path::new("k.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let text = MINIMAL.replace("event_time = \"t\"", "event_time = \"nope\"");
        let err = CategorySchema::from_toml(Path::new("k.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let text = MINIMAL.replace("name = \"t\"", "name = \"t_state\"");
        assert!(CategorySchema::from_toml(Path::new("k.toml"), &text).is_err());
    }

    #[test]
    fn duplicate_category_in_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), MINIMAL).unwrap();
        std::fs::write(dir.path().join("b.toml"), MINIMAL).unwrap();
        let err = SchemaSet::load_dir(dir.path()).unwrap_err();
        assert!(
            matches!(err, SchemaError::DuplicateCategory { .. }),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            SchemaSet::load_dir(empty.path()).unwrap_err(),
            SchemaError::Empty { .. }
        ));
    }
}
