//! The system under test: one private redis-server (or a six-node Redis Cluster) and N ticketd
//! instances in one temporary directory, with the operations the nemesis needs (kill, restart,
//! pause, resume; an instance's are recorded as windows in the [`FaultLog`], a node's as notes
//! in the history), healing, the graceful stop at the end, and reading the final state of every
//! event. Dropping it kills everything it started.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fred::prelude::ClientLike;
use tokio::task::JoinHandle;

use crate::error::HarnessError;
use crate::history::{Clock, FaultLog, Outage};
use crate::ledger::{self, EventState};
use crate::redis::RedisServer;
use crate::redis_cluster::{event_slot, RedisCluster, SETTLE_BOUND, SHARDS};
use crate::schedule::RedisMode;
use crate::ticketd::{wait_for, Binary, Instance};

/// Bound on an instance becoming ready (at the start, after a restart, after healing).
pub const READY_BOUND: Duration = Duration::from_secs(30);
/// Bound on an instance's exit after SIGTERM.
pub const STOP_BOUND: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The ticketd binary.
    pub binary: Binary,
    /// How many instances.
    pub instances: usize,
    /// Events and capacities (`--events`).
    pub events: Vec<(String, u64)>,
    /// `--fallback-reserve`.
    pub reserve: u64,
    /// `--reserve-lease`.
    pub lease: Duration,
    /// `--redis-timeout`.
    pub redis_timeout: Duration,
    /// One redis-server or a Redis Cluster.
    pub redis: RedisMode,
    /// `--max-per-buyer`, with `--buyer-header` [`BUYER_HEADER`]; `None`: anonymous buyers
    /// only, neither flag given.
    pub max_per_buyer: Option<u32>,
}

/// The gateway header that names a known buyer (`--buyer-header`).
pub const BUYER_HEADER: &str = "x-buyer";

impl Spec {
    /// The event ids.
    pub fn event_ids(&self) -> Vec<String> {
        self.events.iter().map(|(id, _)| id.clone()).collect()
    }

    fn args(&self, redis_url: &str) -> Vec<String> {
        let events = self
            .events
            .iter()
            .map(|(id, n)| format!("{id}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = [
            "--store",
            "redis",
            "--redis-url",
            redis_url,
            "--events",
            &events,
            "--fallback-reserve",
            &self.reserve.to_string(),
            "--reserve-lease",
            &format!("{}ms", self.lease.as_millis()),
            "--redis-timeout",
            &format!("{}ms", self.redis_timeout.as_millis()),
            "--stats-interval",
            "0",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(n) = self.max_per_buyer {
            args.extend(
                [
                    "--buyer-header",
                    BUYER_HEADER,
                    "--max-per-buyer",
                    &n.to_string(),
                ]
                .map(str::to_owned),
            );
        }
        args
    }
}

/// What the instances store their tickets in.
#[derive(Debug)]
pub enum Backend {
    /// One redis-server.
    Single(RedisServer),
    /// Six nodes of a Redis Cluster.
    Cluster(RedisCluster),
}

/// Redis and the instances of one run.
#[derive(Debug)]
pub struct Cluster {
    /// Redis.
    pub redis: Backend,
    /// The ticketd instances.
    pub instances: Vec<Instance>,
    /// Kill and stop windows, and problems.
    pub log: FaultLog,
    /// The shard serving each event on a Redis Cluster (empty on one Redis).
    pub event_shards: Vec<usize>,
    clock: Clock,
    /// The open stop window of each instance.
    stopped: Vec<Option<usize>>,
    /// The open kill window of each instance.
    killed: Vec<Option<usize>>,
    /// Tasks that wait for restarted instances to answer.
    watchers: Vec<JoinHandle<()>>,
    /// The Redis Cluster node each shard's node fault killed and has not restarted yet.
    nodes_down: Vec<Option<usize>>,
    /// The node each shard's node fault stopped and has not continued yet.
    nodes_stopped: Vec<Option<usize>>,
    /// What the nemesis did to Redis Cluster nodes, when: the history's record of node faults.
    notes: Vec<(Duration, String)>,
    root: tempfile::TempDir,
}

impl Cluster {
    /// Starts Redis and the instances (which seed the events themselves), and waits until every
    /// instance is ready and holds its reserve of every event.
    ///
    /// # Errors
    /// Redis or an instance did not start.
    pub async fn start(spec: &Spec, clock: Clock) -> Result<Self, HarnessError> {
        let root = tempfile::Builder::new()
            .prefix("chaos-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temporary directory", e))?;
        let mut event_shards = Vec::new();
        let (redis, url) = match spec.redis {
            RedisMode::Single => {
                let redis = RedisServer::start(&root.path().join("redis")).await?;
                let url = redis.url();
                (Backend::Single(redis), url)
            }
            RedisMode::Cluster => {
                let redis = RedisCluster::start(&root.path().join("redis-cluster")).await?;
                let shards: BTreeSet<usize> = spec
                    .events
                    .iter()
                    .map(|(id, _)| redis.shard_of(event_slot(id)))
                    .collect();
                if shards.len() != SHARDS {
                    return Err(HarnessError::Cluster(format!(
                        "the events {:?} are served by shards {shards:?}, not by every primary",
                        spec.event_ids()
                    )));
                }
                event_shards = spec
                    .events
                    .iter()
                    .map(|(id, _)| redis.shard_of(event_slot(id)))
                    .collect();
                let url = redis.url();
                (Backend::Cluster(redis), url)
            }
        };
        let args = spec.args(&url);
        let mut instances = Vec::with_capacity(spec.instances);
        for i in 0..spec.instances {
            let dir = root.path().join(format!("ticketd-{i}"));
            let mut instance = Instance::new(&spec.binary, i, &dir, &args)?;
            instance.start()?;
            instances.push(instance);
        }
        let cluster = Self {
            redis,
            stopped: vec![None; instances.len()],
            killed: vec![None; instances.len()],
            instances,
            log: FaultLog::default(),
            event_shards,
            clock,
            watchers: Vec::new(),
            nodes_down: vec![None; SHARDS],
            nodes_stopped: vec![None; SHARDS],
            notes: Vec::new(),
            root,
        };
        let ids = spec.event_ids();
        let reserve = spec.reserve;
        for instance in &cluster.instances {
            let not_ready = |what: &str| HarnessError::NotReady {
                instance: instance.index,
                bound: READY_BOUND,
                what: what.to_owned(),
                log: instance.log.display().to_string(),
            };
            if !instance
                .wait_for("/readyz", READY_BOUND, |a| a.status == 200)
                .await
            {
                return Err(not_ready("/readyz 200"));
            }
            let claimed = instance
                .wait_for("/metrics?format=json", READY_BOUND, |a| {
                    let json = a.json();
                    ids.iter()
                        .all(|id| json["fallback"]["reserved"][id].as_u64() == Some(reserve))
                })
                .await;
            if !claimed {
                return Err(not_ready(
                    "fallback.reserved of every event == --fallback-reserve",
                ));
            }
        }
        Ok(cluster)
    }

    /// The instances' addresses, by index.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.instances.iter().map(|i| i.addr).collect()
    }

