//! Child processes of the tests: the `marketlane` and `marketlane-sim` binaries run to
//! completion under a deadline ([`run_marketlane`], [`output_within`]) or kept running
//! ([`Proc`], killed when dropped).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{command_line, workspace_root};

/// Runs `marketlane ARGS` (or `marketlane-sim`, see [`command_line`]) to completion, killed
/// after `limit` (see [`output_within`]).
pub fn run_marketlane(args: &[&str], limit: Duration) -> anyhow::Result<Output> {
    let (bin, args) = command_line(args);
    output_within(
        Command::new(&bin).args(args).current_dir(workspace_root()),
        limit,
    )
    .with_context(|| format!("cannot run {}", bin.display()))
}

/// [`Command::output`] with a deadline: a command still running after `limit` is killed and
/// the answer is a `TimedOut` error that names it and quotes what it printed, so a hung child
/// fails its test instead of holding the suite forever. Stdin is left as `cmd` has it.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    let until = Instant::now() + limit;
    // Its own process group: a timeout kills what the command started too (the demo's
    // simulator and daemon).
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    // Read both pipes on threads: a child blocked on a full pipe would never exit.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&buf);
        let reader = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => lock(&into).extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
        (buf, reader)
    }
    fn lock(b: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
        b.lock().unwrap_or_else(|e| e.into_inner())
    }
    let (stdout, out_reader) = drain(child.stdout.take());
    let (stderr, err_reader) = drain(child.stderr.take());
    let take = |b: &Mutex<Vec<u8>>| std::mem::take(&mut *lock(b));
    // Program and arguments only: the environment may carry secrets.
    let named = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let timed_out = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "`{named}` {what} within {limit:?}; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&take(&stdout)),
                String::from_utf8_lossy(&take(&stderr))
            ),
        )
    };
    let group = child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= until {
            kill_group();
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out("did not exit"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A grandchild may hold the pipes open after the child exited.
    while !(out_reader.is_finished() && err_reader.is_finished()) {
        if Instant::now() >= until {
            kill_group();
            return Err(timed_out("exited but its output did not close"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    })
}

/// A child process that is killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// `marketlane ARGS`, or the simulator for `["sim", ..]` (see [`command_line`]).
    pub fn spawn(args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let (bin, args) = command_line(args);
        let out = std::fs::File::create(log)?;
        let child = Command::new(&bin)
            .args(args)
            .current_dir(workspace_root())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self(child))
    }

    pub fn terminate(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
