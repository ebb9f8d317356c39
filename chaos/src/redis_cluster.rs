//! A private Redis Cluster on loopback, the store of a cluster run: six `redis-server` nodes
//! ([`RedisServer`] in cluster mode: AOF with `appendfsync always`, node timeout 2 s, full
//! coverage not required, no delay before a replica's sync) formed with
//! `redis-cli --cluster create` into three primaries with one replica each.
//!
//! The nemesis kills, pauses, resumes and restarts single nodes, found by their role in a shard
//! at that moment (shards are numbered by their lowest slot, which a failover does not change).
//! The harness waits for the cluster to *settle*: every slot served, `cluster_state:ok` on every
//! live node, all of them agreeing on the topology, and every primary with a replica whose link
//! is up. The checker reads each event from the primary that serves its slot now.
//!
//! The topology comes from `CLUSTER NODES`, not `CLUSTER SLOTS` (which leaves a replica out until
//! its replication offset is gossiped), over a small RESP client with timeouts: a stopped node
//! accepts connections and never answers. Ports are in 20000..22000 so that the cluster bus
//! ports (+10000) stay below the kernel's ephemeral range too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::HarnessError;
use crate::process::Process;
use crate::redis::RedisServer;

/// Nodes in the cluster: three primaries, one replica each.
pub const NODES: usize = 6;
/// Shards (primaries).
pub const SHARDS: usize = 3;
/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// A node's cluster bus listens on its port plus this.
const BUS_OFFSET: u16 = 10_000;
/// How often the harness asks the nodes again while it waits.
const POLL: Duration = Duration::from_millis(50);
/// Bound on one command to one node.
const ASK_BOUND: Duration = Duration::from_secs(1);
/// Bound on forming the cluster, and on it settling after faults.
pub const SETTLE_BOUND: Duration = Duration::from_secs(60);

/// The hash slot of `key`, as `CLUSTER KEYSLOT` computes it: CRC16 (XMODEM) modulo 16384, of the
/// hash tag when the key has a non-empty one, else of the whole key.
pub fn key_slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            tag.iter()
                .position(|&b| b == b'}')
                .map(|close| &tag[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// The slot of every key of event `id` (`event:{<id>}:...`).
pub fn event_slot(id: &str) -> u16 {
    key_slot(&format!("{{{id}}}"))
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// A port in 20000..22000 that nobody listens on, whose bus port is free too, not in `taken`.
fn free_cluster_port(taken: &[u16]) -> std::io::Result<u16> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..1000)
        .map(|_| rand::random_range(20_000..22_000u16))
        .find(|&p| !taken.contains(&p) && free(p) && free(p + BUS_OFFSET))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "no free port in 20000..22000 with its bus port free",
            )
        })
}

