//! The graceful drain (SIGTERM, `ctl drain`): leave the cluster, stop intake, let the
//! normalizers and calculator workers empty their mailboxes, flush the producer, flush and
//! commit the writers; a report of what completed within the deadline.

use std::time::Duration;

use ractor::ActorRef;
use serde::Serialize;
use tokio::time::Instant;
use tracing::info;

use super::SupervisorState;
use super::child::ChildKind;
use crate::calculator::WorkerMsg;
use crate::clickhouse_writer::WriterMsg;
use crate::cluster::ClusterMsg;
use crate::kafka::ProducerMsg;
use crate::normalizer::NormalizerMsg;

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    /// Peers streamed this pod's symbols before it stopped its own (true without a cluster).
    pub handed_over: bool,
    pub producer_flushed: bool,
    pub writers_flushed: bool,
    pub seconds: f64,
    /// What the deadline cut short, one entry per step or actor (empty after a full drain):
    /// the daemon then exits non-zero so the restart is not mistaken for a clean one.
    pub left: Vec<String>,
}

impl DrainReport {
    /// Every row the pod had was flushed and committed (a missing hand-over only costs the
    /// interval until a peer subscribes, it loses nothing this pod holds).
    pub fn complete(&self) -> bool {
        self.producer_flushed && self.writers_flushed
    }
}

impl SupervisorState {
    /// The live children of `kind`, by name, in start order.
    fn live(&self, kind: ChildKind) -> Vec<(String, ractor::ActorCell)> {
        self.children
            .iter()
            .filter(|c| c.child.kind() == kind)
            .filter_map(|c| Some((c.child.name(), c.cell.clone()?)))
            .collect()
    }

    pub(super) async fn drain(&mut self, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        self.draining = true;
        info!(?deadline, "draining");
        let left = |s: Instant| deadline.saturating_sub(s.elapsed());
        // 0. Leave the cluster: peers subscribe this pod's symbols while it still streams
        //    them, so a rolling restart loses nothing.
        let mut handed_over = true;
        for (_, cell) in self.live(ChildKind::Cluster) {
            let c: ActorRef<ClusterMsg> = cell.into();
            let wait = left(started).mul_f64(0.5);
            handed_over = matches!(
                ractor::call_t!(
                    c,
                    ClusterMsg::Leave,
                    wait.as_millis() as u64 + 1_000,
                    wait.as_millis() as u64
                ),
                Ok(true)
            );
        }
        // 1. Stop intake.
        for kind in [ChildKind::Session, ChildKind::Websocket] {
            for (_, cell) in self.live(kind) {
                cell.stop(Some("drain".into()));
            }
        }
        let mut unfinished = Vec::new();
        if !handed_over {
            unfinished.push("cluster: peers did not take the symbols over".to_string());
        }
        // 2. A call is answered after every message queued before it: the normalizers have
        //    handed all their rows to the producer once they answer.
        for (name, cell) in self.live(ChildKind::Normalizer) {
            let n: ActorRef<NormalizerMsg> = cell.into();
            if ractor::call_t!(n, NormalizerMsg::GetState, left(started).as_millis() as u64)
                .is_err()
            {
                unfinished.push(format!("{name}: mailbox not emptied"));
            }
        }
        // 2b. The calculator workers compute and produce what they hold (and write Redis).
        //     Not waited for as a condition of a clean drain: the next owner of the partitions
        //     recomputes from the last checkpoint, so nothing is lost when this is cut short.
        for (_, cell) in self.live(ChildKind::CalculatorWorker) {
            let w: ActorRef<WorkerMsg> = cell.into();
            let _ = ractor::call_t!(w, WorkerMsg::Barrier, left(started).as_millis() as u64);
        }
        // 3. Flush the producer.
        let mut producer_flushed = true;
        for (name, cell) in self.live(ChildKind::Producer) {
            let p: ActorRef<ProducerMsg> = cell.into();
            let wait = left(started);
            let flushed = matches!(
                ractor::call_t!(p, ProducerMsg::Flush, wait.as_millis() as u64 + 500, wait),
                Ok(true)
            );
            if !flushed {
                producer_flushed = false;
                let in_flight = ractor::call_t!(p, ProducerMsg::GetState, 1_000)
                    .map(|s| s.in_flight_frames.to_string())
                    .unwrap_or_else(|_| "unknown".into());
                unfinished.push(format!(
                    "{name}: not flushed, frames not acknowledged by Kafka: {in_flight}"
                ));
            }
        }
        // 4. Flush and commit the writers.
        let mut writers_flushed = true;
        for (name, cell) in self.live(ChildKind::Writer) {
            let w: ActorRef<WriterMsg> = cell.into();
            // A failed cast means the writer is gone; the drain call below reports it.
            let _ = w.cast(WriterMsg::Pause);
            let ok = ractor::call_t!(w, WriterMsg::Drain, left(started).as_millis() as u64);
            if !matches!(ok, Ok(true)) {
                writers_flushed = false;
                unfinished.push(format!("{name}: batches not inserted and committed"));
            }
        }
        DrainReport {
            handed_over,
            producer_flushed,
            writers_flushed,
            seconds: started.elapsed().as_secs_f64(),
            left: unfinished,
        }
    }
}
