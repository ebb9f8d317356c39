//! A private `redis-server`: free port, own temporary directory, AOF on, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;

/// A redis-server process owned by one test.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A port nobody listens on right now (never 6379). Below the kernel's ephemeral range (32768
/// and up on Linux): servers restarted on the same port (Redis, ticketd) must not find it taken
/// meanwhile as the source port of some outgoing connection.
///
/// Never the same port twice in one test process: two tests running side by side could
/// otherwise be handed one port before either listens on it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let port = (0..1000)
        .map(|_| rand::random_range(20_000..32_000u16))
        .find(|&p| p != 6379 && !given.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in 20000..32000");
    given.push(port);
    port
}

impl RedisServer {
    /// Starts a fresh server.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a fresh server on `port`.
    pub fn start_on(port: u16) -> Self {
        let mut s = Self {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.start_again();
        s
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server (again) on the same port and directory, and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        super::require("redis-server");
        // Its own log beside the data (every start appends), shown when a start fails.
        let log_path = self.dir.path().join("redis.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                // A sale Redis acknowledged must survive a SIGKILL: with everysec, a busy disk
                // makes Redis answer before it writes its AOF (design.md, appendfsync).
                "always",
            ])
            .args(["--protected-mode", "no", "--maxclients", "10000"])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + super::WAIT;
        while !self.pings() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "redis-server did not start on {} ({}); its log:\n{}",
                self.port,
                exited.map_or("still running".to_owned(), |s| s.to_string()),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again on the same port and directory (the AOF brings the data back;
    /// the script cache is empty).
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to the server.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// A connected fred client for assertions.
    pub async fn client(&self) -> Client {
        let client = Client::new(Config::from_url(&self.url()).unwrap(), None, None, None);
        client.init().await.expect("connect to the test redis");
        client
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server ignores SIGKILL until continued on some kernels' accounting; be sure.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Calls of each Redis command so far (`INFO commandstats`), by lower-case name.
pub async fn command_calls(r: &fred::clients::Client) -> std::collections::HashMap<String, u64> {
    let info: String = r
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}
