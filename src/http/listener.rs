//! The accept loop that replaces `axum::serve`: HTTP/1.1 and HTTP/2 on one port (h2c by prior knowledge on plain
//! TCP; ALPN `h2` / `http/1.1` over TLS), bounds on slow, idle and too many clients, a TLS certificate that is
//! reloaded in place, and a graceful shutdown with a deadline.
//!
//! Per connection:
//!
//! ```text
//! accept ─► at max_connections? close at once
//!        ─► TCP_NODELAY; wait for the client's first bytes (header_read_timeout) before anything else exists
//!        ─► send_timeout guard on the socket
//!        ─► TLS handshake (bounded by header_read_timeout), ALPN h2 / http/1.1
//!        ─► HTTP/2 (first bytes may be its preface, or ALPN h2): hyper-util auto (stream cap, pings)
//!           HTTP/1.x: loop { read the request head whole (header_read_timeout)
//!                            ─► hyper's http1 (max_header_bytes) serves it and what follows
//!                            ─► idle between bodiless requests (20 ms at least, the last response sent):
//!                               park (hyper's state dropped), wait for the next request; the next head is due
//!                               header_read_timeout after the last response }
//!        ─► watchdog: first request within header_read_timeout, then idle_timeout between requests,
//!                     shutdown: finish in-flight responses (the accept loop cuts them at shutdown_grace)
//! ```
//!
//! Memory per open connection (what bounds RSS with thousands of idle viewers; see benches/memory/README.md):
//!
//! - before its first bytes, and while parked, a connection is its socket and its task (about 1.5KiB): the
//!   state of a connection being served is boxed apart, by protocol, so that idle connections do not carry it;
//! - while hyper serves HTTP/1.1, its read and write buffers (8KiB each) and state (about 2KiB). Idle keep-alive
//!   viewers are the many connections, hence parking: hyper cannot shrink or drop its buffers while it holds a
//!   connection, so the listener takes the connection back from it (`poll_without_shutdown`, `into_parts`)
//!   once it is idle with nothing left to send;
//! - the request head is read before hyper sees it, into a buffer the size of what arrived: hyper grows its read
//!   buffer to 16KiB when a head takes more than one read, which slow and slowloris clients would otherwise cost;
//!   for the same reason HTTP/1.1 does not go through hyper-util's auto builder, which reads the first bytes
//!   to tell the protocol and hands them back through a `Rewind`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::Bytes;
use bytesize::ByteSize;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::http::fast::{self, FastLane, Head};

/// How often the certificate files are checked for changes (SIGHUP reloads at once).
const CERT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval on a connection, and how long an answer may take before the peer is considered gone.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// hyper refuses an HTTP/1 buffer smaller than this (it panics).
const MIN_H1_BUFFER: usize = 8192;

/// Where the serving certificate lives. Both files are PEM: the chain leaf first, and its private key (PKCS#8,
/// PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Transport settings of one listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Serve TLS (ALPN `h2`, `http/1.1`) with this certificate; `None`: plain HTTP/1.1 and h2c.
    pub tls: Option<TlsPaths>,
    /// A connection must complete its TLS handshake and first request head within this, and an HTTP/1.1 request
    /// head must arrive within it (slowloris). An HTTP/1.1 keep-alive connection's next request head is due within
    /// it of the last response, so it also bounds how long HTTP/1.1 keep-alive lasts.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Request line plus headers (HTTP/1.1: answered with 431), or the header list of an HTTP/2 request. HTTP/1.1
    /// cannot go below 8KiB (hyper's smallest buffer).
    pub max_header_bytes: ByteSize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection whose socket accepts no byte for this long is closed: a client that stopped reading must not
    /// hold a response (and its buffers) forever.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Open connections at most; beyond it, new ones are accepted and closed at once.
    pub max_connections: usize,
    /// Concurrent requests on one HTTP/2 connection (LL-HLS players hold a few blocking requests each; a CDN
    /// multiplexes many viewers).
    pub h2_max_concurrent_streams: u32,
    /// On shutdown, how long in-flight responses may take before their connections are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: ByteSize::kib(16),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 50_000,
            h2_max_concurrent_streams: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A certificate or key that cannot be served, with the config key that points at it.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}` ({}): {reason}", path.display())]
pub struct TlsError {
    /// `tls.cert_path` or `tls.key_path`.
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Marks requests that arrived over TLS (a request extension), e.g. to write `https://` URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsConnection;

/// The TLS side of a listener: the rustls config (ALPN `h2`, `http/1.1`) and the certificate it serves, which
/// [`Tls::reload`] swaps without touching open connections. Clones share the certificate.
#[derive(Clone, Debug)]
pub struct Tls(Arc<TlsState>);

#[derive(Debug)]
struct TlsState {
    paths: TlsPaths,
    provider: Arc<CryptoProvider>,
    certificate: Arc<SwappableCert>,
    config: Arc<ServerConfig>,
    /// The files as they were when last read, to reload only on change.
    seen: Mutex<Option<[FileStamp; 2]>>,
}

/// Hands every handshake the current certificate: one read lock, no rebuild of the rustls config on reload.
#[derive(Debug)]
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// What identifies a version of a file without reading it (a rename-into-place changes the inode; a rewrite in
/// place the mtime or length).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

impl Tls {
    /// Reads the certificate chain and key; a bad file is an error naming its config key.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        // aws-lc-rs: the provider reqwest already brings in, named explicitly so no process-wide default is needed.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamps = Self::stamps(paths);
        let key = load_certified_key(paths, &provider)?;
        let certificate = Arc::new(SwappableCert(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Stateless resumption: players reconnect often, and tickets need no server-side cache.
        if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
            config.ticketer = ticketer;
        }
        Ok(Self(Arc::new(TlsState {
            paths: paths.clone(),
            provider,
            certificate,
            config: Arc::new(config),
            seen: Mutex::new(stamps),
        })))
    }

    /// Reads the files again and serves them to new handshakes. On error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = Self::stamps(&self.0.paths);
        // Remembered even when the files are bad, so a broken pair is reported once per change, not per poll.
        *self.0.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamps;
        let key = load_certified_key(&self.0.paths, &self.0.provider)?;
        *self
            .0
            .certificate
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// [`Tls::reload`] if either file changed since it was last read; `Ok(true)` when it did reload.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamps = Self::stamps(&self.0.paths);
        if *self.0.seen.lock().unwrap_or_else(PoisonError::into_inner) == stamps {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// The rustls config handshakes use (its certificate follows reloads).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.0.config.clone()
    }

