//! `gateway [--config FILE]`: config → telemetry → bind → serve until SIGTERM/Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use shared::config::Config;

#[derive(Parser)]
#[command(version, about = "Overwatch ingestion gateway")]
struct Args {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, env = "OVERWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the configuration, then exit: 0 when valid, 64 naming
    /// the offending key otherwise.
    #[arg(long)]
    check_config: bool,
}

/// Binds with a deep accept backlog, so a connection storm waits in the kernel
/// (and is answered, or shed with 503) instead of being refused.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load_or_exit_code("gateway", args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.check_config {
        let bound = gateway::budget::MemoryBound::of(&config);
        println!("gateway: configuration OK");
        println!(
            "gateway: memory bound {} bytes beyond the baseline ({bound:?})",
            bound.total()
        );
        return ExitCode::SUCCESS;
    }
    let telemetry = shared::telemetry::init(&config.log, &config.telemetry, "gateway");
    let mut listeners = Vec::new();
    for (key, addr) in [
        ("gateway.listen", config.gateway.listen),
        (
            "gateway.operations_listen",
            config.gateway.operations_listen,
        ),
    ] {
        match bind(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind {key}");
                eprintln!("gateway: cannot bind {key} ({addr}): {e}");
                return ExitCode::from(1);
            }
        }
    }
    let (Some(operations), Some(listener)) = (listeners.pop(), listeners.pop()) else {
        return ExitCode::from(1);
    };
    let app = match gateway::App::new(config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the gateway");
            eprintln!("gateway: {e}");
            return ExitCode::from(1);
        }
    };
    match (listener.local_addr(), operations.local_addr()) {
        (Ok(addr), Ok(ops)) => {
            tracing::info!(%addr, operations = %ops, brokers = %app.config.kafka.brokers, "gateway listening")
        }
        _ => tracing::warn!("gateway listening (address unknown)"),
    }
    let code = match gateway::serve(listener, operations, app, gateway::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown();
    code
}
