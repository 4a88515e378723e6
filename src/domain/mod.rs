//! The pure engine: events, per-account state, `fold`, scoring and alert rules.
//! Nothing here reads a clock, touches the disk or the network: `now` is passed in.

pub mod event;
