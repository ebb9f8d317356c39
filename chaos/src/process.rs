//! A child process the harness owns: started from a [`Command`], signalled (SIGKILL, SIGSTOP,
//! SIGCONT, SIGTERM) by pid, and never outliving its handle: dropping it continues a stopped
//! process and kills it.

use std::io;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// A port on 127.0.0.1 that nobody listens on right now (never 6379, someone's Redis).
///
/// # Errors
/// None of a thousand ports tried was free.
pub fn free_port() -> io::Result<u16> {
    // Below the kernel's ephemeral range (32768 and up on Linux): a port kept across restarts
    // must not be taken meanwhile as the source port of some outgoing connection.
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000u16);
        if port != 6379 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port in 20000..32000",
    ))
}

/// One running (or stopped) child process; empty after [`Process::kill`] or an exit.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    stopped: bool,
}

impl Process {
    /// Spawns `command`.
    ///
    /// # Errors
    /// The program could not be started (missing, not executable).
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        Ok(Self {
            child: Some(command.spawn()?),
            stopped: false,
        })
    }

    /// A handle that owns no process (a process that was killed and not started again).
    pub fn none() -> Self {
        Self {
            child: None,
            stopped: false,
        }
    }

    /// Whether a process is attached and has not been reaped.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it was stopped with SIGSTOP and not continued since.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// If the process ended by itself, reaps it and returns how it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.stopped = false;
        Some(status)
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| io::Error::other("no process to signal"))?;
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("pid out of range"))?;
        kill_process(pid, signal).map_err(io::Error::from)
    }

    /// SIGSTOP: the process keeps its sockets but runs no instruction until [`Self::resume`].
    ///
    /// # Errors
    /// No process, or the signal could not be sent.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(Signal::STOP)?;
        self.stopped = true;
        Ok(())
    }

    /// SIGCONT.
    ///
    /// # Errors
    /// No process, or the signal could not be sent.
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal(Signal::CONT)?;
        self.stopped = false;
        Ok(())
    }

    /// SIGKILL (after SIGCONT if stopped), then reaps the process. Nothing to do when none runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stopped {
                let _ = self.resume_child(&child);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    fn resume_child(&self, child: &Child) -> io::Result<()> {
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("pid out of range"))?;
        kill_process(pid, Signal::CONT).map_err(io::Error::from)
    }

    /// SIGTERM (after SIGCONT if stopped), then waits up to `bound` for the exit.
    /// Returns the exit status, or `None` when the process did not exit in time (it is then
    /// killed).
    ///
    /// # Errors
    /// No process, or the signal could not be sent.
    pub async fn terminate(&mut self, bound: Duration) -> io::Result<Option<ExitStatus>> {
        if self.stopped {
            self.resume()?;
        }
        self.signal(Signal::TERM)?;
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.exited() {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                self.kill();
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_never_6379() {
        for _ in 0..100 {
            assert_ne!(free_port().expect("a port"), 6379);
        }
    }

    #[tokio::test]
    async fn a_stopped_process_can_be_terminated_and_killed() {
        let mut p = Process::spawn(Command::new("sleep").arg("30")).expect("sleep exists");
        p.pause().expect("stop");
        assert!(p.is_stopped());
        let status = p
            .terminate(Duration::from_secs(5))
            .await
            .expect("signal")
            .expect("exits on SIGTERM");
        assert!(!status.success());
        assert!(!p.is_running());

        let mut p = Process::spawn(Command::new("sleep").arg("30")).expect("sleep exists");
        p.pause().expect("stop");
        p.kill();
        assert!(!p.is_running() && !p.is_stopped());
    }
}
