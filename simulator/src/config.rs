//! Command-line flags (`marketlane-sim …`) and the plain config struct they convert into.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::SimError;

/// IB's minimum spacing between two `smd` frames of one conid.
pub const MIN_FRAME_INTERVAL_MS: u64 = 500;

/// Flags of `marketlane-sim`. Every flag has a default so `marketlane-sim` alone starts a
/// plain-http gateway on 127.0.0.1:5000 that behaves like a logged-in IB gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// Seed for every random choice (prices, sizes, session ids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Adds N synthetic US stocks SYM0001… (conids 900001…) to the built-in universe.
    #[arg(long, default_value_t = 0)]
    pub synthetic_symbols: u32,
    /// Append the ledger (JSON lines) to this file.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Sim-time spacing of the per-conid ticker, in ms (IB's minimum is 500).
    #[arg(long, default_value_t = MIN_FRAME_INTERVAL_MS)]
    pub frame_interval_ms: u64,
    /// Allow a frame interval below IB's 500 ms (load tests only).
    #[arg(long)]
    pub unpaced: bool,
    /// Probability that a frame tick carries a new trade.
    #[arg(long, default_value_t = 0.6)]
    pub trade_probability: f64,
    /// Probability per tick that the last price turns halted (`H…`) or prior-close (`C…`).
    #[arg(long, default_value_t = 0.01)]
    pub status_probability: f64,
    /// Sim-time acceleration: the sim clock runs F times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seconds (sim time) without REST requests before the brokerage session goes unauthenticated.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// Seconds (sim time) after which an `smd` subscription silently ends unless re-sent; 0 disables.
    #[arg(long, default_value_t = 600)]
    pub subscription_expiry_secs: u64,
    /// Maximum concurrent `smd` lines (market-data lines) across the session.
    #[arg(long)]
    pub line_cap: Option<usize>,
    /// Serve https/wss with a self-signed certificate generated at start.
    #[arg(long)]
    pub tls: bool,
    /// An SSO (browser) login already exists; the brokerage session still needs `ssodh/init`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_login: bool,
    /// The IB username reported in `system` and `sso/validate`.
    #[arg(long, default_value = "user1")]
    pub username: String,
    /// The account id reported by `/iserver/accounts` and `act`.
    #[arg(long, default_value = "DU1234567")]
    pub account: String,
    /// JSON list of timed faults: `[{"at_secs":30,"fault":{"kind":"drop_tcp"}}]`.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Sim-time length of the 429 penalty box.
    #[arg(long, default_value_t = 600)]
    pub penalty_box_secs: u64,
    /// Disable request pacing (no 429s).
    #[arg(long)]
    pub no_pacing: bool,
    /// How many times a `tic` is answered (a live probe saw 4).
    #[arg(long, default_value_t = 1)]
    pub tic_replies: u8,
    /// Price levels per side of an `sbd` ladder.
    #[arg(long, default_value_t = 5)]
    pub book_depth: usize,
    /// Probability that a delta frame omits `conid`/`conidEx` (observed at IB; topic stays).
    #[arg(long, default_value_t = 0.0)]
    pub conidless_probability: f64,
    /// Hard end of an SSO session in sim seconds (IB: 24 h).
    #[arg(long, default_value_t = 86_400)]
    pub max_session_secs: u64,
    /// Wall-clock delay of a `/iserver/marketdata/history` answer.
    #[arg(long, default_value_t = 250)]
    pub history_delay_ms: u64,
    /// Field 6509 of a symbol's frames, as `SYMBOL=CODE` (repeatable), e.g. `XOM=DPB`
    /// (delayed) or `CL=ZB` (frozen); other symbols get `RpB` (real-time).
    #[arg(long = "availability", value_name = "SYMBOL=CODE")]
    pub availability: Vec<AvailabilitySpec>,
    /// A symbol whose market does not move (an illiquid contract, a closed market): after its
    /// first frame nothing changes, so IB, which sends only changed fields, sends nothing more.
    #[arg(long = "quiet-symbol", value_name = "SYMBOL")]
    pub quiet_symbols: Vec<String>,
    /// A re-sent `smd` for a subscribed conid resets its expiry and also brings a full frame
    /// (IB's behaviour here is not documented: without the flag only the expiry is reset).
    #[arg(long)]
    pub smd_resend_full_frame: bool,
    /// Send the first frame of every `smd` subscription twice, as a live gateway did in every
    /// subscription of machdat/broker-gateway's recordings
    /// (`tests/fixtures/recorded/ws/topic-explorer-2026-04-30/smd-*.jsonl`: same `_updated`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub repeat_first_frame: bool,
    /// Sim seconds from `ssodh/init` (or `reauthenticate`) until the brokerage session is
    /// authenticated (IB: 30–90 s). A few seconds by default, so that every test meets it.
    #[arg(long, default_value_t = 3.0)]
    pub brokerage_delay_secs: f64,
    /// Answer 405 to a method IB does not document for a session endpoint (e.g. `GET
    /// /tickle`; IB's spec has `POST`). Clients are seen sending `GET /tickle`, so whether a
    /// real gateway refuses it is not known: an option.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_methods: bool,
    /// With `--tls`: write the generated certificate (PEM) here, for clients that verify it.
    #[arg(long)]
    pub tls_cert_out: Option<PathBuf>,
    /// Answer 411 to a POST without `Content-Length` (what Akamai, in front of IB's API, does:
    /// OpenNTF/SocialSDK#1768; whether the gateway passes it through is not known).
    #[arg(long)]
    pub require_content_length: bool,
    /// One more gateway in this process, as `ADDR=USERNAME:ACCOUNT` (repeatable), e.g.
    /// `--gateway 127.0.0.1:5001=user2:DU7654321`: its own listener, brokerage session,
    /// pacing, line cap, websockets, `/sim/fault` and `/sim/status`, on the same sim clock,
    /// market and ledger as the `--listen` gateway (which keeps `--username`/`--account`).
    #[arg(long = "gateway", value_name = "ADDR=USERNAME:ACCOUNT")]
    pub gateways: Vec<GatewaySpec>,
    /// The SSO login page (`/sso/Login`) takes only this file's password (default: any).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The SSO login page asks for a TOTP code of this base32 secret after the password.
    #[arg(long)]
    pub totp_secret_file: Option<PathBuf>,
    /// Refused logins in a row after which the SSO page locks the account (IB's number is
    /// not published).
    #[arg(long, default_value_t = 5)]
    pub sso_lock_after: u32,
    /// The SSO page's second factor is an IB Key push notification, approved with
    /// `POST /sim/sso/approve` (instead of a TOTP code).
    #[arg(long)]
    pub sso_push: bool,
}

