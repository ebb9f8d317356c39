//! The `ticketd` binary: parse the configuration, set up logging, bind, and hand over to the
//! library.

use std::process::ExitCode;

use ticketd::config::{self, Command};

/// Bound on exporting the spans still queued at exit.
const TRACE_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = config::parse_or_exit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    match cli.command {
        Some(Command::Seed(args)) => {
            let _log = ticketd::telemetry::init(args.common.log_format, None);
            runtime.block_on(ticketd::seed::run_seed(args))
        }
        Some(Command::Reserves(args)) => {
            let _log = ticketd::telemetry::init(args.common.log_format, None);
            runtime.block_on(ticketd::reserves::run(args))
        }
        Some(Command::Serve(args)) => serve(&runtime, *args),
        None => serve(&runtime, cli.serve),
    }
}

fn serve(runtime: &tokio::runtime::Runtime, args: config::ServeArgs) -> ExitCode {
    // Before anything else: a SIGINT or SIGTERM from now on stops the service gracefully.
    let signals = match runtime.block_on(async { ticketd::shutdown::Signals::install() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ticketd: cannot install the signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Tracing is set up outside the runtime: its exporter's blocking HTTP client must not be
    // built inside one.
    let tracing = match ticketd::otel::Tracing::start(&args.trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ticketd: {e}");
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    let _log = ticketd::telemetry::init(args.common.log_format, tracing.as_ref());
    if let Some(t) = &tracing {
        tracing::info!(
            endpoint = t.endpoint(),
            "tracing on: spans exported over OTLP/HTTP"
        );
    }
    // Each buyer holds a socket: lift the soft descriptor limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 16_384 => tracing::warn!(
            limit = n,
            "open-file limit is low for a flash sale; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let listener = match runtime.block_on(async { ticketd::server::bind(args.listen) }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ticketd: --listen {}: {e}", args.listen);
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    let ran = runtime.block_on(ticketd::run(args, listener, signals.recv()));
    if let Some(t) = tracing {
        // The spans still queued leave now, within a bound (a collector that is down does not
        // hold up the exit).
        t.shutdown(TRACE_SHUTDOWN);
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ticketd::run::RunError::Journal(_) | ticketd::run::RunError::Auth(_))) => {
            eprintln!("ticketd: {e}");
            tracing::error!(error = %e, "ticketd cannot start");
            ExitCode::from(config::EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %e, "ticketd stopped");
            ExitCode::FAILURE
        }
    }
}
