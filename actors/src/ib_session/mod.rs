//! The IB session keepalive (`ib_session/{actor.rs,recovery.rs,state.rs}`).
pub mod actor;
pub mod recovery;
pub mod state;

pub use actor::{IbSession, SessionArgs, SessionMsg, SessionSnapshot};
pub use state::SessionState;
