//! `marketlane ctl`: the client of the control socket. Tables for people, `--json` for scripts.
//! Exit codes: 0 the daemon did it; 1 the daemon answered with an error; 3 the daemon could
//! not be reached or answered something that is not a reply (2 is clap's usage error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use marketlane_protocol::control::{Command, Reply, Request, SecType, StatusResult};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::control::DEFAULT_SOCKET;

pub const EXIT_ERROR_REPLY: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(clap::Args)]
pub struct CtlArgs {
    /// The daemon's control socket (`control.socket` in its config).
    #[arg(long, env = "MARKETLANE_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the reply as one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand)]
enum CtlCommand {
    /// The actor tree with each actor's state.
    Status,
    /// The symbols this pod streams.
    Subscriptions,
    /// Stream one more symbol (until the next restart).
    Subscribe {
        symbol: String,
        /// A future (front month) instead of a stock; needs --exchange.
        #[arg(long)]
        future: bool,
        #[arg(long)]
        exchange: Option<String>,
    },
    /// Stop streaming a symbol.
    Unsubscribe {
        symbol: String,
    },
    /// Spread the symbols over the cluster's connectors.
    Rebalance,
    /// Re-authenticate the IB session now.
    Reauth,
    /// Pause a writer (`clickhouse_writer_<topic>` or `<topic>`) or a calculator.
    Pause {
        actor: String,
    },
    Resume {
        actor: String,
    },
    /// Stop intake, flush and commit, as on SIGTERM; the process stays up, unready.
    Drain {
        #[arg(long)]
        deadline_secs: Option<f64>,
    },
    /// Load and validate the schema directory; report what changed.
    ReloadSchemas,
    /// Show or set the log filter, e.g. `debug` or `info,marketlane_actors=trace`.
    LogLevel {
        level: Option<String>,
    },
    /// Make a normalizer, writer or the producer panic, or (`--stall`) pause a writer's or a
    /// calculator consumer's partitions behind its back (failure-matrix tests; needs
    /// `control.allow_fault_injection`).
    Fault {
        actor: String,
        #[arg(long)]
        stall: bool,
    },
    /// Send one raw request line (for scripts and debugging).
    Raw {
        line: String,
    },
}

impl CtlCommand {
    fn to_command(&self) -> Option<Command> {
        Some(match self {
            Self::Status => Command::Status,
            Self::Subscriptions => Command::Subscriptions,
            Self::Subscribe {
                symbol,
                future,
                exchange,
            } => Command::Subscribe {
                symbol: symbol.clone(),
                sec_type: if *future {
                    SecType::Future
                } else {
                    SecType::Stock
                },
                exchange: exchange.clone(),
            },
            Self::Unsubscribe { symbol } => Command::Unsubscribe {
                symbol: symbol.clone(),
            },
            Self::Rebalance => Command::Rebalance,
            Self::Reauth => Command::Reauth,
            Self::Pause { actor } => Command::Pause {
                actor: actor.clone(),
            },
            Self::Resume { actor } => Command::Resume {
                actor: actor.clone(),
            },
            Self::Drain { deadline_secs } => Command::Drain {
                deadline_secs: *deadline_secs,
            },
            Self::ReloadSchemas => Command::ReloadSchemas,
            Self::LogLevel { level } => Command::LogLevel {
                level: level.clone(),
            },
            Self::Fault { actor, stall } => Command::Fault {
                actor: actor.clone(),
                kind: if *stall {
                    marketlane_protocol::control::FaultKind::Stall
                } else {
                    marketlane_protocol::control::FaultKind::Panic
                },
            },
            Self::Raw { .. } => return None,
        })
    }
}

async fn exchange(socket: &PathBuf, line: &str) -> Result<String, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    // The daemon may answer and close before reading (a refused uid): read its reply anyway.
    let sent = write
        .write_all(format!("{}\n", line.trim_end()).as_bytes())
        .await;
    let mut reply = String::new();
    let read = BufReader::new(read).read_line(&mut reply).await;
    if !reply.is_empty() {
        return Ok(reply);
    }
    sent.map_err(|e| format!("cannot send: {e}"))?;
    read.map_err(|e| format!("cannot read the reply: {e}"))?;
    Err("the daemon closed the connection without a reply".into())
}

pub async fn run(args: CtlArgs) -> ExitCode {
    let line = match (&args.command, args.command.to_command()) {
        (_, Some(c)) => serde_json::to_string(&Request::new(&c)).unwrap_or_default(),
        (CtlCommand::Raw { line }, None) => line.clone(),
        (_, None) => String::new(),
    };
    let timeout = Duration::try_from_secs_f64(args.timeout).unwrap_or(Duration::from_secs(120));
    let raw = match tokio::time::timeout(timeout, exchange(&args.socket, &line)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        Err(_) => {
            eprintln!("error: no reply within {:.0} s", timeout.as_secs_f64());
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let reply: Reply = match serde_json::from_str(&raw) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: the daemon's answer is not a reply ({e}): {}",
                raw.trim()
            );
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if args.json {
        println!("{}", raw.trim_end());
    } else if let Some(e) = &reply.error {
        let code = serde_json::to_value(e.code).unwrap_or(Value::Null);
        eprintln!("error ({}): {}", code.as_str().unwrap_or("?"), e.message);
    } else {
        print!(
            "{}",
            render(&args.command, reply.result.as_ref().unwrap_or(&Value::Null))
        );
    }
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR_REPLY)
    }
}