    /// The run's directory (Redis data, instance logs and journals).
    pub fn dir(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    /// Keeps the run's directory after the cluster is dropped; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.root.disable_cleanup(true);
        self.root.path().to_owned()
    }

    /// The single redis-server; `None` (and a problem recorded) on a cluster, where the
    /// schedule holds no whole-Redis faults.
    fn single(&mut self, what: &str) -> Option<&mut RedisServer> {
        match &mut self.redis {
            Backend::Single(r) => Some(r),
            Backend::Cluster(_) => {
                self.log
                    .problem(format!("harness: {what} is no fault on a Redis Cluster"));
                None
            }
        }
    }

    /// The Redis Cluster.
    fn nodes(&mut self) -> Result<&mut RedisCluster, HarnessError> {
        match &mut self.redis {
            Backend::Cluster(c) => Ok(c),
            Backend::Single(_) => Err(HarnessError::Cluster(
                "a node fault in a schedule for one redis-server".to_owned(),
            )),
        }
    }

    /// SIGKILL Redis.
    pub fn kill_redis(&mut self) {
        if let Some(r) = self.single("SIGKILL Redis") {
            r.kill();
        }
    }

    /// Restarts Redis on its port and directory.
    ///
    /// # Errors
    /// It did not come back.
    pub async fn restart_redis(&mut self) -> Result<(), HarnessError> {
        match self.single("restarting Redis") {
            Some(r) => r.start_again().await,
            None => Ok(()),
        }
    }

    /// SIGSTOP Redis.
    pub fn pause_redis(&mut self) {
        if let Some(Err(e)) = self.single("SIGSTOP Redis").map(RedisServer::pause) {
            self.log.problem(format!("nemesis: SIGSTOP Redis: {e}"));
        }
    }

    /// SIGCONT Redis.
    pub fn resume_redis(&mut self) {
        if let Some(Err(e)) = self.single("SIGCONT Redis").map(RedisServer::resume) {
            self.log.problem(format!("nemesis: SIGCONT Redis: {e}"));
        }
    }

    /// Records what the nemesis did to a node.
    fn note(&mut self, what: String) {
        self.notes.push((self.clock.now(), what));
    }

    /// What the nemesis did to Redis Cluster nodes, when (for the history).
    pub fn notes(&self) -> &[(Duration, String)] {
        &self.notes
    }

