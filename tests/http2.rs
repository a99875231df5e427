//! The listener on real sockets: HTTP/1.1 and h2c on the plain listener, ALPN over TLS, certificate reload, slow,
//! silent and idle clients, the connection cap, and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use bytes::Bytes;
use hls_relay::http::listener::{ListenerConfig, Server, Tls, TlsConnection, TlsPaths};
use reqwest::{Certificate, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Outer bound on anything a test waits for; reaching it is a failure.
const BOUND: Duration = Duration::from_secs(10);
const BIG_BODY: usize = 32 << 20;

/// Each handler that should be in flight when a test acts adds a permit here.
#[derive(Clone)]
struct Started(Arc<Semaphore>);

impl Started {
    fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }

    async fn wait(&self, count: u32) {
        let permits = tokio::time::timeout(BOUND, self.0.acquire_many(count))
            .await
            .expect("the handlers did not start in time")
            .unwrap();
        permits.forget();
    }
}

/// `/hello` answers with what the handler saw of the connection: "HTTP/2.0 tls=true peer=127.0.0.1".
fn app(started: Started) -> Router {
    let slow = started.clone();
    Router::new()
        .route(
            "/hello",
            get(|request: Request| async move {
                let peer = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(peer)| peer.ip().to_string());
                format!(
                    "{:?} tls={} peer={}",
                    request.version(),
                    request.extensions().get::<TlsConnection>().is_some(),
                    peer.unwrap_or_default()
                )
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                slow.0.add_permits(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                "finished"
            }),
        )
        .route(
            "/stuck",
            get(move || async move {
                started.0.add_permits(1);
                std::future::pending::<()>().await;
            }),
        )
        .route("/big", get(|| async { Bytes::from(vec![b'x'; BIG_BODY]) }))
}

/// Bounds loose enough for a loaded CI machine, for the tests that are not about them.
fn config() -> ListenerConfig {
    ListenerConfig {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
        ..ListenerConfig::default()
    }
}

/// Short bounds, for the tests of slow and idle clients.
fn strict() -> ListenerConfig {
    ListenerConfig {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        send_timeout: Duration::from_millis(300),
        ..ListenerConfig::default()
    }
}

struct Running {
    addr: SocketAddr,
    tls: Option<Tls>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<io::Result<()>>,
}

