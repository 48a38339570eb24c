//! A reusable lane for fault and cluster tests: a simulator ([`SimBuilder`] → [`Sim`]), one or
//! more daemons ([`DaemonConfig`] → [`Daemon`]), and what the tests ask of them: metrics,
//! control-socket calls, Kafka and ClickHouse rows, the ledger reconciliation and the Redis
//! check. [`Lane`] is the common single-pod shape (one simulator, one daemon); a cluster test
//! builds several [`DaemonConfig`]s on one simulator with [`DaemonConfig::sharing`].
//!
//! Every lane gets its own topic prefix, ClickHouse database, consumer groups and Redis key
//! prefix, and [`Lane::cleanup`] drops them. Logs and configs stay in `var/test-runs/<name>`.
//!
//! The pieces live in the crate's modules by concern (`sim`, `config`, `daemon`, `lane`,
//! `reconcile`, `stack`, `kafka`, `clickhouse`, `redis`); this module keeps the names the
//! tests import as `marketlane_tests::harness::…`.

pub use crate::clickhouse::tick_time_ns;
pub use crate::config::{Calculators, DaemonConfig, steady_symbols};
pub use crate::daemon::{Daemon, Launcher, Metrics, Readyz, readyz, wait_readyz};
pub use crate::kafka::{delete_topics, kafka_rows};
pub use crate::lane::{Lane, RedisCheck, Sink, drop_lane_data};
pub use crate::reconcile::{Reconciliation, fault_row_line, reconcile_ticks};
pub use crate::redis::{redis_hash, redis_url};
pub use crate::run_dir;
pub use crate::sim::{LedgerTrade, Sim, SimBuilder, now_ms};
pub use crate::stack::{STACK_LOCK, StackOutage, stack_shared_lock};
