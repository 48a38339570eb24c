//! The websocket's timing on paused time: [`Liveness`] ticked every [`TICK`] as the actor ticks
//! it (a `tokio::time::interval`, like ractor's `send_interval`), with a scripted gateway. The
//! heartbeat timeout, the `tic` and re-subscription cadences, the silence check, the back-off
//! and its reset, and the nudge rate limit, each at exact instants.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::liveness::{
    HEARTBEAT_TIMEOUT, Liveness, NUDGE_EVERY, RETRY_CAP, TICK, Tick, Timing, newly_silent,
    retry_delay,
};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// The production defaults (`IbConfig::default`).
fn timing() -> Timing {
    Timing {
        heartbeat_timeout: 20 * SEC,
        tic_interval: 50 * SEC,
        resubscribe_interval: 480 * SEC,
    }
}

/// What the actor did at a tick, at milliseconds since the start.
type Log = Vec<(u64, &'static str)>;

/// The gateway as the driver sees it, by time since the start.
struct Gateway {
    /// Whether a connect at this moment succeeds.
    accepts: Box<dyn Fn(Duration) -> bool>,
    /// Whether a frame (a heartbeat) arrives just before the tick at this moment.
    frame: Box<dyn Fn(Duration) -> bool>,
    /// Whether an accepted socket greets (and so gets its subscriptions).
    greets: bool,
}

impl Gateway {
    /// Accepts every connect, greets, and sends IB's heartbeat every 10 s.
    fn healthy() -> Self {
        Self {
            accepts: Box::new(|_| true),
            frame: Box::new(|at| at.as_millis() % 10_000 == 0),
            greets: true,
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs the actor's tick loop for `for_` with jitter 1.0: what it did, by time.
async fn run(l: &mut Liveness, gw: &Gateway, for_: Duration) -> Log {
    let start = Instant::now();
    let mut log = Log::new();
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let at = now - start;
        if at > for_ {
            return log;
        }
        if (gw.frame)(at) {
            l.frame(now);
        }
        match l.tick(now) {
            Tick::Wait => {}
            Tick::Connect => {
                if (gw.accepts)(at) {
                    l.connected(now);
                    log.push((ms(at), "connect"));
                    if gw.greets {
                        l.greeted();
                        l.subscribed(now);
                    }
                } else {
                    l.schedule_retry(now, 1.0);
                    log.push((ms(at), "connect_failed"));
                }
            }
            Tick::Lost { label, .. } => {
                l.closed();
                l.schedule_retry(now, 1.0);
                log.push((ms(at), label));
            }
            Tick::Alive(due) => {
                if due.tic {
                    l.tic_sent(now);
                    log.push((ms(at), "tic"));
                }
                if due.silence_check {
                    log.push((ms(at), "silence_check"));
                }
                if due.resubscribe {
                    l.subscribed(now);
                    log.push((ms(at), "resubscribe"));
                }
            }
        }
    }
}

fn times(log: &Log, what: &str) -> Vec<u64> {
    log.iter()
        .filter(|(_, w)| *w == what)
        .map(|(t, _)| *t)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_timeout_fires_just_after_the_timeout_and_not_at_it() {
    let t0 = Instant::now();
    let mut l = Liveness::new(timing(), t0);
    l.connected(t0);
    tokio::time::advance(20 * SEC).await;
    assert!(
        matches!(l.tick(Instant::now()), Tick::Alive(_)),
        "exactly the timeout without a frame is still alive"
    );
    tokio::time::advance(MS).await;
    assert_eq!(
        l.tick(Instant::now()),
        Tick::Lost {
            label: HEARTBEAT_TIMEOUT,
            silent_for: 20 * SEC + MS
        }
    );
    // On the actor's tick: the first tick past the timeout, and nothing after it on that socket.
    let mut l = Liveness::new(timing(), Instant::now());
    let quiet = Gateway {
        frame: Box::new(|_| false),
        ..Gateway::healthy()
    };
    let log = run(&mut l, &quiet, 20 * SEC + 400 * MS).await;
    assert_eq!(times(&log, "connect"), [0]);
    assert_eq!(times(&log, HEARTBEAT_TIMEOUT), [20_250]);
    assert_eq!(log.last(), Some(&(20_250, HEARTBEAT_TIMEOUT)));
}

#[tokio::test(start_paused = true)]
async fn a_frame_restarts_the_heartbeat_timeout() {
    let t0 = Instant::now();
    let mut l = Liveness::new(timing(), t0);
    l.connected(t0);
    tokio::time::advance(15 * SEC).await;
    l.frame(Instant::now());
    tokio::time::advance(20 * SEC).await;
    assert!(
        matches!(l.tick(Instant::now()), Tick::Alive(_)),
        "35 s after the connect but 20 s after the frame"
    );
    assert_eq!(l.since_last_frame(Instant::now()), Some(20 * SEC));
    tokio::time::advance(MS).await;
    assert!(matches!(l.tick(Instant::now()), Tick::Lost { .. }));

    // IB's heartbeat every 10 s keeps a socket alive indefinitely; one missed beat does too
    // (20 s), two missed do not.
    let mut l = Liveness::new(timing(), Instant::now());
    let one_missed = Gateway {
        frame: Box::new(|at| at.as_millis() % 10_000 == 0 && at != 30 * SEC),
        ..Gateway::healthy()
    };
    let log = run(&mut l, &one_missed, 300 * SEC).await;
    assert_eq!(times(&log, HEARTBEAT_TIMEOUT), Vec::<u64>::new());
    let mut l = Liveness::new(timing(), Instant::now());
    let two_missed = Gateway {
        frame: Box::new(|at| at.as_millis() % 10_000 == 0 && at != 30 * SEC && at != 40 * SEC),
        ..Gateway::healthy()
    };
    let log = run(&mut l, &two_missed, 60 * SEC).await;
    // The last frame was at 20 s: lost at the first tick after 40 s.
    assert_eq!(times(&log, HEARTBEAT_TIMEOUT), [40_250]);
}

#[tokio::test(start_paused = true)]
async fn tic_goes_out_every_tic_interval_counted_from_the_connect() {
    let mut l = Liveness::new(timing(), Instant::now());
    // The first connect fails: the socket opens at 0.25 s (100 ms back-off, next tick).
    let gw = Gateway {
        accepts: Box::new(|at| at > Duration::ZERO),
        frame: Box::new(|at| at.as_millis() % 10_000 == 250),
        greets: true,
    };
    let log = run(&mut l, &gw, 210 * SEC).await;
    assert_eq!(times(&log, "connect"), [250]);
    assert_eq!(times(&log, "tic"), [50_250, 100_250, 150_250, 200_250]);
}

#[tokio::test(start_paused = true)]
async fn subscriptions_are_refreshed_every_resubscribe_interval_after_the_greeting() {
    let mut l = Liveness::new(timing(), Instant::now());
    let log = run(&mut l, &Gateway::healthy(), 1000 * SEC).await;
    assert_eq!(times(&log, "resubscribe"), [480_000, 960_000]);

    // Before the greeting nothing was subscribed, so nothing is refreshed.
    let mut l = Liveness::new(timing(), Instant::now());
    let silent_greeting = Gateway {
        greets: false,
        ..Gateway::healthy()
    };
    let log = run(&mut l, &silent_greeting, 1000 * SEC).await;
    assert_eq!(times(&log, "resubscribe"), Vec::<u64>::new());
    assert_eq!(times(&log, "tic").len(), 20, "the socket itself stays up");

    // A re-subscription in between (re-authentication, a new greeting) restarts the count.
    let t0 = Instant::now();
    let mut l = Liveness::new(timing(), t0);
    l.connected(t0);
    l.subscribed(t0);
    l.subscribed(t0 + 100 * SEC);
    l.frame(t0 + 480 * SEC);
    let Tick::Alive(due) = l.tick(t0 + 480 * SEC) else {
        panic!("alive")
    };
    assert!(!due.resubscribe);
    l.frame(t0 + 580 * SEC);
    let Tick::Alive(due) = l.tick(t0 + 580 * SEC) else {
        panic!("alive")
    };
    assert!(due.resubscribe);
}

#[tokio::test(start_paused = true)]
async fn the_silence_check_runs_once_a_second_while_connected() {
    let mut l = Liveness::new(timing(), Instant::now());
    let gw = Gateway {
        accepts: Box::new(|at| at >= 3 * SEC),
        ..Gateway::healthy()
    };
    let log = run(&mut l, &gw, 7 * SEC + 900 * MS).await;
    // Connect failures at 0, 0.25 (100 ms later), 0.5 (200 ms), 1.0 (400 ms), 2.0 (800 ms),
    // none checked; the socket opened at the first tick past 3.6 s (1.6 s later) is checked at
    // its next tick, the last check being older than a second, then every second.
    assert_eq!(times(&log, "connect_failed"), [0, 250, 500, 1000, 2000]);
    assert_eq!(times(&log, "connect"), [3_750]);
    assert_eq!(times(&log, "silence_check"), [4_000, 5_000, 6_000, 7_000]);
}

#[test]
fn newly_silent_counts_from_the_later_of_the_last_frame_and_the_subscription() {
    let t0 = Instant::now();
    let since = t0 + 100 * SEC;
    let limit = 120 * SEC;
    let seen = HashMap::from([(1, t0), (2, since + 60 * SEC)]);
    let silent = BTreeSet::from([4]);
    let check = |at: Duration| {
        newly_silent(
            [1, 2, 3, 4].into_iter(),
            &seen,
            &silent,
            since,
            since + at,
            limit,
        )
    };
    // 1's frame predates the subscription and 3 never had one: both count from it.
    assert_eq!(check(limit), Vec::<i64>::new());
    assert_eq!(check(limit + MS), [1, 3]);
    assert_eq!(
        check(limit + 60 * SEC + MS),
        [1, 2, 3],
        "4 is flagged already"
    );
}

#[test]
fn the_back_off_doubles_from_100_ms_to_the_5_s_cap() {
    let delays: Vec<u64> = (0..10).map(|a| ms(retry_delay(a, 1.0))).collect();
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
    );
    assert_eq!(retry_delay(u32::MAX, 1.0), RETRY_CAP);
    // The jitter scales the capped delay: ±50 %.
    assert_eq!(ms(retry_delay(0, 0.5)), 50);
    assert_eq!(ms(retry_delay(20, 1.5)), 7500);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_its_delay_and_the_greeting_resets_the_back_off() {
    let t0 = Instant::now();
    let mut l = Liveness::new(timing(), t0);
    assert_eq!(l.tick(t0), Tick::Connect, "the first connect does not wait");
    let mut now = t0;
    for expected in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
        let delay = l.schedule_retry(now, 1.0);
        assert_eq!(ms(delay), expected);
        assert_eq!(l.tick(now + delay - MS), Tick::Wait);
        now += delay;
        assert_eq!(l.retry_at(), now);
        assert_eq!(l.tick(now), Tick::Connect);
    }
    assert_eq!(l.attempt(), 8);
    // An open socket that never greets does not reset it: a gateway that accepts the socket
    // but not the session keeps backing off.
    l.connected(now);
    l.closed();
    assert_eq!(ms(l.schedule_retry(now, 1.0)), 5000);
    l.connected(now);
    l.greeted();
    l.closed();
    assert_eq!(ms(l.schedule_retry(now, 1.0)), 100);
    // A new session connects at once, whatever the back-off.
    assert_eq!(l.tick(now), Tick::Wait);
    l.connect_now(now);
    assert_eq!(l.tick(now), Tick::Connect);
}

#[tokio::test(start_paused = true)]
async fn lost_sockets_back_off_on_the_actor_tick() {
    // A gateway that accepts every socket and never sends a frame: each socket dies 20 s
    // after it opened (first tick past the timeout), and the reconnect waits the growing delay,
    // rounded up to the next tick.
    let mut l = Liveness::new(timing(), Instant::now());
    let dead = Gateway {
        frame: Box::new(|_| false),
        greets: false,
        accepts: Box::new(|_| true),
    };
    let log = run(&mut l, &dead, 70 * SEC).await;
    // Back-offs of 100, 200 and 400 ms, each taken up to the next tick.
    assert_eq!(times(&log, "connect"), [0, 20_500, 41_000, 61_750]);
    assert_eq!(times(&log, HEARTBEAT_TIMEOUT), [20_250, 40_750, 61_250]);
}

#[tokio::test(start_paused = true)]
async fn the_session_is_nudged_at_most_every_two_seconds() {
    let t0 = Instant::now();
    let mut l = Liveness::new(timing(), t0);
    let mut nudged = Vec::new();
    // Asked every 250 ms (a failing connect per tick, `waiting` frames…) for 7 s.
    let mut ticks = tokio::time::interval(TICK);
    while t0.elapsed() <= 7 * SEC {
        ticks.tick().await;
        if l.nudge_due(Instant::now()) {
            nudged.push(ms(t0.elapsed()));
        }
    }
    assert_eq!(nudged, [0, 2000, 4000, 6000]);
    let last = t0 + 6 * SEC;
    assert!(!l.nudge_due(last + NUDGE_EVERY - MS));
    assert!(l.nudge_due(last + NUDGE_EVERY));
}
