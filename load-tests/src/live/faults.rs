//! The faults of the `recovery` part: a websocket drop at the simulator, and the pod kill of
//! the connector process (the writer and the calculator keep running, as their pods do).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::Env;
use super::daemons::{Daemons, Role, counters};

/// `drop_tcp` at the simulator; the time until the connector counts frames again after it saw
/// the drop (its reconnect counter moved).
pub(super) async fn ws_drop(
    gw: u16,
    daemons: &Daemons,
    http: &reqwest::Client,
    fresh: Option<&crate::measure::FreshWatch>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let scrape = || async {
        daemons
            .scrape(http, Role::Connector)
            .await
            .map(|s| counters(Role::Connector, &s))
    };
    let before = scrape().await.unwrap_or_default();
    let at = Instant::now();
    let at_ns = marketlane_protocol::now_ns();
    http.post(format!("http://127.0.0.1:{gw}/sim/fault"))
        .body(r#"{"kind":"drop_tcp"}"#)
        .header("content-type", "application/json")
        .send()
        .await?
        .error_for_status()?;
    let mut reconnected_frames: Option<f64> = None;
    while at.elapsed() < Duration::from_secs(30) {
        if let Some(c) = scrape().await {
            match reconnected_frames {
                None if c.reconnects > before.reconnects => reconnected_frames = Some(c.frames),
                Some(f) if c.frames > f => {
                    let frames = at.elapsed().as_secs_f64();
                    let Some(w) = fresh else {
                        return Ok((frames, None));
                    };
                    // The first row in Kafka whose event time is after the drop: market data
                    // resumed (a snapshot re-sent after the reconnect carries older times).
                    while at.elapsed() < Duration::from_secs(30) {
                        if w.newest_event_ns.load(Ordering::Relaxed) > at_ns {
                            return Ok((frames, Some(at.elapsed().as_secs_f64())));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    return Ok((frames, None));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no data within 30 s of a websocket drop")
}

/// SIGKILL of the connector process and an immediate start of a new one (the pod's restart,
/// without the kubelet's delay): seconds until the new connector counts frames, until it has
/// rows acknowledged by Kafka, and until the writer (which kept running) acknowledged rows
/// from ClickHouse beyond what it had when that first Kafka acknowledgement was seen. The
/// writer has drained the old connector's rows by then (the restart takes seconds, a batch
/// well under one), so those are the new connector's rows.
pub(super) async fn pod_kill(
    env: &Env,
    daemons: &mut Daemons,
    dir: &std::path::Path,
    http: &reqwest::Client,
) -> anyhow::Result<(f64, f64, f64)> {
    let at = Instant::now();
    daemons.kill_and_restart(env, Role::Connector, dir)?;
    let (mut frames, mut kafka) = (None, None);
    let mut writer_at_kafka: Option<f64> = None;
    while at.elapsed() < Duration::from_secs(60) {
        let conn = daemons.scrape(http, Role::Connector).await;
        let writer = daemons.scrape(http, Role::Writer).await;
        let t = at.elapsed().as_secs_f64();
        if let Some(s) = conn {
            let c = counters(Role::Connector, &s);
            if frames.is_none() && c.frames > 0.0 {
                frames = Some(t);
            }
            if kafka.is_none() && c.kafka > 0.0 {
                kafka = Some(t);
            }
        }
        if let Some(w) = writer.map(|s| counters(Role::Writer, &s).clickhouse) {
            match writer_at_kafka {
                None if kafka.is_some() => writer_at_kafka = Some(w),
                Some(before) if w > before => {
                    return Ok((frames.unwrap_or(t), kafka.unwrap_or(t), t));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "the restarted connector did not stream into ClickHouse within 60 s; see {}",
        daemons.get(Role::Connector).log(dir).display()
    )
}