    /// Waits until the Redis Cluster has settled (nothing to wait for on one redis-server).
    ///
    /// # Errors
    /// It did not within [`SETTLE_BOUND`].
    pub async fn settle(&self) -> Result<(), HarnessError> {
        if let Backend::Cluster(c) = &self.redis {
            c.wait_settled(SETTLE_BOUND).await?;
        }
        Ok(())
    }

    /// SIGKILL the node serving `shard` as primary now.
    ///
    /// # Errors
    /// Not a cluster, or no node says which one that is.
    pub async fn kill_primary(&mut self, shard: usize) -> Result<(), HarnessError> {
        let nodes = self.nodes()?;
        let node = nodes
            .primary_of(shard)
            .await
            .map_err(HarnessError::Cluster)?;
        nodes.kill(node);
        let name = nodes.name(node);
        self.nodes_down[shard] = Some(node);
        self.note(format!("SIGKILL {name}, primary of shard {shard}"));
        Ok(())
    }

    /// SIGKILL a node replicating `shard`'s primary now.
    ///
    /// # Errors
    /// Not a cluster, or no node says which one that is.
    pub async fn kill_replica(&mut self, shard: usize) -> Result<(), HarnessError> {
        let nodes = self.nodes()?;
        let node = nodes
            .replica_of(shard)
            .await
            .map_err(HarnessError::Cluster)?;
        nodes.kill(node);
        let name = nodes.name(node);
        self.nodes_down[shard] = Some(node);
        self.note(format!("SIGKILL {name}, replica of shard {shard}"));
        Ok(())
    }

    /// Starts the node killed for `shard` again, on its port and directory.
    ///
    /// # Errors
    /// It did not come back.
    pub async fn restart_node(&mut self, shard: usize) -> Result<(), HarnessError> {
        let Some(node) = self.nodes_down[shard].take() else {
            return Ok(());
        };
        let nodes = self.nodes()?;
        nodes.restart(node).await?;
        let name = nodes.name(node);
        self.note(format!("restarted {name} (shard {shard})"));
        Ok(())
    }

    /// SIGSTOP the node serving `shard` as primary now.
    ///
    /// # Errors
    /// Not a cluster, no node says which one that is, or the signal failed.
    pub async fn pause_primary(&mut self, shard: usize) -> Result<(), HarnessError> {
        let nodes = self.nodes()?;
        let node = nodes
            .primary_of(shard)
            .await
            .map_err(HarnessError::Cluster)?;
        nodes
            .pause(node)
            .map_err(|e| HarnessError::io(format!("SIGSTOP {}", nodes.name(node)), e))?;
        let name = nodes.name(node);
        self.nodes_stopped[shard] = Some(node);
        self.note(format!("SIGSTOP {name}, primary of shard {shard}"));
        Ok(())
    }

    /// SIGCONT the node stopped for `shard`.
    ///
    /// # Errors
    /// The signal failed.
    pub fn resume_node(&mut self, shard: usize) -> Result<(), HarnessError> {
        let Some(node) = self.nodes_stopped[shard].take() else {
            return Ok(());
        };
        let nodes = self.nodes()?;
        nodes
            .resume(node)
            .map_err(|e| HarnessError::io(format!("SIGCONT {}", nodes.name(node)), e))?;
        let name = nodes.name(node);
        self.note(format!("SIGCONT {name} (shard {shard})"));
        Ok(())
    }

    /// SIGKILL instance `i`; it is out of service until restarted and answering.
    pub fn kill_instance(&mut self, i: usize) {
        self.note_exit(i);
        // The window opens before the signal: a buyer may see its connection reset before
        // `kill` returns.
        let at = self.clock.now();
        if self.killed[i].is_none() {
            self.killed[i] = Some(self.log.open(i, Outage::Killed, at));
        }
        self.instances[i].kill();
        if let Some(w) = self.stopped[i].take() {
            self.log.close(w, self.clock.now());
        }
    }

    /// Restarts instance `i` with the same arguments (port, journal directory); its kill window
    /// closes when it answers `/healthz`, which a background task waits for.
    pub fn restart_instance(&mut self, i: usize) {
        let window = self.killed[i].take();
        if let Err(e) = self.instances[i].start() {
            self.log
                .problem(format!("nemesis: restarting instance {i}: {e}"));
            return;
        }
        let (addr, log, clock) = (self.instances[i].addr, self.log.clone(), self.clock);
        self.watchers.push(tokio::spawn(async move {
            let up = wait_for(addr, "/healthz", READY_BOUND, |a| a.status == 200).await;
            if let Some(w) = window {
                log.close(w, clock.now());
            }
            if !up {
                log.problem(format!(
                    "instance {i} did not answer /healthz within {READY_BOUND:?} after its restart"
                ));
            }
        }));
    }

