//! The `chaos` command: runs N schedules with seeds S, S+1, ..., prints one line per schedule
//! and, at a failure, the seed, the schedule and the violations. Exit code 0 when every
//! schedule passed, 2 when an invariant broke, 1 when the harness itself failed, 64 for a bad
//! command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::run::{self, Options};
use crate::schedule::RedisMode;
use crate::ticketd::Binary;

/// Exit code when an invariant broke.
pub const EXIT_BROKEN: u8 = 2;
/// Exit code when the harness failed (redis-server missing, ticketd not runnable, ...).
pub const EXIT_HARNESS: u8 = 1;
/// Exit code for a bad command line (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Fault injection for ticketd: kills, pauses and restarts Redis (or Redis Cluster nodes) and
/// ticketd instances while buyers buy, then checks that no ticket was sold twice and none was
/// lost.
#[derive(Debug, Parser)]
#[command(name = "chaos")]
pub struct Args {
    /// The ticketd binary to test.
    #[arg(long)]
    pub ticketd: PathBuf,
    /// How many schedules to run (seeds S, S+1, ...).
    #[arg(long, default_value_t = 10)]
    pub schedules: u64,
    /// The first seed (default: from the clock; it is printed, for replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// What the instances store their tickets in: one redis-server, or a Redis Cluster of six
    /// nodes (three primaries with one replica each) with node faults in the schedules.
    #[arg(long, value_enum, default_value_t = RedisMode::Single)]
    pub redis: RedisMode,
    /// ticketd instances (2 or 3).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub instances: u8,
    /// Concurrent buyer connections (they buy about 100 tickets a second in all).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=2000))]
    pub buyers: u16,
    /// Of those, how many buy as known buyers (`--buyer-header`, an `Idempotency-Key` per
    /// purchase retried after failures, `--max-per-buyer 3` on the instances); 0: all
    /// anonymous. At most an eighth of --buyers by default (8 of 64).
    #[arg(long)]
    pub known_buyers: Option<u16>,
    /// Print every allowed exception (keys with two tickets, buyers over N) under each line.
    #[arg(long)]
    pub verbose: bool,
    /// Stop at the first failing schedule.
    #[arg(long)]
    pub fail_fast: bool,
    /// Keep every run's directory (logs, AOF, journals, history), not only failed ones.
    #[arg(long)]
    pub keep: bool,
    /// Print the schedules of the seeds and exit, without running anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the campaign described by `args`.
pub async fn campaign(args: &Args) -> ExitCode {
    let first = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 1_000_000)
    });
    let seeds = (0..args.schedules).map(|i| first.saturating_add(i));
    if args.dry_run {
        let options = Options::on(
            args.redis,
            Binary::untested(&args.ticketd),
            args.instances.into(),
            1,
        );
        for seed in seeds {
            print!("{}", options.schedule(seed));
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = run::require_redis(args.redis) {
        eprintln!("chaos: {e}");
        return ExitCode::from(EXIT_HARNESS);
    }
    let binary = match Binary::probe(&args.ticketd) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(EXIT_HARNESS);
        }
    };
    let journal = if binary.journal_dir {
        "with --journal-dir"
    } else {
        "without --journal-dir (a restarted instance is a new instance)"
    };
    let on = match args.redis {
        RedisMode::Single => "one redis-server",
        RedisMode::Cluster => "a Redis Cluster of 3 primaries and 3 replicas",
    };
    println!(
        "chaos: {} {journal}; {on}, {} instances, {} buyers, seeds {first}..{}",
        binary.path.display(),
        args.instances,
        args.buyers,
        first.saturating_add(args.schedules.saturating_sub(1))
    );
    let mut options = Options::on(
        args.redis,
        binary,
        usize::from(args.instances),
        args.buyers.into(),
    );
    if let Some(n) = args.known_buyers {
        options = options.with_known_connections(n.into());
    }
    options.keep_failed = true;
    options.keep_all = args.keep;
    match &options.known {
        Some(k) => println!(
            "chaos: {} of the buyer connections buy as {} known buyers with Idempotency-Keys, --max-per-buyer {}",
            k.connections,
            k.buyers,
            options.spec.max_per_buyer.unwrap_or_default()
        ),
        None => println!("chaos: every buyer anonymous"),
    }

    let began = Instant::now();
    let mut failed = Vec::new();
    for seed in seeds {
        let schedule = options.schedule(seed);
        match run::run(&options, &schedule).await {
            Ok(report) if report.verdict.passed() => {
                match &report.kept {
                    Some(dir) => println!("{}  (kept {})", report.line(), dir.display()),
                    None => println!("{}", report.line()),
                }
                if let (true, Some(b)) = (args.verbose, &report.verdict.buyers) {
                    for line in b.keys_twice.iter().chain(&b.over_limit) {
                        println!("    allowed: {line}");
                    }
                }
            }
            Ok(report) => {
                println!("{report}");
                println!(
                    "replay: chaos --ticketd {} --redis {} --instances {} --buyers {} --known-buyers {} --seed {seed} --schedules 1\n",
                    args.ticketd.display(),
                    args.redis,
                    args.instances,
                    args.buyers,
                    options.known.as_ref().map_or(0, |k| k.connections)
                );
                failed.push(seed);
                if args.fail_fast {
                    break;
                }
            }
            Err(e) => {
                eprintln!("chaos: harness error at seed {seed}:\n{schedule}{e}");
                return ExitCode::from(EXIT_HARNESS);
            }
        }
    }
    let ran = if args.fail_fast && !failed.is_empty() {
        "stopped at the first failure".to_owned()
    } else {
        format!("{} schedules", args.schedules)
    };
    if failed.is_empty() {
        println!(
            "chaos: {ran}, all passed in {:.0}s",
            began.elapsed().as_secs_f64()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "chaos: {ran}, {} failed (seeds {:?}) in {:.0}s",
            failed.len(),
            failed,
            began.elapsed().as_secs_f64()
        );
        ExitCode::from(EXIT_BROKEN)
    }
}
