//! Which connector pod streams which symbol: rendezvous (highest-random-weight) hashing of the
//! configured symbols over the live pods, within each pod's market-data line budget.
//!
//! Every pod computes the assignment itself from the same inputs (the configured symbols and
//! the live members with their budgets), so there is no leader and no assignment message: two
//! pods that see the same members agree. Rendezvous hashing moves only the symbols of a pod
//! that leaves (or comes back) while budgets are not binding; when they bind, symbols earlier in
//! the configuration get lines first and the rest are reported unassigned.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// A live connector pod as the assignment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance: String,
    pub line_budget: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Symbol → the instance that streams it.
    pub owner: BTreeMap<String, String>,
    /// Symbols no live pod has a line for.
    pub unassigned: Vec<String>,
}

impl Assignment {
    /// The symbols `instance` streams, in symbol order.
    pub fn symbols_of<'a>(&'a self, instance: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.owner
            .iter()
            .filter(move |(_, o)| o.as_str() == instance)
            .map(|(s, _)| s)
    }
}

/// The weight of `instance` for `symbol`: the first 8 bytes of SHA-256 over both (stable across
/// builds and platforms, unlike `std::hash`).
fn weight(instance: &str, symbol: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(instance.as_bytes());
    h.update([0]);
    h.update(symbol.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Assigns `symbols` (configuration order) to `members`; each symbol takes one line.
pub fn assign(symbols: &[String], members: &[Member]) -> Assignment {
    let mut left: BTreeMap<&str, u32> = members
        .iter()
        .map(|m| (m.instance.as_str(), m.line_budget))
        .collect();
    let mut out = Assignment::default();
    for symbol in symbols {
        let mut ranked: Vec<(&str, u64)> = left.keys().map(|i| (*i, weight(i, symbol))).collect();
        // Highest weight first; the instance name breaks (astronomically unlikely) ties.
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let owner = ranked
            .into_iter()
            .map(|(i, _)| i)
            .find(|i| left.get(i).is_some_and(|n| *n > 0));
        match owner {
            Some(i) => {
                if let Some(n) = left.get_mut(i) {
                    *n -= 1;
                }
                out.owner.insert(symbol.clone(), i.to_string());
            }
            None => out.unassigned.push(symbol.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("SYM{i:04}")).collect()
    }

    fn member(name: &str, budget: u32) -> Member {
        Member {
            instance: name.into(),
            line_budget: budget,
        }
    }

    #[test]
    fn every_pod_computes_the_same_split_whatever_order_it_sees_members_in() {
        let s = symbols(300);
        let a = assign(
            &s,
            &[member("marketlane-0", 200), member("marketlane-1", 200)],
        );
        let b = assign(
            &s,
            &[member("marketlane-1", 200), member("marketlane-0", 200)],
        );
        assert_eq!(a, b);
        assert!(a.unassigned.is_empty());
        assert_eq!(a.owner.len(), 300);
    }

    #[test]
    fn two_pods_share_the_symbols_roughly_evenly() {
        let s = symbols(1000);
        let a = assign(
            &s,
            &[member("marketlane-0", 1000), member("marketlane-1", 1000)],
        );
        let zero = a.symbols_of("marketlane-0").count();
        assert!(
            (400..=600).contains(&zero),
            "marketlane-0 got {zero} of 1000"
        );
        assert_eq!(zero + a.symbols_of("marketlane-1").count(), 1000);
    }

    #[test]
    fn a_lost_pod_moves_only_its_own_symbols_and_they_move_back_when_it_returns() {
        let s = symbols(300);
        let all = [
            member("marketlane-0", 500),
            member("marketlane-1", 500),
            member("marketlane-2", 500),
        ];
        let before = assign(&s, &all);
        let after = assign(&s, &all[..2]);
        let mut moved = 0;
        for (sym, owner) in &before.owner {
            if owner == "marketlane-2" {
                moved += 1;
            } else {
                assert_eq!(
                    &after.owner[sym], owner,
                    "{sym} moved though its pod stayed"
                );
            }
        }
        assert!(moved > 50, "marketlane-2 had {moved} symbols");
        assert_eq!(
            after.owner.len(),
            300,
            "the survivors took every symbol over"
        );
        assert_eq!(
            assign(&s, &all),
            before,
            "the split after the return is the old one"
        );
    }

    #[test]
    fn line_budgets_are_never_exceeded_and_overflow_is_reported() {
        let s = symbols(150);
        let a = assign(
            &s,
            &[member("marketlane-0", 100), member("marketlane-1", 100)],
        );
        assert!(a.symbols_of("marketlane-0").count() <= 100);
        assert!(a.symbols_of("marketlane-1").count() <= 100);
        assert_eq!(a.owner.len(), 150);
        // One survivor with 100 lines: 50 symbols cannot be streamed, the last in config order.
        let alone = assign(&s, &[member("marketlane-1", 100)]);
        assert_eq!(alone.owner.len(), 100);
        assert_eq!(alone.unassigned, s[100..].to_vec());
    }

    #[test]
    fn no_members_means_nothing_is_assigned() {
        let s = symbols(3);
        let a = assign(&s, &[]);
        assert!(a.owner.is_empty());
        assert_eq!(a.unassigned, s);
    }
}