/// `SYMBOL=CODE`: the 6509 code a symbol's frames carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailabilitySpec {
    pub symbol: String,
    pub code: String,
}

impl FromStr for AvailabilitySpec {
    type Err = String;

    /// The code's first character is IB's delivery: R, D, Z, Y or N.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (symbol, code) = s
            .split_once('=')
            .ok_or_else(|| format!("availability {s:?} is not SYMBOL=CODE"))?;
        let (symbol, code) = (symbol.trim(), code.trim());
        if symbol.is_empty() || !code.starts_with(['R', 'D', 'Z', 'Y', 'N']) {
            return Err(format!(
                "availability {s:?}: CODE must start with R, D, Z, Y or N (e.g. DPB)"
            ));
        }
        Ok(Self {
            symbol: symbol.to_string(),
            code: code.to_string(),
        })
    }
}

/// One IB user's gateway: where it listens and whose session it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    pub listen: SocketAddr,
    /// The IB username (`system`, `sso/validate`); also names the gateway in the ledger.
    pub username: String,
    /// The account id (`/iserver/accounts`, `act`).
    pub account: String,
}

impl FromStr for GatewaySpec {
    type Err = String;

    /// `ADDR=USERNAME:ACCOUNT`. The address may be IPv6 (`[::1]:5001`): it never holds `=`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || format!("gateway {s:?} is not ADDR=USERNAME:ACCOUNT");
        let (addr, who) = s.split_once('=').ok_or_else(shape)?;
        let (username, account) = who.split_once(':').ok_or_else(shape)?;
        let listen = addr
            .trim()
            .parse()
            .map_err(|e| format!("gateway {s:?}: bad address {addr:?}: {e}"))?;
        let (username, account) = (username.trim(), account.trim());
        if username.is_empty() || account.is_empty() {
            return Err(shape());
        }
        Ok(Self {
            listen,
            username: username.to_string(),
            account: account.to_string(),
        })
    }
}