    /// The end-entity certificate being served now (DER).
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        let current = self
            .0
            .certificate
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        current.cert[0].clone()
    }

    fn stamps(paths: &TlsPaths) -> Option<[FileStamp; 2]> {
        Some([
            FileStamp::of(&paths.cert_path)?,
            FileStamp::of(&paths.key_path)?,
        ])
    }

    /// Reloads on SIGHUP and when the files change, until dropped (aborted).
    async fn watch(self) {
        let mut poll = tokio::time::interval(CERT_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await; // the first tick is immediate: the files were just read
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = poll.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                poll.tick().await;
                false
            };
            let tls = self.clone();
            // File I/O off the runtime's workers: a stat on a network mount can block.
            let outcome = tokio::task::spawn_blocking(move || {
                if forced {
                    tls.reload().map(|()| true)
                } else {
                    tls.reload_if_changed()
                }
            })
            .await;
            match outcome {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.0.paths.cert_path.display(),
                    "TLS certificate reloaded"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::warn!(
                    %error,
                    "TLS certificate reload failed; still serving the previous certificate"
                ),
                Err(error) => tracing::warn!(%error, "TLS certificate reload panicked"),
            }
        }
    }
}

fn tls_error(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError {
        key,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads and checks a chain and its key: each failure names the file at fault.
fn load_certified_key(
    paths: &TlsPaths,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    const CERT: &str = "tls.cert_path";
    const KEY: &str = "tls.key_path";
    let (cert_path, key_path) = (&paths.cert_path, &paths.key_path);

    let pem = std::fs::read(cert_path)
        .map_err(|e| tls_error(CERT, cert_path, format!("cannot read the file: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(CERT, cert_path, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(tls_error(
            CERT,
            cert_path,
            "no CERTIFICATE block found: expected a PEM certificate chain, leaf first",
        ));
    }

    let pem = std::fs::read(key_path)
        .map_err(|e| tls_error(KEY, key_path, format!("cannot read the file: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => tls_error(
            KEY,
            key_path,
            "no private key found: expected a PEM block PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or \
             EC PRIVATE KEY",
        ),
        e => tls_error(KEY, key_path, format!("not a PEM private key: {e}")),
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls_error(KEY, key_path, format!("unusable private key: {e}")))?;

    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(tls_error(
            KEY,
            key_path,
            format!(
                "this key does not belong to the first certificate in {}",
                cert_path.display()
            ),
        )),
        Err(e) => Err(tls_error(
            CERT,
            cert_path,
            format!("the first certificate cannot be parsed: {e}"),
        )),
    }
}

/// A listener's server: its settings and, with TLS, the certificate (loaded up front, so that a bad file stops
/// start-up with a clear error rather than the first handshake).
pub struct Server {
    config: ListenerConfig,
    tls: Option<Tls>,
    fast: Option<Arc<dyn FastLane>>,
}

impl Server {
    pub fn new(config: ListenerConfig) -> Result<Self, TlsError> {
        let tls = config.tls.as_ref().map(Tls::load).transpose()?;
        Ok(Self {
            config,
            tls,
            fast: None,
        })
    }

    /// Answers what `lane` can of HTTP/1.1 requests without hyper (see [`crate::http::fast`]).
    pub fn with_fast_lane(mut self, lane: Arc<dyn FastLane>) -> Self {
        self.fast = Some(lane);
        self
    }

    /// The certificate handle, to reload it from elsewhere (tests, an admin hook).
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Serves `service` (an axum `Router`, or any service of axum requests) on `listener` until `shutdown`
    /// completes; then stops accepting, lets in-flight responses finish for up to `shutdown_grace`, cuts what
    /// remains and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        service: impl HttpApp,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (shared, slots, _watcher) = self.share(service);
        accept_loop(shared, slots, listener, shutdown).await;
        Ok(())
    }

    /// As [`Self::serve`], on several listeners bound to one address (see [`bind_per_thread`]): the first is
    /// served by the calling task, each other one by a single-threaded runtime on a thread of its own, which
    /// also runs whatever its connections spawn. The connection cap counts them all.
    pub async fn serve_per_thread(
        self,
        listeners: Vec<std::net::TcpListener>,
        service: impl HttpApp,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (shared, slots, _watcher) = self.share(service);
        let mut listeners = listeners.into_iter();
        let first = listeners
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener"))?;
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::new();
        for (index, listener) in listeners.enumerate() {
            let (shared, slots, mut stopped) = (shared.clone(), slots.clone(), stopped.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("hls-relay-{}", index + 1))
                .spawn(move || {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        let stop = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        accept_loop(shared, slots, listener, stop).await;
                        io::Result::Ok(())
                    })
                })?;
            threads.push(thread);
        }
        let shutdown = async move {
            shutdown.await;
            stop.send_replace(true);
        };
        // Should this listener fail to start serving, the other threads still stop when asked.
        match TcpListener::from_std(first) {
            Ok(listener) => accept_loop(shared, slots, listener, shutdown).await,
            Err(error) => {
                tracing::error!(%error, "cannot serve the first listener");
                shutdown.await;
            }
        }
        for thread in threads {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            match joined {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::error!(%error, "a serving thread failed"),
                _ => tracing::error!("a serving thread panicked"),
            }
        }
        Ok(())
    }

    /// What every accept loop shares, and the certificate watcher (aborted when the guard drops).
    fn share(self, service: impl HttpApp) -> (Arc<Shared>, Arc<Semaphore>, Option<AbortOnDrop>) {
        let Self { config, tls, fast } = self;
        let watcher = tls
            .clone()
            .map(|tls| AbortOnDrop(tokio::spawn(tls.watch())));
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let shared = Arc::new(Shared {
            http1: http1_builder(&config),
            builder: http_builder(&config),
            service: BoxCloneSyncService::new(service),
            tls: tls.map(|tls| TlsAcceptor::from(tls.server_config())),
            fast,
            config,
        });
        (shared, slots, watcher)
    }
}

