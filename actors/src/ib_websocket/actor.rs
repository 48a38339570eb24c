//! The websocket actor: one socket to the gateway per pod. It authenticates with the session the
//! keepalive actor hands it, subscribes every instrument after the greeting (IB replays nothing
//! after a reconnect), sends `tic` at least every minute, re-sends each `smd` before IB's silent
//! expiry, and watches the server's 10 s heartbeat: a socket that stays open but goes quiet is
//! treated as dead. Frames go to the normalizers; frames that cannot be read are quarantined.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use marketlane_protocol::category::TICK;
use marketlane_protocol::ib::{Availability, InboundFrame, field, outbound, parse_frame};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::connection::{self, WsSink};
use super::liveness::{self, Liveness, Tick, Timing};
use super::recorder::Recorder;
use super::released::ReleasedConids;
use crate::backpressure::{Inflight, InflightLimit};
use crate::config::IbConfig;
use crate::ib_session::SessionMsg;
use crate::metrics::Metrics;
use crate::names::{ActorNames, IB_SESSION, L2_NORMALIZER};
use crate::normalizer::{InstrumentMap, NormalizerMsg, RowEmitter};

mod frames;

#[derive(RactorMessage)]
pub enum WsMsg {
    /// The keepalive actor has an authenticated brokerage session.
    SessionReady {
        session: String,
    },
    /// The brokerage session is gone (needs login, competing): close and wait.
    SessionLost {
        reason: String,
    },
    /// What to subscribe to.
    Instruments(InstrumentMap),
    /// A frame read by the reader task of connection `generation`.
    Frame {
        generation: u64,
        data: Vec<u8>,
        permit: Inflight,
    },
    Disconnected {
        generation: u64,
        reason: String,
    },
    /// Every 250 ms (`liveness::TICK`): watchdog, `tic`, silence check, re-subscription,
    /// reconnect after back-off.
    Tick,
    /// Sends the instruments to every normalizer and reconnects (fresh snapshot frames).
    /// Restarted normalizers use `ReplayTo` instead, which loses nothing.
    Announce,
    /// A restarted normalizer asks for its lost state and the unacknowledged frames
    /// (`unacked.rs`).
    ReplayTo(ActorRef<NormalizerMsg>),
    GetState(RpcReplyPort<WsSnapshot>),
    /// Symbols with a market-data frame since they were (last) subscribed on the open
    /// connection, with the seconds since their last frame: what the cluster may count as
    /// taken over.
    Streaming(RpcReplyPort<Vec<(String, f64)>>),
}

#[derive(Debug, Clone, Serialize)]
pub struct WsSnapshot {
    pub connected: bool,
    pub session_ready: bool,
    pub generation: u64,
    pub subscribed: usize,
    pub reconnects: u64,
    pub last_disconnect_reason: Option<String>,
    pub seconds_since_last_frame: Option<f64>,
    pub frames: u64,
    pub quarantined_frames: u64,
    /// Market-data frames of symbols this pod had just released (after their `umd`), dropped.
    pub late_frames: u64,
    /// Symbols without a frame for longer than `ib.silent_after`.
    pub silent_symbols: Vec<String>,
    /// Field 6509 per symbol as IB last sent it (`RpB`, `DPB`, `ZB`, …); symbols without a
    /// full frame yet are absent.
    pub availability: BTreeMap<String, String>,
    /// Symbols whose market data is not real-time: their rows go to `<category>_unqualified`
    /// with reason `not_realtime`.
    pub not_realtime_symbols: Vec<String>,
    /// Frames kept for a restarted normalizer's replay (`unacked.rs`): about the frames in
    /// flight, more while a normalizer restarts.
    pub replay_frames: usize,
    /// Frames folded out of the replay store over its cap while a replay could still need them.
    pub replay_evicted: u64,
}

#[derive(Clone)]
pub struct WsArgs {
    pub ib: IbConfig,
    pub names: ActorNames,
    pub normalizers: Vec<String>,
    pub emitter: RowEmitter,
    pub metrics: Arc<Metrics>,
    pub inflight: InflightLimit,
}

