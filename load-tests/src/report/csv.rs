//! The CSV time series beside `report.md` (the plots are drawn from them).

use std::fmt::Write as _;

use super::Report;

impl Report {
    pub(super) fn write_csvs(&self) -> std::io::Result<()> {
        for r in &self.live {
            let mut s = String::from(
                "t,frames,normalized,kafka,clickhouse,engine,calculator_rows,redis_writes,lag,rss_mb,daemon_cpu,sim_cpu,machine_busy,p99_kafka,p99_clickhouse_ack,p99_redis,cpu_connector,cpu_writer,cpu_calculator,rss_mb_connector,rss_mb_writer,rss_mb_calculator\n",
            );
            for x in &r.samples {
                let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
                let _ = writeln!(
                    s,
                    "{:.2},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.1},{:.0},{:.1},{:.1},{:.1},{:.1},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1}",
                    x.t,
                    x.rates.frames,
                    x.rates.normalized,
                    x.rates.kafka,
                    x.rates.clickhouse,
                    x.engine,
                    x.rates.calculator_rows,
                    x.rates.redis_writes,
                    x.rates.lag,
                    x.rss_mb,
                    x.daemon_cpu,
                    x.sim_cpu,
                    x.machine_busy,
                    o(x.p99_kafka),
                    o(x.p99_clickhouse_ack),
                    o(x.p99_redis),
                    x.role_cpu[0],
                    x.role_cpu[1],
                    x.role_cpu[2],
                    x.role_rss_mb[0],
                    x.role_rss_mb[1],
                    x.role_rss_mb[2]
                );
            }
            std::fs::write(self.out.join(format!("live-{}.csv", r.config.name)), s)?;
            let mut s = String::from("table,t,latency,count\n");
            let mut labels: Vec<_> = r.seen.keys().collect();
            labels.sort();
            for label in labels {
                for x in &r.seen[label] {
                    let _ = writeln!(s, "{label},{:.3},{:.3},{}", x.t, x.latency, x.count);
                }
            }
            std::fs::write(self.out.join(format!("seen-{}.csv", r.config.name)), s)?;
        }
        if let Some(t) = &self.takeover {
            let mut s = String::from(
                "kill,killed_symbols,noticed,noticed_by,held_all,streaming,kafka,clickhouse,rejoined,same_split,quarantined\n",
            );
            let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
            for (i, k) in t.kills.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{}",
                    i + 1,
                    k.killed_symbols,
                    o(k.noticed),
                    k.noticed_by,
                    o(k.held_all),
                    o(k.streaming),
                    o(k.kafka),
                    o(k.clickhouse),
                    o(k.rejoined),
                    k.same_split,
                    k.quarantined
                );
            }
            std::fs::write(self.out.join("takeover.csv"), s)?;
            let mut s = String::from("cut,moved_symbols,noticed,kafka,clickhouse,rejoined\n");
            for (i, c) in t.cuts.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{}",
                    i + 1,
                    c.moved_symbols,
                    o(c.noticed),
                    o(c.kafka),
                    o(c.clickhouse),
                    o(c.rejoined)
                );
            }
            std::fs::write(self.out.join("takeover-cut.csv"), s)?;
        }
        // Headline figures for scripts (null where a part did not run or a figure was
        // missed); the takeover's details beside them.
        let summary = crate::summary::summary(
            &self.notes,
            &self.live,
            &self.stages,
            self.takeover.as_ref(),
        );
        std::fs::write(
            self.out.join("summary.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default(),
        )?;
        if let Some(t) = &self.takeover {
            let details = serde_json::json!({
                "takeover_cut_link_s": t.cuts.iter().map(|c| c.kafka).collect::<Vec<_>>(),
                "takeover_cut_link_skipped": t.cuts_skipped.clone(),
                "takeover_sigkill_kafka_s": t.kills.iter().map(|k| k.kafka).collect::<Vec<_>>(),
                "writer_restart_clickhouse_catch_up_s": t.writer_catch_up,
            });
            std::fs::write(
                self.out.join("takeover.json"),
                serde_json::to_string_pretty(&details).unwrap_or_default(),
            )?;
        }
        Ok(())
    }
}