    /// SIGSTOP instance `i`.
    pub fn pause_instance(&mut self, i: usize) {
        self.note_exit(i);
        let at = self.clock.now();
        match self.instances[i].pause() {
            Ok(()) => {
                self.stopped[i] = Some(self.log.open(i, Outage::Stopped, at));
            }
            Err(e) => self
                .log
                .problem(format!("nemesis: SIGSTOP instance {i}: {e}")),
        }
    }

    /// SIGCONT instance `i`.
    pub fn resume_instance(&mut self, i: usize) {
        if !self.instances[i].is_stopped() {
            return;
        }
        if let Err(e) = self.instances[i].resume() {
            self.log
                .problem(format!("nemesis: SIGCONT instance {i}: {e}"));
        }
        if let Some(w) = self.stopped[i].take() {
            self.log.close(w, self.clock.now());
        }
    }

    /// Records an instance that ended by itself (a crash nobody injected).
    fn note_exit(&mut self, i: usize) {
        if let Some(status) = self.instances[i].exited() {
            self.log.problem(format!(
                "instance {i} exited by itself ({status}); log: {}\n{}",
                self.instances[i].log.display(),
                self.instances[i].log_tail(20)
            ));
        }
    }

    /// Ends every fault: SIGCONT what is stopped, restarts what is dead, waits until a Redis
    /// Cluster has settled, and until every instance answers `/readyz` (an instance's failure
    /// to come back is recorded as a problem).
    ///
    /// # Errors
    /// Redis did not come back, or the cluster did not settle.
    pub async fn heal(&mut self) -> Result<(), HarnessError> {
        match &mut self.redis {
            Backend::Single(redis) => {
                if redis.is_stopped() {
                    if let Err(e) = redis.resume() {
                        self.log.problem(format!("nemesis: SIGCONT Redis: {e}"));
                    }
                }
                if !redis.is_running() {
                    redis.start_again().await?;
                }
            }
            Backend::Cluster(nodes) => {
                nodes.heal().await?;
                self.nodes_down.fill(None);
                self.nodes_stopped.fill(None);
                self.note("healed: every node runs".to_owned());
                self.settle().await?;
                self.note("the cluster has settled".to_owned());
            }
        }
        for i in 0..self.instances.len() {
            self.note_exit(i);
            if self.instances[i].is_stopped() {
                self.resume_instance(i);
            }
            if !self.instances[i].is_running() {
                if self.killed[i].is_none() {
                    self.killed[i] = Some(self.log.open(i, Outage::Killed, self.clock.now()));
                }
                self.restart_instance(i);
            }
        }
        for watcher in self.watchers.drain(..) {
            // The watcher only polls and records; a panic there is a harness bug.
            watcher.await.expect("a restart watcher does not panic");
        }
        for instance in &self.instances {
            if !instance
                .wait_for("/readyz", READY_BOUND, |a| a.status == 200)
                .await
            {
                self.log.problem(format!(
                    "instance {} not ready within {READY_BOUND:?} after healing; log: {}",
                    instance.index,
                    instance.log.display()
                ));
            }
        }
        Ok(())
    }

    /// SIGTERM every instance (they hand their reserves back) and expects exit code 0 within
    /// [`STOP_BOUND`]; anything else is recorded as a problem.
    pub async fn stop_all(&mut self) {
        for i in 0..self.instances.len() {
            self.note_exit(i);
            let instance = &mut self.instances[i];
            if !instance.is_running() {
                continue;
            }
            match instance.terminate(STOP_BOUND).await {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => self.log.problem(format!(
                    "instance {i} ended with {status} after SIGTERM, not 0; log: {}\n{}",
                    instance.log.display(),
                    instance.log_tail(20)
                )),
                Ok(None) => self.log.problem(format!(
                    "instance {i} did not exit within {STOP_BOUND:?} of SIGTERM; log: {}",
                    instance.log.display()
                )),
                Err(e) => self.log.problem(format!("SIGTERM instance {i}: {e}")),
            }
        }
    }

    /// Reads the final state of `events` (id, capacity): from the one redis-server, or each
    /// from the primary that serves its slot now.
    ///
    /// # Errors
    /// A node or server cannot be reached, or a command failed.
    pub async fn read_states(
        &self,
        events: &[(String, u64)],
    ) -> Result<Vec<EventState>, HarnessError> {
        let mut states = Vec::with_capacity(events.len());
        match &self.redis {
            Backend::Single(redis) => {
                let client = redis.client().await?;
                for (id, capacity) in events {
                    states.push(ledger::read(&client, id, *capacity).await?);
                }
                let _ = client.quit().await;
            }
            Backend::Cluster(nodes) => {
                for (id, capacity) in events {
                    let client = nodes.client_for_slot(event_slot(id)).await?;
                    states.push(ledger::read(&client, id, *capacity).await?);
                    let _ = client.quit().await;
                }
            }
        }
        Ok(states)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Restart watchers only poll; none may outlive the run. The processes die with their
        // handles.
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}
