//! hls-relay: an HLS playback and relay proxy for Stream Video broadcasts.
//!
//! Viewers ask the relay for a call (`/hls/{type}/{id}/index.m3u8`); the relay resolves the call's playlist URL
//! through the Stream API, fetches playlists and media from Stream's CDN once, rewrites every URI so players come
//! back to the relay, caches, and serves many viewers (or a CDN in front).
//!
//! The data path, one module per step:
//!
//! ```text
//! request ─► listener: a plain HTTP/1.1 GET of a fresh cached object (no query but a viewer session, public
//!            mode)? fast lane (hits): one look-up, a header block, one vectored write of it and the shared body
//!        ─► server (routes, hostile-path filter, CORS, compression, metrics)
//!        ─► relay ─► cache look-up: fresh? ─────────────────────────────────► response (shared Bytes)
//!                    in flight? join the fill, stream its bytes as they come ─► response
//!                    miss: urlmap verifies the signed path (no fetch for a forged one)
//!                          resolver ─► stream_api (GET call; cached, coalesced)
//!                          upstream (allowed hosts, redirects, timeouts, size bounds)
//!                          playlist: inspect (m3u8-rs) + rewrite URIs via urlmap; policy sets freshness
//!        ─► viewers: a playlist naming a session (?vs=) counts for it, in memory; the entry starts sessions;
//!                    every second the counts are tallied and shared with the fleet (never on the request path)
//! ```
//!
//! The tree shows the layers, and imports flow one way, from the shell to the pure core:
//!
//! - [`hls`], the pure core: [`hls::playlist`] (reading and URI rewriting over bytes), [`hls::urlmap`] (relay
//!   URLs), [`hls::policy`] (freshness, Cache-Control, content types), [`hls::blocking`] (LL-HLS directives),
//!   [`hls::encoding`] (compressed variants).
//! - [`stream`]: Stream's side: [`stream::call`] (call ids), [`stream::api`] (the REST client),
//!   [`stream::resolver`] (which playlist a call broadcasts, cached and coalesced).
//! - [`events`]: how the relay learns of broadcast changes ([`events::webhook`], [`events::sqs`]) and tells pages
//!   ([`events::hub`]).
//! - [`relay`]: the data path ([`relay::Relay`]), its [`relay::cache`] (moka + streaming fills) and
//!   [`relay::upstream`] (the HTTP client to Stream's CDN).
//! - [`http`]: the shell: [`http::listener`] (accept loops, one per thread on `SO_REUSEPORT` sockets; HTTP/1.1,
//!   h2, TLS), [`http::fast`] (the fast lane: cached hits answered without hyper) and [`http::hits`] (the relay's
//!   answers there), [`http::server`] (routes), [`http::access`] (viewer tokens), [`http::embed`] (the player
//!   page).
//! - [`cluster`]: several instances as one service, on Redis (shared events, call state, leases, viewer counts).
//! - [`viewers`]: who is watching: viewer session ids carried in playlist URIs, and live counts per call, with
//!   its pure core in [`viewers::session`], [`viewers::count`] and [`viewers::rendition`].
//! - [`config`], [`error`] (the one place failures become HTTP), [`telemetry`], [`cli`] (operator commands),
//!   [`sim`] (a simulated Stream backend for tests, benchmarks and [`demo`]).
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod events;
pub mod hls;
pub mod http;
pub mod relay;
pub mod sim;
pub mod stream;
pub mod telemetry;
pub mod viewers;
