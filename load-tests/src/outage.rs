//! A ClickHouse outage seen by one daemon only: the daemon's `clickhouse.url` points at a TCP
//! proxy in the driver, which forwards to the shared server until it is switched off; then it
//! cuts every open connection and refuses new ones (accept and close) until switched on. The
//! shared server keeps running for everyone else.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (up, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if !*rx.borrow() {
                    drop(client);
                    continue;
                }
                let (upstream, mut rx) = (upstream.clone(), rx.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Self { port, up, task })
    }

    pub fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of an `http://host:port[/…]` URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// What the outage run measured.
#[derive(Debug, Clone)]
pub struct OutageResult {
    pub outage_secs: u64,
    /// The writer process's RSS max (MB) from the start of the outage to the end of the drain.
    pub rss_mb_max: f64,
    /// Seconds from the source's stop (after the run's window) until the connector's count
    /// held still and the writer's consumer lag was 0 (None: not within the drain limit).
    pub drained_after: Option<f64>,
    /// Consumer lag when the drain wait ended.
    pub lag_at_end: f64,
    /// Source rows acknowledged by Kafka (the daemon's counter) at the end.
    pub kafka_rows: f64,
    /// Distinct source rows in ClickHouse (`FINAL`) at the end, or why they could not be
    /// counted.
    pub clickhouse_rows: Result<u64, String>,
}

impl OutageResult {
    /// Rows acknowledged by Kafka and not in ClickHouse once drained; None when the lag did
    /// not reach 0 (rows still on their way are not lost, nor known to arrive).
    pub fn lost(&self) -> Option<f64> {
        self.drained_after?;
        let stored = *self.clickhouse_rows.as_ref().ok()?;
        Some((self.kafka_rows - stored as f64).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("http://127.0.0.1:8123"), "127.0.0.1:8123");
        assert_eq!(host_port("http://127.0.0.1:8123/x"), "127.0.0.1:8123");
    }

    #[tokio::test]
    async fn the_proxy_forwards_then_refuses_then_forwards() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 4];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let p = Proxy::start(addr).await.unwrap();
        let roundtrip = || async {
            let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut b = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
                .await
                .ok()?
                .ok()?;
            Some(b)
        };
        assert_eq!(roundtrip().await, Some(*b"ping"));
        p.set_up(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(roundtrip().await, None);
        p.set_up(true);
        assert_eq!(roundtrip().await, Some(*b"ping"));
    }
}