/// Everything the simulator needs to run; `Default` matches the CLI defaults except the listen
/// address, which is `127.0.0.1:0` so tests get a free port.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub seed: u64,
    pub synthetic_symbols: u32,
    pub ledger_path: Option<PathBuf>,
    /// Entries kept in memory for `SimHandle::ledger()`; counts stay exact beyond it.
    pub ledger_memory_limit: usize,
    pub frame_interval_ms: u64,
    pub unpaced: bool,
    pub trade_probability: f64,
    pub status_probability: f64,
    pub speed: f64,
    pub idle_timeout_secs: u64,
    /// Hard end of an SSO session (IB: 24 h).
    pub max_session_secs: u64,
    pub subscription_expiry_secs: u64,
    pub line_cap: Option<usize>,
    pub tls: bool,
    pub auto_login: bool,
    pub username: String,
    pub account: String,
    pub paper: bool,
    pub scenario: Option<PathBuf>,
    pub penalty_box_secs: u64,
    pub pacing: bool,
    pub tic_replies: u8,
    pub book_depth: usize,
    /// Sim-time start as Unix ms; `None` = the wall clock at spawn.
    pub start_time_ms: Option<i64>,
    /// Sim seconds between `competing:true` and `authenticated:false`.
    pub competing_grace_secs: u64,
    pub history_delay_ms: u64,
    pub conidless_probability: f64,
    /// Sim seconds from `ssodh/init`/`reauthenticate` to an authenticated brokerage session.
    /// 0 in `Default` (in-process tests of other behaviours); the CLI's default is 3.
    pub brokerage_delay_secs: f64,
    /// 405 for undocumented methods on the session endpoints.
    pub strict_methods: bool,
    /// 411 for a POST without `Content-Length`.
    pub require_content_length: bool,
    /// With `tls`: where to write the certificate (PEM).
    pub tls_cert_out: Option<PathBuf>,
    /// Gateways besides the primary one (`listen`/`username`/`account`).
    pub gateways: Vec<GatewaySpec>,
    /// The SSO page's password (None: any) and TOTP secret (None: no second factor).
    pub password_file: Option<PathBuf>,
    pub totp_secret_file: Option<PathBuf>,
    pub sso_lock_after: u32,
    pub sso_push: bool,
    /// 6509 per symbol (others: real-time `RpB`).
    pub availability: Vec<AvailabilitySpec>,
    /// Symbols whose quote and trades never change.
    pub quiet_symbols: Vec<String>,
    /// A re-sent `smd` brings a full frame.
    pub smd_resend_full_frame: bool,
    /// The first frame of a subscription is sent twice.
    pub repeat_first_frame: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            synthetic_symbols: 0,
            ledger_path: None,
            ledger_memory_limit: 2_000_000,
            frame_interval_ms: MIN_FRAME_INTERVAL_MS,
            unpaced: false,
            trade_probability: 0.6,
            status_probability: 0.01,
            speed: 1.0,
            idle_timeout_secs: 300,
            max_session_secs: 24 * 3600,
            subscription_expiry_secs: 600,
            line_cap: None,
            tls: false,
            auto_login: true,
            username: "user1".into(),
            account: "DU1234567".into(),
            paper: true,
            scenario: None,
            penalty_box_secs: 600,
            pacing: true,
            tic_replies: 1,
            book_depth: 5,
            start_time_ms: None,
            competing_grace_secs: 2,
            history_delay_ms: 250,
            conidless_probability: 0.0,
            brokerage_delay_secs: 0.0,
            strict_methods: true,
            require_content_length: false,
            tls_cert_out: None,
            gateways: Vec::new(),
            password_file: None,
            totp_secret_file: None,
            sso_lock_after: 5,
            sso_push: false,
            availability: Vec::new(),
            quiet_symbols: Vec::new(),
            smd_resend_full_frame: false,
            repeat_first_frame: true,
        }
    }
}