struct Connection {
    sink: WsSink,
    reader: tokio::task::JoinHandle<()>,
}

pub struct WsState {
    args: WsArgs,
    session: Option<String>,
    instruments: InstrumentMap,
    conn: Option<Connection>,
    generation: u64,
    /// Heartbeat, `tic`, re-subscription, silence-check and back-off timing (`liveness.rs`).
    liveness: Liveness,
    reconnects: u64,
    last_disconnect: Option<(Instant, String)>,
    last_data: Option<Instant>,
    frames: u64,
    quarantined: u64,
    /// Conids just released: IB's late frames for them are dropped, not quarantined.
    released: ReleasedConids,
    late_frames: u64,
    /// The account `sbd` needs, from the greeting's `act` frame.
    account: Option<String>,
    /// Last market-data frame per conid, and the conids flagged silent.
    last_seen: HashMap<i64, Instant>,
    silent: BTreeSet<i64>,
    /// Field 6509 per conid: sent in the first frame of a subscription and on changes only.
    availability: HashMap<i64, Availability>,
    recorder: Option<Recorder>,
    /// Frames a restarted normalizer gets again (`unacked.rs`).
    unacked: super::unacked::Unacked,
    /// The normalizers by name, looked up again only after a cast failed (a restart).
    targets: Vec<Target>,
}

struct Target {
    name: String,
    /// The book normalizer: the only one `sbd` ladders go to.
    books: bool,
    actor: Option<ActorRef<NormalizerMsg>>,
}

pub struct IbWebsocket;

