//! The HTTP shell: the listener (HTTP/1.1, h2, TLS, slow and idle clients), the routes and viewer-facing headers,
//! viewer access tokens, and the embeddable player page.

pub mod access;
pub mod embed;
pub mod fast;
pub mod hits;
pub mod listener;
pub mod server;