/// Binds `count` listening sockets to `addr`, all with `SO_REUSEPORT`, for [`Server::serve_per_thread`]: the
/// kernel spreads new connections between them. With port 0, the first picks the port and the others share it.
/// (Another process of the same user that binds the port with `SO_REUSEPORT` would share it too, as with nginx's
/// `reuseport`.)
pub fn bind_per_thread(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        // tokio's own backlog: a herd of viewers connecting at once must not overflow the accept queue.
        socket.listen(1024)?;
        let listener = std::net::TcpListener::from(socket);
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts connections on `listener` and serves them until `shutdown` completes; then stops accepting, lets
/// in-flight responses finish for up to `shutdown_grace` and cuts what remains.
async fn accept_loop(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next() => log_panic(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        // Playlists and parts are small writes that must not wait for Nagle.
                        let _ = stream.set_nodelay(true);
                        let task = connection(shared.clone(), stream, peer, stopped.clone(), slot);
                        connections.spawn(task);
                    }
                    // At the cap, closing at once tells the client (or its load balancer) to go elsewhere
                    // now; leaving it in the kernel's backlog would only make it time out later.
                    Err(_) => {
                        drop(stream);
                        refusals.note(shared.config.max_connections);
                    }
                },
                // The peer gave up between SYN and accept: nothing to do.
                Err(error) if is_connection_error(&error) => {}
                // Out of file descriptors or memory: retrying at once would spin. Wait, but stay stoppable.
                Err(error) => {
                    tracing::error!(%error, "accept failed; retrying in 1s");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
    }

    // Closing the socket makes new connections fail fast instead of queueing behind a server that is leaving.
    drop(listener);
    tracing::info!(
        open = connections.len(),
        grace = ?shared.config.shutdown_grace,
        "listener closed; finishing in-flight responses"
    );
    let _ = stop.send(true);
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        while let Some(joined) = connections.join_next().await {
            log_panic(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown grace elapsed; closing the remaining connections"
        );
        connections.shutdown().await;
    }
}

/// [`Server::new`] then [`Server::serve`]; a bad certificate is an `InvalidInput` error naming its config key.
pub async fn serve(
    listener: TcpListener,
    service: impl HttpApp,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let server = Server::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    server.serve(listener, service, shutdown).await
}

/// hyper-util's HTTP/1 builder has no separate header limit: the read buffer bounds the request head (431 when
/// full). Responses are not limited by it: body chunks are queued, not copied, into the write buffer.
fn h1_buffer(config: &ListenerConfig) -> usize {
    usize::try_from(config.max_header_bytes.as_u64())
        .unwrap_or(usize::MAX)
        .max(MIN_H1_BUFFER)
}

/// HTTP/1.1 when the protocol is known (the first bytes are not the HTTP/2 preface, or ALPN said http/1.1).
fn http1_builder(config: &ListenerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(h1_buffer(config));
    builder
}

/// Either protocol, told apart by the HTTP/2 preface: h2c by prior knowledge, TLS with ALPN h2 or none.
fn http_builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let header_bytes = usize::try_from(config.max_header_bytes.as_u64()).unwrap_or(usize::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(h1_buffer(config));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    builder
}

struct Shared {
    http1: http1::Builder,
    builder: auto::Builder<TokioExecutor>,
    service: HttpService,
    tls: Option<TlsAcceptor>,
    fast: Option<Arc<dyn FastLane>>,
    config: ListenerConfig,
}

/// Logs refused connections at most every 10 s: at the cap, every accept is one.
#[derive(Default)]
struct Refusals {
    logged_at: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, max_connections: usize) {
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(10))
        {
            self.logged_at = Some(Instant::now());
            tracing::warn!(
                max_connections,
                "connection limit reached (server.max_connections): refusing new connections"
            );
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "a connection task panicked");
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which hyper connection serves a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.x (first bytes, ALPN `http/1.1`, or TLS without ALPN until its first bytes say otherwise): the
    /// request head is read whole, then hyper's http1 serves the connection.
    Http1,
    /// HTTP/2, or what may be its preface: hyper-util's auto, which reads the preface.
    Detect,
}

impl Protocol {
    /// From the first bytes a plain-TCP client sent (at least one): anything that is not the start of the HTTP/2
    /// preface is HTTP/1.x.
    fn sniff(first: &[u8]) -> Self {
        if H2_PREFACE.starts_with(first) {
            Protocol::Detect
        } else {
            Protocol::Http1
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stopped: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let accepted = Instant::now();
    // Nothing is set up until the client's first bytes arrive (peeked, left in the socket): until then a connection
    // is its socket and this small task, and one that says nothing is dropped at header_read_timeout.
    let mut first = [0; H2_PREFACE.len()];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout_at(
            accepted + shared.config.header_read_timeout,
            stream.peek(&mut first),
        ) => peeked,
        _ = stopped.wait_for(|stop| *stop) => return,
    };
    let first = match peeked {
        Ok(Ok(0)) => return,
        Ok(Ok(n)) => &first[..n],
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection failed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no byte within header_read_timeout; closing");
            return;
        }
    };
    // Below TLS, so that a stalled TLS write is caught too.
    let stream = SendTimeout::new(stream, shared.config.send_timeout);
    match &shared.tls {
        None => {
            let protocol = Protocol::sniff(first);
            serve_http(&shared, stream, peer, false, protocol, stopped, accepted).await;
        }
        Some(acceptor) => {
            Box::pin(tls_connection(
                &shared, acceptor, stream, peer, stopped, accepted,
            ))
            .await;
        }
    }
}

async fn tls_connection(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    stream: SendTimeout<TcpStream>,
    peer: SocketAddr,
    mut stopped: watch::Receiver<bool>,
    accepted: Instant,
) {
    let handshake = tokio::time::timeout_at(
        accepted + shared.config.header_read_timeout,
        acceptor.accept(stream),
    );
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stopped.wait_for(|stop| *stop) => return,
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Detect,
        _ => Protocol::Http1,
    };
    serve_http(shared, stream, peer, true, protocol, stopped, accepted).await;
}

/// Serves one connection. HTTP/2 (or its possible preface) goes to hyper-util's auto builder, boxed: a task's
/// size is that of its largest state, and HTTP/1.1 connections, the many idle ones, should not pay for HTTP/2's.
/// HTTP/1.x is served request head by request head (see [`serve_http1`]).
async fn serve_http<I>(
    shared: &Shared,
    io: I,
    peer: SocketAddr,
    tls: bool,
    protocol: Protocol,
    stopped: watch::Receiver<bool>,
    accepted: Instant,
) where
    I: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(accepted));
    let service = ConnectionService {
        service: shared.service.clone(),
        peer,
        tls,
        activity: activity.clone(),
    };
    let conn = Connection {
        shared,
        service,
        peer,
        stopped,
    };
    match protocol {
        Protocol::Detect => conn.serve_auto(io, Vec::new(), accepted).await,
        Protocol::Http1 => conn.serve_http1(io, accepted).await,
    }
}