impl Running {
    async fn start(config: ListenerConfig, router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(config).unwrap();
        let tls = server.tls().cloned();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(listener, router, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            tls,
            stop: Some(stop),
            served,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn tls_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    /// Waits (bounded) for `serve` to return.
    async fn finished(self) -> io::Result<()> {
        tokio::time::timeout(BOUND, self.served)
            .await
            .expect("serve did not return in time")
            .unwrap()
    }
}

/// A self-signed certificate for `localhost` and its key, as PEM.
struct Pair {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn generate() -> Pair {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Pair {
        cert: cert.pem(),
        key: signing_key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Writes the pair the way deployment tools do (aside, then renamed into place).
fn install(pair: &Pair, paths: &TlsPaths) {
    let write = |path: &Path, contents: &str| {
        let aside = path.with_extension("tmp");
        std::fs::write(&aside, contents).unwrap();
        std::fs::rename(&aside, path).unwrap();
    };
    write(&paths.cert_path, &pair.cert);
    write(&paths.key_path, &pair.key);
}

fn tls_paths(dir: &tempfile::TempDir) -> TlsPaths {
    TlsPaths {
        cert_path: dir.path().join("cert.pem"),
        key_path: dir.path().join("key.pem"),
    }
}

/// A client that trusts only `trusted`, and reaches `localhost` at `addr`.
fn tls_client(trusted: &Pair, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([Certificate::from_pem(trusted.cert.as_bytes()).unwrap()])
        .tls_info(true)
        .resolve("localhost", addr)
        .timeout(BOUND);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the TLS peer certificate")
        .to_vec()
}

/// Reads until the peer closes (EOF or reset), within [`BOUND`]; returns what was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut chunk = vec![0; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection");
    received
}

#[tokio::test]
async fn http1_on_the_plain_listener() {
    let server = Running::start(config(), app(Started::new())).await;
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let response = client.get(server.url("/hello")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(
        response.text().await.unwrap(),
        "HTTP/1.1 tls=false peer=127.0.0.1"
    );
}

#[tokio::test]
async fn h2c_by_prior_knowledge_on_the_plain_listener() {
    let server = Running::start(config(), app(Started::new())).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(server.url("/hello")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(
        response.text().await.unwrap(),
        "HTTP/2.0 tls=false peer=127.0.0.1"
    );
}

#[tokio::test]
async fn tls_negotiates_h2_by_alpn_and_still_speaks_http1() {
    let dir = tempfile::tempdir().unwrap();
    let paths = tls_paths(&dir);
    let pair = generate();
    install(&pair, &paths);
    let server = Running::start(
        ListenerConfig {
            tls: Some(paths),
            ..config()
        },
        app(Started::new()),
    )
    .await;

    let response = tls_client(&pair, server.addr, false)
        .get(server.tls_url("/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(peer_certificate(&response), pair.der);
    assert_eq!(
        response.text().await.unwrap(),
        "HTTP/2.0 tls=true peer=127.0.0.1"
    );

    // A client that offers only http/1.1 in ALPN.
    let response = tls_client(&pair, server.addr, true)
        .get(server.tls_url("/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(
        response.text().await.unwrap(),
        "HTTP/1.1 tls=true peer=127.0.0.1"
    );
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let paths = tls_paths(&dir);
    let (old, new) = (generate(), generate());
    install(&old, &paths);
    let server = Running::start(
        ListenerConfig {
            tls: Some(paths.clone()),
            ..config()
        },
        app(Started::new()),
    )
    .await;
    let tls = server.tls.clone().unwrap();
    // A fresh client per check: a pooled connection would keep the certificate it was opened with.
    let get = |trusted: &Pair| {
        tls_client(trusted, server.addr, false)
            .get(server.tls_url("/hello"))
            .send()
    };

    let response = get(&old).await.unwrap();
    assert_eq!(peer_certificate(&response), old.der);
    assert!(
        get(&new).await.is_err(),
        "only the old certificate is served"
    );

    install(&new, &paths);
    tls.reload().unwrap();
    let response = get(&new).await.unwrap();
    assert_eq!(peer_certificate(&response), new.der);
    assert!(
        get(&old).await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken key: the reload fails, naming the key, and the working certificate stays.
    std::fs::write(&paths.key_path, "garbage").unwrap();
    let error = tls.reload().unwrap_err();
    assert_eq!(error.key, "tls.key_path", "{error}");
    let response = get(&new).await.unwrap();
    assert_eq!(peer_certificate(&response), new.der);
}

/// The replaced files are served with no call to `reload`: on SIGHUP (sent to this process), or else by the
/// file watch.
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    // Installs the process's SIGHUP handler before any is sent: without one, SIGHUP would end the test process.
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = tls_paths(&dir);
    let (old, new) = (generate(), generate());
    install(&old, &paths);
    let server = Running::start(
        ListenerConfig {
            tls: Some(paths.clone()),
            ..config()
        },
        app(Started::new()),
    )
    .await;
    let get = |trusted: &Pair| {
        tls_client(trusted, server.addr, false)
            .get(server.tls_url("/hello"))
            .send()
    };
    assert_eq!(peer_certificate(&get(&old).await.unwrap()), old.der);

    install(&new, &paths);
    let pid = std::process::id().to_string();
    let served = tokio::time::timeout(BOUND, async {
        loop {
            // Repeated: the server's own SIGHUP listener may not be registered yet.
            let _ = tokio::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .await;
            if let Ok(response) = get(&new).await {
                return peer_certificate(&response);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the replaced certificate was never served");
    assert_eq!(served, new.der);
}

#[tokio::test]
async fn a_bad_certificate_stops_start_up_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let paths = tls_paths(&dir);
    std::fs::write(&paths.cert_path, "not PEM").unwrap();
    std::fs::write(&paths.key_path, generate().key).unwrap();
    let Err(error) = Server::new(ListenerConfig {
        tls: Some(paths),
        ..config()
    }) else {
        panic!("a bad certificate was accepted");
    };
    assert!(error.to_string().contains("tls.cert_path"), "{error}");
}

#[tokio::test]
async fn a_client_that_stalls_mid_request_line_is_disconnected() {
    let config = strict();
    let server = Running::start(config.clone(), app(Started::new())).await;
    // Lower bounds on elapsed time are measured from before the connection exists, so they cannot race it.
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /hello HT").await.unwrap();
    let received = read_until_closed(&mut stream).await;
    assert!(started.elapsed() >= config.header_read_timeout);
    // hyper may answer 408 first; it must never have served the request.
    assert!(
        !String::from_utf8_lossy(&received).contains("HTTP/1.1 200"),
        "{received:?}"
    );
}

#[tokio::test]
async fn a_client_that_never_speaks_is_disconnected() {
    let config = strict();
    let plain = Running::start(config.clone(), app(Started::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let paths = tls_paths(&dir);
    install(&generate(), &paths);
    let tls = Running::start(
        ListenerConfig {
            tls: Some(paths),
            ..config.clone()
        },
        app(Started::new()),
    )
    .await;
    // Silent; half an HTTP/2 preface (hyper cannot tell the protocol yet); silent before the TLS handshake.
    for (addr, preamble) in [
        (plain.addr, &b""[..]),
        (plain.addr, b"PRI * HTTP/2.0\r\n"),
        (tls.addr, b""),
    ] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(preamble).await.unwrap();
        read_until_closed(&mut stream).await;
        assert!(started.elapsed() >= config.header_read_timeout);
    }
}

#[tokio::test]
async fn headers_beyond_max_header_bytes_are_refused() {
    let config = config();
    let limit = config.max_header_bytes.as_u64() as usize;
    let server = Running::start(config, app(Started::new())).await;
    let request = |padding: usize| {
        format!(
            "GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-padding: {}\r\n\r\n",
            "a".repeat(padding)
        )
    };
    for (padding, status) in [(limit / 2, "200"), (limit + 4096, "431")] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // Past the limit the server stops reading: the rest of the request may not be taken.
        let _ = stream.write_all(request(padding).as_bytes()).await;
        let received = read_until_closed(&mut stream).await;
        let head = String::from_utf8_lossy(&received);
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
    }
}

/// hyper's HTTP/1.1 header timer also runs while a kept-alive connection waits for its next request.
#[tokio::test]
async fn http1_keep_alive_is_bounded_by_the_header_read_timeout() {
    let config = ListenerConfig {
        idle_timeout: BOUND * 2,
        ..strict()
    };
    let server = Running::start(config.clone(), app(Started::new())).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // The server's idle time starts after it answers, so after this.
    let asked = Instant::now();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    read_until_closed(&mut stream).await;
    assert!(asked.elapsed() >= config.header_read_timeout);
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed() {
    let config = ListenerConfig {
        idle_timeout: Duration::from_millis(500),
        ..config()
    };
    let server = Running::start(config.clone(), app(Started::new())).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = axum::http::Request::get(server.url("/hello"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // The server's idle time starts after it answers, so after this.
    let asked = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let closed = tokio::time::timeout(BOUND, connection).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    let idled = asked.elapsed();
    assert!(idled >= config.idle_timeout);
    // Closed by the idle bound, not by the (longer) bound on a connection's first request.
    assert!(idled < config.header_read_timeout, "{idled:?}");
}

#[tokio::test]
async fn beyond_max_connections_new_ones_are_closed_at_once() {
    let server = Running::start(
        ListenerConfig {
            max_connections: 1,
            header_read_timeout: BOUND * 2,
            ..config()
        },
        app(Started::new()),
    )
    .await;
    let holder = TcpStream::connect(server.addr).await.unwrap();
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_until_closed(&mut refused).await.is_empty());

    drop(holder);
    let client = reqwest::Client::new();
    // The slot frees once the server has seen the holder leave.
    let served = tokio::time::timeout(BOUND, async {
        loop {
            if let Ok(response) = client.get(server.url("/hello")).send().await {
                return response.status();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the freed slot was never reused");
    assert_eq!(served, 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    let config = ListenerConfig {
        send_timeout: Duration::from_millis(300),
        ..config()
    };
    let server = Running::start(config, app(Started::new())).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The client stalls well past send_timeout (this creates the condition; nothing is asserted on time).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = read_until_closed(&mut stream).await;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert!(
        received.len() < BIG_BODY,
        "the whole body arrived: {} bytes",
        received.len()
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_responses_finish() {
    let started = Started::new();
    let mut server = Running::start(
        ListenerConfig {
            shutdown_grace: BOUND,
            ..config()
        },
        app(started.clone()),
    )
    .await;
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let in_flight = [
        tokio::spawn(h1.get(server.url("/slow")).send()),
        tokio::spawn(h2.get(server.url("/slow")).send()),
    ];
    started.wait(2).await;

    server.shut_down();
    for request in in_flight {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "finished");
    }
    let addr = server.addr;
    server.finished().await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_cuts_responses_that_outlast_the_grace() {
    let started = Started::new();
    let config = ListenerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..config()
    };
    let mut server = Running::start(config.clone(), app(started.clone())).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let stuck = [
        tokio::spawn(reqwest::get(server.url("/stuck"))),
        tokio::spawn(h2.get(server.url("/stuck")).send()),
    ];
    started.wait(2).await;

    let stopping = Instant::now();
    server.shut_down();
    server.finished().await.unwrap();
    assert!(stopping.elapsed() >= config.shutdown_grace);
    for request in stuck {
        let outcome = tokio::time::timeout(BOUND, request).await.unwrap().unwrap();
        assert!(outcome.is_err(), "the stuck response was cut");
    }
}

/// `curl --http2` against the TLS listener, when curl is installed (skipped otherwise).
#[tokio::test]
async fn curl_speaks_h2_over_tls() {
    let installed = tokio::process::Command::new("curl")
        .arg("--version")
        .output()
        .await
        .is_ok();
    if !installed {
        eprintln!("curl is not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = tls_paths(&dir);
    let pair = generate();
    install(&pair, &paths);
    let server = Running::start(
        ListenerConfig {
            tls: Some(paths.clone()),
            ..config()
        },
        app(Started::new()),
    )
    .await;
    let port = server.addr.port();
    let output = tokio::process::Command::new("curl")
        .args([
            "--http2",
            "-sS",
            "--max-time",
            "10",
            "-w",
            " %{http_version}",
        ])
        .arg("--cacert")
        .arg(&paths.cert_path)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(server.tls_url("/hello"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "HTTP/2.0 tls=true peer=127.0.0.1 2");
}
