//! A live run's daemon config.

use crate::procs;

use super::{Env, LiveConfig};

pub(super) fn config_toml(
    env: &Env,
    c: &LiveConfig,
    prefix: &str,
    db: &str,
    gw: u16,
    http: u16,
    ch_url: &str,
) -> anyhow::Result<String> {
    let schemas = procs::repo_root().join("schemas").canonicalize()?;
    let mut s = format!(
        r#"# Written by marketlane-bench ({name}).
instance = "bench-{name}"
roles = ["connector", "writer", "calculator"]
schemas_dir = "{schemas}"

[http]
listen = "127.0.0.1:{http}"

[control]
socket = "{sock}"

[ib]
gateway_url = "http://127.0.0.1:{gw}"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[clickhouse]
url = "{ch}"
database = "{db}"

[calculators]
key_ttl = 300
[calculators.redis]
user = "default"
key_prefix = "mlbench{stamp}"
[[calculators.teams]]
name = "bench"
[[calculators.teams.specs]]
name = "vwap_60s"
kind = "vwap"
source = "tick_market_data"
symbols = ["*"]
window_secs = 60
[[calculators.teams.specs]]
name = "mid"
kind = "mid"
source = "l2_market_data"
symbols = ["*"]

"#,
        name = c.name,
        schemas = schemas.display(),
        sock = env.work.join(format!("{}.sock", c.name)).display(),
        kafka = env.kafka,
        ch = ch_url,
        stamp = env.stamp,
    );
    for i in 1..=c.symbols {
        s.push_str(&format!(
            "[[ib.symbols]]\nsymbol = \"SYM{i:04}\"\nsec_type = \"stock\"\ndepth = true\n"
        ));
    }
    Ok(s)
}
