//! The control protocol: newline-delimited JSON over the daemon's Unix control socket
//! (`marketlane ctl` is its client; ARCHITECTURE.md "Control protocol" documents it).
//!
//! One request per line, one reply per line, in order, on one connection:
//! `{"v":1,"id":7,"cmd":"pause","args":{"actor":"clickhouse_writer_tick_market_data"}}` →
//! `{"v":1,"id":7,"ok":true,"result":{…}}` or `{"v":1,"id":7,"ok":false,"error":{"code":…,"message":…}}`.
//! `v` is the protocol version; a server answers a version it does not speak with
//! `unsupported_version` instead of guessing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Longest request line accepted; longer lines are answered with `too_large` and the
/// connection is closed (a control request is a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// Every command, as named on the wire and by `marketlane ctl`.
pub const COMMANDS: &[&str] = &[
    "status",
    "subscriptions",
    "subscribe",
    "unsubscribe",
    "rebalance",
    "reauth",
    "pause",
    "resume",
    "drain",
    "reload-schemas",
    "log-level",
    "fault",
];

/// A request as it arrives; `args` is checked per command by [`Command::parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub args: Value,
}

impl Request {
    pub fn new(command: &Command) -> Self {
        let (cmd, args) = command.to_wire();
        Self {
            v: VERSION,
            id: None,
            cmd,
            args,
        }
    }
}

/// Why a request failed; the wire form is snake_case (`"bad_args"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON, or not a request object.
    BadJson,
    UnsupportedVersion,
    UnknownCommand,
    /// The command exists but its arguments are wrong.
    BadArgs,
    /// The named actor or symbol does not exist in this pod.
    NotFound,
    /// This pod cannot do it (role not running, no cluster configured, draining).
    Unavailable,
    /// The command ran and failed.
    Failed,
    /// The daemon did not answer in time (an actor is busy or stuck).
    Timeout,
    TooLarge,
    /// The peer's uid is not in `control.allowed_uids`.
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn ok(id: Option<u64>, result: Value) -> Self {
        Self {
            v: VERSION,
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            v: VERSION,
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }
}

/// What a symbol to subscribe is, as in the `ib.symbols` config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecType {
    Stock,
    Future,
}

/// A typed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    Subscriptions,
    Subscribe {
        symbol: String,
        sec_type: SecType,
        exchange: Option<String>,
    },
    Unsubscribe {
        symbol: String,
    },
    Rebalance,
    Reauth,
    /// A writer (`clickhouse_writer_<topic>` or just `<topic>`) or a calculator.
    Pause {
        actor: String,
    },
    Resume {
        actor: String,
    },
    /// Graceful drain as on SIGTERM; the daemon stays up, drained, until restarted.
    Drain {
        deadline_secs: Option<f64>,
    },
    ReloadSchemas,
    /// Without a level: report the current filter.
    LogLevel {
        level: Option<String>,
    },
    /// Fault injection for the failure-matrix tests (off unless
    /// `control.allow_fault_injection`): make the named actor fail.
    Fault {
        actor: String,
        kind: FaultKind,
    },
}

/// What `fault` does to an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The actor panics in its message handler; its supervisor restarts it.
    Panic,
    /// A writer's or calculator consumer's partitions are paused behind its back, as when
    /// librdkafka loses a resume: nothing more arrives from them until its stall check resumes
    /// them.
    Stall,
}

/// A request that cannot become a [`Command`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
}

