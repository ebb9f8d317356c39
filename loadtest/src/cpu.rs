//! CPU time of other processes (the server, its Redis) over the measured run, read from
//! `/proc/PID/stat`, so bench.sh can state what one request costs them.
//!
//! Read here rather than by the calling script: the run's window (after the connections are
//! open, before the ledger check, which makes Redis work too) is only known inside the load
//! tester.

use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`): 100 on every Linux build that
/// exposes it to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system, all threads) one process spent during the measured run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// The process.
    pub pid: u32,
    /// User + system CPU seconds from the clock's start to the last answer.
    pub seconds: f64,
}

/// CPU seconds (user + system, all threads) `pid` has used so far, if it is readable.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_after_a_name_with_spaces() {
        let line =
            "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(line), Some(2.81));
    }

    #[test]
    fn this_process_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
