//! The daemon of a live run as production deploys it: three processes of the same binary, one
//! per role (k8s/base/config/{marketlane,writer,calculator}.toml), sharing the Kafka prefix,
//! the ClickHouse database and the Redis prefix. Each figure is read from the process whose
//! role owns it, and summed where it spans processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use crate::procs::{self, Proc, Usage};
use crate::prom::{Buckets, Scrape};

use super::config::{Shared, config_toml};
use super::{Env, LiveConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Connector,
    Writer,
    Calculator,
}

/// Start order and the index of every per-role array.
pub const ROLES: [Role; 3] = [Role::Connector, Role::Writer, Role::Calculator];

/// One value per role, in [`ROLES`] order.
pub type PerRole<T> = [T; 3];

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Connector => "connector",
            Role::Writer => "writer",
            Role::Calculator => "calculator",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The stage counters of one scrape (or their sum over the processes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub frames: f64,
    pub normalized: f64,
    pub kafka: f64,
    pub clickhouse: f64,
    pub calculator_rows: f64,
    pub redis_writes: f64,
    pub lag: f64,
    pub reconnects: f64,
}

/// The counters `role` owns in its scrape; the others stay 0. Kafka acknowledgements span two
/// processes: the connector's source rows and the calculator's indicator rows.
pub fn counters(role: Role, s: &Scrape) -> Counters {
    let qualified =
        |l: &crate::prom::Labels| !l.get("topic").unwrap_or("").ends_with("_unqualified");
    let kafka = s.sum("marketlane_kafka_produced_total", qualified);
    match role {
        Role::Connector => Counters {
            frames: s.sum("marketlane_ws_frames_total", |_| true),
            normalized: s.sum("marketlane_rows_normalized_total", |_| true),
            kafka,
            reconnects: s.sum("marketlane_ws_reconnects_total", |_| true),
            ..Counters::default()
        },
        Role::Writer => Counters {
            clickhouse: s.sum("marketlane_clickhouse_rows_inserted_total", |l| {
                !l.get("table").unwrap_or("").ends_with("_unqualified")
            }),
            lag: s.sum("marketlane_consumer_lag", |_| true),
            ..Counters::default()
        },
        Role::Calculator => Counters {
            kafka,
            calculator_rows: s.sum("marketlane_calculator_rows_total", |l| {
                l.is("outcome", "applied")
            }),
            redis_writes: s.sum("marketlane_redis_writes_total", |l| l.is("outcome", "ok")),
            ..Counters::default()
        },
    }
}

/// Per-second rates between two scrapes of every process, summed; a counter lower than before
/// (its process restarted) counts from 0. The lag is a gauge: its value now.
pub fn rates(now: &PerRole<Counters>, last: &PerRole<Counters>, dt: f64) -> Counters {
    let mut out = Counters::default();
    for (n, l) in now.iter().zip(last) {
        let rate = |a: f64, b: f64| if a >= b { (a - b) / dt } else { a / dt };
        out.frames += rate(n.frames, l.frames);
        out.normalized += rate(n.normalized, l.normalized);
        out.kafka += rate(n.kafka, l.kafka);
        out.clickhouse += rate(n.clickhouse, l.clickhouse);
        out.calculator_rows += rate(n.calculator_rows, l.calculator_rows);
        out.redis_writes += rate(n.redis_writes, l.redis_writes);
        out.lag += n.lag;
    }
    out
}

/// Histogram `name` over `keep`, observations between two scrapes of every process, summed.
pub fn buckets_since(
    now: &PerRole<Scrape>,
    before: &PerRole<Scrape>,
    name: &str,
    keep: impl Fn(&crate::prom::Labels) -> bool,
) -> Buckets {
    now.iter()
        .zip(before)
        .map(|(n, b)| n.buckets(name, &keep).since(&b.buckets(name, &keep)))
        .fold(Buckets::default(), |acc, b| acc.plus(&b))
}

pub struct Daemon {
    pub role: Role,
    pub proc: Proc,
    pub http: u16,
    config: PathBuf,
    /// Starts so far (the log of start n is `<role>-<n>.log`).
    starts: u32,
}

impl Daemon {
    pub fn log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}-{}.log", self.role.name(), self.starts - 1))
    }
}

pub struct Daemons {
    /// In [`ROLES`] order.
    pub list: Vec<Daemon>,
}

fn spawn(env: &Env, role: Role, config: &Path, dir: &Path, n: u32) -> anyhow::Result<Proc> {
    Proc::spawn(
        &env.bin,
        role.name(),
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &dir.join(format!("{}-{n}.log", role.name())),
    )
}

impl Daemons {
    /// Writes one config per role (`<role>.toml`) and starts the three processes: the
    /// connector first, the writer and the calculator once the connector has rows acknowledged
    /// by Kafka. Deployed, the topics exist before a processor pod starts; a calculator started
    /// on topics created that instant may fail its warm-start plan (`Meta data fetch error`)
    /// and sit out its first 30 s, which the single process sometimes did too.
    pub async fn start(
        env: &Env,
        c: &LiveConfig,
        dir: &Path,
        shared: &Shared,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let mut this = Self { list: Vec::new() };
        for role in ROLES {
            if role == Role::Writer {
                this.wait_for_kafka(http, dir).await?;
            }
            let port = procs::free_port()?;
            let config = dir.join(format!("{}.toml", role.name()));
            std::fs::write(&config, config_toml(env, c, role, shared, port)?)?;
            let proc = spawn(env, role, &config, dir, 0)?;
            this.list.push(Daemon {
                role,
                proc,
                http: port,
                config,
                starts: 1,
            });
        }
        Ok(this)
    }

