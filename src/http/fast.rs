//! The fast lane: HTTP/1.1 requests that the app can answer from bytes it already holds (the relay's cached
//! hits), answered by the listener without hyper. hyper's per-request work (a `Request` with its `HeaderMap`, the
//! service call, a `Response`, the header encoding) was most of the user-space instructions of a cached playlist
//! hit; here a hit is a parse of the head with `httparse`, a look-up, a header block written into a buffer the
//! thread lends, and one vectored write of that block and the shared body.
//!
//! Only plain requests take the lane: `GET` over HTTP/1.1, no body, no `Connection`, `Expect`, `Upgrade`, `Range`
//! or `Origin` header (CORS answers depend on the origin), each header the lane reads present at most once.
//! Everything else, and every request the app does not answer here, goes to hyper as before, so the lane never
//! changes what a client gets: a test compares its answers with hyper's.

use std::io::{self, IoSlice};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most request heads have fewer headers; a head with more is left to hyper.
const MAX_HEADERS: usize = 32;

/// A request the fast lane may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastRequest<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub accept_encoding: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
}

/// What the first request head in a buffer is, for the listener.
#[derive(Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// A plain request the app may answer, and the length of its head in the buffer.
    Fast(FastRequest<'a>, usize),
    /// A bodiless request for hyper (its head ends at the given length): hyper may be handed this one request
    /// and the connection taken back after its response.
    Bodiless(usize),
    /// Anything else (a body, an upgrade, HTTP/1.0, a head that does not parse): hyper serves the connection.
    Other,
}

/// Parses the first request head in `bytes` (complete: the listener reads up to the blank line).
pub fn parse(bytes: &[u8]) -> Head<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(length)) = request.parse(bytes) else {
        return Head::Other;
    };
    if request.version != Some(1) {
        return Head::Other;
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Head::Other;
    };
    let mut fast = method == "GET" && target.starts_with('/');
    let (mut accept_encoding, mut if_none_match) = (None, None);
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        let slot = match name.len() {
            15 if name.eq_ignore_ascii_case(b"accept-encoding") => &mut accept_encoding,
            13 if name.eq_ignore_ascii_case(b"if-none-match") => &mut if_none_match,
            14 if name.eq_ignore_ascii_case(b"content-length") => return Head::Other,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Head::Other,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Head::Other,
            6 if name.eq_ignore_ascii_case(b"expect") => return Head::Other,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                fast = false;
                continue;
            }
            5 if name.eq_ignore_ascii_case(b"range") => {
                fast = false;
                continue;
            }
            6 if name.eq_ignore_ascii_case(b"origin") => {
                fast = false;
                continue;
            }
            _ => continue,
        };
        if slot.replace(header.value).is_some() {
            fast = false;
        }
    }
    if !fast {
        return Head::Bodiless(length);
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let request = FastRequest {
        path,
        query,
        accept_encoding,
        if_none_match,
    };
    Head::Fast(request, length)
}

/// What the app answers in the fast lane: it writes the status line and headers (each line ending in CRLF, no
/// `Date`, `Content-Length` or final blank line: [`finish_head`] adds those) into `head`, and returns the body.
pub trait FastLane: Send + Sync + 'static {
    fn answer(&self, request: &FastRequest<'_>, head: &mut Vec<u8>) -> Option<Bytes>;
}

/// Ends a head started by [`FastLane::answer`]: `Date`, `Content-Length` and the blank line.
pub fn finish_head(head: &mut Vec<u8>, content_length: usize) {
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(content_length).as_bytes());
    head.extend_from_slice(b"\r\ndate: ");
    date::with_now(|date| head.extend_from_slice(date));
    head.extend_from_slice(b"\r\n\r\n");
}

/// A buffer for a response head, lent by the thread (one spare per thread, so that steady answering allocates
/// nothing and idle connections hold no buffer); given back when dropped, once the head is written.
pub struct HeadBuffer(Vec<u8>);

thread_local! {
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl HeadBuffer {
    pub fn take() -> Self {
        let mut buffer = SPARE.take();
        buffer.clear();
        Self(buffer)
    }
}

impl Drop for HeadBuffer {
    fn drop(&mut self) {
        SPARE.set(std::mem::take(&mut self.0));
    }
}

impl std::ops::Deref for HeadBuffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for HeadBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// Writes `head` then `body` with as few system calls as the socket allows: one, unless it is full.
pub async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    head: &[u8],
    body: &[u8],
) -> io::Result<()> {
    let written = io
        .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
        .await?;
    if written == 0 && !(head.is_empty() && body.is_empty()) {
        return Err(io::ErrorKind::WriteZero.into());
    }
    if written < head.len() {
        io.write_all(&head[written..]).await?;
        io.write_all(body).await
    } else {
        io.write_all(&body[written - head.len()..]).await
    }
}

/// The `Date` header's value, formatted once a second per thread (as hyper does).
mod date {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn with_now<R>(f: impl FnOnce(&[u8]) -> R) -> R {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let text = httpdate::fmt_http_date(now);
                cached.1.copy_from_slice(&text.as_bytes()[..29]);
                cached.0 = second;
            }
            f(&cached.1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_get_takes_the_lane() {
        let head = b"GET /hls/a/b/x/y/index.m3u8?_HLS_msn=3 HTTP/1.1\r\nHost: h\r\n\
            Accept-Encoding: gzip, br\r\nUser-Agent: t\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let Head::Fast(request, length) = parse(head) else {
            panic!("{:?}", parse(head));
        };
        assert_eq!(request.path, "/hls/a/b/x/y/index.m3u8");
        assert_eq!(request.query, Some("_HLS_msn=3"));
        assert_eq!(request.accept_encoding, Some(&b"gzip, br"[..]));
        assert_eq!(request.if_none_match, None);
        assert!(head[length..].starts_with(b"GET /next"));
    }

    #[test]
    fn requests_whose_answer_hyper_must_shape_do_not() {
        for head in [
            &b"GET / HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nOrigin: https://a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nAccept-Encoding: gzip\r\naccept-encoding: br\r\n\r\n",
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(head), Head::Bodiless(n) if n == head.len()),
                "{head:?}"
            );
        }
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse(head), Head::Other, "{head:?}");
        }
    }

    #[test]
    fn the_head_is_finished_with_its_length_and_date() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        finish_head(&mut head, 1234);
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ndate: "));
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!(
            text.len(),
            "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ndate: \r\n\r\n".len() + 29
        );
    }

    #[tokio::test]
    async fn a_response_is_written_whole() {
        let (mut client, mut server) = tokio::io::duplex(7);
        let writer =
            tokio::spawn(
                async move { write_response(&mut server, b"head\r\n\r\n", b"the body").await },
            );
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
            .await
            .unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got, b"head\r\n\r\nthe body");
    }
}
