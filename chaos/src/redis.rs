//! A private `redis-server` on a free 127.0.0.1 port (never 6379) with its own directory and
//! AOF (`appendfsync always`: what ticketd needs of Redis, design.md), which the nemesis SIGKILLs and restarts on the same port and
//! directory (the AOF brings the data back), or SIGSTOPs and SIGCONTs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::HarnessError;
use crate::process::{free_port, Process};

/// How long a (re)started server may take to answer PING.
const START_BOUND: Duration = Duration::from_secs(20);

/// The redis-server of one run.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    process: Process,
}

impl RedisServer {
    /// Starts a server on a free port with its data (and `redis.log`) in `dir`.
    ///
    /// # Errors
    /// redis-server is missing or does not answer.
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        let mut server = Self {
            port: free_port().map_err(|e| HarnessError::io("finding a free port", e))?,
            dir: dir.to_owned(),
            process: Process::none(),
        };
        server.start_again().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process is up (possibly stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Whether it is stopped (SIGSTOP).
    pub fn is_stopped(&self) -> bool {
        self.process.is_stopped()
    }

    /// Starts the server (again) on the same port and directory and waits until it answers.
    ///
    /// # Errors
    /// redis-server is missing or does not answer within the bound.
    pub async fn start_again(&mut self) -> Result<(), HarnessError> {
        self.process.kill();
        let log = self.dir.join("redis.log");
        self.process = Process::spawn(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(&log)
                .args(["--save", "", "--appendonly", "yes"])
                .args(["--appendfsync", "always", "--protected-mode", "no"])
                .args(["--maxclients", "10000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(HarnessError::RedisMissing)?;
        let deadline = Instant::now() + START_BOUND;
        while !self.pings().await {
            if Instant::now() > deadline || self.process.exited().is_some() {
                return Err(HarnessError::RedisStart {
                    port: self.port,
                    bound: START_BOUND,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGKILL; the server is down until [`Self::start_again`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP: connections stay open, nothing answers.
    ///
    /// # Errors
    /// The server is not running.
    pub fn pause(&mut self) -> std::io::Result<()> {
        self.process.pause()
    }

    /// SIGCONT.
    ///
    /// # Errors
    /// The server is not running.
    pub fn resume(&mut self) -> std::io::Result<()> {
        self.process.resume()
    }

    async fn pings(&self) -> bool {
        let attempt = async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Some(true))
        )
    }

    /// A connected client, for reading the final state.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn client(&self) -> Result<fred::prelude::Client, HarnessError> {
        use fred::prelude::{ClientLike, Config};
        let config = Config::from_url(&self.url())?;
        let client = fred::prelude::Client::new(config, None, None, None);
        client.init().await?;
        Ok(client)
    }
}
