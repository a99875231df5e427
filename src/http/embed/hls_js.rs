//! The hls.js the embed page plays with, compiled into the binary from `vendor/` (the npm package's
//! `dist/hls.min.js`, unchanged), so that the page needs no third party: nothing to fetch from a CDN, nothing for
//! a site's Content-Security-Policy to allow but the relay.
//!
//! Its URL carries its version (`/embed/hls-{VERSION}.min.js`) so that it can be cached as immutable: a browser
//! fetches it once, and a relay with another hls.js points its page at another URL. `/embed/hls.min.js` stays
//! for whatever already links to it: the file at `embed.hls_js_path` when that is set, else the built-in one, but
//! revalidated hourly, since what it names changes with the relay. The Brotli and gzip forms are made once, by
//! the first request that accepts each, rather than per request by the compression layer (the file is 600 KB).

use std::path::PathBuf;
use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::error::RelayError;
use crate::hls::encoding::{self, Variants};
use crate::http::server::etag_matches;
use crate::relay::Relay;

/// One literal for the version, so that the paths below can be `concat!`ed constants.
macro_rules! version {
    () => {
        "1.7.4"
    };
}

/// The hls.js release in `vendor/`; also in `vendor/README.md` and locked by the browser tests.
pub const VERSION: &str = version!();

/// SHA-256 of `vendor/hls.min.js`, as `sha256sum` prints it; also in `vendor/README.md`.
pub const SHA256: &str = "cfc70cc9e9fc63d071919e087670abc760c8fd1bc889b88588026e4d22193bbe";

/// Where the built-in file is served, for ever with these bytes.
pub const VERSIONED_ROUTE: &str = concat!("/embed/hls-", version!(), ".min.js");

/// The same, relative to the page (`/embed/{type}/{id}`), so that a proxy mounting the relay under a path prefix
/// keeps it working.
pub const VERSIONED_FROM_PAGE: &str = concat!("../hls-", version!(), ".min.js");

/// The unversioned route: `embed.hls_js_path`'s file, or the built-in one.
pub const ROUTE: &str = "/embed/hls.min.js";

/// [`ROUTE`] relative to the page.
pub const FROM_PAGE: &str = "../hls.min.js";

const BYTES: &[u8] = include_bytes!("vendor/hls.min.js");

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// For the unversioned URL: a relay upgrade reaches viewers within the hour.
const HOURLY: &str = "public, max-age=3600";

static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::try_from(format!("\"{SHA256}\"")).expect("a hex digest is a valid header value")
});

static VARIANTS: LazyLock<Variants> = LazyLock::new(Variants::default);

/// `GET /embed/hls-{VERSION}.min.js`.
pub(super) async fn versioned(request: HeaderMap) -> Response {
    built_in(&request, IMMUTABLE)
}

/// `GET /embed/hls.min.js`.
pub(super) async fn unversioned(
    State(relay): State<Relay>,
    request: HeaderMap,
) -> Result<Response, RelayError> {
    match relay.config().embed.hls_js_path.clone() {
        Some(path) => local_file(path).await,
        None => Ok(built_in(&request, HOURLY)),
    }
}

fn built_in(request: &HeaderMap, cache_control: &'static str) -> Response {
    let coding = encoding::preferred(request.get(header::ACCEPT_ENCODING));
    let (body, etag) = match coding {
        Some(coding) => {
            let variant = VARIANTS.get(coding, BYTES, &ETAG);
            (variant.body.clone(), variant.etag.clone())
        }
        None => (Bytes::from_static(BYTES), ETAG.clone()),
    };
    let (status, body) = match etag_matches(request, &etag) {
        true => (StatusCode::NOT_MODIFIED, Bytes::new()),
        false => (StatusCode::OK, body),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, javascript());
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(header::ETAG, etag);
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let (Some(coding), StatusCode::OK) = (coding, status) {
        headers.insert(header::CONTENT_ENCODING, coding.header_value());
    }
    response
}

/// `embed.hls_js_path`, read per request: the operator may replace the file without restarting the relay.
async fn local_file(path: PathBuf) -> Result<Response, RelayError> {
    let body = tokio::fs::read(&path).await.map_err(|error| {
        tracing::warn!(path = %path.display(), %error, "embed.hls_js_path cannot be read");
        RelayError::NotFound("hls.js is not available".into())
    })?;
    let headers = [
        (header::CONTENT_TYPE, javascript()),
        (header::CACHE_CONTROL, HeaderValue::from_static(HOURLY)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    Ok((headers, body).into_response())
}

fn javascript() -> HeaderValue {
    HeaderValue::from_static("text/javascript; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn the_built_in_hls_js_is_the_pinned_release() {
        let digest: String = Sha256::digest(BYTES)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(
            digest, SHA256,
            "vendor/hls.min.js changed: update SHA256 here and in vendor/README.md (README.md, \"Embedding a player\")"
        );
        let vendor_readme = include_str!("vendor/README.md");
        assert!(
            vendor_readme.contains(&format!("- version: {VERSION}\n")),
            "vendor/README.md names another version than {VERSION}"
        );
        assert!(
            vendor_readme.contains(&format!("- sha256: {SHA256}\n")),
            "vendor/README.md names another checksum than {SHA256}"
        );
        // hls.js carries its version as a string literal (`Hls.version`).
        let quoted = format!("\"{VERSION}\"");
        assert!(
            BYTES
                .windows(quoted.len())
                .any(|window| window == quoted.as_bytes()),
            "vendor/hls.min.js is not hls.js {VERSION}"
        );
    }

    /// The browser tests lock hls.js too: the release they install is the one built in, so the file served is
    /// the file tested.
    #[test]
    fn the_browser_tests_lock_the_same_release() {
        let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/browser/package-lock.json");
        let lock: serde_json::Value =
            serde_json::from_slice(&std::fs::read(lock).unwrap()).unwrap();
        assert_eq!(lock["packages"]["node_modules/hls.js"]["version"], VERSION);
        assert_eq!(lock["packages"][""]["dependencies"]["hls.js"], VERSION);
    }

    #[test]
    fn the_routes_carry_the_version() {
        assert_eq!(VERSIONED_ROUTE, format!("/embed/hls-{VERSION}.min.js"));
        assert_eq!(VERSIONED_FROM_PAGE, format!("../hls-{VERSION}.min.js"));
    }

    #[test]
    fn the_versioned_file_is_immutable_and_compressed_once() {
        let response = built_in(&HeaderMap::new(), IMMUTABLE);
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(headers[header::ETAG], format!("\"{SHA256}\""));
        assert!(!headers.contains_key(header::CONTENT_ENCODING));

        let mut request = HeaderMap::new();
        request.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate"),
        );
        let gzip = VARIANTS.get(encoding::Coding::Gzip, BYTES, &ETAG);
        let response = built_in(&request, IMMUTABLE);
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(response.headers()[header::ETAG], gzip.etag);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gzip.body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert!(unzipped == BYTES);
        // The same bytes again, not compressed anew.
        let again = VARIANTS.get(encoding::Coding::Gzip, BYTES, &ETAG);
        assert_eq!(again.body.as_ptr(), gzip.body.as_ptr());
    }

    #[test]
    fn a_cached_copy_is_revalidated_with_its_etag() {
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::try_from(format!("\"other\", W/\"{SHA256}\"")).unwrap(),
        );
        let response = built_in(&request, HOURLY);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], *ETAG);
        assert_eq!(response.headers()[header::CACHE_CONTROL], HOURLY);

        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(built_in(&request, HOURLY).status(), StatusCode::OK);
    }
}
