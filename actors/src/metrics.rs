//! Prometheus metrics of the daemon. Names, types and labels here must match the metric spec
//! table in ARCHITECTURE.md (a test compares the two).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Latency buckets from 1 ms to 30 s. Dense around the targets (100 ms to Redis, 1.5 s to
/// ClickHouse): a quantile between two bounds is interpolated, so a wide bucket there would
/// report any p99 inside it as anywhere in it.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0,
    1.25, 1.5, 2.0, 2.5, 3.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub ib_session_state: IntGaugeVec,
    pub ib_last_tickle_timestamp: Gauge,
    pub ib_requests: IntCounterVec,
    pub ib_login_attempts: IntCounterVec,
    pub ib_login_failures: IntGauge,
    pub silent_symbols: IntGauge,
    pub ws_reconnects: IntCounterVec,
    pub ws_connected: IntGauge,
    pub ws_frames: IntCounterVec,
    pub ws_gap_seconds: Histogram,
    pub rows_normalized: IntCounterVec,
    pub rows_quarantined: IntCounterVec,
    pub missing_fields: IntCounterVec,
    pub not_realtime_rows: IntCounterVec,
    pub market_data_availability: IntGaugeVec,
    pub kafka_produced: IntCounterVec,
    pub kafka_produce_errors: IntCounterVec,
    pub kafka_produce_latency: HistogramVec,
    pub in_flight_frames: IntGauge,
    pub data_path_undelivered: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub clickhouse_rows_inserted: IntCounterVec,
    pub clickhouse_insert_duration: HistogramVec,
    pub clickhouse_insert_errors: IntCounterVec,
    pub event_to_sink_latency: HistogramVec,
    pub actor_restarts: IntCounterVec,
    pub subscriptions: IntGaugeVec,
    pub redis_writes: IntCounterVec,
    pub redis_write_latency: HistogramVec,
    pub cluster_members: IntGauge,
    pub cluster_assigned_symbols: IntGauge,
    pub cluster_unassigned_symbols: IntGauge,
    pub cluster_membership_changes: IntCounterVec,
    pub cluster_heartbeats_refused: IntCounterVec,
    pub calculator_rows: IntCounterVec,
    pub calculator_pending_keys: IntGaugeVec,
    pub consumer_stalls: IntCounterVec,
    pub runtime_worker_threads: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            // Registration only fails for a duplicate name, which is a programming error caught
            // by the unit test below.
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            )
        };
        Self {
            ib_session_state: gauge(
                "marketlane_ib_session_state",
                "1 for the IB session keepalive's current state, 0 for the others",
                &["state"],
            ),
            ib_last_tickle_timestamp: reg(
                &registry,
                Gauge::new(
                    "marketlane_ib_last_tickle_timestamp_seconds",
                    "Unix time of the last successful /tickle",
                )
                .expect("valid metric"),
            ),
            ib_requests: counter(
                "marketlane_ib_requests_total",
                "REST requests to the gateway by endpoint and outcome",
                &["endpoint", "outcome"],
            ),
            ib_login_attempts: counter(
                "marketlane_ib_login_attempts_total",
                "Runs of the configured login command by outcome",
                &["outcome"],
            ),
            ib_login_failures: reg(
                &registry,
                IntGauge::new(
                    "marketlane_ib_login_failures",
                    "Refused built-in logins in a row; at ib.login.max_failed_logins logins stop (state login_failed)",
                )
                .expect("valid metric"),
            ),
            runtime_worker_threads: reg(
                &registry,
                IntGauge::new(
                    "marketlane_runtime_worker_threads",
                    "Tokio worker threads of this process (runtime.worker_threads)",
                )
                .expect("valid metric"),
            ),
            silent_symbols: reg(
                &registry,
                IntGauge::new(
                    "marketlane_silent_symbols",
                    "Subscribed symbols without a frame for longer than ib.silent_after",
                )
                .expect("valid metric"),
            ),
            ws_reconnects: counter(
                "marketlane_ws_reconnects_total",
                "Websocket reconnects by reason",
                &["reason"],
            ),
            ws_connected: reg(
                &registry,
                IntGauge::new("marketlane_ws_connected", "1 while the websocket is up")
                    .expect("valid metric"),
            ),
            ws_frames: counter(
                "marketlane_ws_frames_total",
                "Websocket frames received by topic",
                &["topic"],
            ),
            ws_gap_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "marketlane_ws_gap_seconds",
                        "Time without market data across a websocket reconnect",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            rows_normalized: counter(
                "marketlane_rows_normalized_total",
                "Category rows produced by the normalizers",
                &["category"],
            ),
            rows_quarantined: counter(
                "marketlane_rows_quarantined_total",
                "Rows and frames sent to <category>_unqualified, by stage and reason",
                &["category", "stage", "reason"],
            ),
            missing_fields: counter(
                "marketlane_missing_fields_total",
                "Nullable fields filled as missing, by category, field and source",
                &["category", "field", "source"],
            ),
            not_realtime_rows: counter(
                "marketlane_not_realtime_rows_total",
                "Rows kept in <category>_unqualified because IB's data for the symbol is not real-time (field 6509)",
                &["category", "symbol"],
            ),
            market_data_availability: gauge(
                "marketlane_market_data_availability",
                "1 for each streamed symbol's current market-data availability (field 6509: realtime, delayed, frozen, frozen_delayed, none, unknown)",
                &["symbol", "availability"],
            ),
            kafka_produced: counter(
                "marketlane_kafka_produced_total",
                "Messages acknowledged by Kafka by topic",
                &["topic"],
            ),
            kafka_produce_errors: counter(
                "marketlane_kafka_produce_errors_total",
                "Kafka produce errors by topic and kind",
                &["topic", "kind"],
            ),
            kafka_produce_latency: histogram(
                "marketlane_kafka_produce_latency_seconds",
                "Time from handing a row to the producer to Kafka's acknowledgement",
                &["topic"],
            ),
            in_flight_frames: reg(
                &registry,
                IntGauge::new(
                    "marketlane_in_flight_frames",
                    "Websocket frames whose rows Kafka has not yet acknowledged",
                )
                .expect("valid metric"),
            ),
            data_path_undelivered: counter(
                "marketlane_data_path_undelivered_total",
                "Messages of the data path a next hop did not take (it was down or restarting), by stage and outcome (requeued: kept and handed over again; replayed: the restarted actor gets it from the websocket's replay)",
                &["stage", "outcome"],
            ),
            consumer_lag: gauge(
                "marketlane_consumer_lag",
                "Messages behind the high watermark, by consumer group, topic and partition",
                &["group", "topic", "partition"],
            ),
            clickhouse_rows_inserted: counter(
                "marketlane_clickhouse_rows_inserted_total",
                "Rows acknowledged by ClickHouse by table",
                &["table"],
            ),
            clickhouse_insert_duration: histogram(
                "marketlane_clickhouse_insert_duration_seconds",
                "Duration of one ClickHouse batch insert",
                &["table"],
            ),
            clickhouse_insert_errors: counter(
                "marketlane_clickhouse_insert_errors_total",
                "Failed ClickHouse inserts by table",
                &["table"],
            ),
            event_to_sink_latency: histogram(
                "marketlane_event_to_sink_latency_seconds",
                "Time from the source's event time to the sink's acknowledgement",
                &["category", "sink"],
            ),
            actor_restarts: counter(
                "marketlane_actor_restarts_total",
                "Actor restarts by supervisors, by actor",
                &["actor"],
            ),
            subscriptions: gauge(
                "marketlane_subscriptions",
                "Market-data subscriptions held by this pod, by kind",
                &["kind"],
            ),
            redis_writes: counter(
                "marketlane_redis_writes_total",
                "Redis pipeline writes of the calculators, by calculator and outcome",
                &["calculator", "outcome"],
            ),
            redis_write_latency: histogram(
                "marketlane_redis_write_latency_seconds",
                "Duration of one Redis pipeline write, by calculator",
                &["calculator"],
            ),
            cluster_members: reg(
                &registry,
                IntGauge::new(
                    "marketlane_cluster_members",
                    "Live members of the marketlane cluster this pod sees, itself included",
                )
                .expect("valid metric"),
            ),
            cluster_assigned_symbols: reg(
                &registry,
                IntGauge::new(
                    "marketlane_cluster_assigned_symbols",
                    "Symbols this pod streams: its share of the assignment plus those it still hands over",
                )
                .expect("valid metric"),
            ),
            cluster_unassigned_symbols: reg(
                &registry,
                IntGauge::new(
                    "marketlane_cluster_unassigned_symbols",
                    "Configured symbols no live pod has a market-data line for",
                )
                .expect("valid metric"),
            ),
            cluster_membership_changes: counter(
                "marketlane_cluster_membership_changes_total",
                "Peers joining or leaving as this pod sees them, by change (joined, left, timed_out, draining)",
                &["change"],
            ),
            cluster_heartbeats_refused: counter(
                "marketlane_cluster_heartbeats_refused_total",
                "Peer heartbeats refused, or claims cut down, by reason (identity, address, duplicate, undecodable, too_large, budget)",
                &["reason"],
            ),
            calculator_rows: counter(
                "marketlane_calculator_rows_total",
                "Rows read by the calculators, by category and outcome (applied, duplicate, late, invalid)",
                &["category", "outcome"],
            ),
            calculator_pending_keys: gauge(
                "marketlane_calculator_pending_keys",
                "Computed values waiting for Redis (at most one per key), by calculator worker",
                &["calculator"],
            ),
            consumer_stalls: counter(
                "marketlane_consumer_stalls_total",
                "Partitions found silent with rows past their position, then resumed and sought back, by topic",
                &["topic"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        m.rows_normalized
            .with_label_values(&["tick_market_data"])
            .inc();
        let text = m.render();
        assert!(text.contains("marketlane_rows_normalized_total{category=\"tick_market_data\"} 1"));
    }
}
