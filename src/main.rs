//! The weir binary: reads the settings, sets up logging, the TLS provider and the
//! runtime, and runs [`weir::run`] until SIGINT or SIGTERM.

use mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use weir::config::{Command, ParseError, Settings, parse_from};
use weir_engine::memory::Counting;

/// The allocator weir runs on: mimalloc, beneath the engine's counting allocator, which
/// meters what each rule's evaluation allocates for its memory budget
/// (`--rule-memory-budget`).
/// (Not the system's: glibc's heap keeps the holes that short-lived allocations, such as
/// a connection's task and tokio's registration of its socket, leave between long-lived
/// small ones, about a third more memory per idle device connection; mimalloc keeps each
/// size apart. See benches/README.md, "Idle device connections".)
#[global_allocator]
static ALLOCATOR: Counting<MiMalloc> = Counting::new(MiMalloc);

fn main() -> std::process::ExitCode {
    let cli = match parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Flags(e)) => e.exit(),
        Err(e @ ParseError::File(_)) => {
            eprintln!("weir: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Rules(args) => return rules(args),
    };
    let settings = match Settings::resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weir: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_new(&settings.runtime.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if settings.runtime.log_json {
        // One JSON object per line; an API request's id is in "span".
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.init();
    }
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("weir: a TLS crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.runtime.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    runtime.spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    match runtime.block_on(weir::run(settings, shutdown)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `weir rules ...`: the API client, on a runtime of one thread.
fn rules(args: weir::cli::RulesArgs) -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(weir::cli::run(args)),
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
