//! The simulator (`marketlane-sim`) as a child process ([`SimBuilder`] → [`Sim`]) and its
//! ledger of emitted trades.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{Proc, free_port};

/// Source event times of the simulator are wall-clock milliseconds (speed 1).
pub fn now_ms() -> i64 {
    marketlane_protocol::now_ns() / 1_000_000
}

/// Flags of `marketlane-sim`; the ledger always goes to `<dir>/ledger.jsonl`.
#[derive(Debug, Clone)]
pub struct SimBuilder {
    pub seed: u64,
    pub port: Option<u16>,
    pub username: Option<String>,
    /// More flags, e.g. `--subscription-expiry-secs 10`.
    pub args: Vec<String>,
}

impl SimBuilder {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            port: None,
            username: None,
            args: Vec::new(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.into());
        self
    }

    pub fn spawn(self, dir: &Path) -> anyhow::Result<Sim> {
        let port = self.port.unwrap_or_else(free_port);
        let ledger = dir.join("ledger.jsonl");
        let mut args = vec![
            "sim".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--seed".into(),
            self.seed.to_string(),
            "--ledger".into(),
            ledger.display().to_string(),
        ];
        if let Some(u) = &self.username {
            args.extend(["--username".into(), u.clone()]);
        }
        args.extend(self.args.iter().cloned());
        let quiet = self
            .args
            .windows(2)
            .filter(|w| w[0] == "--quiet-symbol")
            .map(|w| w[1].clone())
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.join("sim.log");
        let proc = Proc::spawn(&refs, &log)?;
        Ok(Sim {
            port,
            ledger,
            log,
            quiet,
            proc,
        })
    }
}

/// A running simulator.
pub struct Sim {
    pub port: u16,
    pub ledger: PathBuf,
    pub log: PathBuf,
    /// Symbols started with `--quiet-symbol`: they never trade.
    pub quiet: Vec<String>,
    proc: Proc,
}

/// One trade of the ledger, with the row id the connector must give it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LedgerTrade {
    pub updated_ms: i64,
    pub conid: i64,
    pub symbol: String,
    pub row_id: String,
}

impl Sim {
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `POST /sim/fault` with `body` (see `simulator/src/fault.rs`).
    pub async fn fault(&self, body: Value) -> anyhow::Result<()> {
        self.post("/sim/fault", Some(body)).await.map(|_| ())
    }

    /// POSTs to a simulator path (`/sim/login`, `/v1/api/logout`, …) and returns its JSON.
    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.gateway_url()));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path} {body:?}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// SIGTERM: the simulator closes its sockets and flushes the ledger file.
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    /// Every distinct trade of the ledger file (complete after [`Sim::stop`]; while running,
    /// up to the last second's flush).
    pub fn ledger_trades(&self) -> anyhow::Result<Vec<LedgerTrade>> {
        let text = std::fs::read_to_string(&self.ledger)
            .with_context(|| format!("cannot read {}", self.ledger.display()))?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)?;
            if v["kind"] != "trade" {
                continue;
            }
            let conid = v["conid"].as_i64().unwrap_or_default();
            let updated_ms = v["updated"].as_i64().unwrap_or_default();
            if !seen.insert((conid, updated_ms)) {
                continue;
            }
            out.push(LedgerTrade {
                updated_ms,
                conid,
                symbol: v["symbol"].as_str().unwrap_or_default().to_string(),
                row_id: crate::ledger_row_id(&v),
            });
        }
        out.sort();
        Ok(out)
    }
}

/// The `(conid, updated)` pairs of the trades in a simulator ledger.
/// The row id the connector must give a ledger trade line (`marketlane_protocol::tick_row_id`:
/// conid, IB's `_updated`, and the trade's price and size, which the ledger records as sent).
pub fn ledger_row_id(line: &serde_json::Value) -> String {
    marketlane_protocol::tick_row_id(
        "ib",
        line["conid"].as_i64().unwrap_or_default(),
        line["updated"].as_i64().unwrap_or_default(),
        line["price"].as_f64(),
        line["size"].as_f64(),
        None,
    )
}

/// The row ids of every trade of a ledger file.
pub fn ledger_row_ids(ledger: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(ledger)?;
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] == "trade" {
            out.insert(ledger_row_id(&v));
        }
    }
    Ok(out)
}

pub fn ledger_trades(ledger: &Path) -> anyhow::Result<BTreeSet<(i64, i64)>> {
    let text = std::fs::read_to_string(ledger)?;
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] == "trade" {
            out.insert((
                v["conid"].as_i64().unwrap_or_default(),
                v["updated"].as_i64().unwrap_or_default(),
            ));
        }
    }
    Ok(out)
}
