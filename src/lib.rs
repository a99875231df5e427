//! hls-relay: an HLS playback and relay proxy for Stream Video broadcasts.
//!
//! (architecture overview: see README.md; written when the data path settles)
#![forbid(unsafe_code)]

pub mod cache;
pub mod call;
pub mod config;
pub mod demo;
pub mod error;
pub mod playlist;
pub mod policy;
pub mod relay;
pub mod resolver;
pub mod server;
pub mod sim;
pub mod stream_api;
pub mod telemetry;
pub mod upstream;
pub mod urlmap;
