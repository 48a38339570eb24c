//! The memory bound of a process's writers together (`writer.buffer_bytes`): each writer
//! publishes what its batches hold, and cuts them all once the writers of its process together
//! hold the bound. A bound per writer would let a process hold it once per topic (a category
//! and a quarantine topic each): a busy writer alone could then use only a fraction of the
//! memory the process gives its writers, in smaller inserts that cost ClickHouse more CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A writer cuts on the process's bound only once it holds at least this part of it: a writer
/// whose batches wait for a retry then leaves the others inserting in batches of some size,
/// not a few rows at a time. The process so holds at most the bound plus this part per writer.
const SMALLEST_SHARE: usize = 16;

/// The bytes the batches of every writer of one process hold.
#[derive(Debug, Default)]
pub struct WriterBudget {
    held: AtomicUsize,
}

impl WriterBudget {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// What the writers of the process hold together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A writer's part, holding nothing yet.
    pub fn share(self: &Arc<Self>) -> BudgetShare {
        BudgetShare {
            budget: self.clone(),
            mine: 0,
        }
    }
}

/// One writer's part of its process's budget: what it published last. Dropped with the writer's
/// state, so a writer that stops or fails gives its bytes back.
#[derive(Debug)]
pub struct BudgetShare {
    budget: Arc<WriterBudget>,
    mine: usize,
}

impl BudgetShare {
    /// Publishes what this writer's batches hold now; returns what all the writers of the
    /// process hold with it.
    pub fn publish(&mut self, held: usize) -> usize {
        let total = if held >= self.mine {
            let grew = held - self.mine;
            self.budget.held.fetch_add(grew, Ordering::Relaxed) + grew
        } else {
            let shrank = self.mine - held;
            self.budget.held.fetch_sub(shrank, Ordering::Relaxed) - shrank
        };
        self.mine = held;
        total
    }

    /// Whether this writer, holding `held` bytes, cuts all its batches under the bound
    /// (see [`cut_all`]).
    pub fn over(&mut self, held: usize, bound: usize) -> bool {
        let total = self.publish(held);
        cut_all(held, total, bound)
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

/// Whether a writer holding `own` bytes cuts all its batches when the writers of its process
/// hold `total` together: it alone holds the bound, or together they do and it holds at least
/// its smallest share of it.
pub fn cut_all(own: usize, total: usize, bound: usize) -> bool {
    own >= bound || (total >= bound && own >= bound / SMALLEST_SHARE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_a_dropped_writer_gives_its_bytes_back() {
        let budget = WriterBudget::new();
        let mut a = budget.share();
        let mut b = budget.share();
        assert_eq!(a.publish(1_000), 1_000);
        assert_eq!(b.publish(500), 1_500);
        // A flush that landed: the writer holds less.
        assert_eq!(a.publish(200), 700);
        assert_eq!(budget.held(), 700);
        drop(b);
        assert_eq!(budget.held(), 200);
        drop(a);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_writer_cuts_on_the_process_bound_once_it_holds_its_smallest_share() {
        let bound = 32 << 20;
        // Alone at the bound.
        assert!(cut_all(bound, bound, bound));
        // Below the bound together: nobody cuts.
        assert!(!cut_all(bound / 2, bound - 1, bound));
        // Together at the bound: a writer with a fair part cuts …
        assert!(cut_all(bound / 4, bound, bound));
        // … one with a few rows does not: another writer's retry holds the rest.
        assert!(!cut_all(bound / 64, bound + bound / 2, bound));
        assert!(cut_all(bound / 16, bound + bound / 2, bound));
    }

    #[test]
    fn two_writers_of_a_process_cut_together_where_each_alone_would_not() {
        let budget = WriterBudget::new();
        let bound = 64 * 1024;
        let (mut l2, mut tick) = (budget.share(), budget.share());
        assert!(!l2.over(40 * 1024, bound));
        // The tick writer's 30 KiB take the process past 64 KiB: both cut.
        assert!(tick.over(30 * 1024, bound));
        assert!(l2.over(40 * 1024, bound));
        // Another process's writers have their own budget.
        let other = WriterBudget::new();
        assert!(!other.share().over(40 * 1024, bound));
    }
}
