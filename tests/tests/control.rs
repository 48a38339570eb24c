//! The control socket and `marketlane ctl` against a real daemon (simulator → daemon → Kafka →
//! ClickHouse): every command, its bad arguments, and clients that send garbage or leave
//! mid-request. One daemon serves all the checks to keep the suite short.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use marketlane_tests::config::{DaemonConfig, stock};
use marketlane_tests::daemon::wait_readyz;
use marketlane_tests::{
    Proc, clickhouse, eventually, free_port, marketlane_bin, output_within, unique, workspace_root,
};
use serde_json::Value;

/// A `ctl` call still running after this hangs (the slowest, `drain`, has a 10 s deadline).
const CTL_LIMIT: Duration = Duration::from_secs(60);

struct Ctl {
    socket: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", self.stdout, self.stderr))
    }
    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Out {
        let out = output_within(
            Command::new(marketlane_bin())
                .arg("ctl")
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
            CTL_LIMIT,
        )
        .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    fn json(&self, args: &[&str]) -> Out {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Sends raw bytes on one connection and reads `replies` reply lines.
    fn raw(&self, bytes: &[u8], replies: usize) -> Vec<Value> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < replies {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                got.push(serde_json::from_slice(&line).unwrap());
                continue;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed after {} replies", got.len());
            buf.extend_from_slice(&chunk[..n]);
        }
        got
    }
}

fn write_config(dir: &Path, gw: u16, http: u16, prefix: &str, db: &str, schemas: &Path) -> PathBuf {
    // The keys an operator would write for one connector + writer pod; roles, drain deadline,
    // ClickHouse URL and writer settings are the daemon's defaults.
    let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), dir).without(&[
        "roles",
        "drain_deadline_secs",
        "clickhouse.url",
        "writer",
    ]);
    c.instance = "ctl-0".into();
    c.schemas_dir = schemas.to_path_buf();
    c.http_port = http;
    c.control_socket = dir.join("run/control.sock");
    c.symbols = vec![stock("AAPL"), stock("XOM")];
    c.kafka_prefix = prefix.into();
    c.database = db.into();
    c.write(&dir.join("config.toml"))
}

