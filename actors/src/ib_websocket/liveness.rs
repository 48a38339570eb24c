//! The websocket's timing without I/O: the actor (`actor.rs`) tells [`Liveness`] what happened
//! and when (connected, a frame, a `tic` or the subscriptions sent, a failed connect, the
//! greeting, the socket closed) and asks it on every [`TICK`] what is due: connect again after
//! the back-off, declare the socket dead after `ib.heartbeat_timeout` without a frame, send
//! `tic`, run the silence check, re-send the subscriptions before IB's expiry. It also paces the
//! nudges to the session actor. Every moment is a `tokio::time::Instant` passed in, so the tests
//! (`liveness_tests.rs`) drive it on paused time.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::IbConfig;

/// How often the actor asks what is due: the resolution of every interval below.
pub const TICK: Duration = Duration::from_millis(250);
/// How often subscribed symbols are checked for silence (`ib.silent_after`).
pub const SILENCE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The session actor is asked to check the session at most this often: a gateway that refuses
/// the socket refuses every attempt, and one check answers for all of them.
pub const NUDGE_EVERY: Duration = Duration::from_secs(2);
/// The reconnect delay after the first failure; it doubles per failure up to [`RETRY_CAP`]
/// (before the jitter).
pub const RETRY_BASE: Duration = Duration::from_millis(100);
pub const RETRY_CAP: Duration = Duration::from_secs(5);
/// The `ws_reconnects` label of a socket that went quiet.
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";

/// The configured intervals (`ib.*`).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// No frame for longer than this: the socket is dead (IB sends a heartbeat every 10 s).
    pub heartbeat_timeout: Duration,
    /// IB closes a socket without a `tic` for about a minute.
    pub tic_interval: Duration,
    /// IB drops an `smd` it has not seen again for about ten minutes.
    pub resubscribe_interval: Duration,
}

impl From<&IbConfig> for Timing {
    fn from(ib: &IbConfig) -> Self {
        Self {
            heartbeat_timeout: ib.heartbeat_timeout,
            tic_interval: ib.tic_interval,
            resubscribe_interval: ib.resubscribe_interval,
        }
    }
}

/// What a tick asks of the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// No socket and the back-off is over: connect (when there is a session).
    Connect,
    /// No socket; the back-off runs until [`Liveness::retry_at`].
    Wait,
    /// No frame for `silent_for`, longer than the heartbeat timeout: the socket is dead;
    /// `label` is the `ws_reconnects` label.
    Lost {
        label: &'static str,
        silent_for: Duration,
    },
    /// The socket is alive; do what is due, in this order.
    Alive(Due),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Send `tic`, and report it with [`Liveness::tic_sent`].
    pub tic: bool,
    /// Check the subscribed symbols for silence. Counted as done when asked: the check has no
    /// outcome that moves its cadence.
    pub silence_check: bool,
    /// Re-send every `smd`, and report it with [`Liveness::subscribed`].
    pub resubscribe: bool,
}

/// The moments of the open socket.
#[derive(Debug, Clone, Copy)]
struct Open {
    last_frame: Instant,
    last_tic: Instant,
    /// Unset until the greeting's subscriptions: nothing to refresh before.
    last_subscribe: Option<Instant>,
}

#[derive(Debug)]
pub struct Liveness {
    timing: Timing,
    open: Option<Open>,
    /// Failed connects (and lost sockets) since the last greeting: the back-off's exponent.
    attempt: u32,
    retry_at: Instant,
    /// Kept across sockets: a new socket is checked at its first tick when the last check is
    /// older than a second.
    last_silence_check: Instant,
    last_nudge: Option<Instant>,
}

impl Liveness {
    pub fn new(timing: Timing, now: Instant) -> Self {
        Self {
            timing,
            open: None,
            attempt: 0,
            retry_at: now,
            last_silence_check: now,
            last_nudge: None,
        }
    }

