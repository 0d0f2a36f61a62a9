//! `gateway [--config FILE]`: config → runtime → telemetry → bind → serve until SIGTERM/Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use shared::config::Config;
use shared::runtime::exit::Exit;

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

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load_or_exit("gateway", args.config.as_deref()) {
        Ok(c) => c,
        Err(exit) => return exit.code(),
    };
    if args.check_config {
        let bound = gateway::budget::MemoryBound::of(&config);
        println!("gateway: configuration OK");
        println!(
            "gateway: memory bound {} bytes beyond the baseline ({bound:?})",
            bound.total()
        );
        return Exit::Ok.code();
    }
    let runtime = match network_runtime(config.gateway.network_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway: cannot start the network threads: {e}");
            return Exit::Failure.code();
        }
    };
    runtime.block_on(async {
        let telemetry = shared::runtime::telemetry::init(&config.log, &config.telemetry, "gateway");
        let exit = run(config).await;
        telemetry.shutdown();
        exit.code()
    })
}

/// The runtime that serves connections: `gateway.network_threads` threads,
/// or tokio's default (one per core, or `TOKIO_WORKER_THREADS`) for 0.
fn network_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.build()
}

async fn run(config: Config) -> Exit {
    let g = &config.gateway;
    match gateway::alloc::tune(&g.allocator) {
        Ok(tuned) => tracing::info!(?tuned, "memory allocator"),
        Err(e) => {
            tracing::error!(error = %e, "cannot set the memory allocator");
            eprintln!("gateway: {e}");
            return Exit::Config;
        }
    }
    let (ingest, operations) = match (
        gateway::server::bind(g.listen),
        gateway::server::bind(g.operations_listen),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) => return cannot_bind("gateway.listen", g.listen, e),
        (_, Err(e)) => return cannot_bind("gateway.operations_listen", g.operations_listen, e),
    };
    let app = match gateway::App::new(config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the gateway");
            eprintln!("gateway: {e}");
            return Exit::Failure;
        }
    };
    if let (Ok(addr), Ok(ops)) = (ingest.local_addr(), operations.local_addr()) {
        tracing::info!(%addr, operations = %ops, brokers = %app.config.kafka.brokers, "gateway listening");
    }
    let stop = shared::runtime::shutdown::signal();
    match gateway::serve(ingest, operations, app, stop).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            Exit::Failure
        }
    }
}

fn cannot_bind(key: &str, addr: std::net::SocketAddr, e: std::io::Error) -> Exit {
    tracing::error!(%addr, error = %e, "cannot bind {key}");
    eprintln!("gateway: cannot bind {key} ({addr}): {e}");
    Exit::Failure
}
