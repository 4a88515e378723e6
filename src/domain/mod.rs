//! The pure engine: events, per-account state, `fold`, scoring and alert rules.
//! Nothing here reads a clock, touches the disk or the network: `now` is passed in.

pub mod alert;
pub mod engine;
pub mod event;
pub mod fold;
pub mod peers;
pub mod score;
pub mod state;

pub use engine::{AlertChange, AlertStatus, Output, ScoreChange, evaluate, evaluate_with};
pub use fold::fold;