fn actor<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["result"]["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["actor"] == name)
        .unwrap_or_else(|| panic!("no actor {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_control_command_and_bad_input() {
    let prefix = format!("{}_", unique("t_"));
    let db = unique("t_");
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    for e in std::fs::read_dir(workspace_root().join("schemas")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, schemas.join(p.file_name().unwrap())).unwrap();
    }
    let (gw, http) = (free_port(), free_port());
    let http_addr = format!("127.0.0.1:{http}");
    let _sim = Proc::spawn(
        &[
            "sim",
            "--listen",
            &format!("127.0.0.1:{gw}"),
            "--seed",
            "11",
        ],
        &dir.path().join("sim.log"),
    )
    .unwrap();
    let config = write_config(dir.path(), gw, http, &prefix, &db, &schemas);
    let mut daemon = Proc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let ctl = Ctl {
        socket: dir.path().join("run/control.sock"),
    };
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();

    // status: the whole tree, once the session is authenticated and the pod ready.
    let up = eventually(Duration::from_secs(90), || async {
        let o = ctl.json(&["status"]);
        o.code == 0 && actor(&o.json(), "ib_session")["state"]["state"] == "authenticated"
    })
    .await;
    assert!(up, "daemon not up: {}", log());
    let mode = std::fs::metadata(&ctl.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let ready = wait_readyz(&http_addr, Duration::from_secs(30), |r| r.status == 200).await;
    assert!(ready.is_ok(), "never ready: {ready:?} {}", log());
    let status = ctl.json(&["status"]).json();
    assert_eq!(status["ok"], true);
    assert_eq!(status["result"]["instance"], "ctl-0");
    assert_eq!(status["result"]["cluster"], Value::Null);
    for (name, kind) in [
        ("ib_session", "session"),
        ("ib_websocket", "websocket"),
        ("kafka_producer", "producer"),
        ("normalizer_tick_market_data", "normalizer"),
        ("clickhouse_writer_tick_market_data", "writer"),
    ] {
        let a = actor(&status, name);
        assert_eq!(a["kind"], kind, "{a}");
        assert_eq!(a["alive"], true, "{a}");
        assert!(a["state"].is_object(), "{a}");
    }
    let table = ctl.run(&["status"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("ACTOR") && table.stdout.contains("state=authenticated"),
        "{}",
        table.stdout
    );

    // subscriptions / subscribe / unsubscribe.
    let subs = ctl.json(&["subscriptions"]).json();
    let symbols: Vec<&str> = subs["result"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(symbols, ["AAPL", "XOM"], "{subs}");
    assert!(subs["result"]["symbols"][0]["conid"].is_i64(), "{subs}");
    let added = ctl.json(&["subscribe", "CL", "--future", "--exchange", "NYMEX"]);
    assert_eq!(added.code, 0, "{} {}", added.stdout, added.stderr);
    assert!(added.json()["result"]["conid"].is_i64(), "{}", added.stdout);
    let ws_sees_three = eventually(Duration::from_secs(10), || async {
        actor(&ctl.json(&["status"]).json(), "ib_websocket")["state"]["subscribed"] == 3
    })
    .await;
    assert!(
        ws_sees_three,
        "the websocket did not get the new instrument"
    );
    let again = ctl.json(&["subscribe", "CL", "--future", "--exchange", "NYMEX"]);
    assert_eq!((again.code, again.error_code().as_str()), (1, "failed"));
    let no_exchange = ctl.json(&["subscribe", "CL", "--future"]);
    assert_eq!(
        (no_exchange.code, no_exchange.error_code().as_str()),
        (1, "bad_args")
    );
    let bad_symbol = ctl.json(&["subscribe", "A;DROP"]);
    assert_eq!(
        (bad_symbol.code, bad_symbol.error_code().as_str()),
        (1, "bad_args")
    );
    let unknown = ctl.json(&["subscribe", "NOSUCHSYMBOLZZ"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stdout);
    let removed = ctl.json(&["unsubscribe", "CL"]);
    assert_eq!(removed.code, 0, "{}", removed.stdout);
    assert_eq!(
        removed.json()["result"]["unsubscribed_conids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let gone = ctl.json(&["unsubscribe", "CL"]);
    assert_eq!((gone.code, gone.error_code().as_str()), (1, "not_found"));

    // rebalance: no cluster here, and it says so.
    let rb = ctl.json(&["rebalance"]);
    assert_eq!((rb.code, rb.error_code().as_str()), (1, "unavailable"));
    assert!(rb.stdout.contains("no cluster configured"), "{}", rb.stdout);

    // reauth: the session re-checks and is authenticated again.
    let ra = ctl.json(&["reauth"]);
    assert_eq!(ra.code, 0, "{}", ra.stdout);
    assert_eq!(ra.json()["result"]["requested"], true);
    assert!(
        eventually(Duration::from_secs(30), || async {
            actor(&ctl.json(&["status"]).json(), "ib_session")["state"]["state"] == "authenticated"
        })
        .await
    );

    // pause / resume a writer, by full name and by topic.
    let p = ctl.json(&["pause", "tick_market_data"]);
    assert_eq!(p.code, 0, "{}", p.stdout);
    assert_eq!(p.json()["result"]["paused"], true);
    let st = ctl.json(&["status"]).json();
    assert_eq!(
        actor(&st, "clickhouse_writer_tick_market_data")["state"]["paused"],
        true
    );
    let r = ctl.json(&["resume", "clickhouse_writer_tick_market_data"]);
    assert_eq!(r.json()["result"]["paused"], false, "{}", r.stdout);
    let not_writer = ctl.json(&["pause", "ib_session"]);
    assert_eq!(
        (not_writer.code, not_writer.error_code().as_str()),
        (1, "bad_args")
    );
    let missing = ctl.json(&["pause", "nosuch"]);
    assert_eq!(
        (missing.code, missing.error_code().as_str()),
        (1, "not_found")
    );

    // log-level: query, change, reject a bad filter (the old one stays).
    assert_eq!(ctl.json(&["log-level"]).json()["result"]["level"], "info");
    let ll = ctl.json(&["log-level", "debug"]);
    assert_eq!(ll.json()["result"]["previous"], "info", "{}", ll.stdout);
    let bad = ctl.json(&["log-level", "info,[[nope"]);
    assert_eq!(
        (bad.code, bad.error_code().as_str()),
        (1, "bad_args"),
        "{}",
        bad.stdout
    );
    assert_eq!(ctl.json(&["log-level"]).json()["result"]["level"], "debug");
    ctl.json(&["log-level", "info"]);

    // reload-schemas: unchanged, then a category removed, then a broken file.
    let same = ctl.json(&["reload-schemas"]).json();
    assert_eq!(same["result"]["added"], serde_json::json!([]), "{same}");
    assert_eq!(same["result"]["removed"], serde_json::json!([]), "{same}");
    std::fs::remove_file(schemas.join("numeric_economic_data.toml")).unwrap();
    let less = ctl.json(&["reload-schemas"]).json();
    assert_eq!(
        less["result"]["removed"],
        serde_json::json!(["numeric_economic_data"]),
        "{less}"
    );
    std::fs::write(schemas.join("broken.toml"), "category = [").unwrap();
    let broken = ctl.json(&["reload-schemas"]);
    assert_eq!((broken.code, broken.error_code().as_str()), (1, "failed"));
    assert!(broken.stdout.contains("broken"), "{}", broken.stdout);

    // Bad input on the wire: each line gets its error, and the connection goes on.
    let replies = ctl.raw(
        b"hello\n\xff\xfe\n{\"v\":9,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"explode\"}\n{\"v\":1,\"id\":5,\"cmd\":\"pause\",\"args\":{}}\n[1,2]\n{\"v\":1,\"id\":6,\"cmd\":\"log-level\"}\n",
        7,
    );
    let codes: Vec<&str> = replies
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "bad_json",
            "bad_json",
            "unsupported_version",
            "unknown_command",
            "bad_args",
            "bad_json",
            "ok"
        ]
    );
    assert_eq!(replies[4]["id"], 5);
    assert_eq!(replies[6]["id"], 6);
    assert!(
        replies[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("explode"),
        "{}",
        replies[3]
    );
    let unknown = ctl.run(&["raw", r#"{"v":1,"cmd":"explode"}"#]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("unknown_command"),
        "{}",
        unknown.stderr
    );
    // An oversized line is refused and the connection closed.
    let mut big = vec![b'x'; 70 * 1024];
    big.push(b'\n');
    let too_large = ctl.raw(&big, 1);
    assert_eq!(too_large[0]["error"]["code"], "too_large");
    // Clients leaving mid-request, or connecting and saying nothing.
    for _ in 0..20 {
        let mut s = UnixStream::connect(&ctl.socket).unwrap();
        let _ = s.write_all(br#"{"v":1,"cmd":"sta"#);
    }
    let idle: Vec<UnixStream> = (0..5)
        .map(|_| UnixStream::connect(&ctl.socket).unwrap())
        .collect();
    let mut half = UnixStream::connect(&ctl.socket).unwrap();
    half.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    drop(half); // leaves before its reply
    let still = ctl.json(&["status"]);
    assert_eq!(still.code, 0, "daemon disturbed: {}", log());
    drop(idle);

    // A peer uid outside control.allowed_uids is refused (needs root to switch uid).
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
    {
        std::fs::set_permissions(&ctl.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let out = output_within(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(marketlane_bin())
                .args(["ctl", "--json", "--socket"])
                .arg(&ctl.socket)
                .arg("status"),
            CTL_LIMIT,
        )
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("forbidden"), "{stdout}");
        std::fs::set_permissions(&ctl.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // drain: flushed, unready, and a second drain is refused.
    let drained = ctl.json(&["drain", "--deadline-secs", "10"]);
    assert_eq!(drained.code, 0, "{} {}", drained.stdout, log());
    assert_eq!(
        drained.json()["result"]["producer_flushed"],
        true,
        "{}",
        drained.stdout
    );
    let unready = wait_readyz(&http_addr, Duration::from_secs(10), |r| r.status == 503).await;
    assert!(unready.is_ok(), "still ready after drain: {unready:?}");
    assert_eq!(ctl.json(&["status"]).json()["result"]["draining"], true);
    let twice = ctl.json(&["drain"]);
    assert_eq!(
        (twice.code, twice.error_code().as_str()),
        (1, "unavailable")
    );
    let bad_deadline = ctl.json(&["drain", "--deadline-secs=-3"]);
    assert_eq!(bad_deadline.error_code(), "bad_args");

    daemon.terminate();
    assert!(!ctl.socket.exists(), "socket left behind");
    // No daemon: ctl says so with exit code 3.
    let down = ctl.run(&["status"]);
    assert_eq!(down.code, 3, "{}", down.stderr);
    assert!(down.stderr.contains("cannot connect"), "{}", down.stderr);
    assert!(!log().contains("panicked"), "{}", log());
    let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {db}")).await;
}