impl From<SimArgs> for SimConfig {
    fn from(a: SimArgs) -> Self {
        Self {
            listen: a.listen,
            seed: a.seed,
            synthetic_symbols: a.synthetic_symbols,
            ledger_path: a.ledger,
            frame_interval_ms: a.frame_interval_ms,
            unpaced: a.unpaced,
            trade_probability: a.trade_probability,
            status_probability: a.status_probability,
            speed: a.speed,
            idle_timeout_secs: a.idle_timeout_secs,
            subscription_expiry_secs: a.subscription_expiry_secs,
            line_cap: a.line_cap,
            tls: a.tls,
            auto_login: a.auto_login,
            username: a.username,
            account: a.account,
            scenario: a.scenario,
            penalty_box_secs: a.penalty_box_secs,
            pacing: !a.no_pacing,
            tic_replies: a.tic_replies,
            book_depth: a.book_depth,
            max_session_secs: a.max_session_secs,
            history_delay_ms: a.history_delay_ms,
            conidless_probability: a.conidless_probability,
            brokerage_delay_secs: a.brokerage_delay_secs,
            strict_methods: a.strict_methods,
            require_content_length: a.require_content_length,
            tls_cert_out: a.tls_cert_out,
            gateways: a.gateways,
            password_file: a.password_file,
            totp_secret_file: a.totp_secret_file,
            sso_lock_after: a.sso_lock_after,
            sso_push: a.sso_push,
            availability: a.availability,
            quiet_symbols: a.quiet_symbols,
            smd_resend_full_frame: a.smd_resend_full_frame,
            repeat_first_frame: a.repeat_first_frame,
            ..Self::default()
        }
    }
}

