use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hls_relay::config::Config;
use hls_relay::{demo, server, telemetry};

/// HLS playback and relay proxy for Stream Video broadcasts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Demo { listen } => demo::run(listen).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hls-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    file: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut config = Config::load(file.as_deref())?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    telemetry::init_logging(&config.log);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (server.listen): {e}",
                config.server.listen
            )
        })?;
    let relay = server::build_relay(config)?;
    tracing::info!(addr = %listener.local_addr()?, "hls-relay listening");
    server::serve(listener, server::router(relay), server::shutdown_signal()).await?;
    Ok(())
}
