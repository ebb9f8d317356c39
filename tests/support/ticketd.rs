//! The real ticketd: in-process on port 0 ([`Ticketd`]) or as a child process ([`TicketdProcess`])
//! when a test must kill it or read its log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hyper::Method;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http::request;
use ticketd::config::Cli;

/// ticketd running inside the test's runtime.
pub struct Ticketd {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ticketd::run::RunError>>>,
    /// The instance's journal directory (its own unless the test passed `--journal-dir`).
    pub journal: tempfile::TempDir,
}

impl Ticketd {
    /// Starts ticketd with `args` (flags as on the command line) on a free port; returns once it
    /// answers `/healthz`.
    pub async fn start(args: &[&str]) -> Self {
        let journal = tempfile::tempdir().unwrap();
        let journal_dir = journal.path().to_str().unwrap().to_owned();
        let mut argv = vec!["ticketd", "--listen", "127.0.0.1:0"];
        if !args.contains(&"--journal-dir") {
            argv.extend_from_slice(&["--journal-dir", &journal_dir]);
        }
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("valid test arguments");
        let listener = ticketd::server::bind(cli.serve.listen).expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ticketd::run(cli.serve, listener, async {
            let _ = rx.await;
        }));
        let t = Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            journal,
        };
        t.wait_until(|a| a.status == 200, "/healthz").await;
        t
    }

    /// Starts ticketd on `redis` (`--store redis`) selling `events`, with `extra` flags.
    pub async fn on_redis(redis: &super::RedisServer, events: &str, extra: &[&str]) -> Self {
        let url = redis.url();
        let mut args = vec!["--store", "redis", "--redis-url", &url, "--events", events];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// Polls `path` until `ok` holds.
    pub async fn wait_until(&self, ok: impl Fn(&super::Answer) -> bool, path: &str) {
        wait_until(self.addr, ok, path).await;
    }

    /// Waits until `/readyz` answers 200 (every Redis connection up).
    pub async fn wait_ready(&self) {
        self.wait_until(|a| a.status == 200, "/readyz").await;
    }

    /// The JSON metrics.
    pub async fn metrics_json(&self) -> serde_json::Value {
        request(self.addr, Method::GET, "/metrics?format=json")
            .await
            .json()
    }

    /// Requests being answered now, as `/metrics` reports them (`http.in_flight`, which may
    /// count that metrics request too: compare two readings).
    pub async fn in_flight(&self) -> u64 {
        self.metrics_json().await["http"]["in_flight"]
            .as_u64()
            .expect("http.in_flight")
    }

    /// Waits, within [`super::WAIT`], until more than `before` requests are being answered.
    pub async fn wait_in_flight_above(&self, before: u64) {
        let deadline = Instant::now() + super::WAIT;
        while self.in_flight().await <= before {
            assert!(Instant::now() < deadline, "no request got in flight");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Graceful stop: signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(super::WAIT, task)
            .await
            .expect("ticketd stops within the bound")
            .expect("task")
            .expect("run ended cleanly");
    }
}

impl Drop for Ticketd {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `path` on `addr` until `ok` holds, within [`super::WAIT`].
pub async fn wait_until(addr: SocketAddr, ok: impl Fn(&super::Answer) -> bool, path: &str) {
    assert!(
        answers_within(addr, ok, path).await,
        "{path} on {addr} never became ready"
    );
}

/// Whether `path` on `addr` satisfied `ok` within [`super::WAIT`].
async fn answers_within(addr: SocketAddr, ok: impl Fn(&super::Answer) -> bool, path: &str) -> bool {
    let deadline = Instant::now() + super::WAIT;
    loop {
        let attempt = async {
            let mut c = super::Conn::open(addr).await.ok()?;
            c.send(Method::GET, path).await.ok()
        };
        // Each attempt is bounded too: a server that accepted but never answers must fail the
        // test, not hang it.
        if let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            if ok(&a) {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// ticketd as a child process, its log in a file.
pub struct TicketdProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
    pub log: PathBuf,
    /// `--journal-dir` (unless the test passed its own): kept across [`TicketdProcess::restart`].
    pub journal: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl TicketdProcess {
    /// Spawns `ticketd --listen 127.0.0.1:<free> <args>` and waits for `/healthz`.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut p = Self::launch(args, env);
        if !answers_within(p.addr, |a| a.status == 200, "/healthz").await {
            let exited = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "/healthz on {} never became ready (process exited: {exited:?}); its log:\n{}",
                p.addr,
                p.log_text()
            );
        }
        p
    }

    /// Spawns ticketd on `redis` (`--store redis`, no statistics line) selling `events`, with
    /// `extra` flags, and waits for `/healthz`.
    pub async fn on_redis(redis: &super::RedisServer, events: &str, extra: &[&str]) -> Self {
        let url = redis.url();
        let mut args = vec![
            "--store",
            "redis",
            "--redis-url",
            &url,
            "--events",
            events,
            "--stats-interval",
            "0",
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args, &[]).await
    }

    /// Spawns it without waiting for it to serve (for start-up failures).
    pub fn launch(args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = super::redis::free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut p = Self {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child: None,
            log: dir.path().join("ticketd.log"),
            journal: dir.path().join("journal"),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        p.start_child();
        p
    }

    fn start_child(&mut self) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticketd"));
        cmd.args(["--listen", &self.addr.to_string()]);
        if !self.args.iter().any(|a| a == "--journal-dir") {
            cmd.arg("--journal-dir").arg(&self.journal);
        }
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn ticketd");
        self.child = Some(child);
    }

    /// Starts the process again, same port, arguments and journal directory, after it exited
    /// or was killed; waits for `/healthz`.
    pub async fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.start_child();
        wait_until(self.addr, |a| a.status == 200, "/healthz").await;
    }

    /// The JSON metrics.
    pub async fn metrics_json(&self) -> serde_json::Value {
        request(self.addr, Method::GET, "/metrics?format=json")
            .await
            .json()
    }

    /// Waits for `ok` on `path`.
    pub async fn wait_until(&self, ok: impl Fn(&super::Answer) -> bool, path: &str) {
        wait_until(self.addr, ok, path).await;
    }

    /// Waits (bounded) until the log holds `needle`, and returns the log. Lines reach the file
    /// through a non-blocking writer, a moment after they are logged.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + super::WAIT;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "never logged {needle:?}:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (`TERM`, `KILL`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
    }

    /// Graceful stop: SIGTERM, and the process exits 0 within the bound.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let code = self.wait();
        assert_eq!(code, Some(0), "graceful stop exits 0:\n{}", self.log_text());
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_until(|a| a.status == 200, "/readyz").await;
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + super::WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ticketd did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TicketdProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the ticketd binary to completion (for `seed` and bad-configuration checks).
pub fn run_binary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(args)
        .env_remove("TICKETD_EVENTS")
        .env_remove("REDIS_URL")
        .output()
        .expect("run ticketd")
}
