//! ClickHouse as the tests see it: the stack's HTTP address and queries over HTTP.

use anyhow::bail;
use marketlane_protocol::category::TICK;

pub fn clickhouse_url() -> String {
    std::env::var("ML_CLICKHOUSE_URL").unwrap_or_else(|_| {
        format!(
            "http://127.0.0.1:{}",
            std::env::var("ML_CH_HTTP_PORT").unwrap_or_else(|_| "8123".into())
        )
    })
}

/// Runs a query on the local ClickHouse over HTTP and returns its TSV answer.
pub async fn clickhouse(sql: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .post(clickhouse_url())
        .body(sql.to_string())
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("clickhouse {status}: {text}\nquery: {sql}");
    }
    Ok(text)
}

/// The tick table's event time in ns, on 18.16 (`Int64`) and current servers.
pub async fn tick_time_ns(db: &str) -> anyhow::Result<&'static str> {
    let t = clickhouse(&format!(
        "SELECT type FROM system.columns WHERE database = '{db}' AND table = '{TICK}' AND name = 'tick_time'"
    ))
    .await?;
    Ok(if t.trim().starts_with("DateTime64") {
        "toUnixTimestamp64Nano(tick_time)"
    } else {
        "tick_time"
    })
}

/// A number a query answers (0 when it answers something else).
pub async fn scalar(sql: &str) -> u64 {
    clickhouse(sql)
        .await
        .expect("clickhouse query")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The lines a query answers.
pub async fn lines(sql: &str) -> Vec<String> {
    clickhouse(sql)
        .await
        .expect("clickhouse query")
        .lines()
        .map(String::from)
        .collect()
}

/// Drops a test's database and its writers' offsets database `<db>_state` (errors ignored).
pub async fn drop_db(db: &str) {
    let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {db}")).await;
    let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {db}_state")).await;
}
