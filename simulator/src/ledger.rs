//! The ledger: what the simulator actually sent, one JSON object per line. It is the contract
//! the connector is reconciled against; reconciliation dedups by (conid, updated). One ledger
//! serves every gateway of the process: `gateway` (the username) says which one sent a line,
//! and the same update sent by two gateways is still one (conid, updated) trade.
//!
//! A trade line carries what the connector's row id is made of (`tick_row_id` in the protocol
//! crate: conid, `_updated`, price and size as sent), so reconciliation computes each trade's
//! id from the ledger alone. Deduplicating by (conid, updated) stays exact here because the
//! simulator stamps each conid's frames with a strictly increasing `_updated`
//! (`market.rs`, `step`), so it never sends two trades of one conid in one millisecond.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::lock;

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerEntry {
    /// A delta `smd` frame that carried a new trade (31 without H/C prefix and/or 7059).
    /// `size` is 7059 as sent (shares for stocks). Frames whose 6509 is not real-time are
    /// not ledgered: the connector must keep them out of the real-time tables.
    Trade {
        conid: u32,
        symbol: String,
        updated: i64,
        price: f64,
        size: f64,
        conn: u64,
        /// Username of the gateway that sent it (empty in ledgers older than the field).
        #[serde(default)]
        gateway: String,
    },
    /// An `smd` frame (the first one too) that carried any of 84/86/88/85; values are the full
    /// top of book at that update (sizes as sent, in lots for US stocks).
    Quote {
        conid: u32,
        updated: i64,
        bid: f64,
        ask: f64,
        bid_size: f64,
        ask_size: f64,
        conn: u64,
        /// Username of the gateway that sent it (empty in ledgers older than the field).
        #[serde(default)]
        gateway: String,
    },
    /// An `sbd` ladder; `levels` is the number of rows in its `data`.
    Book {
        conid: u32,
        updated: i64,
        levels: usize,
        conn: u64,
        /// Username of the gateway that sent it (empty in ledgers older than the field).
        #[serde(default)]
        gateway: String,
    },
}

impl LedgerEntry {
    pub fn conid(&self) -> u32 {
        match self {
            Self::Trade { conid, .. } | Self::Quote { conid, .. } | Self::Book { conid, .. } => {
                *conid
            }
        }
    }

    pub fn updated(&self) -> i64 {
        match self {
            Self::Trade { updated, .. }
            | Self::Quote { updated, .. }
            | Self::Book { updated, .. } => *updated,
        }
    }

    pub fn conn(&self) -> u64 {
        match self {
            Self::Trade { conn, .. } | Self::Quote { conn, .. } | Self::Book { conn, .. } => *conn,
        }
    }

    /// Username of the gateway that sent it.
    pub fn gateway(&self) -> &str {
        match self {
            Self::Trade { gateway, .. }
            | Self::Quote { gateway, .. }
            | Self::Book { gateway, .. } => gateway,
        }
    }
}

/// Counts over everything ever recorded (exact even past the in-memory limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSummary {
    pub trades: u64,
    pub quotes: u64,
    pub books: u64,
    /// Distinct (conid, updated) among trades: what a deduplicating consumer should count.
    pub unique_trades: u64,
    /// Entries dropped from memory (still in the file) because of the memory limit.
    pub evicted: u64,
}

struct Inner {
    entries: Vec<LedgerEntry>,
    limit: usize,
    summary: LedgerSummary,
    unique: HashSet<(u32, i64)>,
    writer: Option<BufWriter<File>>,
    /// First write error; the ledger keeps counting in memory after it.
    write_error: Option<String>,
}

/// Shared, cheaply cloneable ledger.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("summary", &self.summary())
            .finish()
    }
}

impl Ledger {
    pub fn new(path: Option<&Path>, limit: usize) -> Result<Self, SimError> {
        let writer = match path {
            Some(p) => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SimError::LedgerOpen {
                        path: p.to_path_buf(),
                        source,
                    })?,
            )),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: Vec::new(),
                limit,
                summary: LedgerSummary::default(),
                unique: HashSet::new(),
                writer,
                write_error: None,
            })),
        })
    }

    pub fn record(&self, e: LedgerEntry) {
        let mut g = lock(&self.inner);
        match &e {
            LedgerEntry::Trade { conid, updated, .. } => {
                g.summary.trades += 1;
                if g.unique.insert((*conid, *updated)) {
                    g.summary.unique_trades += 1;
                }
            }
            LedgerEntry::Quote { .. } => g.summary.quotes += 1,
            LedgerEntry::Book { .. } => g.summary.books += 1,
        }
        if g.writer.is_some() && g.write_error.is_none() {
            let res = serde_json::to_string(&e)
                .map_err(std::io::Error::other)
                .and_then(|line| {
                    let w = g
                        .writer
                        .as_mut()
                        .ok_or_else(|| std::io::Error::other("closed"))?;
                    w.write_all(line.as_bytes())?;
                    w.write_all(b"\n")
                });
            if let Err(err) = res {
                tracing::error!(error = %err, "ledger write failed; further lines stay in memory only");
                g.write_error = Some(err.to_string());
            }
        }
        if g.entries.len() < g.limit {
            g.entries.push(e);
        } else {
            g.summary.evicted += 1;
        }
    }

    /// A copy of the entries kept in memory, in the order they were sent.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        lock(&self.inner).entries.clone()
    }

    pub fn trades(&self) -> Vec<LedgerEntry> {
        lock(&self.inner)
            .entries
            .iter()
            .filter(|e| matches!(e, LedgerEntry::Trade { .. }))
            .cloned()
            .collect()
    }

    pub fn summary(&self) -> LedgerSummary {
        lock(&self.inner).summary.clone()
    }

    /// Flushes the file (if any) so a reader sees every line recorded so far.
    pub fn flush(&self) -> Result<(), SimError> {
        let mut g = lock(&self.inner);
        if let Some(err) = &g.write_error {
            return Err(SimError::LedgerWrite(std::io::Error::other(err.clone())));
        }
        match g.writer.as_mut() {
            Some(w) => w.flush().map_err(SimError::LedgerWrite),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_and_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.jsonl");
        let l = Ledger::new(Some(&path), 1).expect("ledger");
        let t = LedgerEntry::Trade {
            conid: 265598,
            symbol: "AAPL".into(),
            updated: 1712596911593,
            price: 189.6,
            size: 300.0,
            conn: 1,
            gateway: "user1".into(),
        };
        l.record(t.clone());
        l.record(t.clone());
        l.record(LedgerEntry::Book {
            conid: 1,
            updated: 2,
            levels: 10,
            conn: 1,
            gateway: "user2".into(),
        });
        l.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().expect("a line");
        assert_eq!(
            first,
            r#"{"kind":"trade","conid":265598,"symbol":"AAPL","updated":1712596911593,"price":189.6,"size":300.0,"conn":1,"gateway":"user1"}"#
        );
        let s = l.summary();
        assert_eq!(
            (s.trades, s.unique_trades, s.books, s.evicted),
            (2, 1, 1, 2)
        );
        assert_eq!(l.entries(), vec![t]);
        // Lines written before the field existed still read.
        let old: LedgerEntry =
            serde_json::from_str(r#"{"kind":"book","conid":1,"updated":2,"levels":10,"conn":3}"#)
                .expect("old line");
        assert_eq!(old.gateway(), "");
    }
}