fn bad_args(cmd: &str, message: impl std::fmt::Display) -> ParseError {
    ParseError {
        code: ErrorCode::BadArgs,
        message: format!("{cmd}: {message}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeArgs {
    symbol: String,
    #[serde(default = "stock")]
    sec_type: SecType,
    #[serde(default)]
    exchange: Option<String>,
}

fn stock() -> SecType {
    SecType::Stock
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SymbolArgs {
    symbol: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorArgs {
    actor: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultArgs {
    actor: String,
    kind: FaultKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainArgs {
    #[serde(default)]
    deadline_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelArgs {
    #[serde(default)]
    level: Option<String>,
}

/// Symbols as IB knows them: letters, digits and `.`/`-`/`_`/space, at most 32 characters.
fn valid_symbol(s: &str) -> bool {
    !s.trim().is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' '))
}

impl Command {
    /// Checks the version, the command name and its arguments.
    pub fn parse(req: &Request) -> Result<Self, ParseError> {
        if req.v != VERSION {
            return Err(ParseError {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "protocol version {} is not supported; this daemon speaks {VERSION}",
                    req.v
                ),
            });
        }
        let cmd = req.cmd.as_str();
        // Absent args mean `{}`; anything else must be an object with the command's fields.
        let args = if req.args.is_null() {
            Value::Object(Default::default())
        } else {
            req.args.clone()
        };
        fn take<T: serde::de::DeserializeOwned>(cmd: &str, args: Value) -> Result<T, ParseError> {
            serde_json::from_value(args).map_err(|e| bad_args(cmd, e))
        }
        let command = match cmd {
            "status" | "subscriptions" | "rebalance" | "reauth" | "reload-schemas" => {
                take::<NoArgs>(cmd, args)?;
                match cmd {
                    "status" => Self::Status,
                    "subscriptions" => Self::Subscriptions,
                    "rebalance" => Self::Rebalance,
                    "reauth" => Self::Reauth,
                    _ => Self::ReloadSchemas,
                }
            }
            "subscribe" => {
                let a: SubscribeArgs = take(cmd, args)?;
                if !valid_symbol(&a.symbol) {
                    return Err(bad_args(cmd, format!("{:?} is not a symbol", a.symbol)));
                }
                if a.sec_type == SecType::Future && a.exchange.is_none() {
                    return Err(bad_args(
                        cmd,
                        format!("future {} needs its exchange (e.g. NYMEX)", a.symbol),
                    ));
                }
                Self::Subscribe {
                    symbol: a.symbol,
                    sec_type: a.sec_type,
                    exchange: a.exchange,
                }
            }
            "unsubscribe" => {
                let a: SymbolArgs = take(cmd, args)?;
                if !valid_symbol(&a.symbol) {
                    return Err(bad_args(cmd, format!("{:?} is not a symbol", a.symbol)));
                }
                Self::Unsubscribe { symbol: a.symbol }
            }
            "pause" | "resume" => {
                let a: ActorArgs = take(cmd, args)?;
                if a.actor.trim().is_empty() {
                    return Err(bad_args(cmd, "empty actor name"));
                }
                if cmd == "pause" {
                    Self::Pause { actor: a.actor }
                } else {
                    Self::Resume { actor: a.actor }
                }
            }
            "drain" => {
                let a: DrainArgs = take(cmd, args)?;
                if let Some(d) = a.deadline_secs
                    && !(d > 0.0 && d <= 600.0)
                {
                    return Err(bad_args(
                        cmd,
                        format!("deadline_secs {d} is not in (0, 600]"),
                    ));
                }
                Self::Drain {
                    deadline_secs: a.deadline_secs,
                }
            }
            "log-level" => {
                let a: LogLevelArgs = take(cmd, args)?;
                if a.level.as_deref().is_some_and(|l| l.trim().is_empty()) {
                    return Err(bad_args(cmd, "empty level"));
                }
                Self::LogLevel { level: a.level }
            }
            "fault" => {
                let a: FaultArgs = take(cmd, args)?;
                if a.actor.trim().is_empty() {
                    return Err(bad_args(cmd, "empty actor name"));
                }
                Self::Fault {
                    actor: a.actor,
                    kind: a.kind,
                }
            }
            other => {
                return Err(ParseError {
                    code: ErrorCode::UnknownCommand,
                    message: format!("unknown command {other:?}; known: {}", COMMANDS.join(", ")),
                });
            }
        };
        Ok(command)
    }

    /// The wire name and arguments.
    pub fn to_wire(&self) -> (String, Value) {
        use serde_json::json;
        let (cmd, args) = match self {
            Self::Status => ("status", Value::Null),
            Self::Subscriptions => ("subscriptions", Value::Null),
            Self::Subscribe {
                symbol,
                sec_type,
                exchange,
            } => (
                "subscribe",
                json!({"symbol": symbol, "sec_type": sec_type, "exchange": exchange}),
            ),
            Self::Unsubscribe { symbol } => ("unsubscribe", json!({ "symbol": symbol })),
            Self::Rebalance => ("rebalance", Value::Null),
            Self::Reauth => ("reauth", Value::Null),
            Self::Pause { actor } => ("pause", json!({ "actor": actor })),
            Self::Resume { actor } => ("resume", json!({ "actor": actor })),
            Self::Drain { deadline_secs } => ("drain", json!({ "deadline_secs": deadline_secs })),
            Self::ReloadSchemas => ("reload-schemas", Value::Null),
            Self::LogLevel { level } => ("log-level", json!({ "level": level })),
            Self::Fault { actor, kind } => ("fault", json!({ "actor": actor, "kind": kind })),
        };
        (cmd.to_string(), args)
    }
}

/// One actor of the tree in a `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorStatus {
    /// Registered name, e.g. `clickhouse_writer_tick_market_data`.
    pub actor: String,
    /// `session`, `websocket`, `normalizer`, `producer`, `writer`, …
    pub kind: String,
    /// False while the supervisor waits to restart it.
    pub alive: bool,
    pub restarts: usize,
    /// One line for the table of `marketlane ctl status`.
    pub summary: String,
    /// The actor's own snapshot (`GetState`), null if it did not answer in time.
    pub state: Value,
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResult {
    pub instance: String,
    pub roles: Vec<String>,
    pub ready: bool,
    pub ready_reason: String,
    pub draining: bool,
    pub log_level: String,
    /// The cluster this pod is a member of; null while no cluster is configured.
    pub cluster: Option<Value>,
    pub actors: Vec<ActorStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Result<Command, ParseError> {
        let r: Request = serde_json::from_str(line).unwrap();
        Command::parse(&r)
    }

    #[test]
    fn every_command_round_trips() {
        let all = [
            Command::Status,
            Command::Subscriptions,
            Command::Subscribe {
                symbol: "CL".into(),
                sec_type: SecType::Future,
                exchange: Some("NYMEX".into()),
            },
            Command::Unsubscribe {
                symbol: "XOM".into(),
            },
            Command::Rebalance,
            Command::Reauth,
            Command::Pause { actor: "w".into() },
            Command::Resume { actor: "w".into() },
            Command::Drain {
                deadline_secs: Some(5.0),
            },
            Command::ReloadSchemas,
            Command::LogLevel {
                level: Some("debug".into()),
            },
            Command::Fault {
                actor: "normalizer_tick_market_data".into(),
                kind: FaultKind::Panic,
            },
        ];
        assert_eq!(all.len(), COMMANDS.len());
        for c in all {
            let line = serde_json::to_string(&Request::new(&c)).unwrap();
            let back: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(Command::parse(&back).unwrap(), c, "{line}");
        }
    }

    #[test]
    fn bad_requests_get_their_code() {
        let code = |l: &str| req(l).unwrap_err().code;
        assert_eq!(
            code(r#"{"v":2,"cmd":"status"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(r#"{"v":1,"cmd":"explode"}"#),
            ErrorCode::UnknownCommand
        );
        assert_eq!(
            code(r#"{"v":1,"cmd":"status","args":{"x":1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(code(r#"{"v":1,"cmd":"pause"}"#), ErrorCode::BadArgs);
        assert_eq!(
            code(r#"{"v":1,"cmd":"subscribe","args":{"symbol":"CL","sec_type":"future"}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"v":1,"cmd":"subscribe","args":{"symbol":"a;b"}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"v":1,"cmd":"drain","args":{"deadline_secs":-1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"v":1,"cmd":"status","args":[1]}"#),
            ErrorCode::BadArgs
        );
        let msg = req(r#"{"v":1,"cmd":"explode"}"#).unwrap_err().message;
        assert!(msg.contains("explode") && msg.contains("status"), "{msg}");
    }

    #[test]
    fn replies_serialize_compactly() {
        let r = Reply::err(Some(3), ErrorCode::BadArgs, "pause: missing field `actor`");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"v":1,"id":3,"ok":false,"error":{"code":"bad_args","message":"pause: missing field `actor`"}}"#
        );
    }
}
