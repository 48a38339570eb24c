//! The IB session keepalive (`ib_session/{actor.rs,io.rs,recovery.rs,state.rs}`).
pub mod actor;
mod child;
mod io;
pub mod recovery;
pub mod state;

pub use actor::{IbSession, SessionArgs, SessionMsg, SessionSnapshot};
pub use child::SessionChild;
pub use state::SessionState;

#[cfg(test)]
mod step_tests;
