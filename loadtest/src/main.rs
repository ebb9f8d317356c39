//! `loadtest`: ticketd's load tester (issue 5). Parses the flags, runs one load test on a tokio
//! runtime, prints the report and turns its verdict into the exit code: 0 when every check
//! passed, 2 on a verification failure (a ticket sold twice, an event over capacity, a sale
//! missing from the ledger), 1 on a usage or runtime error (including a run in which no request
//! was answered at all).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

mod body;
mod buyers;
mod capacity;
mod config;
mod cpu;
mod ledger;
mod pick;
mod progress;
mod report;
mod run;
mod stats;
mod verify;
mod worker;

fn main() -> ExitCode {
    let args = match config::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; every other parse problem is exit code 1.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(usize::try_from(threads).unwrap_or(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match runtime.block_on(run::run(&args)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(1);
        }
    };
    // Do not wait for connection drivers still winding down.
    runtime.shutdown_background();
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write!(out, "{}", report.to_text())
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        eprintln!("loadtest: cannot write the report: {e}");
        return ExitCode::from(1);
    }
    if !report.ok {
        if args.json {
            for f in &report.failures {
                eprintln!("loadtest: FAILED: {f}");
            }
        }
        ExitCode::from(2)
    } else if report.answers == 0 {
        eprintln!(
            "loadtest: no request was answered (is the server up at {}?)",
            args.url
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
