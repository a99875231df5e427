//! hls-relay: an HLS playback and relay proxy for Stream Video broadcasts.
//!
//! Viewers ask the relay for a call (`/hls/{type}/{id}/index.m3u8`); the relay resolves the call's playlist URL
//! through the Stream API, fetches playlists and media from Stream's CDN once, rewrites every URI so players come
//! back to the relay, caches, and serves many viewers (or a CDN in front).
//!
//! The data path, one module per step:
//!
//! ```text
//! request ─► server (routes, hostile-path filter, CORS, compression, metrics)
//!        ─► relay ─► cache look-up: fresh? ─────────────────────────────────► response (shared Bytes)
//!                    in flight? join the fill, stream its bytes as they come ─► response
//!                    miss: urlmap verifies the signed path (no fetch for a forged one)
//!                          resolver ─► stream_api (GET call; cached, coalesced)
//!                          upstream (allowed hosts, redirects, timeouts, size bounds)
//!                          playlist: inspect (m3u8-rs) + rewrite URIs via urlmap; policy sets freshness
//! ```
//!
//! The pure core: [`playlist`] (reading and URI rewriting over bytes), [`urlmap`] (signed relay URLs),
//! [`policy`] (freshness, Cache-Control, content types), [`call`] (call ids), [`config`]. The I/O shell:
//! [`server`], [`relay`], [`cache`], [`upstream`], [`resolver`], [`stream_api`]. [`error`] is the one place
//! failures become HTTP. [`sim`] is a simulated Stream backend for tests, benchmarks and [`demo`].
#![forbid(unsafe_code)]

pub mod access;
pub mod blocking;
pub mod cache;
pub mod call;
pub mod cli;
pub mod config;
pub mod demo;
pub mod embed;
pub mod encoding;
pub mod error;
pub mod listener;
pub mod live;
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
pub mod webhook;