    pub fn tick(&mut self, now: Instant) -> Tick {
        let Some(open) = self.open else {
            return if now >= self.retry_at {
                Tick::Connect
            } else {
                Tick::Wait
            };
        };
        let t = self.timing;
        let silent_for = now.saturating_duration_since(open.last_frame);
        if silent_for > t.heartbeat_timeout {
            return Tick::Lost {
                label: HEARTBEAT_TIMEOUT,
                silent_for,
            };
        }
        let since = |at: Instant| now.saturating_duration_since(at);
        let silence_check = since(self.last_silence_check) >= SILENCE_CHECK_EVERY;
        if silence_check {
            self.last_silence_check = now;
        }
        Tick::Alive(Due {
            tic: since(open.last_tic) >= t.tic_interval,
            silence_check,
            resubscribe: open
                .last_subscribe
                .is_some_and(|at| since(at) >= t.resubscribe_interval),
        })
    }

    /// A socket is open: its heartbeat and `tic` count from now.
    pub fn connected(&mut self, now: Instant) {
        self.open = Some(Open {
            last_frame: now,
            last_tic: now,
            last_subscribe: None,
        });
    }

    /// The gateway greeted: the connection works, so the back-off starts over.
    pub fn greeted(&mut self) {
        self.attempt = 0;
    }

    pub fn frame(&mut self, now: Instant) {
        if let Some(o) = self.open.as_mut() {
            o.last_frame = now;
        }
    }

    pub fn tic_sent(&mut self, now: Instant) {
        if let Some(o) = self.open.as_mut() {
            o.last_tic = now;
        }
    }

    /// Every instrument was (re)subscribed: IB's expiry counts from now.
    pub fn subscribed(&mut self, now: Instant) {
        if let Some(o) = self.open.as_mut() {
            o.last_subscribe = Some(now);
        }
    }

    pub fn closed(&mut self) {
        self.open = None;
    }

    /// Connect at the next tick (a new session).
    pub fn connect_now(&mut self, now: Instant) {
        self.retry_at = now;
    }

    /// A connect failed or the socket was lost: the next connect waits [`retry_delay`] of the
    /// attempts so far, times `jitter` (the actor draws it from 0.5..1.5 so that pods do not
    /// reconnect in step). Returns the delay.
    pub fn schedule_retry(&mut self, now: Instant, jitter: f64) -> Duration {
        let delay = retry_delay(self.attempt, jitter);
        self.retry_at = now + delay;
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Whether to nudge the session actor now (at most every [`NUDGE_EVERY`]); a yes counts as
    /// the nudge.
    pub fn nudge_due(&mut self, now: Instant) -> bool {
        if self
            .last_nudge
            .is_some_and(|t| now.saturating_duration_since(t) < NUDGE_EVERY)
        {
            return false;
        }
        self.last_nudge = Some(now);
        true
    }

    pub fn since_last_frame(&self, now: Instant) -> Option<Duration> {
        self.open
            .map(|o| now.saturating_duration_since(o.last_frame))
    }

    /// When the open socket's instruments were last (re)subscribed.
    pub fn last_subscribe(&self) -> Option<Instant> {
        self.open.and_then(|o| o.last_subscribe)
    }

    pub fn retry_at(&self) -> Instant {
        self.retry_at
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// 100 ms × 2^attempt, at most 5 s, times `jitter`.
pub fn retry_delay(attempt: u32, jitter: f64) -> Duration {
    let base = RETRY_BASE * 2u32.saturating_pow(attempt.min(6));
    base.min(RETRY_CAP).mul_f64(jitter)
}

/// The conids of `subscribed` not yet flagged `silent` that have had no frame for longer than
/// `limit`, counted from the later of their last frame and the subscription (`since`).
pub fn newly_silent(
    subscribed: impl Iterator<Item = i64>,
    last_seen: &HashMap<i64, Instant>,
    silent: &BTreeSet<i64>,
    since: Instant,
    now: Instant,
    limit: Duration,
) -> Vec<i64> {
    subscribed
        .filter(|c| !silent.contains(c))
        .filter(|c| {
            let last = last_seen.get(c).map_or(since, |t| (*t).max(since));
            now.saturating_duration_since(last) > limit
        })
        .collect()
}