impl Actor for IbWebsocket {
    type Msg = WsMsg;
    type State = WsState;
    type Arguments = WsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(liveness::TICK, || WsMsg::Tick);
        let unacked_cap = args.inflight.max().saturating_add(50_000);
        let recorder = match &args.ib.record_path {
            Some(path) => Some(Recorder::open(path)?),
            None => None,
        };
        // After a restart, the session actor re-sends the session and the instruments.
        if let Some(s) = args.names.lookup::<SessionMsg>(IB_SESSION) {
            let _ = s.cast(SessionMsg::Announce);
        }
        let targets = args
            .normalizers
            .iter()
            .map(|name| Target {
                name: name.clone(),
                books: name == L2_NORMALIZER,
                actor: None,
            })
            .collect();
        Ok(WsState {
            session: None,
            instruments: Arc::default(),
            conn: None,
            generation: 0,
            liveness: Liveness::new(Timing::from(&args.ib), Instant::now()),
            reconnects: 0,
            last_disconnect: None,
            last_data: None,
            frames: 0,
            quarantined: 0,
            released: ReleasedConids::default(),
            late_frames: 0,
            account: None,
            last_seen: HashMap::new(),
            silent: BTreeSet::new(),
            availability: HashMap::new(),
            recorder,
            // Unacknowledged frames are bounded by the permits already; the rest covers the frames
            // a restarting normalizer has not handled (its supervisor's back-off, ~5 s).
            unacked: super::unacked::Unacked::new(args.emitter.progress.clone(), unacked_cap),
            targets,
            args,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.close("actor stopped").await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WsMsg::SessionReady { session } => {
                if state.session.as_deref() != Some(session.as_str()) {
                    info!("brokerage session ready; connecting websocket");
                    state.session = Some(session);
                    state.close("new session").await;
                    state.liveness.connect_now(Instant::now());
                } else if state.conn.is_some() {
                    // Re-authenticated on the same session: IB ended the subscriptions when it
                    // said `authenticated:false`, so subscribe everything again.
                    info!("session re-authenticated; re-subscribing");
                    state.subscribe_all().await;
                }
            }
            WsMsg::SessionLost { reason } => {
                state.session = None;
                state.close(&format!("session lost: {reason}")).await;
            }
            WsMsg::Instruments(map) => {
                let added: Vec<i64> = map
                    .keys()
                    .filter(|c| !state.instruments.contains_key(c))
                    .copied()
                    .collect();
                let removed: Vec<i64> = state
                    .instruments
                    .keys()
                    .filter(|c| !map.contains_key(c))
                    .copied()
                    .collect();
                // A symbol counts as streaming again only after a frame of the new subscription.
                for conid in added.iter().chain(&removed) {
                    state.last_seen.remove(conid);
                }
                for conid in &removed {
                    state.forget_availability(*conid);
                }
                state
                    .released
                    .update(&removed, |c| map.contains_key(&c), Instant::now());
                state.instruments = map.clone();
                state.broadcast(|| NormalizerMsg::Instruments(map.clone()));
                state
                    .args
                    .metrics
                    .subscriptions
                    .with_label_values(&["smd"])
                    .set(state.instruments.len() as i64);
                if state.conn.is_some() {
                    for conid in removed {
                        state.send(outbound::umd(conid)).await;
                    }
                    state.subscribe(&added).await;
                }
            }
            WsMsg::Frame {
                generation,
                data,
                permit,
            } => {
                if generation == state.generation {
                    state.on_frame(&data, permit).await;
                }
            }
            WsMsg::Disconnected { generation, reason } => {
                if generation == state.generation && state.conn.is_some() {
                    state.lost(&reason, "socket_closed").await;
                }
            }
            WsMsg::Tick => state.on_tick(&myself).await,
            WsMsg::Streaming(reply) => {
                let symbols = if state.conn.is_some() {
                    state
                        .instruments
                        .iter()
                        .filter_map(|(c, i)| {
                            let age = state.last_seen.get(c)?.elapsed().as_secs_f64();
                            Some((i.symbol.clone(), age))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let _ = reply.send(symbols);
            }
            WsMsg::Announce => {
                let map = state.instruments.clone();
                state.broadcast(|| NormalizerMsg::Instruments(map.clone()));
                // A restarted normalizer lost its per-conid state, and only a new subscription
                // brings full snapshot frames: reconnect, which re-subscribes everything.
                if state.conn.is_some() {
                    state
                        .lost("a normalizer restarted", "normalizer_restarted")
                        .await;
                }
            }
            WsMsg::ReplayTo(normalizer) => {
                let (frames, undelivered) = state.unacked.replay(&normalizer, &state.instruments);
                if undelivered > 0 {
                    // It failed again meanwhile: its next start asks for the replay again.
                    state
                        .args
                        .metrics
                        .data_path_undelivered
                        .with_label_values(&["replay", "replayed"])
                        .inc_by(undelivered);
                }
                info!(
                    frames,
                    evicted = state.unacked.evicted,
                    "replayed the unacknowledged frames to a restarted normalizer"
                );
            }
            WsMsg::GetState(reply) => {
                let _ = reply.send(WsSnapshot {
                    connected: state.conn.is_some(),
                    session_ready: state.session.is_some(),
                    generation: state.generation,
                    subscribed: state.instruments.len(),
                    reconnects: state.reconnects,
                    last_disconnect_reason: state.last_disconnect.as_ref().map(|(_, r)| r.clone()),
                    seconds_since_last_frame: state
                        .liveness
                        .since_last_frame(Instant::now())
                        .map(|d| d.as_secs_f64()),
                    frames: state.frames,
                    quarantined_frames: state.quarantined,
                    late_frames: state.late_frames,
                    silent_symbols: state
                        .silent
                        .iter()
                        .filter_map(|c| state.instruments.get(c).map(|i| i.symbol.clone()))
                        .collect(),
                    availability: state
                        .availability
                        .iter()
                        .filter_map(|(c, a)| {
                            let i = state.instruments.get(c)?;
                            Some((i.symbol.clone(), a.code().to_string()))
                        })
                        .collect(),
                    not_realtime_symbols: state
                        .availability
                        .iter()
                        .filter(|(_, a)| !a.is_realtime())
                        .filter_map(|(c, _)| state.instruments.get(c).map(|i| i.symbol.clone()))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    replay_frames: state.unacked.len(),
                    replay_evicted: state.unacked.evicted,
                });
            }
        }
        Ok(())
    }
}

impl WsState {
    fn broadcast(&mut self, make: impl Fn() -> NormalizerMsg) {
        self.send_to(false, make);
    }

    /// Sends a message to every normalizer (`books_only`: to the book normalizer alone). A
    /// normalizer that is down or restarting does not get it: counted; a restarted one asks
    /// for the replay (`unacked.rs`), which holds every frame it may have missed.
    fn send_to(&mut self, books_only: bool, make: impl Fn() -> NormalizerMsg) {
        let names = &self.args.names;
        for t in self.targets.iter_mut().filter(|t| t.books || !books_only) {
            let mut sent = false;
            for fresh in [false, true] {
                if fresh || t.actor.is_none() {
                    t.actor = names.lookup::<NormalizerMsg>(&t.name);
                }
                if let Some(a) = &t.actor {
                    if a.cast(make()).is_ok() {
                        sent = true;
                        break;
                    }
                    t.actor = None;
                }
                if fresh {
                    break;
                }
            }
            if !sent {
                self.args
                    .metrics
                    .data_path_undelivered
                    .with_label_values(&["ws_broadcast", "replayed"])
                    .inc();
            }
        }
    }

    async fn send(&mut self, text: String) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = connection::send_text(&mut conn.sink, text).await {
            self.lost(&format!("send failed: {e}"), "send_failed").await;
        }
    }

    /// Subscribes `conids`; their next frame is a snapshot, which the normalizers are told
    /// first (this actor's casts arrive in order).
    async fn subscribe(&mut self, conids: &[i64]) {
        if conids.is_empty() {
            return;
        }
        self.broadcast(|| NormalizerMsg::Resubscribed(conids.to_vec()));
        self.unacked.resubscribed(conids);
        let fields: Vec<String> = self.args.ib.fields.clone();
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        for conid in conids {
            self.send(outbound::smd(*conid, &fields)).await;
        }
        self.subscribe_books(conids).await;
    }

    /// Subscribes every instrument; IB's expiry refresh counts from now.
    async fn subscribe_all(&mut self) {
        let conids: Vec<i64> = self.instruments.keys().copied().collect();
        self.subscribe(&conids).await;
        self.liveness.subscribed(Instant::now());
    }

    /// `sbd` for the instruments configured with depth, once the account is known.
    async fn subscribe_books(&mut self, conids: &[i64]) {
        let Some(account) = self.account.clone() else {
            return;
        };
        let books: Vec<i64> = conids
            .iter()
            .filter(|c| self.instruments.get(c).is_some_and(|i| i.depth))
            .copied()
            .collect();
        for conid in &books {
            self.send(outbound::sbd(&account, *conid)).await;
        }
        self.args
            .metrics
            .subscriptions
            .with_label_values(&["sbd"])
            .set(books.len() as i64);
    }

    async fn connect(&mut self, myself: &ActorRef<WsMsg>) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let url = self.args.ib.websocket_url();
        match connection::connect(&url, &session, &self.args.ib, Duration::from_secs(5)).await {
            Ok(stream) => {
                let (sink, stream) = stream.split();
                self.generation += 1;
                let reader = connection::spawn_reader(
                    stream,
                    myself.clone(),
                    self.generation,
                    self.args.inflight.clone(),
                );
                // Frames of an earlier connection say nothing about this one's subscriptions.
                self.last_seen.clear();
                self.conn = Some(Connection { sink, reader });
                self.liveness.connected(Instant::now());
                self.args.metrics.ws_connected.set(1);
                info!(
                    generation = self.generation,
                    "websocket connected; waiting for greeting"
                );
            }
            Err(e) => {
                warn!(error = %e, "websocket connect failed");
                self.nudge_session();
                self.schedule_retry();
            }
        }
    }

    /// Asks the session actor to check the session now (at most every 2 s): a socket that
    /// cannot connect or is not recognised often means the gateway restarted.
    fn nudge_session(&mut self) {
        if !self.liveness.nudge_due(Instant::now()) {
            return;
        }
        if let Some(s) = self.args.names.lookup::<SessionMsg>(IB_SESSION) {
            let _ = s.cast(SessionMsg::SocketUnauthenticated);
        }
    }

    /// Jittered exponential back-off (`liveness::retry_delay`): 100 ms, 200 ms, … up to 5 s,
    /// ±50 % so that pods do not reconnect in step.
    fn schedule_retry(&mut self) {
        let jitter = rand::rng().random_range(0.5..1.5);
        self.liveness.schedule_retry(Instant::now(), jitter);
    }

    async fn close(&mut self, reason: &str) {
        if let Some(mut conn) = self.conn.take() {
            conn.reader.abort();
            let _ = futures_util::SinkExt::close(&mut conn.sink).await;
            self.liveness.closed();
            self.args.metrics.ws_connected.set(0);
            self.last_disconnect = Some((Instant::now(), reason.to_string()));
            // New generation: frames still queued from the old reader are ignored.
            self.generation += 1;
        }
    }

    async fn lost(&mut self, reason: &str, label: &str) {
        warn!(reason, "websocket lost; reconnecting");
        self.close(reason).await;
        self.reconnects += 1;
        self.args
            .metrics
            .ws_reconnects
            .with_label_values(&[label])
            .inc();
        self.schedule_retry();
    }

    async fn on_tick(&mut self, myself: &ActorRef<WsMsg>) {
        let now = Instant::now();
        let due = match self.liveness.tick(now) {
            Tick::Wait => return,
            Tick::Connect => {
                if self.session.is_some() {
                    self.connect(myself).await;
                }
                return;
            }
            Tick::Lost { label, silent_for } => {
                let reason = format!(
                    "no frame for {:.1}s (heartbeat every 10s)",
                    silent_for.as_secs_f64()
                );
                self.lost(&reason, label).await;
                return;
            }
            Tick::Alive(due) => due,
        };
        if due.tic {
            self.liveness.tic_sent(now);
            self.send(outbound::TIC.to_string()).await;
        }
        if due.silence_check {
            self.check_silence().await;
        }
        // A failed send above closed the socket: nothing to refresh.
        if due.resubscribe && self.conn.is_some() {
            // A re-sent smd refreshes IB's expiry timer; it is not a new subscription, so the
            // normalizers are not told to expect a snapshot.
            debug!(
                count = self.instruments.len(),
                "re-sending smd before expiry"
            );
            let fields: Vec<String> = self.args.ib.fields.clone();
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            let conids: Vec<i64> = self.instruments.keys().copied().collect();
            for conid in conids {
                self.send(outbound::smd(conid, &fields)).await;
            }
            self.liveness.subscribed(Instant::now());
        }
    }

    /// Flags subscribed symbols that have been silent longer than `silent_after` (counted
    /// from the later of their last frame and the subscription) and re-requests them.
    async fn check_silence(&mut self) {
        let Some(since) = self.liveness.last_subscribe() else {
            return;
        };
        let limit = self.args.ib.silent_after;
        let newly = liveness::newly_silent(
            self.instruments.keys().copied(),
            &self.last_seen,
            &self.silent,
            since,
            Instant::now(),
            limit,
        );
        if newly.is_empty() {
            return;
        }
        for conid in &newly {
            let symbol = self
                .instruments
                .get(conid)
                .map(|i| i.symbol.clone())
                .unwrap_or_default();
            warn!(symbol, conid, silent_for = ?limit, "symbol is silent; subscribing it afresh");
            self.silent.insert(*conid);
            // umd + smd makes a fresh subscription whatever state IB kept, so the next frame is
            // a snapshot, which the normalizers are told to expect.
            self.send(outbound::umd(*conid)).await;
        }
        self.subscribe(&newly).await;
        self.args
            .metrics
            .silent_symbols
            .set(self.silent.len() as i64);
    }
}
