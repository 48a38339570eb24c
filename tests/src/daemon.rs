//! A daemon process of one [`DaemonConfig`] ([`Daemon`]): start, restart, signals, metrics,
//! readiness and control-socket calls.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::Proc;
use crate::config::DaemonConfig;

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// A daemon process of one config; it can be stopped and started again (logs `daemon-<n>.log`).
pub struct Daemon {
    pub config: DaemonConfig,
    pub config_path: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    runs: u32,
    launcher: Option<Launcher>,
}

/// Starts `marketlane ARGS` with its output in a log (e.g. inside a network namespace:
/// [`crate::netns::Net::spawn_in`]).
pub type Launcher = std::sync::Arc<dyn Fn(&[&str], &Path) -> anyhow::Result<Proc> + Send + Sync>;

impl Daemon {
    pub fn spawn(config: DaemonConfig, dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(config, dir, None)
    }

    /// Like [`Daemon::spawn`], started (and restarted) by `launcher`.
    pub fn spawn_with(
        config: DaemonConfig,
        dir: &Path,
        launcher: Option<Launcher>,
    ) -> anyhow::Result<Self> {
        let config_path = dir.join(format!("{}.toml", config.instance));
        std::fs::write(&config_path, config.to_toml())?;
        let mut d = Self {
            config,
            config_path,
            dir: dir.to_path_buf(),
            proc: None,
            runs: 0,
            launcher,
        };
        d.start()?;
        Ok(d)
    }

    /// Starts the daemon (again) with the same config.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let log = self
            .dir
            .join(format!("{}-{}.log", self.config.instance, self.runs));
        let args = [
            "run",
            "--config",
            self.config_path.to_str().unwrap_or_default(),
        ];
        self.proc = Some(match &self.launcher {
            Some(launch) => launch(&args, &log)?,
            None => Proc::spawn(&args, &log)?,
        });
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.0.id())
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc
            .as_mut()
            .and_then(|p| p.0.try_wait().ok().flatten())
    }

    /// SIGTERM and wait up to `timeout` for the drain to end the process; its exit status
    /// (`None`: still running, then SIGKILLed) and how long it took.
    pub fn sigterm(&mut self, timeout: Duration) -> (Option<ExitStatus>, f64) {
        let started = Instant::now();
        let Some(mut p) = self.proc.take() else {
            return (None, 0.0);
        };
        signal(p.0.id(), "TERM");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = p.0.try_wait() {
                return (Some(status), started.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(p);
        (None, started.elapsed().as_secs_f64())
    }

    /// SIGKILL (the process is reaped).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Every log of this daemon, oldest run first.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("{}-{n}.log", self.config.instance)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----- restarted -----\n")
    }

    pub async fn metrics(&self) -> Metrics {
        let url = format!(
            "http://{}:{}/metrics",
            self.config.http_host, self.config.http_port
        );
        let text = match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Metrics::parse(&text)
    }

    /// [`Daemon::metrics`], `None` when the scrape failed (no answer, an error status, a cut
    /// body) instead of no series: for checks where a failed scrape must not read as zeros.
    pub async fn try_metrics(&self) -> Option<Metrics> {
        scrape_metrics(&self.config.http_addr()).await
    }

    /// One series by its exact text, e.g. `marketlane_ws_connected` or
    /// `marketlane_ib_session_state{state="authenticated"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series)
    }

    /// [`Daemon::metric`], `None` when the scrape failed.
    pub async fn try_metric(&self, series: &str) -> Option<f64> {
        Some(self.try_metrics().await?.get(series))
    }

    /// `/readyz` answered 200.
    pub async fn ready(&self) -> bool {
        readyz(&self.config.http_addr()).await.ready()
    }

    /// [`wait_readyz`] on this daemon.
    pub async fn wait_readyz(
        &self,
        timeout: Duration,
        until: impl FnMut(&Readyz) -> bool,
    ) -> Result<Readyz, Readyz> {
        wait_readyz(&self.config.http_addr(), timeout, until).await
    }

    /// One control-socket request; the whole reply (`ok`, `result` or `error`).
    pub async fn ctl(&self, cmd: &str, args: Value) -> anyhow::Result<Value> {
        ctl_at(&self.config.control_socket, cmd, args).await
    }

    /// The `status` result's actor entry `name` (`ib_session`, `ib_websocket`, …).
    pub async fn actor_status(&self, name: &str) -> Option<Value> {
        let reply = self.ctl("status", json!({})).await.ok()?;
        reply["result"]["actors"]
            .as_array()?
            .iter()
            .find(|a| a["actor"] == name)
            .cloned()
    }
}

/// The `/metrics` of the daemon whose HTTP listener is `addr` (`host:port`); `None` when the
/// scrape failed (no answer, an error status, a cut body), so that it never reads as zeros.
pub async fn scrape_metrics(addr: &str) -> Option<Metrics> {
    let url = format!("http://{addr}/metrics");
    let r = reqwest::get(url).await.ok()?.error_for_status().ok()?;
    Some(Metrics::parse(&r.text().await.ok()?))
}

/// One control-socket request to the daemon listening on `socket`; the whole reply (`ok`,
/// `result` or `error`).
pub async fn ctl_at(socket: &Path, cmd: &str, args: Value) -> anyhow::Result<Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect {}", socket.display()))?;
    let line = json!({"v": 1, "id": 1, "cmd": cmd, "args": args}).to_string() + "\n";
    stream.write_all(line.as_bytes()).await?;
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stream).read_line(&mut reply),
    )
    .await
    .context("control socket reply timed out")??;
    Ok(serde_json::from_str(&reply)?)
}

/// One `/readyz` answer: its status (0: no answer) and body (the reason when not ready).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readyz {
    pub status: u16,
    pub body: String,
}

impl Readyz {
    /// A success status: the pod is ready.
    pub fn ready(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET http://{http}/readyz` once (`http` is `host:port`).
pub async fn readyz(http: &str) -> Readyz {
    match reqwest::get(format!("http://{http}/readyz")).await {
        Ok(r) => Readyz {
            status: r.status().as_u16(),
            body: r.text().await.unwrap_or_default(),
        },
        Err(_) => Readyz {
            status: 0,
            body: String::new(),
        },
    }
}

/// Polls `/readyz` of `http` (`host:port`) until `until` holds for an answer: `Ok` with that
/// answer, or `Err` with the last one when `timeout` passed. `until` sees every answer, so
/// it may also assert on the ones on the way (e.g. "never ready meanwhile").
pub async fn wait_readyz(
    http: &str,
    timeout: Duration,
    mut until: impl FnMut(&Readyz) -> bool,
) -> Result<Readyz, Readyz> {
    let end = Instant::now() + timeout;
    loop {
        let r = readyz(http).await;
        if until(&r) {
            return Ok(r);
        }
        if Instant::now() >= end {
            return Err(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A scrape of `/metrics`: `(series, value)` with the series as printed (name and labels).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(s, v)| (s.to_string(), v.parse().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// The series with exactly this text (0 when absent).
    pub fn get(&self, series: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s == series)
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of metric `name` that carries `label` (`key="value"`), summed.
    pub fn sum_with(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s.split('{').next() == Some(name) && s.contains(label))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of metric `name`, all labels summed.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}