/// One connection's share of the listener.
struct Connection<'a> {
    shared: &'a Shared,
    service: ConnectionService,
    peer: SocketAddr,
    stopped: watch::Receiver<bool>,
}

impl Connection<'_> {
    async fn serve_auto<I>(mut self, io: I, head: Vec<u8>, since: Instant)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = self.service.activity.clone();
        let io = TokioIo::new(Prefixed::new(head, io, activity.clone()));
        let conn = Box::pin(
            self.shared
                .builder
                .serve_connection(io, self.service.clone()),
        );
        // hyper-util's auto connection shuts the socket down itself when done.
        let _ = Box::pin(supervise(
            conn,
            Parking::No,
            &self.shared.config,
            &activity,
            self.peer,
            &mut self.stopped,
            since,
        ))
        .await;
    }

    /// HTTP/1.x: each request head is read whole, into a buffer the size of what arrived, before hyper gets it
    /// (hyper's read buffer grows from 8KiB to 16KiB when a head takes more than one read, so every slow or
    /// slowloris client would hold 16KiB plus hyper's 8KiB write buffer for a few bytes). A connection that stays
    /// idle between bodiless requests for [`PARK_AFTER`], its last response handed to the socket, is *parked*:
    /// hyper's connection (its buffers and state) is dropped, the socket waits for the next request on its own, and a new hyper
    /// connection takes it then. The next head must still arrive within `header_read_timeout` of the last
    /// response, as with hyper's own keep-alive timer.
    async fn serve_http1<I>(mut self, mut io: I, accepted: Instant)
    where
        I: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send + 'static,
    {
        let limits = &self.shared.config;
        let activity = self.service.activity.clone();
        let mut head = Vec::new();
        let mut head_by = accepted + limits.header_read_timeout;
        let mut first = true;
        // Whether the last request was answered in the fast lane (or none was made yet): then a request for hyper
        // is handed to it alone, and the connection taken back after its response, so that one miss or refresh
        // does not leave a busy connection with hyper for good.
        let mut lane_last = true;
        loop {
            let read = async {
                if head.is_empty() {
                    io.readable().await?;
                }
                read_head(&mut io, std::mem::take(&mut head), h1_buffer(limits)).await
            };
            let read = tokio::select! {
                read = tokio::time::timeout_at(head_by, read) => read,
                _ = self.stopped.wait_for(|stop| *stop) => return,
            };
            head = match read {
                Ok(Ok(head)) => head,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %self.peer, %error, "connection closed before a request head");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "no request head within header_read_timeout; closing");
                    return;
                }
            };
            // TLS without ALPN may still carry HTTP/2 prior knowledge (in its first bytes only).
            if first && Protocol::sniff(&head) == Protocol::Detect {
                return self.serve_auto(io, head, accepted).await;
            }
            if request_line_too_long(&head, h1_buffer(limits)) {
                tracing::debug!(peer = %self.peer, "request line over the header limit: 414");
                let _ = io.write_all(URI_TOO_LONG).await;
                let _ = io.shutdown().await;
                return;
            }
            let mut one_request = None;
            if let Some(lane) = &self.shared.fast {
                match fast::parse(&head) {
                    Head::Fast(request, length) => {
                        let mut answer = fast::HeadBuffer::take();
                        if let Some(body) = lane.answer(&request, &mut answer) {
                            fast::finish_head(&mut answer, body.len());
                            let written = fast::write_response(&mut io, &answer, &body).await;
                            if let Err(error) = written {
                                tracing::debug!(peer = %self.peer, %error, "connection closed during a response");
                                return;
                            }
                            // An idle connection keeps no buffer (what thousands of idle viewers cost).
                            match head.len() == length {
                                true => head = Vec::new(),
                                false => drop(head.drain(..length)),
                            }
                            head_by = Instant::now() + limits.header_read_timeout;
                            lane_last = true;
                            first = false;
                            continue;
                        }
                        one_request = lane_last.then_some(length);
                    }
                    Head::Bodiless(length) => one_request = lane_last.then_some(length),
                    Head::Other => {}
                }
                lane_last = false;
            }
            // One request alone: hyper gets its head, and nothing more to read until the connection is taken back.
            let after = one_request.map(|length| head.split_off(length));
            if !first {
                // Requests answered in the lane count for hyper's idle bounds as those it served itself.
                activity.served_now();
            }
            let mut prefixed = Prefixed::new(std::mem::take(&mut head), io, activity.clone());
            prefixed.hold = after.is_some();
            let conn = self
                .shared
                .http1
                .serve_connection(TokioIo::new(prefixed), self.service.clone());
            let (ended, conn) = Box::pin(supervise(
                conn,
                Parking::Http1 {
                    one_request: after.is_some(),
                },
                limits,
                &activity,
                self.peer,
                &mut self.stopped,
                Instant::now(),
            ))
            .await;
            let parts = conn.into_parts();
            let (rest, inner) = parts.io.into_inner().into_parts();
            io = inner;
            if ended == Ended::Closed {
                // hyper was told not to shut the socket down (so that a parked one stays open): done here.
                let _ = io.shutdown().await;
                return;
            }
            // What hyper had read of the next request, if anything (it stops reading when told to close).
            head = [
                &parts.read_buf[..],
                &rest[..],
                &after.unwrap_or_default()[..],
            ]
            .concat();
            head_by = activity.idle_since() + limits.header_read_timeout;
            first = false;
        }
    }
}

/// An idle HTTP/1.1 connection (see [`Connection::serve_http1`]) is parked once it has had nothing in flight and
/// nothing left to send for this long. A busy keep-alive client's next request comes within a millisecond or two
/// and finds hyper's connection still there: parking and rebuilding it around every request cost a quarter of the
/// CPU of a cached playlist hit.
const PARK_AFTER: Duration = Duration::from_millis(20);

/// How often a connection that may be parked is looked at. Each look wakes the connection's task: every 20 ms for
/// each of 1,000 busy connections was close to one wake-up per request. An idle connection is parked within
/// `PARK_AFTER + PARK_CHECK`, short enough that thousands of viewers connecting at once are not all held in
/// hyper together (benches/memory).
const PARK_CHECK: Duration = Duration::from_millis(100);

