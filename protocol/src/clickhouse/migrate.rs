//! Schema growth: `ADD COLUMN` for a new field; a removed field is refused.

use super::*;
use crate::schema::CategorySchema;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaChangeError {
    #[error(
        "table {table} has column {column}, which schema {schema_file} no longer defines: \
         removing a field is refused. Put the field back (nullable if producers stop filling it); \
         dropping a column is the seed's 6-month shrink procedure, done by a human after \
         every consumer stopped reading it"
    )]
    FieldRemoved {
        table: String,
        column: String,
        schema_file: String,
    },
}

/// The `ALTER TABLE … ADD COLUMN` statements that bring `table` (an ingestion or snapshot
/// table of `schema`) from its `existing` column names to the schema. Rows written before read
/// the column's default. A column the schema no longer has is an error, never a drop.
pub fn plan_schema_change(
    schema: &CategorySchema,
    table: &str,
    existing: &[String],
    opts: &DdlOptions,
) -> Result<Vec<String>, SchemaChangeError> {
    let wanted = schema.columns();
    for col in existing {
        let generated = col == SNAPSHOT_VERSION
            || col
                .strip_suffix(DATETIME_COMPANION_SUFFIX)
                .is_some_and(|base| wanted.iter().any(|w| w == base));
        if !generated && !wanted.contains(col) {
            return Err(SchemaChangeError::FieldRemoved {
                table: table.to_string(),
                column: col.clone(),
                schema_file: schema.source.display().to_string(),
            });
        }
    }
    let defs = if table == snapshot_table(&schema.category) {
        snapshot_column_definitions(schema, opts.capabilities)
    } else {
        column_definitions(schema, opts.capabilities)
    };
    let mut out = Vec::new();
    for def in defs {
        // A definition starts with the backquoted column name.
        let name = def.split('`').nth(1).unwrap_or_default();
        if !existing.iter().any(|e| e == name) {
            out.push(format!(
                "ALTER TABLE `{}`.`{table}` ADD COLUMN {def}",
                opts.database
            ));
        }
    }
    Ok(out)
}
