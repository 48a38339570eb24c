//! Redis as the tests see it: the stack's address and hashes read back.

use std::collections::BTreeMap;

use fred::prelude::*;

pub fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:{}",
        std::env::var("ML_REDIS_PORT").unwrap_or_else(|_| "6379".into())
    )
}

pub async fn redis_client() -> anyhow::Result<Client> {
    let mut config = Config::from_url(&redis_url())?;
    config.fail_fast = true;
    let client = Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

/// `HGETALL key` on the stack's Redis (empty when Redis is down or the key is absent).
pub async fn redis_hash(key: &str) -> BTreeMap<String, String> {
    let Ok(client) = redis_client().await else {
        return BTreeMap::new();
    };
    let h: BTreeMap<String, String> = client
        .hgetall::<std::collections::HashMap<String, String>, _>(key)
        .await
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let _ = client.quit().await;
    h
}
