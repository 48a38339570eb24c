//! The normalizers as supervised children: one per category, all answering `GetState` with
//! a [`NormalizerSnapshot`](super::NormalizerSnapshot).

use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{Normalize, Normalizer, NormalizerMsg, RowEmitter};
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

/// The normalizer of `N::CATEGORY`, registered as `normalizer_<category>`.
pub struct NormalizerChild<N> {
    emitter: RowEmitter,
    normalize: PhantomData<fn() -> N>,
}

impl<N: Normalize> NormalizerChild<N> {
    pub fn new(emitter: RowEmitter) -> Self {
        Self {
            emitter,
            normalize: PhantomData,
        }
    }
}

impl<N: Normalize> Child for NormalizerChild<N> {
    fn name(&self) -> String {
        format!("normalizer_{}", N::CATEGORY)
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Normalizer
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, Normalizer::<N>::new(), self.emitter.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, NormalizerMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["category", "instruments", "frames", "rows", "quarantined"]
    }
}

#[cfg(test)]
mod tests {
    use super::super::{indicators, l2, tick};
    use super::*;
    use crate::names;

    /// The websocket and the drain find the normalizers by these names.
    #[test]
    fn registered_names_are_the_ones_peers_look_up() {
        assert_eq!(
            format!("normalizer_{}", tick::Trades::CATEGORY),
            names::TICK_NORMALIZER
        );
        assert_eq!(
            format!("normalizer_{}", l2::Books::CATEGORY),
            names::L2_NORMALIZER
        );
        assert_eq!(
            format!("normalizer_{}", indicators::Statistics::CATEGORY),
            names::INDICATORS_NORMALIZER
        );
    }
}