/// How often a connection with a request in flight is looked at: it cannot be parked before the request is done,
/// and LL-HLS viewers hold blocking requests most of the time (looked at every 20-100 ms, the relay took 37 ms of
/// CPU per part for 100 LL-HLS viewers instead of 15 ms: benches/latency).
const IN_FLIGHT_CHECK: Duration = Duration::from_secs(1);

/// What [`supervise`] drives: a hyper connection.
trait Serving {
    /// Polls the connection to completion. HTTP/1.1 leaves the socket open (the caller closes or parks it).
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
    /// Finish in-flight requests and take no more; an idle HTTP/1.1 connection is done at once.
    fn graceful_shutdown(&mut self);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I> Serving for http1::Connection<TokioIo<Prefixed<I>>, ConnectionService>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll_without_shutdown(cx).map_err(Into::into)
    }

    fn graceful_shutdown(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

impl<I> Serving
    for Pin<Box<auto::Connection<'_, TokioIo<Prefixed<I>>, ConnectionService, TokioExecutor>>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.as_mut().poll(cx)
    }

    fn graceful_shutdown(&mut self) {
        self.as_mut().graceful_shutdown();
    }
}

/// Waits until a connection has bytes to read (or is closed) without reading them or allocating: what a parked
/// connection (see [`Connection::serve_http1`]) costs while it waits.
trait WaitReadable {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl WaitReadable for SendTimeout<TcpStream> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.io.readable()
    }
}

/// TLS: the socket may be readable with nothing for the application, or rustls may hold data already: reading
/// is the only way to know (its buffer is allocated then).
impl<I> WaitReadable for tokio_rustls::server::TlsStream<I> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Reads until the end of a request head (a blank line), the whole HTTP/2 preface, or `max` bytes (hyper then
/// answers 431), after `head` (bytes already read), into a buffer that starts at 512 bytes and doubles. An error
/// at EOF.
async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    mut head: Vec<u8>,
    max: usize,
) -> io::Result<Vec<u8>> {
    while head.len() < max && !head.starts_with(H2_PREFACE) && !head_is_complete(&head) {
        if head.len() == head.capacity() {
            head.reserve_exact(head.len().max(512).min(max - head.len()));
        }
        if io.read_buf(&mut head).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(head)
}

/// Answered when the request line alone fills the header limit: hyper would say 431, but it is the URI that is
/// too long. The body is the relay's JSON error shape (`error::RelayError::UriTooLong`).
const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n\
cache-control: no-store\r\nconnection: close\r\ncontent-length: 80\r\n\r\n\
{\"error\":{\"code\":\"uri_too_long\",\"message\":\"request line over the header limit\"}}";

/// Whether a head read up to `max` bytes has no end to its first line: an over-long request URI.
fn request_line_too_long(head: &[u8], max: usize) -> bool {
    head.len() >= max && memchr::memchr(b'\n', head).is_none()
}

/// Whether `bytes` hold an HTTP/1 request head up to its blank line (lines end in CRLF, or LF alone).
fn head_is_complete(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(at, pair)| pair == b"\n\n" || (pair == b"\n\r" && bytes.get(at + 2) == Some(&b'\n')))
}

/// The connection IO as hyper sees it: reads `prefix` (bytes already read from `io`, freed once read) before
/// `io` itself, and notes in the connection's [`Activity`] whether the last write was blocked (a connection
/// with unsent bytes in hyper's buffer must not be parked).
struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    io: I,
    activity: Arc<Activity>,
    /// Once the prefix is read, reads wait (forever): hyper was handed one request, and the connection is taken
    /// back after its response.
    hold: bool,
}

impl<I> Prefixed<I> {
    fn new(prefix: Vec<u8>, io: I, activity: Arc<Activity>) -> Self {
        Self {
            prefix,
            at: 0,
            io,
            activity,
            hold: false,
        }
    }

    /// The part of the prefix not read yet, and the IO.
    fn into_parts(mut self) -> (Vec<u8>, I) {
        self.prefix.drain(..self.at);
        (self.prefix, self.io)
    }

    fn note<T>(&self, poll: Poll<T>) -> Poll<T> {
        self.activity.write_blocked(poll.is_pending());
        poll
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.hold {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a connection is being closed gracefully.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// Idle (or never sent a request): given another `header_read_timeout` to close, then dropped.
    Idle,
    /// Idle HTTP/1.1 between requests: hyper's connection ends at once, the socket stays open.
    Park,
    /// Server shutdown: in-flight responses finish; the accept loop enforces `shutdown_grace`.
    Shutdown,
}

/// Whether [`supervise`] may end a connection early to park its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parking {
    /// HTTP/2, or not known yet.
    No,
    /// HTTP/1.1, parked once idle; with `one_request`, as soon as the one request it was handed is answered.
    Http1 { one_request: bool },
}

/// How [`supervise`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    /// Ended by parking: the socket is open and between requests.
    Parked,
}

