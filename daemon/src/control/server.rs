//! The control socket listener: one task per connection, at most [`MAX_CONNECTIONS`] at once
//! and [`MAX_CONNECTIONS_PER_UID`] per peer uid, counted after the uid check.
//! A connection is a sequence of request lines answered in order. Garbage gets an error reply
//! and the connection goes on; an oversized line or an idle client is disconnected; a client
//! that goes away mid-request only loses its reply. Nothing a client sends reaches the actors
//! except a parsed command.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use marketlane_protocol::control::{Command, ErrorCode, MAX_LINE, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ControlConfig, Daemon};

/// Concurrent control connections; more are answered `unavailable` and closed.
const MAX_CONNECTIONS: usize = 16;
/// Connections one peer uid may hold at once: an allowed but runaway client (a script that
/// opens connections in a loop) leaves the other half to everyone else, e.g. an operator's
/// `kubectl exec … ctl drain`. Slots are taken only after the uid check, so a peer that is not
/// allowed never holds one.
const MAX_CONNECTIONS_PER_UID: usize = MAX_CONNECTIONS / 2;

/// The connection slots: [`MAX_CONNECTIONS`] in all, [`MAX_CONNECTIONS_PER_UID`] per uid.
#[derive(Clone, Default)]
struct Slots(Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>);

/// A held slot; returned when dropped.
struct Slot {
    slots: Slots,
    uid: u32,
}

impl Slots {
    fn take(&self, uid: u32) -> Result<Slot, &'static str> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.values().sum::<usize>() >= MAX_CONNECTIONS {
            return Err("too many control connections");
        }
        let mine = held.entry(uid).or_default();
        if *mine >= MAX_CONNECTIONS_PER_UID {
            return Err("too many control connections from this uid");
        }
        *mine += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}
/// A connection with no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a command may run (a drain has its own, shorter deadline).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(660);

/// Binds the socket (0600) and serves in the background; returns the path.
pub async fn serve(config: &ControlConfig, daemon: Arc<Daemon>) -> anyhow::Result<PathBuf> {
    let path = config.socket.clone();
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("control.socket: cannot create {}", dir.display()))?;
    }
    if path.exists() {
        // A live daemon answers; a stale file from a killed one does not and is replaced.
        if UnixStream::connect(&path).await.is_ok() {
            bail!(
                "control.socket: another process listens on {}",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("control.socket: cannot remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("control.socket: cannot bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control.socket: cannot chmod {}", path.display()))?;
    // The socket file was just created by this process: its owner is our effective uid.
    let own_uid = std::fs::metadata(&path)
        .with_context(|| format!("control.socket: cannot stat {}", path.display()))?
        .uid();
    let mut allowed = config.allowed_uids.clone();
    allowed.push(own_uid);
    let slots = Slots::default();
    info!(socket = %path.display(), ?allowed, "control socket listening");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let daemon = daemon.clone();
            let allowed = allowed.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                handle(stream, daemon, &allowed, &slots).await;
            });
        }
    });
    Ok(path)
}

async fn reply_and_close(mut stream: UnixStream, reply: Reply) -> std::io::Result<()> {
    write_reply(&mut stream, &reply).await?;
    stream.shutdown().await
}

async fn write_reply<W: AsyncWriteExt + Unpin>(w: &mut W, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn handle(stream: UnixStream, daemon: Arc<Daemon>, allowed: &[u32], slots: &Slots) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            warn!(error = %e, "control socket: cannot read peer credentials; closing");
            return;
        }
    };
    if !allowed.contains(&uid) {
        warn!(uid, "control socket: peer uid not allowed");
        let _ = reply_and_close(
            stream,
            Reply::err(
                None,
                ErrorCode::Forbidden,
                format!("uid {uid} is not in control.allowed_uids"),
            ),
        )
        .await;
        return;
    }
    let _slot = match slots.take(uid) {
        Ok(slot) => slot,
        Err(why) => {
            warn!(uid, "control socket: {why}");
            let _ = reply_and_close(stream, Reply::err(None, ErrorCode::Unavailable, why)).await;
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        // Read at most MAX_LINE + 1 bytes: a longer line is refused without buffering it.
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut buf)).await
        {
            Err(_) => {
                debug!(uid, "control connection idle; closing");
                return;
            }
            Ok(Err(e)) => {
                debug!(uid, error = %e, "control connection read error");
                return;
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return;
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                let _ = write_reply(
                    &mut write,
                    &Reply::err(
                        None,
                        ErrorCode::TooLarge,
                        format!("request longer than {MAX_LINE} bytes; closing"),
                    ),
                )
                .await;
                return;
            }
            // EOF in the middle of a line: the client left mid-request; nothing to do.
            if !buf.iter().all(u8::is_ascii_whitespace) {
                debug!(uid, "control client disconnected mid-request");
            }
            return;
        }
        let line = &buf[..buf.len() - 1];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = answer(line, &daemon, uid).await;
        if write_reply(&mut write, &reply).await.is_err() {
            debug!(uid, "control client left before its reply");
            return;
        }
    }
}

async fn answer(line: &[u8], daemon: &Daemon, uid: u32) -> Reply {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Reply::err(
                None,
                ErrorCode::BadJson,
                format!("not a request: {e}; expected {{\"v\":1,\"cmd\":\"status\"}} on one line"),
            );
        }
    };
    let id = request.id;
    let command = match Command::parse(&request) {
        Ok(c) => c,
        Err(e) => return Reply::err(id, e.code, e.message),
    };
    let span = info_span!("control", cmd = %request.cmd, uid, actor = tracing::field::Empty);
    if let Command::Pause { actor } | Command::Resume { actor } = &command {
        span.record("actor", actor.as_str());
    }
    let run = tokio::time::timeout(COMMAND_TIMEOUT, daemon.execute(command)).instrument(span);
    match run.await {
        Ok(Ok(result)) => Reply::ok(id, result),
        Ok(Err((code, message))) => Reply::err(id, code, message),
        Err(_) => Reply::err(id, ErrorCode::Timeout, "the command did not finish in time"),
    }
}

/// Removes the socket file at shutdown (a stale one would be replaced at the next start anyway).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_hold_every_slot() {
        let slots = Slots::default();
        let runaway: Vec<Slot> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| slots.take(1000).unwrap())
            .collect();
        assert!(slots.take(1000).is_err(), "the runaway uid is at its share");
        // Another uid (the operator) still gets the rest, up to the total.
        let operator: Vec<Slot> = (0..MAX_CONNECTIONS - MAX_CONNECTIONS_PER_UID)
            .map(|_| slots.take(10001).unwrap())
            .collect();
        assert_eq!(slots.take(4242).err(), Some("too many control connections"));
        drop(runaway);
        assert!(
            slots.take(1000).is_ok(),
            "closed connections return their slots"
        );
        drop(operator);
        assert!(slots.0.lock().unwrap().values().sum::<usize>() <= 1);
    }
}
