//! `marketlane schema ddl|check`: the DDL derived from the schema files, and their validation.

use std::path::Path;

use anyhow::Context;
use marketlane_protocol::SchemaSet;
use marketlane_protocol::clickhouse::{DdlOptions, ServerVersion, create_all};

/// The DDL for a server version (`18.16.1` here, a current release in production).
pub fn ddl(
    dir: &Path,
    version: &str,
    database: &str,
    retention_days: u32,
) -> anyhow::Result<String> {
    let schemas = SchemaSet::load_dir(dir)?;
    let version = ServerVersion::parse(version)
        .with_context(|| format!("--server-version {version:?} is not a version like 24.8.1"))?;
    let opts = DdlOptions {
        database: database.to_string(),
        retention_days,
        capabilities: version.capabilities(),
    };
    let mut out = format!(
        "-- marketlane DDL for ClickHouse {version}, from {}\n",
        dir.display()
    );
    for stmt in create_all(schemas.iter(), &opts) {
        out.push_str(stmt.trim_end());
        out.push_str(";\n\n");
    }
    Ok(out)
}

/// Validates a schema directory; the summary names each category and its topics.
pub fn check(dir: &Path) -> anyhow::Result<String> {
    let schemas = SchemaSet::load_dir(dir)?;
    let mut out = String::new();
    for s in schemas.iter() {
        let nullable = s.fields.iter().filter(|f| f.nullable).count();
        out.push_str(&format!(
            "ok {}: {} fields ({} nullable), topics {} and {}\n",
            s.category,
            s.fields.len(),
            nullable,
            s.topic(),
            s.unqualified_topic()
        ));
    }
    Ok(out)
}
