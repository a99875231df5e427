//! hls-relay: an HLS playback and relay proxy for Stream Video broadcasts.
//!
//! (architecture overview: see README.md; written when the data path settles)
#![forbid(unsafe_code)]

pub mod call;
pub mod playlist;
pub mod sim;
pub mod cache;
pub mod config;
pub mod error;

pub mod telemetry;
pub mod urlmap;