/// The six nodes of one run.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// For each slot, its shard (numbered by lowest slot when the cluster formed).
    shard_of: Vec<u8>,
    /// The lowest slot of each shard.
    first_slot: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes in `dir` (`node-0` ... `node-5`), forms the cluster and waits until it
    /// has settled with three primaries of one replica each.
    ///
    /// # Errors
    /// A node did not start, `redis-cli --cluster create` failed, or the cluster did not settle.
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        let mut nodes: Vec<RedisServer> = Vec::with_capacity(NODES);
        for _attempt in 0..NODES * 5 {
            if nodes.len() == NODES {
                break;
            }
            let taken: Vec<u16> = nodes.iter().map(RedisServer::port).collect();
            let port = free_cluster_port(&taken)
                .map_err(|e| HarnessError::io("finding a cluster port", e))?;
            let node_dir = dir.join(format!("node-{}", nodes.len()));
            match RedisServer::start_node(&node_dir, port).await {
                Ok(node) => nodes.push(node),
                // Its port or bus port was taken meanwhile: another port.
                Err(HarnessError::RedisStart { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if nodes.len() < NODES {
            return Err(HarnessError::Cluster(format!(
                "could not start {NODES} cluster nodes"
            )));
        }
        let mut cluster = Self {
            nodes,
            shard_of: Vec::new(),
            first_slot: Vec::new(),
            dir: dir.to_owned(),
        };
        cluster.create().await?;
        cluster.wait_settled(SETTLE_BOUND).await?;
        let view = cluster.view().await.map_err(HarnessError::Cluster)?;
        // Shards by their lowest slot: the order in which their primaries first appear.
        let mut firsts: Vec<u16> = Vec::with_capacity(SHARDS);
        let mut primaries: Vec<u16> = Vec::with_capacity(SHARDS);
        for (slot, &owner) in (0..SLOTS).zip(&view.owner) {
            if !primaries.contains(&owner) {
                primaries.push(owner);
                firsts.push(slot);
            }
        }
        cluster.shard_of = view
            .owner
            .iter()
            .map(|owner| primaries.iter().position(|p| p == owner).unwrap_or(0) as u8)
            .collect();
        cluster.first_slot = firsts;
        Ok(cluster)
    }

    /// `redis-cli --cluster create` over the six nodes, its output in `cluster-create.log`.
    async fn create(&self) -> Result<(), HarnessError> {
        let log_path = self.dir.join("cluster-create.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| HarnessError::io(format!("creating {}", log_path.display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| HarnessError::io("cloning the log handle", e))?;
        let mut cli = Process::spawn(
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err),
        )
        .map_err(|e| HarnessError::Cluster(format!("redis-cli must be installed: {e}")))?;
        let deadline = Instant::now() + SETTLE_BOUND;
        let outcome = loop {
            if let Some(status) = cli.exited() {
                break status.success().then_some(()).ok_or(status.to_string());
            }
            if Instant::now() > deadline {
                cli.kill();
                break Err(format!("no exit within {SETTLE_BOUND:?}"));
            }
            tokio::time::sleep(POLL).await;
        };
        outcome.map_err(|why| {
            HarnessError::Cluster(format!(
                "redis-cli --cluster create: {why}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ))
        })
    }

    /// `redis-cluster://127.0.0.1:<first>?node=127.0.0.1:<second>&node=...`, all six nodes.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(RedisServer::port);
        let first = ports.next().unwrap_or_default();
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// The shard serving `slot` (shards are numbered by their lowest slot).
    pub fn shard_of(&self, slot: u16) -> usize {
        self.shard_of
            .get(usize::from(slot))
            .map_or(0, |&s| usize::from(s))
    }

    /// `node 3 (port 20123)`.
    pub fn name(&self, node: usize) -> String {
        format!("node {node} (port {})", self.nodes[node].port())
    }

    /// The node serving shard `shard` as primary now.
    ///
    /// # Errors
    /// No live node answers, or the slot has no primary.
    pub async fn primary_of(&self, shard: usize) -> Result<usize, String> {
        let view = self.view().await?;
        let slot = *self.first_slot.get(shard).ok_or("no such shard")?;
        self.index(view.owner[usize::from(slot)])
            .ok_or_else(|| format!("slot {slot} (shard {shard}) has no primary"))
    }

    /// A node replicating shard `shard`'s primary now.
    ///
    /// # Errors
    /// No live node answers, or the shard has no replica.
    pub async fn replica_of(&self, shard: usize) -> Result<usize, String> {
        let view = self.view().await?;
        let slot = *self.first_slot.get(shard).ok_or("no such shard")?;
        let primary = view.owner[usize::from(slot)];
        view.replicas
            .get(&primary)
            .and_then(|r| r.iter().next())
            .and_then(|&p| self.index(p))
            .ok_or_else(|| format!("shard {shard} has no replica"))
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// Whether node `node` has a process (possibly stopped).
    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].is_running()
    }

    /// Whether node `node` is stopped (SIGSTOP).
    pub fn is_stopped(&self, node: usize) -> bool {
        self.nodes[node].is_stopped()
    }

    /// SIGKILL node `node`.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts node `node` again on its port and directory: it rejoins through its `nodes.conf`
    /// (as a replica when another node took its slots meanwhile), its data from its AOF.
    ///
    /// # Errors
    /// It did not answer within the bound.
    pub async fn restart(&mut self, node: usize) -> Result<(), HarnessError> {
        self.nodes[node].start_again().await
    }

    /// SIGSTOP node `node`.
    ///
    /// # Errors
    /// It is not running.
    pub fn pause(&mut self, node: usize) -> std::io::Result<()> {
        self.nodes[node].pause()
    }

    /// SIGCONT node `node`.
    ///
    /// # Errors
    /// It is not running.
    pub fn resume(&mut self, node: usize) -> std::io::Result<()> {
        self.nodes[node].resume()
    }

    /// Resumes every stopped node and restarts every dead one (without waiting to settle).
    ///
    /// # Errors
    /// A node did not come back.
    pub async fn heal(&mut self) -> Result<(), HarnessError> {
        for node in &mut self.nodes {
            if node.is_stopped() {
                node.resume()
                    .map_err(|e| HarnessError::io(format!("SIGCONT port {}", node.port()), e))?;
            }
            if !node.is_running() {
                node.start_again().await?;
            }
        }
        Ok(())
    }

    /// Waits until the cluster has settled (see the module documentation), within `bound`.
    ///
    /// # Errors
    /// It did not; the error says why and how each node sees itself.
    pub async fn wait_settled(&self, bound: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + bound;
        loop {
            match self.settled().await {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() > deadline => {
                    return Err(HarnessError::Cluster(format!(
                        "not settled within {bound:?}: {why}\n{}",
                        self.describe().await
                    )))
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Every node runs; each reports `cluster_state:ok`, every slot assigned and ok, and knows
    /// all six nodes; all agree on the topology; three primaries, each with a replica whose
    /// link to it is up.
    async fn settled(&self) -> Result<(), String> {
        let mut first: Option<(u16, View)> = None;
        for node in &self.nodes {
            let port = node.port();
            if !node.is_running() || node.is_stopped() {
                return Err(format!("{port} is down"));
            }
            let info = fields(port, &["CLUSTER", "INFO"]).await?;
            for (field, want) in [
                ("cluster_state", "ok".to_owned()),
                ("cluster_slots_assigned", SLOTS.to_string()),
                ("cluster_slots_ok", SLOTS.to_string()),
                ("cluster_known_nodes", NODES.to_string()),
            ] {
                let got = info.get(field).map_or("missing", String::as_str);
                if got != want {
                    return Err(format!("{port}: {field}:{got}"));
                }
            }
            let view = view(port).await?;
            match &first {
                Some((p, v)) if *v != view => {
                    return Err(format!("{port} and {p} disagree on the topology"))
                }
                Some(_) => {}
                None => first = Some((port, view)),
            }
        }
        let (_, view) = first.ok_or("no node")?;
        if view.replicas.len() != SHARDS {
            return Err(format!("{} primaries", view.replicas.len()));
        }
        for (primary, replicas) in &view.replicas {
            if replicas.is_empty() {
                return Err(format!("primary {primary} has no replica"));
            }
            for &replica in replicas {
                let info = fields(replica, &["INFO", "replication"]).await?;
                if info.get("master_link_status").map(String::as_str) != Some("up") {
                    return Err(format!("{replica}: link to its primary not up"));
                }
            }
        }
        Ok(())
    }

    /// The topology as the first running node that answers sees it.
    async fn view(&self) -> Result<View, String> {
        let mut why = "no live node".to_owned();
        for node in self
            .nodes
            .iter()
            .filter(|n| n.is_running() && !n.is_stopped())
        {
            match view(node.port()).await {
                Ok(v) => return Ok(v),
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    /// One line per node: running or not, and how a live one sees itself.
    pub async fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let name = self.name(i);
            if !n.is_running() {
                out.push(format!("{name}: killed"));
                continue;
            }
            if n.is_stopped() {
                out.push(format!("{name}: stopped"));
                continue;
            }
            let state = fields(n.port(), &["CLUSTER", "INFO"])
                .await
                .map(|f| f.get("cluster_state").cloned().unwrap_or_default())
                .unwrap_or_else(|e| e);
            let link = fields(n.port(), &["INFO", "replication"])
                .await
                .map(|f| f.get("master_link_status").cloned().unwrap_or("-".into()))
                .unwrap_or_else(|e| e);
            let myself = match command(n.port(), &["CLUSTER", "NODES"]).await {
                Ok(text) => text
                    .lines()
                    .find(|l| l.contains("myself"))
                    .unwrap_or_default()
                    .to_owned(),
                Err(e) => e,
            };
            out.push(format!(
                "{name}: cluster_state {state}, link to primary {link}, {myself}"
            ));
        }
        out.join("\n")
    }

    /// A client on the primary serving `slot` now (`KEYS` only sees the keys of its node).
    ///
    /// # Errors
    /// No node answers, the slot has no primary, or the client cannot connect.
    pub async fn client_for_slot(&self, slot: u16) -> Result<fred::prelude::Client, HarnessError> {
        use fred::prelude::{ClientLike, Config};
        let view = self.view().await.map_err(HarnessError::Cluster)?;
        let port = view.owner[usize::from(slot)];
        if port == 0 {
            return Err(HarnessError::Cluster(format!("slot {slot} has no primary")));
        }
        let config = Config::from_url(&format!("redis://127.0.0.1:{port}"))?;
        let client = fred::prelude::Client::new(config, None, None, None);
        client.init().await?;
        Ok(client)
    }
}

/// One node's account of the topology, from `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
struct View {
    /// For each slot, the port of its primary (0: unassigned).
    owner: Vec<u16>,
    /// Each primary serving slots, with its replicas (those marked failed left out).
    replicas: BTreeMap<u16, BTreeSet<u16>>,
}

async fn view(port: u16) -> Result<View, String> {
    let text = command(port, &["CLUSTER", "NODES"]).await?;
    let mut owner = vec![0u16; usize::from(SLOTS)];
    let mut replicas: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
    let mut ports: HashMap<&str, u16> = HashMap::new();
    let mut replicating: Vec<(u16, &str)> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        // <id> <ip:port@cport[,hostname]> <flags> <primary id or -> <ping-sent> <pong-recv>
        // <config-epoch> <link-state> <slot or range>...; a range in [] migrates, ignored.
        let bad = || format!("{port}: CLUSTER NODES line {line:?}");
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(&id), Some(addr), Some(flags), Some(&primary)) =
            (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            return Err(bad());
        };
        let node_port: u16 = addr
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)?;
        ports.insert(id, node_port);
        if primary != "-" && !flags.split(',').any(|f| f == "fail") {
            replicating.push((node_port, primary));
        }
        for range in f.iter().skip(8).filter(|r| !r.starts_with('[')) {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            let (Ok(start), Ok(end)) = (start.parse::<usize>(), end.parse::<usize>()) else {
                return Err(bad());
            };
            owner.get_mut(start..=end).ok_or_else(bad)?.fill(node_port);
            replicas.entry(node_port).or_default();
        }
    }
    for (replica, primary) in replicating {
        if let Some(set) = ports.get(primary).and_then(|p| replicas.get_mut(p)) {
            set.insert(replica);
        }
    }
    Ok(View { owner, replicas })
}

/// Sends one command to the node on `port` on a new connection and reads its reply, within
/// [`ASK_BOUND`]: the text of a status, integer or bulk string reply. An error reply, a nil and an
/// array (not needed here) are an `Err`.
async fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request += &format!("${}\r\n{a}\r\n", a.len());
        }
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at_checked(1).ok_or("empty reply")?;
        match kind {
            "+" | ":" => Ok(rest.to_owned()),
            "-" => Err(rest.to_owned()),
            "$" => {
                let n: usize = rest.parse().map_err(|_| format!("reply {line:?}"))?;
                let mut buf = vec![0; n + 2];
                reader
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                buf.truncate(n);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            _ => Err(format!("reply {line:?}")),
        }
    };
    match tokio::time::timeout(ASK_BOUND, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(format!("{port}: {args:?}: {e}")),
        Err(_) => Err(format!("{port}: {args:?}: no answer within {ASK_BOUND:?}")),
    }
}

/// The `field:value` lines of an `INFO`-style reply.
async fn fields(port: u16, args: &[&str]) -> Result<HashMap<String, String>, String> {
    let text = command(port, args).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_is_redis_keyslot() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(event_slot("a"), key_slot("event:{a}:sold"));
        assert_eq!(key_slot("a"), 15495);
    }
}
