//! Taking a service of the shared stack down and up again under the stack lock
//! ([`StackOutage`]), and the shared hold for tests that need the stack up throughout.

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::workspace_root;

/// The lock every user of the shared stack takes around stopping a service.
pub const STACK_LOCK: &str = "/tmp/marketlane-stack.lock";

/// The exclusive [`STACK_LOCK`] around taking one stack service down and up again. Take it
/// before the lane starts ([`StackOutage::lock`]): another engineer's benchmark may hold the
/// lock for minutes, and a lane should not stream for that long before its fault.
/// [`StackOutage::kill`] SIGKILLs the service; [`StackOutage::restore`] (or, if the test fails
/// first, `Drop`) brings it back with `scripts/stack up`; the lock is released when the value
/// is dropped, after the service is healthy again.
pub struct StackOutage {
    pub service: &'static str,
    /// Seconds spent waiting for the lock.
    pub waited: f64,
    killed: bool,
    restored: bool,
    _lock: File,
}

fn stack(args: &[&str]) -> anyhow::Result<String> {
    // A SIGKILLed Kafka reloads every partition of every test run: on a busy machine that
    // takes longer than the script's default 120 s wait, after which it stops the service again.
    let timeout = std::env::var("ML_STACK_TIMEOUT").unwrap_or_else(|_| "600".into());
    let out = Command::new(workspace_root().join("scripts/stack"))
        .args(args)
        .env("ML_STACK_TIMEOUT", timeout)
        .current_dir(workspace_root())
        .output()
        .context("cannot run scripts/stack")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("scripts/stack {}: {}\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

impl StackOutage {
    /// Waits up to `timeout` for the exclusive lock (blocking the thread).
    pub fn lock(service: &'static str, timeout: Duration) -> anyhow::Result<Self> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(STACK_LOCK)
            .with_context(|| format!("open {STACK_LOCK}"))?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                    if !told {
                        eprintln!("waiting for {STACK_LOCK} (held by another user of the stack)");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    bail!("{STACK_LOCK} still held by someone else after {timeout:?}")
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("lock {STACK_LOCK}"));
                }
            }
        }
        Ok(Self {
            service,
            waited: started.elapsed().as_secs_f64(),
            killed: false,
            restored: false,
            _lock: lock,
        })
    }

    /// SIGKILLs the service (`scripts/stack kill SERVICE`).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.killed = true;
        stack(&["kill", self.service]).map(|_| ())
    }

    /// `scripts/stack up SERVICE` (waits until healthy); how long that took. Retried for up
    /// to 5 minutes: `up` refuses while something else listens on the service's port (any
    /// address), and the stack must not stay down because of that.
    pub fn restore(&mut self) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            match stack(&["up", self.service]) {
                Ok(_) => {
                    self.restored = true;
                    return Ok(started.elapsed().as_secs_f64());
                }
                Err(e) if started.elapsed() < Duration::from_secs(300) => {
                    eprintln!("{} not up yet, retrying in 5 s: {e:#}", self.service);
                    std::thread::sleep(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A shared hold on [`STACK_LOCK`] for tests that need the stack up throughout (e.g. a
/// cluster test): no fault row takes a service down while it is held.
pub fn stack_shared_lock(timeout: Duration) -> anyhow::Result<File> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(STACK_LOCK)
        .with_context(|| format!("open {STACK_LOCK}"))?;
    let started = Instant::now();
    loop {
        match lock.try_lock_shared() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("{STACK_LOCK} held exclusively by someone else after {timeout:?}")
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {STACK_LOCK}"));
            }
        }
    }
}

impl Drop for StackOutage {
    fn drop(&mut self) {
        if self.killed
            && !self.restored
            && let Err(e) = self.restore()
        {
            eprintln!("could not bring {} back up: {e:#}", self.service);
        }
    }
}
