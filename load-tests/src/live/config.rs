//! A live run's daemon configs: one per role, from one template, with the sections that role
//! needs in production (k8s/base/config/): the connector the gateway and the symbols, the
//! writer ClickHouse, the calculator its specs and Redis (it starts its own producer for the
//! indicator rows). All share the Kafka prefix, the database and the Redis prefix.

use crate::procs;

use super::daemons::Role;
use super::{Env, LiveConfig};

/// What the three processes of a run share.
pub struct Shared {
    pub prefix: String,
    pub db: String,
    /// The simulator's port (the connector's gateway).
    pub gw: u16,
    /// ClickHouse as the writer sees it (the outage proxy when there is one).
    pub ch_url: String,
}

pub(super) fn config_toml(
    env: &Env,
    c: &LiveConfig,
    role: Role,
    sh: &Shared,
    http: u16,
) -> anyhow::Result<String> {
    let schemas = procs::repo_root().join("schemas").canonicalize()?;
    let mut s = format!(
        r#"# Written by marketlane-bench ({name}, the {role} process).
instance = "bench-{name}-{role}"
roles = ["{role}"]
schemas_dir = "{schemas}"

[http]
listen = "127.0.0.1:{http}"

[control]
socket = "{sock}"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

"#,
        name = c.name,
        role = role.name(),
        schemas = schemas.display(),
        sock = env
            .work
            .join(format!("{}-{}.sock", c.name, role.name()))
            .display(),
        kafka = env.kafka,
        prefix = sh.prefix,
    );
    match role {
        Role::Connector => {
            s.push_str(&format!(
                "[ib]\ngateway_url = \"http://127.0.0.1:{}\"\n",
                sh.gw
            ));
            for i in 1..=c.symbols {
                s.push_str(&format!(
                    "[[ib.symbols]]\nsymbol = \"SYM{i:04}\"\nsec_type = \"stock\"\ndepth = true\n"
                ));
            }
        }
        Role::Writer => {
            s.push_str(&format!(
                "[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n",
                sh.ch_url, sh.db
            ));
        }
        Role::Calculator => {
            s.push_str(&format!(
                r#"[calculators]
# One group per run, as the topics are (a deployment's calculators share one group; runs must
# not rebalance each other's consumers).
group_id = "{prefix}calculators"
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
                stamp = env.stamp,
                prefix = sh.prefix
            ));
        }
    }
    Ok(s)
}