/// Drives a hyper connection, and ends it when it idles or the server stops (`graceful_shutdown`). With `park`
/// (HTTP/1.1), an idle connection is ended early for its socket to be parked. Returns the connection, whose
/// socket is still open when it was parked.
async fn supervise<C: Serving>(
    mut conn: C,
    parking: Parking,
    limits: &ListenerConfig,
    activity: &Activity,
    peer: SocketAddr,
    stopped: &mut watch::Receiver<bool>,
    since: Instant,
) -> (Ended, C) {
    let park = parking != Parking::No;
    let one_request = parking == (Parking::Http1 { one_request: true });
    let served_before = activity.completed();
    // hyper has no idle bound for HTTP/2, nor before it knows the protocol: this timer is it. It first fires at
    // the earliest of the bounds; each time it fires, the real deadline is worked out from the activity.
    let mut first_check = limits.header_read_timeout.min(limits.idle_timeout);
    if park {
        first_check = first_check.min(PARK_CHECK);
    }
    let watchdog = tokio::time::sleep_until(since + first_check);
    tokio::pin!(watchdog);
    // Made once: each poll of a new one would join (and leave) the waiters of the listener-wide stop signal.
    let stop = stopped.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let mut closing = Closing::No;
    loop {
        tokio::select! {
            // The connection first: bytes already received are served before any deadline is looked at.
            biased;
            result = std::future::poll_fn(|cx| conn.poll_serve(cx)) => {
                return match result {
                    Ok(()) if closing == Closing::Park => (Ended::Parked, conn),
                    Ok(()) => (Ended::Closed, conn),
                    Err(error) => {
                        tracing::debug!(%peer, %error, "connection closed with an error");
                        (Ended::Closed, conn)
                    }
                };
            }
            _ = &mut stop, if closing == Closing::No => {
                conn.graceful_shutdown();
                closing = Closing::Shutdown;
            }
            () = activity.done.notified(), if one_request && closing == Closing::No => {
                if activity.completed() > served_before && activity.parkable_since().is_some() {
                    conn.graceful_shutdown();
                    closing = Closing::Park;
                    watchdog.as_mut().reset(Instant::now() + limits.header_read_timeout);
                }
            }
            () = &mut watchdog, if closing != Closing::Shutdown => {
                let now = Instant::now();
                let deadline = activity.idle_deadline(limits.header_read_timeout, limits.idle_timeout);
                if closing != Closing::No {
                    // A request that crossed the GOAWAY is served; a half-sent one is not waited for.
                    if deadline.is_none() {
                        watchdog.as_mut().reset(now + limits.header_read_timeout);
                        continue;
                    }
                    tracing::debug!(%peer, "idle connection did not close in time; dropping it");
                    return (Ended::Closed, conn);
                }
                // While it may be parked, the connection is looked at every PARK_CHECK.
                let recheck = now + if park { PARK_CHECK } else { limits.idle_timeout };
                let park_at = activity
                    .parkable_since()
                    .filter(|_| park)
                    .map(|since| since + PARK_AFTER);
                match deadline {
                    _ if park_at.is_some_and(|at| at <= now) => {
                        conn.graceful_shutdown();
                        closing = Closing::Park;
                        watchdog.as_mut().reset(now + limits.header_read_timeout);
                    }
                    None if park => watchdog.as_mut().reset(now + IN_FLIGHT_CHECK),
                    None => watchdog.as_mut().reset(recheck),
                    Some(deadline) if deadline > now => watchdog.as_mut().reset(deadline.min(recheck)),
                    Some(_) => {
                        conn.graceful_shutdown();
                        closing = Closing::Idle;
                        watchdog.as_mut().reset(now + limits.header_read_timeout);
                    }
                }
            }
        }
    }
}

/// Requests in flight on a connection, since when it has had none, and what says it cannot be parked.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    /// The last write to the socket could not complete (hyper holds unsent bytes).
    write_blocked: AtomicBool,
    /// Told each time the connection has no request left in flight.
    done: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    idle_since: Instant,
    served_any: bool,
    /// A request had a body: hyper, not this listener, knows whether it was read to its end, so such a
    /// connection is never parked.
    had_body: bool,
    /// Requests whose response is done.
    completed: u64,
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: accepted,
                served_any: false,
                had_body: false,
                completed: 0,
            }),
            write_blocked: AtomicBool::new(false),
            done: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(self: &Arc<Self>, has_body: bool) -> RequestGuard {
        let mut state = self.state();
        state.in_flight += 1;
        state.had_body |= has_body;
        RequestGuard(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.state().idle_since
    }

    fn completed(&self) -> u64 {
        self.state().completed
    }

    /// A request was answered outside hyper (the fast lane), just now.
    fn served_now(&self) {
        let mut state = self.state();
        state.served_any = true;
        state.idle_since = Instant::now();
    }

    fn write_blocked(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// When the connection will have idled too long; `None` while a request is in flight. Before the first
    /// request the allowance is the (short) header timeout: a client that connects and says nothing is not a
    /// client.
    fn idle_deadline(
        &self,
        first_request: Duration,
        between_requests: Duration,
    ) -> Option<Instant> {
        let state = self.state();
        (state.in_flight == 0).then(|| {
            state.idle_since
                + if state.served_any {
                    between_requests
                } else {
                    first_request
                }
        })
    }

    /// Since when the connection could be parked: between requests, all of them bodiless, with every byte of
    /// the last response handed to the socket.
    fn parkable_since(&self) -> Option<Instant> {
        let state = self.state();
        let parkable = state.in_flight == 0
            && state.served_any
            && !state.had_body
            && !self.write_blocked.load(Ordering::Relaxed);
        parkable.then_some(state.idle_since)
    }
}

/// Counts one request from its head to the end (or abandonment) of its response body.
#[derive(Debug)]
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        state.served_any = true;
        state.completed += 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            drop(state);
            self.0.done.notify_one();
        }
    }
}

