//! ticketd instances as child processes: each keeps its listen port, its arguments, its log file
//! and its journal directory across restarts, so a restarted instance is the same instance (when
//! the binary supports `--journal-dir`; without it, a restart makes a new instance, the old
//! behaviour).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::http::{request, Answer};
use crate::process::{free_port, Process};

/// Bound on one readiness probe.
const PROBE_BOUND: Duration = Duration::from_secs(2);

/// The ticketd binary under test and what it supports.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Its path.
    pub path: PathBuf,
    /// Whether it knows `--journal-dir` (found in `--help`).
    pub journal_dir: bool,
    /// Whether it knows known buyers (`--buyer-header` and `--max-per-buyer` in `--help`).
    pub buyers: bool,
}

impl Binary {
    /// Runs `<path> --help` once to check that the binary runs and whether it has
    /// `--journal-dir`.
    ///
    /// # Errors
    /// The binary cannot be run.
    pub fn probe(path: &Path) -> Result<Self, HarnessError> {
        // Instances run in directories of their own: a relative path must not depend on that.
        let path = &std::path::absolute(path).map_err(|source| HarnessError::Ticketd {
            path: path.display().to_string(),
            source,
        })?;
        let output = Command::new(path)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HarnessError::Ticketd {
                path: path.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(HarnessError::Ticketd {
                path: path.display().to_string(),
                source: std::io::Error::other(format!("--help exited with {}", output.status)),
            });
        }
        let help = String::from_utf8_lossy(&output.stdout);
        Ok(Self {
            path: path.to_owned(),
            journal_dir: help.contains("--journal-dir"),
            buyers: help.contains("--buyer-header") && help.contains("--max-per-buyer"),
        })
    }
}

impl Binary {
    /// `path`, not run (for printing schedules).
    pub fn untested(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            journal_dir: false,
            buyers: false,
        }
    }
}

/// One ticketd instance: fixed port, arguments, log and journal directory.
#[derive(Debug)]
pub struct Instance {
    /// Index in the cluster (0, 1, ...).
    pub index: usize,
    /// `127.0.0.1:<port>`, the same across restarts.
    pub addr: SocketAddr,
    /// Where stdout and stderr of every incarnation go.
    pub log: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    process: Process,
}

impl Instance {
    /// Prepares instance `index` in `dir` (log, journal) with `args` (everything but `--listen`
    /// and `--journal-dir`); it is not started yet.
    ///
    /// # Errors
    /// No free port, or the directory cannot be created.
    pub fn new(
        binary: &Binary,
        index: usize,
        dir: &Path,
        args: &[String],
    ) -> Result<Self, HarnessError> {
        let port = free_port().map_err(|e| HarnessError::io("finding a free port", e))?;
        let journal = dir.join("journal");
        std::fs::create_dir_all(&journal)
            .map_err(|e| HarnessError::io(format!("creating {}", journal.display()), e))?;
        let mut all = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        all.extend_from_slice(args);
        if binary.journal_dir {
            all.push("--journal-dir".to_owned());
            all.push(journal.display().to_string());
        }
        Ok(Self {
            index,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: dir.join("ticketd.log"),
            binary: binary.path.clone(),
            args: all,
            dir: dir.to_owned(),
            process: Process::none(),
        })
    }

    /// Starts the process (again, with the same arguments); does not wait for it.
    ///
    /// # Errors
    /// The log cannot be opened or the binary cannot be run.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        self.process.kill();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| HarnessError::io(format!("opening {}", self.log.display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| HarnessError::io("cloning the log handle", e))?;
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var_os("RUST_LOG").unwrap_or_else(|| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        self.process = Process::spawn(&mut command).map_err(|source| HarnessError::Ticketd {
            path: self.binary.display().to_string(),
            source,
        })?;
        Ok(())
    }

    /// Whether a process is attached (possibly stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Whether it is stopped (SIGSTOP).
    pub fn is_stopped(&self) -> bool {
        self.process.is_stopped()
    }

    /// If the process ended by itself, how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP.
    ///
    /// # Errors
    /// Not running.
    pub fn pause(&mut self) -> std::io::Result<()> {
        self.process.pause()
    }

    /// SIGCONT.
    ///
    /// # Errors
    /// Not running.
    pub fn resume(&mut self) -> std::io::Result<()> {
        self.process.resume()
    }

    /// SIGTERM, then up to `bound` for the exit (`None`: it did not exit and was killed).
    ///
    /// # Errors
    /// Not running.
    pub async fn terminate(&mut self, bound: Duration) -> std::io::Result<Option<ExitStatus>> {
        self.process.terminate(bound).await
    }

    /// The tail of the log (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `path` until `ok` holds for an answer, within `bound`; false when it never did.
    pub async fn wait_for(
        &self,
        path: &str,
        bound: Duration,
        ok: impl Fn(&Answer) -> bool,
    ) -> bool {
        wait_for(self.addr, path, bound, ok).await
    }
}

/// Polls `path` on `addr` until `ok` holds for an answer, within `bound`.
pub async fn wait_for(
    addr: SocketAddr,
    path: &str,
    bound: Duration,
    ok: impl Fn(&Answer) -> bool,
) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(answer) = request(addr, path, PROBE_BOUND).await {
            if ok(&answer) {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
