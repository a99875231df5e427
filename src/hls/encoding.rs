//! Content codings for playlists: which one a client accepts, and compressed variants made once per cached
//! playlist version instead of once per request.
//!
//! A live playlist is read by every viewer every few seconds and changes only when upstream's does, so compressing
//! it per request (what a compression middleware does) costs far more CPU than serving it. Each variant is made on
//! the first request that wants it and then shared, as `Bytes`, by every later one.

use std::io::Write;
use std::sync::OnceLock;

use axum::http::HeaderValue;
use bytes::Bytes;

/// A content coding the relay can serve a playlist in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }

    fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding to answer with, from `Accept-Encoding` (RFC 9110 §12.5.3): the acceptable one with the highest
/// q-value, Brotli on a tie (smaller), `None` for identity. A coding listed with `q=0` is refused even if `*`
/// would allow it.
pub fn preferred(accept_encoding: Option<&HeaderValue>) -> Option<Coding> {
    preferred_of(accept_encoding?.to_str().ok()?)
}

/// [`preferred`] from the header's text.
pub fn preferred_of(accept: &str) -> Option<Coding> {
    let (mut brotli, mut gzip, mut any) = (None, None, None);
    for item in accept.split(',') {
        let mut params = item.split(';');
        let name = params.next().unwrap_or("").trim();
        let quality = params
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = if name.eq_ignore_ascii_case("br") {
            &mut brotli
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            &mut gzip
        } else if name == "*" {
            &mut any
        } else {
            continue;
        };
        *slot = Some(quality);
    }
    let brotli = brotli.or(any).unwrap_or(0.0);
    let gzip = gzip.or(any).unwrap_or(0.0);
    match (brotli > 0.0, gzip > 0.0) {
        (true, true) if gzip > brotli => Some(Coding::Gzip),
        (true, _) => Some(Coding::Brotli),
        (false, true) => Some(Coding::Gzip),
        (false, false) => None,
    }
}

/// Brotli quality and window: quality 5 compresses a playlist about as well as 11 does (its URIs repeat) at a
/// small fraction of the time, which matters for per-viewer token variants compressed per request.
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW_BITS: u32 = 22;

/// `body` compressed with `coding`.
pub fn compress(coding: Coding, body: &[u8]) -> Bytes {
    // Writing into a Vec cannot fail, so neither can the encoders.
    match coding {
        Coding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::default(),
            );
            encoder.write_all(body).expect("writes into a Vec");
            encoder.finish().expect("writes into a Vec").into()
        }
        Coding::Brotli => {
            let mut out = Vec::with_capacity(body.len() / 4);
            {
                let mut encoder = brotli::CompressorWriter::new(
                    &mut out,
                    4096,
                    BROTLI_QUALITY,
                    BROTLI_WINDOW_BITS,
                );
                encoder.write_all(body).expect("writes into a Vec");
            }
            out.into()
        }
    }
}

/// One compressed variant: its bytes and its own strong validator (a representation's ETag must differ from the
/// identity one's, or a cache could answer a 304 for the wrong bytes).
#[derive(Debug)]
pub struct Variant {
    pub body: Bytes,
    pub etag: HeaderValue,
}

/// The compressed variants of one cached playlist version, each made on first use.
#[derive(Debug, Default)]
pub struct Variants {
    brotli: OnceLock<Variant>,
    gzip: OnceLock<Variant>,
}

impl Variants {
    /// The variant of `body` (whose identity ETag is `etag`) in `coding`.
    pub fn get(&self, coding: Coding, body: &[u8], etag: &HeaderValue) -> &Variant {
        let slot = match coding {
            Coding::Brotli => &self.brotli,
            Coding::Gzip => &self.gzip,
        };
        slot.get_or_init(|| Variant {
            body: compress(coding, body),
            etag: variant_etag(etag, coding),
        })
    }
}

/// `"abc"` becomes `"abc-gzip"`.
fn variant_etag(etag: &HeaderValue, coding: Coding) -> HeaderValue {
    let bytes = etag.as_bytes();
    let inner = bytes
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
        .unwrap_or(bytes);
    let mut value = Vec::with_capacity(inner.len() + 8);
    value.push(b'"');
    value.extend_from_slice(inner);
    value.push(b'-');
    value.extend_from_slice(coding.token().as_bytes());
    value.push(b'"');
    HeaderValue::from_bytes(&value).expect("built from a valid header value and ASCII")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn pick(accept: &str) -> Option<Coding> {
        preferred(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn negotiation_follows_q_values() {
        assert_eq!(preferred(None), None);
        assert_eq!(pick(""), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Coding::Brotli));
        assert_eq!(pick("br;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0.1"), Some(Coding::Gzip));
        assert_eq!(pick("GZIP;Q=1"), Some(Coding::Gzip));
        assert_eq!(pick("*"), Some(Coding::Brotli));
        assert_eq!(pick("*, br;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("x-gzip"), Some(Coding::Gzip));
        assert_eq!(pick("deflate"), None);
        assert_eq!(pick("br;q=nonsense"), Some(Coding::Brotli));
    }

    #[test]
    fn variants_decompress_to_the_body_and_carry_their_own_etag() {
        let body = "#EXTM3U\n#EXTINF:2.0,\nseg_1.ts\n".repeat(50);
        let etag = HeaderValue::from_static("\"0123abcd\"");
        let variants = Variants::default();

        let gzip = variants.get(Coding::Gzip, body.as_bytes(), &etag);
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gzip.body[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
        assert_eq!(gzip.etag, "\"0123abcd-gzip\"");

        let brotli = variants.get(Coding::Brotli, body.as_bytes(), &etag);
        let mut plain = String::new();
        brotli::Decompressor::new(&brotli.body[..], 4096)
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
        assert_eq!(brotli.etag, "\"0123abcd-br\"");
        assert!(brotli.body.len() < body.len() / 4);

        // Made once: the second request gets the same bytes.
        let again = variants.get(Coding::Brotli, body.as_bytes(), &etag);
        assert_eq!(again.body.as_ptr(), brotli.body.as_ptr());
    }
}