impl SimConfig {
    /// Rejects values that would make the simulator unfaithful or stuck.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::InvalidConfig(m));
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return bad(format!("speed must be > 0, got {}", self.speed));
        }
        if self.frame_interval_ms == 0 {
            return bad("frame interval must be > 0 ms".into());
        }
        if self.frame_interval_ms < MIN_FRAME_INTERVAL_MS && !self.unpaced {
            return bad(format!(
                "frame interval {} ms is below IB's 500 ms; pass --unpaced for load tests",
                self.frame_interval_ms
            ));
        }
        for (name, p) in [
            ("trade probability", self.trade_probability),
            ("status probability", self.status_probability),
            ("conidless probability", self.conidless_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} must be within 0..=1, got {p}"));
            }
        }
        if self.book_depth == 0 || self.book_depth > 50 {
            return bad(format!(
                "book depth must be 1..=50, got {}",
                self.book_depth
            ));
        }
        if self.synthetic_symbols > 99_999 {
            return bad(format!(
                "at most 99999 synthetic symbols, got {}",
                self.synthetic_symbols
            ));
        }
        if self.max_session_secs == 0 {
            return bad("max session must be > 0 s".into());
        }
        if self.idle_timeout_secs == 0 {
            return bad("idle timeout must be > 0 s".into());
        }
        if self.sso_lock_after == 0 {
            return bad("sso lock after must be at least 1 refused login".into());
        }
        for (flag, path) in [
            ("--password-file", &self.password_file),
            ("--totp-secret-file", &self.totp_secret_file),
        ] {
            if let Some(p) = path
                && let Err(e) = std::fs::metadata(p)
            {
                return bad(format!("{flag} {}: {e}", p.display()));
            }
        }
        if !(self.brokerage_delay_secs.is_finite() && self.brokerage_delay_secs >= 0.0) {
            return bad(format!(
                "brokerage delay must be >= 0 s, got {}",
                self.brokerage_delay_secs
            ));
        }
        let mut users = HashSet::new();
        let mut addrs = HashSet::new();
        for g in self.all_gateways() {
            // One brokerage session per IB username: two gateways of one user would compete
            // (the `competing` fault simulates that on one gateway).
            if !users.insert(g.username.clone()) {
                return bad(format!("gateway username {:?} used twice", g.username));
            }
            if g.listen.port() != 0 && !addrs.insert(g.listen) {
                return bad(format!("gateway address {} used twice", g.listen));
            }
        }
        Ok(())
    }

    /// The primary gateway first, then the `--gateway` ones.
    pub fn all_gateways(&self) -> Vec<GatewaySpec> {
        let primary = GatewaySpec {
            listen: self.listen,
            username: self.username.clone(),
            account: self.account.clone(),
        };
        std::iter::once(primary)
            .chain(self.gateways.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> SimConfig {
        let mut v = vec!["sim"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse").sim.into()
    }

    #[test]
    fn defaults() {
        let c = parse(&[]);
        assert_eq!(c.listen, "127.0.0.1:5000".parse().expect("addr"));
        assert_eq!(c.frame_interval_ms, 500);
        assert_eq!(c.subscription_expiry_secs, 600);
        assert_eq!(c.idle_timeout_secs, 300);
        assert!(c.auto_login && c.pacing && !c.tls);
        assert_eq!(
            c.brokerage_delay_secs, 3.0,
            "strict by default: IB is never instant"
        );
        assert!(c.strict_methods && !c.require_content_length);
        assert_eq!(c.username, "user1");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn fast_frames_need_unpaced() {
        assert!(parse(&["--frame-interval-ms", "100"]).validate().is_err());
        assert!(
            parse(&["--frame-interval-ms", "100", "--unpaced"])
                .validate()
                .is_ok()
        );
        let c = parse(&["--auto-login=false", "--speed", "30", "--line-cap", "100"]);
        assert!(!c.auto_login);
        assert_eq!(c.line_cap, Some(100));
        assert!(parse(&["--speed", "0"]).validate().is_err());
        assert!(parse(&["--trade-probability", "1.5"]).validate().is_err());
    }

    #[test]
    fn availability_and_resend_options() {
        let c = parse(&[
            "--availability",
            "XOM=DPB",
            "--availability",
            "CL=ZB",
            "--smd-resend-full-frame",
            "--repeat-first-frame=false",
        ]);
        assert_eq!(c.availability.len(), 2);
        assert_eq!(c.availability[0].symbol, "XOM");
        assert_eq!(c.availability[1].code, "ZB");
        assert!(c.smd_resend_full_frame && !c.repeat_first_frame);
        assert!(parse(&[]).repeat_first_frame, "as a live gateway does");
        for bad in ["XOM", "XOM=", "XOM=QB", "=DPB"] {
            let v = ["sim", "--availability", bad];
            assert!(Cli::try_parse_from(v).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn extra_gateways() {
        let c = parse(&[
            "--gateway",
            "127.0.0.1:5001=user2:DU7654321",
            "--gateway",
            "[::1]:5002=user3:DU3",
        ]);
        assert!(c.validate().is_ok());
        let all = c.all_gateways();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].username, "user1");
        assert_eq!(
            all[1],
            GatewaySpec {
                listen: "127.0.0.1:5001".parse().expect("addr"),
                username: "user2".into(),
                account: "DU7654321".into(),
            }
        );
        assert_eq!(all[2].listen, "[::1]:5002".parse().expect("addr"));
        for bad in [
            "127.0.0.1:5001",
            "127.0.0.1:5001=user2",
            "x=user2:DU1",
            "=u:a",
        ] {
            let v = ["sim", "--gateway", bad];
            assert!(Cli::try_parse_from(v).is_err(), "{bad} accepted");
        }
        let dup_user = parse(&["--gateway", "127.0.0.1:5001=user1:DU2"]);
        assert!(dup_user.validate().is_err());
        let dup_addr = parse(&["--gateway", "127.0.0.1:5000=user2:DU2"]);
        assert!(dup_addr.validate().is_err());
    }
}
