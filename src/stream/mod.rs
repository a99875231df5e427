//! Stream's side: call ids, the Video REST API client, and call resolution (which playlist a call broadcasts).

pub mod api;
pub mod call;
pub mod resolver;
