//! Conids this pod released (sent `umd` for) moments ago. IB keeps sending a symbol's frames
//! for a while after `umd`, and during a cluster handback the pod that owns the symbol now
//! streams it, so those frames are dropped, not quarantined as an unknown conid.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long after its `umd` a released conid's frames are expected.
pub const RELEASE_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
pub struct ReleasedConids {
    at: HashMap<i64, Instant>,
}

impl ReleasedConids {
    /// `removed` were just unsubscribed; `subscribed` are the conids streamed from now on.
    pub fn update(&mut self, removed: &[i64], subscribed: impl Fn(i64) -> bool, now: Instant) {
        self.at
            .retain(|c, at| !subscribed(*c) && now.duration_since(*at) < RELEASE_GRACE);
        self.at.extend(removed.iter().map(|c| (*c, now)));
    }

    /// Whether a frame of `conid` (not subscribed) is a late frame of a released conid.
    pub fn is_late(&self, conid: i64, now: Instant) -> bool {
        self.at
            .get(&conid)
            .is_some_and(|at| now.duration_since(*at) < RELEASE_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_conids_are_late_for_the_grace_only() {
        let t0 = Instant::now();
        let mut r = ReleasedConids::default();
        r.update(&[1, 2], |_| false, t0);
        assert!(r.is_late(1, t0 + Duration::from_secs(1)));
        assert!(!r.is_late(3, t0), "never released");
        assert!(!r.is_late(1, t0 + RELEASE_GRACE), "past the grace");
        // Subscribed again: no longer released; the other stays.
        r.update(&[], |c| c == 2, t0 + Duration::from_secs(2));
        assert!(!r.is_late(2, t0 + Duration::from_secs(3)));
        assert!(r.is_late(1, t0 + Duration::from_secs(3)));
        // Entries past the grace are dropped at the next update.
        r.update(&[], |_| false, t0 + RELEASE_GRACE * 2);
        assert!(r.at.is_empty());
    }
}
