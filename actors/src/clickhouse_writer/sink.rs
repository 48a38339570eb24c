//! The ClickHouse side of the writer: server version detection, DDL, and RowBinary inserts.

use marketlane_protocol::SchemaSet;
use marketlane_protocol::clickhouse::{self as ch, DdlOptions, ServerVersion};

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse at {url} unreachable or failing: {message}")]
    Server { url: String, message: String },
    #[error("clickhouse returned an unreadable version {0:?}")]
    Version(String),
    #[error("ddl failed: {message}\n{statement}")]
    Ddl { statement: String, message: String },
}

/// A connected ClickHouse: the client and what the server supports.
#[derive(Clone)]
pub struct ClickHouse {
    pub client: clickhouse::Client,
    pub version: ServerVersion,
    pub config: ClickHouseConfig,
}

impl ClickHouse {
    /// Connects and detects the server version. Validation of row types is off: the writer
    /// encodes RowBinary itself from the schema, and 18.16 cannot answer the crate's checks.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, SinkError> {
        let client = clickhouse::Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            .with_validation(false);
        let raw: String = client
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|e| SinkError::Server {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        let version = ServerVersion::parse(&raw).ok_or(SinkError::Version(raw))?;
        Ok(Self {
            client,
            version,
            config: config.clone(),
        })
    }

    pub fn ddl_options(&self) -> DdlOptions {
        DdlOptions {
            database: self.config.database.clone(),
            retention_days: self.config.retention_days,
            capabilities: self.version.capabilities(),
        }
    }

    /// Creates the database and every category's ingestion and quarantine tables.
    pub async fn apply_ddl(&self, schemas: &SchemaSet) -> Result<(), SinkError> {
        for statement in ch::create_all(schemas.iter(), &self.ddl_options()) {
            self.client
                .query(&statement)
                .execute()
                .await
                .map_err(|e| SinkError::Ddl {
                    statement: statement.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Sends one RowBinary batch; returns only once ClickHouse has acknowledged it.
    pub async fn insert(&self, statement: &str, rows: bytes::Bytes) -> Result<(), SinkError> {
        let err = |e: clickhouse::error::Error| SinkError::Server {
            url: self.config.url.clone(),
            message: e.to_string(),
        };
        let mut insert = self.client.insert_formatted_with(statement.to_string());
        insert.send(rows).await.map_err(err)?;
        insert.end().await.map_err(err)
    }
}
