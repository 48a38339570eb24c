//! The inbound side of the websocket actor: each frame read from the gateway goes to the
//! normalizer(s) it concerns, with the market-data availability (field 6509) it carries kept
//! per conid and exported as a gauge.

use super::*;

impl WsState {
    /// Keeps a conid's availability and moves its gauge (1 for the current label only).
    pub(super) fn note_availability(&mut self, conid: i64, a: Availability) {
        if self.availability.get(&conid) == Some(&a) {
            return;
        }
        let Some(symbol) = self.instruments.get(&conid).map(|i| i.symbol.clone()) else {
            return;
        };
        let gauge = &self.args.metrics.market_data_availability;
        if let Some(old) = self.availability.get(&conid) {
            gauge.with_label_values(&[&symbol, old.label()]).set(0);
        }
        if a.is_realtime() {
            info!(symbol, availability = %a, "market data is real-time");
        } else {
            warn!(
                symbol,
                availability = %a,
                "market data is {}, not real-time: its rows go to _unqualified (not_realtime)",
                a.label()
            );
        }
        gauge.with_label_values(&[&symbol, a.label()]).set(1);
        self.availability.insert(conid, a);
    }

    pub(super) fn forget_availability(&mut self, conid: i64) {
        if let (Some(a), Some(i)) = (
            self.availability.remove(&conid),
            self.instruments.get(&conid),
        ) {
            let _ = self
                .args
                .metrics
                .market_data_availability
                .remove_label_values(&[&i.symbol, a.label()]);
        }
    }

    /// A frame of a conid released moments ago (see [`ReleasedConids`]): dropped and counted.
    pub(super) fn just_released(&mut self, conid: Option<i64>) -> bool {
        let late = conid.is_some_and(|c| {
            !self.instruments.contains_key(&c) && self.released.is_late(c, Instant::now())
        });
        if late {
            self.late_frames += 1;
            debug!(conid, "frame of a released symbol dropped");
        }
        late
    }

    pub(super) async fn on_frame(&mut self, data: &[u8], permit: Inflight) {
        self.frames += 1;
        if let Some(r) = self.recorder.as_mut() {
            r.write(data);
        }
        self.liveness.frame(Instant::now());
        let received_ns = marketlane_protocol::now_ns();
        let metrics = self.args.metrics.clone();
        let frame = match parse_frame(data) {
            Ok(f) => f,
            Err(e) => {
                metrics.ws_frames.with_label_values(&["invalid"]).inc();
                self.quarantined += 1;
                // A frame that cannot be read has no category; it is kept with the tick
                // category, the main consumer of the socket.
                self.args
                    .emitter
                    .quarantine(TICK, e.code(), e.to_string(), data, &permit)
                    .await;
                return;
            }
        };
        let topic = match &frame {
            InboundFrame::Heartbeat { .. } => "system_hb",
            InboundFrame::SystemGreeting { .. } => "system",
            InboundFrame::Accounts { .. } => "act",
            InboundFrame::Status(_) => "sts",
            InboundFrame::TicReply => "tic",
            InboundFrame::MarketData(_) => "smd",
            InboundFrame::Book(_) => "sbd",
            InboundFrame::Notice { .. } => "ntf",
            InboundFrame::WaitingForSession => "waiting",
            InboundFrame::Error { .. } => "error",
            InboundFrame::Other { .. } => "other",
        };
        metrics.ws_frames.with_label_values(&[topic]).inc();
        match frame {
            InboundFrame::SystemGreeting { username } => {
                info!(username, "gateway greeting; subscribing");
                self.liveness.greeted();
                if let Some((at, _)) = &self.last_disconnect
                    && self.last_data.is_some()
                {
                    metrics.ws_gap_seconds.observe(at.elapsed().as_secs_f64());
                }
                self.subscribe_all().await;
            }
            InboundFrame::Accounts { accounts, selected } => {
                let account = selected.or_else(|| accounts.first().cloned());
                if account.is_some() && account != self.account {
                    self.account = account;
                    let conids: Vec<i64> = self.instruments.keys().copied().collect();
                    self.subscribe_books(&conids).await;
                }
            }
            InboundFrame::Book(book) => {
                if self.just_released(book.conid) {
                    return;
                }
                self.last_data = Some(Instant::now());
                let frame = Arc::new(book);
                let number = self.unacked.book(frame.clone(), received_ns, &permit);
                self.send_to(true, || NormalizerMsg::Book {
                    frame: frame.clone(),
                    received_ns,
                    permit: permit.clone(),
                    number,
                });
            }
            InboundFrame::WaitingForSession => {
                if let Some(s) = self.session.clone() {
                    self.send(outbound::session(&s)).await;
                }
                // The gateway may have restarted with a new session: have it checked now.
                self.nudge_session();
            }
            InboundFrame::Status(st) => {
                if st.authenticated == Some(false) || st.competing == Some(true) {
                    warn!(?st, "gateway says the session is not usable");
                    self.nudge_session();
                }
            }
            InboundFrame::MarketData(md) => {
                if self.just_released(md.conid) {
                    return;
                }
                self.last_data = Some(Instant::now());
                if let Some(conid) = md.conid {
                    if let Some(a) = md
                        .fields
                        .get(field::AVAILABILITY)
                        .and_then(Availability::parse)
                    {
                        self.note_availability(conid, a);
                    }
                    self.last_seen.insert(conid, Instant::now());
                    if self.silent.remove(&conid) {
                        info!(conid, "symbol streams again");
                        metrics.silent_symbols.set(self.silent.len() as i64);
                    }
                }
                let frame = Arc::new(md);
                let number = self
                    .unacked
                    .market_data(frame.clone(), received_ns, &permit);
                self.broadcast(|| NormalizerMsg::MarketData {
                    frame: frame.clone(),
                    received_ns,
                    permit: permit.clone(),
                    number,
                });
            }
            InboundFrame::Notice { topic, text } => info!(topic, text, "gateway notice"),
            InboundFrame::Error { message } => warn!(message, "gateway error frame"),
            InboundFrame::Heartbeat { .. }
            | InboundFrame::TicReply
            | InboundFrame::Other { .. } => {}
        }
    }
}
