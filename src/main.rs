//! The `ticketd` binary: parse the configuration, set up logging, bind, and hand over to the
//! library.

use std::process::ExitCode;

use ticketd::config::{self, Command};

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
            let _log = ticketd::telemetry::init(args.common.log_format);
            runtime.block_on(ticketd::seed::run_seed(args))
        }
        Some(Command::Reserves(args)) => {
            let _log = ticketd::telemetry::init(args.common.log_format);
            runtime.block_on(ticketd::reserves::run(args))
        }
        Some(Command::Serve(args)) => serve(&runtime, args),
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
    let _log = ticketd::telemetry::init(args.common.log_format);
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
    match runtime.block_on(ticketd::run(args, listener, signals.recv())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ticketd::run::RunError::Journal(_)) => {
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
