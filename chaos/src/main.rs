//! The `chaos` binary: parses the command line and runs the campaign (see [`chaos::campaign`]).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match chaos::campaign::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // --help and --version print to stdout and succeed; a bad option is EX_USAGE (64),
            // not clap's 2, which means "an invariant broke" here.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(chaos::campaign::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tokio::select! {
        code = chaos::campaign::campaign(&args) => code,
        _ = tokio::signal::ctrl_c() => {
            // Returning drops the running schedule, which kills every process it started.
            eprintln!("chaos: interrupted");
            ExitCode::from(130)
        }
    }
}
