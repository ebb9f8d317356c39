//! A private `redis-server` on a free 127.0.0.1 port (never 6379) with its own directory and
//! AOF (`appendfsync always`: what ticketd needs of Redis, design.md), which the nemesis
//! SIGKILLs and restarts on the same port and directory (the AOF brings the data back), or
//! SIGSTOPs and SIGCONTs. The same server with cluster mode on is one node of the six of
//! [`crate::redis_cluster`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::HarnessError;
use crate::process::{free_port, Process};

/// How long a (re)started server may take to answer PING.
const START_BOUND: Duration = Duration::from_secs(20);

/// `--cluster-node-timeout` of a cluster node: a primary unreachable for this long is marked
/// failing, and its replica takes over a second or two later.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// The redis-server of one run.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// A Redis Cluster node (`--cluster-enabled yes` and the flags a failover needs).
    cluster: bool,
    process: Process,
}

impl RedisServer {
    /// Starts a server on a free port with its data (and `redis.log`) in `dir`.
    ///
    /// # Errors
    /// redis-server is missing or does not answer.
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        let port = free_port().map_err(|e| HarnessError::io("finding a free port", e))?;
        Self::start_on(dir, port, false).await
    }

    /// Starts a Redis Cluster node on `port` (its cluster bus on `port + 10000`) with its data,
    /// `nodes.conf` and `redis.log` in `dir`. It joins no cluster yet.
    ///
    /// # Errors
    /// redis-server is missing or does not answer (its port was taken meanwhile).
    pub async fn start_node(dir: &Path, port: u16) -> Result<Self, HarnessError> {
        Self::start_on(dir, port, true).await
    }

    async fn start_on(dir: &Path, port: u16, cluster: bool) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        let mut server = Self {
            port,
            dir: dir.to_owned(),
            cluster,
            process: Process::none(),
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (data, `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let mut command = Command::new("redis-server");
        if self.cluster {
            let timeout = CLUSTER_NODE_TIMEOUT.as_millis().to_string();
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &timeout])
                // A failing primary must not stop the healthy ones (CLUSTERDOWN) while its
                // replica takes over: ticketd isolates failures per shard (it warns otherwise).
                .args(["--cluster-require-full-coverage", "no"])
                // A (re)joining replica's full sync starts at once, not after 5 s of waiting
                // for more replicas to share the transfer.
                .args(["--repl-diskless-sync-delay", "0"]);
        }
        self.process = Process::spawn(
            command
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