    async fn wait_for_kafka(&mut self, http: &reqwest::Client, dir: &Path) -> anyhow::Result<()> {
        let by = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            self.check(dir)?;
            if let Some(s) = self.scrape(http, Role::Connector).await
                && counters(Role::Connector, &s).kafka > 0.0
            {
                return Ok(());
            }
            if std::time::Instant::now() > by {
                bail!(
                    "the connector had no rows acknowledged by Kafka within 90 s; see {}",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn get(&self, role: Role) -> &Daemon {
        &self.list[role.index()]
    }

    pub fn pids(&self) -> PerRole<u32> {
        [0, 1, 2].map(|i| self.list[i].proc.pid())
    }

    pub fn usage(&self) -> PerRole<Usage> {
        self.pids().map(|p| procs::usage(p).unwrap_or_default())
    }

    /// Fails naming the process that exited and its log.
    pub fn check(&mut self, dir: &Path) -> anyhow::Result<()> {
        for d in &mut self.list {
            if d.proc.exited() {
                bail!(
                    "the {} process exited; see {}",
                    d.role.name(),
                    d.log(dir).display()
                );
            }
        }
        Ok(())
    }

    /// SIGKILL of one process and an immediate start of a new one on the same config (what
    /// the pod's restart does, without the kubelet's delay).
    pub fn kill_and_restart(&mut self, env: &Env, role: Role, dir: &Path) -> anyhow::Result<()> {
        let d = &mut self.list[role.index()];
        d.proc.kill_now();
        d.proc = spawn(env, role, &d.config, dir, d.starts)?;
        d.starts += 1;
        Ok(())
    }

    pub async fn scrape(&self, http: &reqwest::Client, role: Role) -> Option<Scrape> {
        super::scrape(http, self.get(role).http).await
    }

    /// Every process's scrape (an empty one where it did not answer) and whether all answered.
    pub async fn scrape_all(&self, http: &reqwest::Client) -> (PerRole<Scrape>, bool) {
        let (a, b, c) = tokio::join!(
            self.scrape(http, Role::Connector),
            self.scrape(http, Role::Writer),
            self.scrape(http, Role::Calculator)
        );
        let all = a.is_some() && b.is_some() && c.is_some();
        (
            [
                a.unwrap_or_default(),
                b.unwrap_or_default(),
                c.unwrap_or_default(),
            ],
            all,
        )
    }

    /// SIGTERM to all three at once (each drains within `grace`), then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        for d in &self.list {
            d.proc.signal("TERM");
        }
        for d in &mut self.list {
            d.proc.stop(grace);
        }
    }
}

pub fn counters_all(s: &PerRole<Scrape>) -> PerRole<Counters> {
    ROLES.map(|r| counters(r, &s[r.index()]))
}

/// The sum of every process's owned counters.
#[cfg(test)]
fn total(c: &PerRole<Counters>) -> Counters {
    rates(c, &PerRole::<Counters>::default(), 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECTOR: &str = r#"marketlane_ws_frames_total 10
marketlane_kafka_produced_total{topic="p_l2_market_data"} 40
marketlane_kafka_produced_total{topic="p_l2_market_data_unqualified"} 2
marketlane_consumer_lag{group="x"} 99
"#;
    const CALCULATOR: &str = r#"marketlane_kafka_produced_total{topic="p_indicators_market_data"} 5
marketlane_calculator_rows_total{outcome="applied"} 30
marketlane_consumer_lag{group="calc"} 7
"#;

    #[test]
    fn each_figure_comes_from_the_process_that_owns_it() {
        let s = [
            Scrape::parse(CONNECTOR),
            Scrape::parse("marketlane_consumer_lag{group=\"w\"} 3\n"),
            Scrape::parse(CALCULATOR),
        ];
        let t = total(&counters_all(&s));
        assert_eq!(t.frames, 10.0);
        // Source rows from the connector plus indicator rows from the calculator.
        assert_eq!(t.kafka, 45.0);
        assert_eq!(t.calculator_rows, 30.0);
        // The writer's consumer lag only.
        assert_eq!(t.lag, 3.0);
    }

    #[test]
    fn a_restarted_process_counts_from_zero() {
        let last = [
            Counters {
                frames: 1000.0,
                ..Counters::default()
            },
            Counters {
                clickhouse: 500.0,
                ..Counters::default()
            },
            Counters::default(),
        ];
        let now = [
            Counters {
                frames: 20.0,
                ..Counters::default()
            },
            Counters {
                clickhouse: 540.0,
                ..Counters::default()
            },
            Counters::default(),
        ];
        let r = rates(&now, &last, 2.0);
        assert_eq!(r.frames, 10.0);
        assert_eq!(r.clickhouse, 20.0);
    }
}