/// What the listener serves: any service of axum requests that can be shared by every connection (an axum
/// `Router`, the relay's `App`).
pub trait HttpApp:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpApp for S where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// What every connection calls, boxed once for all of them (the listener serves one service type).
type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The service as hyper sees it on one connection: adds the peer address (axum's `ConnectInfo`) and
/// [`TlsConnection`], and tracks each request until its response body is done.
#[derive(Clone)]
struct ConnectionService {
    service: HttpService,
    peer: SocketAddr,
    tls: bool,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self
            .activity
            .begin(!hyper::body::Body::is_end_stream(request.body()));
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        if self.tls {
            request.extensions_mut().insert(TlsConnection);
        }
        let service = self.service.clone();
        Box::pin(async move {
            let response = service.oneshot(request).await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that holds its request's [`RequestGuard`] until hyper is done with it.
struct TrackedBody {
    body: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Fails writes that make no progress for `timeout` (a peer that stopped reading), like nginx's `send_timeout`.
struct SendTimeout<I> {
    io: I,
    timeout: Duration,
    /// Armed when a write first returns `Pending`, disarmed by any progress.
    stall: Pin<Box<Sleep>>,
    stalled: bool,
}

impl<I> SendTimeout<I> {
    fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stall: Box::pin(tokio::time::sleep(timeout)),
            stalled: false,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = false;
            return poll;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.timeout;
            self.stall.as_mut().reset(deadline);
        }
        ready!(self.stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no data within send_timeout",
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Files {
        _dir: tempfile::TempDir,
        paths: TlsPaths,
    }

    fn files(cert: &[u8], key: &[u8]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let paths = TlsPaths {
            cert_path: dir.path().join("cert.pem"),
            key_path: dir.path().join("key.pem"),
        };
        std::fs::write(&paths.cert_path, cert).unwrap();
        std::fs::write(&paths.key_path, key).unwrap();
        Files { _dir: dir, paths }
    }

    fn generate() -> (String, String, Vec<u8>) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.pem(), signing_key.serialize_pem(), cert.der().to_vec())
    }

    fn load_error(cert: &[u8], key: &[u8]) -> TlsError {
        let files = files(cert, key);
        Tls::load(&files.paths).unwrap_err()
    }

    #[test]
    fn a_good_pair_loads() {
        let (cert, key, der) = generate();
        let files = files(cert.as_bytes(), key.as_bytes());
        let tls = Tls::load(&files.paths).unwrap();
        assert_eq!(tls.current_certificate().as_ref(), der.as_slice());
        assert_eq!(
            tls.server_config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_name_their_key() {
        let (cert, key, _) = generate();
        let (other_cert, _, _) = generate();

        let missing = TlsPaths {
            cert_path: "/nonexistent/cert.pem".into(),
            key_path: "/nonexistent/key.pem".into(),
        };
        let error = Tls::load(&missing).unwrap_err();
        assert_eq!(error.key, "tls.cert_path");
        let message = error.to_string();
        assert!(
            message.contains("tls.cert_path") && message.contains("/nonexistent/cert.pem"),
            "{message}"
        );

        let error = load_error(b"not a certificate", key.as_bytes());
        assert_eq!(error.key, "tls.cert_path", "{error}");
        // A key where the chain should be: PEM, but no CERTIFICATE block.
        let error = load_error(key.as_bytes(), key.as_bytes());
        assert_eq!(error.key, "tls.cert_path", "{error}");
        let error = load_error(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            key.as_bytes(),
        );
        assert_eq!(error.key, "tls.cert_path", "{error}");

        let error = load_error(cert.as_bytes(), cert.as_bytes());
        assert_eq!(error.key, "tls.key_path", "{error}");
        assert!(error.to_string().contains("no private key"), "{error}");
        let error = load_error(cert.as_bytes(), b"");
        assert_eq!(error.key, "tls.key_path", "{error}");
        // Someone else's certificate with this key.
        let error = load_error(other_cert.as_bytes(), key.as_bytes());
        assert_eq!(error.key, "tls.key_path", "{error}");
        assert!(error.to_string().contains("does not belong"), "{error}");
    }

    #[test]
    fn reload_follows_the_files_and_keeps_the_old_pair_on_error() {
        let (cert, key, first) = generate();
        let files = files(cert.as_bytes(), key.as_bytes());
        let tls = Tls::load(&files.paths).unwrap();
        assert!(!tls.reload_if_changed().unwrap());

        // Replaced the way deployment tools do it: written aside, renamed into place.
        let (cert, key, second) = generate();
        let replace = |path: &Path, contents: &[u8]| {
            let aside = path.with_extension("new");
            std::fs::write(&aside, contents).unwrap();
            std::fs::rename(&aside, path).unwrap();
        };
        replace(&files.paths.cert_path, cert.as_bytes());
        replace(&files.paths.key_path, key.as_bytes());
        assert!(tls.reload_if_changed().unwrap());
        assert_eq!(tls.current_certificate().as_ref(), second.as_slice());
        assert_ne!(first, second);
        assert!(!tls.reload_if_changed().unwrap());

        // Half-replaced (the new cert, the old key): refused once, the working pair stays.
        let (cert, _, _) = generate();
        replace(&files.paths.cert_path, cert.as_bytes());
        assert_eq!(tls.reload_if_changed().unwrap_err().key, "tls.key_path");
        assert_eq!(tls.current_certificate().as_ref(), second.as_slice());
        assert!(
            !tls.reload_if_changed().unwrap(),
            "reported once per change"
        );
        assert!(tls.reload().is_err(), "a forced reload tries again");
    }

    #[test]
    fn idle_deadlines() {
        let start = Instant::now();
        let (first, between) = (Duration::from_secs(1), Duration::from_secs(60));
        let activity = Arc::new(Activity::new(start));
        assert_eq!(activity.idle_deadline(first, between), Some(start + first));
        let one = activity.begin(false);
        let two = activity.begin(false);
        assert_eq!(activity.idle_deadline(first, between), None);
        drop(one);
        assert_eq!(activity.idle_deadline(first, between), None);
        drop(two);
        let deadline = activity.idle_deadline(first, between).unwrap();
        assert!(deadline >= start + between);
    }

    #[test]
    fn listener_config_reads_humane_values() {
        let config: ListenerConfig = serde_json::from_value(serde_json::json!({
            "tls": {"cert_path": "/c.pem", "key_path": "/k.pem"},
            "header_read_timeout": "300ms",
            "max_header_bytes": "32KiB",
        }))
        .unwrap();
        assert_eq!(config.header_read_timeout, Duration::from_millis(300));
        assert_eq!(config.max_header_bytes, ByteSize::kib(32));
        assert_eq!(config.tls.unwrap().key_path, PathBuf::from("/k.pem"));
        assert_eq!(config.max_connections, 50_000);
    }

    /// The layout proposed for the relay's config: an optional `[tls]` section next to `[server]`.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns figment's own (large) error type
    fn tls_paths_layer_as_an_optional_config_section() {
        use figment::Figment;
        use figment::providers::{Env, Format, Serialized, Toml};

        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Config {
            tls: Option<TlsPaths>,
        }
        let extract = |toml: &str| {
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(toml))
                .merge(Env::prefixed("HLS_RELAY_").split("__"))
                .extract::<Config>()
        };
        figment::Jail::expect_with(|jail| {
            assert_eq!(extract("").unwrap().tls, None);
            let toml = "[tls]\ncert_path = \"/c.pem\"\nkey_path = \"/k.pem\"\n";
            jail.set_env("HLS_RELAY_TLS__KEY_PATH", "/other.pem");
            let tls = extract(toml).unwrap().tls.unwrap();
            assert_eq!(
                (tls.cert_path.to_str(), tls.key_path.to_str()),
                (Some("/c.pem"), Some("/other.pem"))
            );
            jail.clear_env();
            let error = extract("[tls]\ncert_path = \"/c.pem\"\n").unwrap_err();
            assert!(error.to_string().contains("key_path"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn first_bytes_tell_http1_from_a_possible_http2_preface() {
        assert_eq!(Protocol::sniff(b"GET / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(Protocol::sniff(b"G"), Protocol::Http1);
        assert_eq!(
            Protocol::sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Protocol::Detect
        );
        // Not all of the preface yet: hyper-util's auto reads the rest and decides.
        assert_eq!(Protocol::sniff(b"PRI"), Protocol::Detect);
        assert_eq!(Protocol::sniff(b"PRI /x HTTP/1.1"), Protocol::Http1);
    }

    /// What an open connection costs before it speaks, or while it is parked, is its task: the states of a
    /// connection being served are boxed (see the module doc). Sizes printed with `--nocapture`.
    #[tokio::test]
    async fn a_connection_task_is_small_while_it_says_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let config = ListenerConfig::default();
        let shared = Arc::new(Shared {
            http1: http1_builder(&config),
            builder: http_builder(&config),
            service: BoxCloneSyncService::new(axum::Router::new()),
            tls: None,
            fast: None,
            config,
        });
        let (_stop, stopped) = watch::channel(false);
        let service = ConnectionService {
            service: shared.service.clone(),
            peer,
            tls: false,
            activity: Arc::new(Activity::new(Instant::now())),
        };
        let io = || {
            let io = SendTimeout::new(tokio::io::empty(), Duration::ZERO);
            TokioIo::new(Prefixed::new(Vec::new(), io, service.activity.clone()))
        };
        let mut stopped_too = stopped.clone();
        let h1 = supervise(
            shared.http1.serve_connection(io(), service.clone()),
            Parking::Http1 { one_request: false },
            &shared.config,
            &service.activity,
            peer,
            &mut stopped_too,
            Instant::now(),
        );
        let h1 = std::mem::size_of_val(&h1);
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let task = connection(shared.clone(), stream, peer, stopped, slot);
        let task = std::mem::size_of_val(&task);
        println!("connection task {task} B (parked: the same); boxed HTTP/1.1 state {h1} B");
        assert!(task <= 2048, "connection task: {task} bytes");
    }

    /// Reads until `count` responses ending in `hello` arrived, or the connection closed.
    async fn read_hellos(stream: &mut TcpStream, count: usize) -> String {
        let mut received = Vec::new();
        let mut chunk = [0; 1024];
        while String::from_utf8_lossy(&received)
            .matches("\r\n\r\nhello")
            .count()
            < count
        {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("no response")
                .unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&received).into_owned()
    }

    /// Three listeners on one port, each served by a runtime of its own (the caller's serves the first): the
    /// kernel spreads connections between them, each is answered, and one stop ends them all.
    #[tokio::test]
    async fn listeners_per_thread_share_one_port_and_stop_together() {
        let listeners = bind_per_thread("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr));
        let thread_name = || async {
            let thread = std::thread::current();
            format!(
                "hello from {}",
                thread.name().unwrap_or("an unnamed thread")
            )
        };
        let router = axum::Router::new().route("/hello", axum::routing::get(thread_name));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::new(ListenerConfig::default()).unwrap();
        let serving = tokio::spawn(server.serve_per_thread(listeners, router, async {
            let _ = stopped.await;
        }));
        let mut answered_by = std::collections::BTreeSet::new();
        for _ in 0..60 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
                .await
                .expect("answered")
                .unwrap();
            let response = String::from_utf8(response).unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            answered_by.insert(response.rsplit("hello from ").next().unwrap().to_owned());
        }
        assert!(answered_by.len() >= 2, "all on one thread: {answered_by:?}");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("every thread stopped")
            .unwrap()
            .unwrap();
    }

    /// An HTTP/1.1 connection idle between requests is parked (hyper's state dropped) and served again when
    /// the next request comes, even one whose head arrives in pieces; it is still closed `header_read_timeout`
    /// after its last response.
    #[tokio::test]
    async fn an_idle_http1_connection_is_parked_then_served_again() {
        let config = ListenerConfig {
            header_read_timeout: Duration::from_secs(2),
            ..ListenerConfig::default()
        };
        let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, config.clone(), async {
            let _ = stopped.await;
        }));
        let request = b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n";

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        assert!(
            read_hellos(&mut stream, 1)
                .await
                .starts_with("HTTP/1.1 200")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Parked by now. The next head in two pieces, then two pipelined requests in one write.
        stream.write_all(&request[..8]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&request[8..]).await.unwrap();
        assert!(
            read_hellos(&mut stream, 1)
                .await
                .starts_with("HTTP/1.1 200")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        stream
            .write_all(&[&request[..], &request[..]].concat())
            .await
            .unwrap();
        let received = read_hellos(&mut stream, 2).await;
        assert_eq!(received.matches("HTTP/1.1 200").count(), 2, "{received}");

        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "not closed: {closed:?}");
        assert!(asked.elapsed() >= config.header_read_timeout);
        assert!(asked.elapsed() < config.header_read_timeout + PARK_CHECK * 2);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// Over TLS (ALPN http/1.1) too: a keep-alive client's second request, after its connection was parked, is
    /// served on the same TLS connection.
    #[tokio::test]
    async fn a_parked_tls_connection_serves_the_next_request() {
        let (cert, key, der) = generate();
        let files = files(cert.as_bytes(), key.as_bytes());
        let config = ListenerConfig {
            tls: Some(files.paths.clone()),
            ..ListenerConfig::default()
        };
        let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, config, async {
            let _ = stopped.await;
        }));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        let request = b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n";
        let mut received = Vec::new();
        for asked in 1..=2 {
            stream.write_all(request).await.unwrap();
            let mut chunk = [0; 1024];
            while String::from_utf8_lossy(&received).matches("hello").count() < asked {
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                    .await
                    .expect("no response")
                    .unwrap();
                assert!(n > 0, "connection closed after {asked} request(s)");
                received.extend_from_slice(&chunk[..n]);
            }
            // Parked by now.
            tokio::time::sleep(PARK_AFTER + PARK_CHECK * 2).await;
        }
        let received = String::from_utf8_lossy(&received);
        assert_eq!(received.matches("HTTP/1.1 200").count(), 2, "{received}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stalled_write_fails_after_send_timeout() {
        let timeout = Duration::from_millis(200);
        // Nobody reads the other end: writes stall once its 64-byte buffer is full.
        let (client, _server) = tokio::io::duplex(64);
        let mut guarded = SendTimeout::new(client, timeout);
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(error) = guarded.write_all(&[0; 64]).await {
                    break error;
                }
            }
        })
        .await
        .expect("the stalled write never failed");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout);
    }
}
