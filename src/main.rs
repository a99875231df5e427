use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hls_relay::config::{Config, RuntimeMode};
use hls_relay::events::sqs;
use hls_relay::http::listener::bind_per_thread;
use hls_relay::http::server;
use hls_relay::sim::{SimConfig, TimeFormat};
use hls_relay::{demo, telemetry};

/// jemalloc rather than glibc's malloc: with 5,000 idle HTTP/1.1 connections it keeps ~8KiB resident per connection
/// where glibc keeps ~13KiB, and it returns freed memory to the OS (benches/memory/README.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// HLS playback and relay proxy for Stream Video broadcasts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Runtime worker threads (default: one per CPU). Benchmarks pin the relay to one core with 1.
    #[arg(long, global = true)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay the HLS broadcasts of a Stream app (needs STREAM_API_KEY and STREAM_API_SECRET).
    Serve {
        /// TOML config file (see config/hls-relay.toml for every key).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address; overrides server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run a simulated Stream call and a relay in front of it, on loopback, with no account or internet.
    Demo {
        /// Relay listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run only the simulated Stream API and origin (credentials sim-key / sim-secret): a local stand-in for
    /// Stream that the official server SDKs can talk to, and what benchmarks point `hls-relay serve` at.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// A broadcasting call whose playlist_url is any URL: `TYPE:ID=URL` (repeatable). Without it, the
        /// simulator's own `livestream:demo` call is registered.
        #[arg(long = "call", value_name = "TYPE:ID=URL")]
        calls: Vec<String>,
        /// How answers and events write times: `unix-ns` (integer nanoseconds, what the official SDKs parse) or
        /// `rfc3339`.
        #[arg(long, value_name = "unix-ns|rfc3339", default_value_t = TimeFormat::UnixNs)]
        time_format: TimeFormat,
        /// POST every event (signed like Stream's) to this URL.
        #[arg(long, value_name = "URL")]
        webhook_url: Option<url::Url>,
        /// Gzip webhook bodies (`Content-Encoding: gzip`; the signature stays over the uncompressed JSON).
        #[arg(long)]
        compress_webhooks: bool,
        /// Name the HLS events `call.hls_broadcasting_*` (the names the SDKs' models know) instead of
        /// `call.broadcasting_*`.
        #[arg(long)]
        new_event_names: bool,
        #[command(flatten)]
        sqs: demo::SqsArgs,
    },
    /// Operate one call through the Stream API: get, start-hls, stop-hls, go-live, stop-live.
    Call(hls_relay::cli::CallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve { config, listen } = cli.command {
        return serve(config, listen, cli.workers);
    }
    let runtime = match shared_runtime(cli.workers).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hls-relay: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let result = match cli.command {
            Command::Serve { .. } => unreachable!("served above"),
            Command::Demo { listen } => demo::run(listen).await,
            Command::Sim {
                listen,
                calls,
                time_format,
                webhook_url,
                compress_webhooks,
                new_event_names,
                sqs,
            } => {
                let config = SimConfig {
                    listen,
                    time_format,
                    webhook_url: webhook_url.map(String::from),
                    compress_webhooks,
                    new_event_names,
                    ..SimConfig::default()
                };
                demo::run_simulator(config, &calls, sqs).await
            }
            // `call` has exit codes of its own (1: Stream refused, 2: usage or config).
            Command::Call(args) => return hls_relay::cli::run(args).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("hls-relay: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A work-stealing runtime: `threads` workers (default: one per CPU).
fn shared_runtime(threads: Option<usize>) -> tokio::runtime::Builder {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.max(1));
    }
    // Fairness between connections: with hundreds of them ready at once, tasks that overflow a worker's local
    // queue wait in the global one, which tokio by default looks at every 61 tasks. Looked at every other task, a
    // playlist hammered by 1,000 connections on one worker had p99 32 ms instead of 168 ms, and 64 or 256
    // connections lost no throughput (benches/load/RESULTS.md).
    runtime.global_queue_interval(2);
    runtime
}

/// `serve` reads its config before any runtime exists: `server.runtime` and `server.threads` say which to build.
fn serve(file: Option<PathBuf>, listen: Option<SocketAddr>, workers: Option<usize>) -> ExitCode {
    let mut config = match Config::load(file.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hls-relay: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let threads = workers
        .or((config.server.threads > 0).then_some(config.server.threads))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = match config.server.runtime {
        // The calling thread serves the first listener and runs the relay's background work.
        RuntimeMode::PerThread => {
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            runtime.enable_all();
            runtime
        }
        RuntimeMode::Shared => shared_runtime(Some(threads)),
    }
    .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(serve_with(config, threads)),
        Err(error) => Err(format!("cannot start the runtime: {error}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hls-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_with(
    config: Config,
    threads: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    telemetry::init_logging(&config.log);
    let addr = config.server.listen;
    let cannot_listen = |e: std::io::Error| format!("cannot listen on {addr} (server.listen): {e}");
    let listeners = match config.server.runtime {
        RuntimeMode::PerThread => bind_per_thread(addr, threads).map_err(cannot_listen)?,
        RuntimeMode::Shared => vec![std::net::TcpListener::bind(addr).map_err(cannot_listen)?],
    };
    // Loaded before anything else starts: a bad certificate stops start-up naming its config key.
    let http = hls_relay::http::listener::Server::new(config.listener())?;
    let grace = config.server.shutdown_grace;
    let config_runtime = config.server.runtime;
    let relay = server::build_relay(config)?;
    let http = http.with_fast_lane(server::fast_lane(&relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = sqs::spawn(relay.clone(), sqs::aws_defaults(), stopped);
    tracing::info!(
        addr = %listeners[0].local_addr()?,
        tls = http.tls().is_some(),
        threads = listeners.len().max(threads),
        runtime = ?config_runtime,
        "hls-relay listening"
    );
    let shutdown = async move {
        server::shutdown_signal().await;
        stop.send_replace(true);
    };
    match config_runtime {
        RuntimeMode::PerThread => {
            http.serve_per_thread(listeners, server::app(relay), shutdown)
                .await?
        }
        RuntimeMode::Shared => {
            let [listener] = <[_; 1]>::try_from(listeners).expect("one listener");
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            http.serve(listener, server::app(relay), shutdown).await?
        }
    }
    if let Some(consumer) = consumer {
        // The consumer finishes the batch it holds (apply, delete), so those messages are not applied twice.
        let _ = tokio::time::timeout(grace, consumer).await;
    }
    Ok(())
}