/// A plain text table: columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `2 members, holds 4 (1 handing over), 0 unassigned` from the cluster snapshot.
fn cluster_line(c: &Value) -> String {
    let len = |k: &str| c[k].as_array().map_or(0, Vec::len);
    format!(
        "{} members, holds {} ({} handing over), {} unassigned{}",
        len("members"),
        len("held"),
        len("handing_over"),
        len("unassigned"),
        if c["draining"] == true {
            ", leaving"
        } else {
            ""
        }
    )
}

fn render(command: &CtlCommand, result: &Value) -> String {
    match command {
        CtlCommand::Status => match serde_json::from_value::<StatusResult>(result.clone()) {
            Ok(s) => {
                let mut out = format!(
                    "instance {}  roles {}  ready {} ({})  draining {}  log {}  cluster {}\n\n",
                    s.instance,
                    s.roles.join(","),
                    if s.ready { "yes" } else { "no" },
                    s.ready_reason,
                    if s.draining { "yes" } else { "no" },
                    s.log_level,
                    s.cluster
                        .as_ref()
                        .map(cluster_line)
                        .unwrap_or_else(|| "none".into()),
                );
                let rows: Vec<Vec<String>> = s
                    .actors
                    .iter()
                    .map(|a| {
                        vec![
                            a.actor.clone(),
                            a.kind.clone(),
                            if a.alive { "up" } else { "down" }.to_string(),
                            a.restarts.to_string(),
                            a.summary.clone(),
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &["ACTOR", "KIND", "ALIVE", "RESTARTS", "STATE"],
                    &rows,
                ));
                out
            }
            Err(_) => format!("{result:#}\n"),
        },
        CtlCommand::Subscriptions => {
            let rows: Vec<Vec<String>> = result["symbols"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    vec![
                        cell(&s["symbol"]),
                        cell(&s["sec_type"]),
                        cell(&s["exchange"]),
                        cell(&s["conid"]),
                        cell(&s["last_trading_day"]),
                        match (s["market_data"].as_str(), s["availability"].as_str()) {
                            (Some(m), Some(code)) => format!("{m} ({code})"),
                            _ => "-".into(),
                        },
                        s["error"]
                            .as_str()
                            .map(|e| format!("unresolved: {e}"))
                            .unwrap_or_else(|| "streaming".into()),
                    ]
                })
                .collect();
            let mut out = format!("{}\n", cell(&result["note"]));
            out.push_str(&table(
                &[
                    "SYMBOL",
                    "TYPE",
                    "EXCHANGE",
                    "CONID",
                    "LAST_TRADING_DAY",
                    "MARKET_DATA",
                    "STATE",
                ],
                &rows,
            ));
            out
        }
        _ => match result {
            Value::Object(m) => {
                let rows: Vec<Vec<String>> =
                    m.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect();
                table(&["KEY", "VALUE"], &rows)
            }
            other => format!("{}\n", cell(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_show_each_symbols_market_data() {
        let result = serde_json::json!({
            "note": "no cluster configured: this pod's subscriptions only",
            "symbols": [
                {"symbol": "XOM", "sec_type": "stock", "exchange": "SMART", "conid": 13977,
                 "last_trading_day": null, "error": null, "availability": "DPB", "market_data": "delayed"},
                {"symbol": "CVX", "sec_type": "stock", "exchange": "SMART", "conid": 5932,
                 "last_trading_day": null, "error": null, "availability": null, "market_data": null},
            ],
        });
        let out = render(&CtlCommand::Subscriptions, &result);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].contains("MARKET_DATA"), "{out}");
        assert!(
            lines[2].starts_with("XOM") && lines[2].contains("delayed (DPB)"),
            "{out}"
        );
        assert!(
            lines[3].starts_with("CVX") && lines[3].contains(" - "),
            "{out}"
        );
    }

    #[test]
    fn the_cluster_is_one_line_of_the_status_header() {
        let c = serde_json::json!({
            "members": [{"instance": "marketlane-0"}, {"instance": "marketlane-1"}],
            "held": ["CL", "XOM", "CVX"],
            "handing_over": ["CVX"],
            "unassigned": [],
            "draining": true,
        });
        assert_eq!(
            cluster_line(&c),
            "2 members, holds 3 (1 handing over), 0 unassigned, leaving"
        );
    }
}
