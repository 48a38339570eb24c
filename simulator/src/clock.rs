//! The sim clock: wall time scaled by `--speed`, so a test can live through 30 sim minutes
//! of heartbeats, expiries and idle timeouts in one real minute.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct SimClock {
    start_real: Instant,
    start_sim_ms: i64,
    speed: f64,
}

impl SimClock {
    pub fn new(speed: f64, start_sim_ms: Option<i64>) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            start_real: Instant::now(),
            start_sim_ms: start_sim_ms.unwrap_or(wall),
            speed,
        }
    }

    /// Current sim time, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let real = self.start_real.elapsed().as_secs_f64() * 1000.0;
        self.start_sim_ms + (real * self.speed) as i64
    }

    /// Sim ms elapsed since the simulator started.
    pub fn elapsed_ms(&self) -> i64 {
        self.now_ms() - self.start_sim_ms
    }

    /// Real duration that covers `sim_ms` of sim time (at least 1 ms so loops never spin).
    pub fn real(&self, sim_ms: u64) -> Duration {
        let real = sim_ms as f64 / self.speed;
        Duration::from_micros((real * 1000.0).max(1000.0) as u64)
    }

    pub async fn sleep(&self, sim_ms: u64) {
        tokio::time::sleep(self.real(sim_ms)).await;
    }
}
