//! Ports for the child processes a run starts on loopback (`marketlane demo`, the tests, the
//! bench).

use std::net::TcpListener;

/// A loopback port for a child process (the simulator, a daemon) to listen on, free now and
/// never handed out before by this process. It lies below the kernel's ephemeral range: a free port from
/// that range can become the local end of any outgoing connection (to Kafka, ClickHouse, the
/// simulator) before the process binds it, which failed a daemon's start with "Address already
/// in use" on a freshly started stack.
pub fn listen_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (first, _) = ephemeral_ports();
    let candidates = LISTEN_PORTS_FROM..first.max(LISTEN_PORTS_FROM + 1_000);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        // A random start per call: test processes that run one after another do not retry
        // each other's ports in the same order.
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let span = u64::from(candidates.end - candidates.start);
        let port = candidates.start + (draw % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {candidates:?}"),
    ))
}

/// The lowest port [`listen_port`] hands out: above the stack's and the daemon's fixed ports.
const LISTEN_PORTS_FROM: u16 = 15_000;

/// The kernel's range of ports for the local end of outgoing connections
/// (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default when it cannot be read).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (first, last) = ephemeral_ports();
        assert!(first <= last, "{first}..{last}");
        let ports: Vec<u16> = (0..200).map(|_| listen_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            assert!((LISTEN_PORTS_FROM..first.max(LISTEN_PORTS_FROM + 1_000)).contains(&p));
            TcpListener::bind(("127.0.0.1", p)).expect("a handed-out port binds");
        }
    }
}
