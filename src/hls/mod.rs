//! The pure HLS core: reading and rewriting playlists, relay URLs, cache policy, LL-HLS delivery directives and
//! content codings. Plain functions over bytes and structs; no I/O, no tokio.

pub mod blocking;
pub mod encoding;
pub mod playlist;
pub mod policy;
pub mod urlmap;
