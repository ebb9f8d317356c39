//! A private Redis Cluster on loopback: six `redis-server` processes (three primaries with one
//! replica each), each on its own free port with its own temporary directory and the durability
//! settings of [`super::redis`], formed with `redis-cli --cluster create`. A test kills, pauses,
//! resumes and restarts single nodes and waits for the failover; every process is killed on drop.
//!
//! The harness talks to the nodes with a small RESP client with timeouts, not `redis-cli`: a
//! paused node accepts connections and never answers. Ports are in 20000..22000, so the cluster
//! bus ports (+10000) stay below the kernel's ephemeral range too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Nodes in the cluster: three primaries, one replica each.
const NODES: usize = 6;
/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// A node's cluster bus listens on its port plus this.
const BUS_OFFSET: u16 = 10_000;
/// How often the harness asks the nodes again while it waits.
const POLL: Duration = Duration::from_millis(50);

/// The hash slot of `key`, as `CLUSTER KEYSLOT` computes it: CRC16 (XMODEM) modulo 16384, of the
/// hash tag when the key has one (the bytes between the first `{` and the first `}` after it,
/// when there is at least one), else of the whole key.
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

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, the checksum Redis Cluster uses.
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

/// A port in 20000..22000 that nobody listens on, whose cluster bus port (+10000, so below the
/// kernel's ephemeral range, 32768 and up) is free too, and that is not in `taken`.
fn free_cluster_port(taken: &[u16]) -> u16 {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..1000)
        .map(|_| rand::random_range(20_000..22_000u16))
        .find(|&p| !taken.contains(&p) && free(p) && free(p + BUS_OFFSET))
        .expect("a free port in 20000..22000 with its bus port free")
}

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// Starts the server on its port and directory; true once it answers as a cluster node,
    /// false when it exited first (its port or bus port was taken meanwhile).
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "node {} already running", self.port);
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"])
            // A failing primary must not stop the healthy ones (CLUSTERDOWN) while its replica
            // takes over: ticketd's failure isolation per shard relies on it (README).
            .args(["--cluster-require-full-coverage", "no"])
            // A replica's full sync starts at once, not after the default 5 s of waiting for
            // more replicas to share the transfer.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            // As in redis.rs: an acknowledged write survives a SIGKILL (design.md, appendfsync).
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "no", "--maxclients", "10000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.paused = false;
        let deadline = Instant::now() + super::WAIT;
        loop {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                self.child = None;
                return false;
            }
            if matches!(
                command(self.port, &["CLUSTER", "MYID"]),
                Ok(Reply::Bulk(Some(_)))
            ) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(POLL);
        }
    }

    fn live(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// SIGKILL (a stopped process dies of it too), and waits for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Six redis-server processes forming one cluster, owned by one test.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// The slots each node served as primary when the test last killed or paused it.
    served: HashMap<u16, Vec<u16>>,
}

impl RedisCluster {
    /// Starts six fresh nodes, forms the cluster (three primaries, one replica each), and waits
    /// until every node reports `cluster_state:ok` with all slots assigned, all nodes agree on
    /// which node serves which slot and which replicates which, and every replica's link to its
    /// primary is up (a replica that never synced cannot be promoted).
    pub fn start() -> Self {
        super::require("redis-server");
        super::require("redis-cli");
        let mut nodes: Vec<Node> = Vec::with_capacity(NODES);
        for _attempt in 0..NODES * 5 {
            if nodes.len() == NODES {
                break;
            }
            let taken: Vec<u16> = nodes.iter().map(|n| n.port).collect();
            let mut node = Node {
                port: free_cluster_port(&taken),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                paused: false,
            };
            if node.spawn() {
                nodes.push(node);
            }
        }
        assert_eq!(nodes.len(), NODES, "could not start {NODES} cluster nodes");
        let cluster = Self {
            nodes,
            served: HashMap::new(),
        };
        cluster.create();
        cluster.wait_until("the cluster to form", || {
            cluster.settled()?;
            let view = cluster.view()?;
            let shape: Vec<usize> = view.replicas.values().map(BTreeSet::len).collect();
            if shape == [1, 1, 1] {
                Ok(())
            } else {
                Err(format!("replicas per primary: {shape:?}"))
            }
        });
        cluster
    }

    /// `redis-cli --cluster create` over all six nodes.
    fn create(&self) {
        let log_path = self.nodes[0].dir.path().join("cluster-create.log");
        let log = File::create(&log_path).expect("create log");
        let mut child = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("redis-cli starts");
        let deadline = Instant::now() + super::WAIT;
        let outcome = loop {
            if let Some(status) = child.try_wait().expect("redis-cli") {
                break status.to_string();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break format!("no exit within {:?}", super::WAIT);
            }
            std::thread::sleep(POLL);
        };
        assert!(
            outcome == "exit status: 0",
            "redis-cli --cluster create: {outcome}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// `redis-cluster://127.0.0.1:<first>?node=127.0.0.1:<second>&node=...`, all six nodes.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().expect("nodes");
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// The six nodes' ports, in the order of [`url`](Self::url).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// For each slot, the port of the primary serving it, as a live node sees it now.
    pub fn slot_map(&self) -> Vec<u16> {
        self.must_view().owner
    }

    /// The ports of the current primaries, ascending.
    pub fn primaries(&self) -> Vec<u16> {
        self.must_view().replicas.into_keys().collect()
    }

    /// The ports of the nodes replicating the primary on `port` now (nodes the cluster marked
    /// failed left out), ascending; empty when `port` serves no slots.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let view = self.must_view();
        view.replicas
            .get(&port)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The port of the primary serving `slot` now.
    pub fn primary_for_slot(&self, slot: u16) -> u16 {
        let owner = self.must_view().owner[usize::from(slot)];
        assert_ne!(owner, 0, "slot {slot} is not assigned");
        owner
    }

    /// Event ids ("1", "2", ...) such that each current primary serves `per_primary` of them:
    /// ticketd's keys for event `ID` are `event:{ID}:...`, all in slot `key_slot("{ID}")`.
    /// Ascending as numbers.
    pub fn events_on_each_primary(&self, per_primary: usize) -> Vec<String> {
        let view = self.must_view();
        let mut count: HashMap<u16, usize> = view.replicas.keys().map(|&p| (p, 0)).collect();
        let mut events = Vec::new();
        for id in 1u32.. {
            if count.values().all(|&n| n >= per_primary) {
                break;
            }
            let id = id.to_string();
            let owner = view.owner[usize::from(key_slot(&format!("{{{id}}}")))];
            let n = count.get_mut(&owner).expect("every slot has a primary");
            if *n < per_primary {
                *n += 1;
                events.push(id);
            }
        }
        events
    }

    /// SIGKILLs the node on `port` and waits for the process to be gone.
    pub fn kill(&mut self, port: u16) {
        self.note_served(port);
        self.node(port).kill();
    }

    /// SIGSTOPs the node on `port`: it keeps its connections and answers nothing.
    pub fn pause(&mut self, port: u16) {
        self.note_served(port);
        let node = self.node(port);
        node.signal("STOP");
        node.paused = true;
    }

    /// Closes the replication links of the primary on `port` (`CLIENT KILL TYPE replica`).
    /// With its replicas paused first, none can reconnect: the primary goes on answering writes
    /// that no replica receives (the bytes already in a paused replica's socket still arrive).
    /// Returns the links closed.
    pub fn detach_replicas(&self, port: u16) -> i64 {
        match command(port, &["CLIENT", "KILL", "TYPE", "replica"]) {
            Ok(Reply::Int(n)) => n,
            other => panic!("CLIENT KILL TYPE replica on {port}: {other:?}"),
        }
    }

    /// Moves `slot` and its keys from the primary serving it to the primary on `to`, the way
    /// `redis-cli --cluster reshard` does, one slot: IMPORTING on the target, MIGRATING on the
    /// source, MIGRATE the keys in groups of `per_step` (each step a separate command, so clients
    /// meet the slot half moved: ASK and TRYAGAIN), then SETSLOT NODE on every live node. Waits
    /// until every live node routes the slot to `to`.
    pub fn move_slot(&self, slot: u16, to: u16, per_step: usize) {
        let from = self.primary_for_slot(slot);
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let id = |port: u16| match command(port, &["CLUSTER", "MYID"]) {
            Ok(Reply::Bulk(Some(id))) => id,
            other => panic!("CLUSTER MYID on {port}: {other:?}"),
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot_s = slot.to_string();
        command(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]).unwrap();
        command(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]).unwrap();
        let count = per_step.to_string();
        loop {
            let keys = match command(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, &count]) {
                Ok(Reply::Array(Some(keys))) => keys,
                other => panic!("GETKEYSINSLOT on {from}: {other:?}"),
            };
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|k| match k {
                    Reply::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect();
            if keys.is_empty() {
                break;
            }
            let to_s = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_s, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            command(from, &args).unwrap();
        }
        // The target first, then the source (as redis-cli does), then the other primaries; the
        // replicas learn it from them.
        let primaries = self.primaries();
        let others = primaries.iter().filter(|&&p| p != to && p != from);
        for &port in [to, from].iter().chain(others) {
            command(port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]).unwrap();
        }
        self.wait_until("the slot to be served by its new primary", || {
            for port in self.live() {
                let v = view(port)?;
                if v.owner[usize::from(slot)] != to {
                    return Err(format!("{port} still routes slot {slot} elsewhere"));
                }
            }
            Ok(())
        });
    }

    /// SIGCONTs the node on `port` paused with [`pause`](Self::pause). Does not wait: the node
    /// catches up with the cluster on its own ([`wait_settled`](Self::wait_settled) waits).
    pub fn resume(&mut self, port: u16) {
        let node = self.node(port);
        assert!(node.paused, "node {port} is not paused");
        node.signal("CONT");
        node.paused = false;
    }

    /// SIGKILLs the node on `port` when it runs, starts it again on the same port and directory
    /// (it rejoins through its nodes.conf, its data comes back from its AOF), and waits until the
    /// cluster has settled with it (see [`wait_settled`](Self::wait_settled)).
    pub fn restart(&mut self, port: u16) {
        if self.node(port).child.is_some() {
            self.kill(port);
        }
        assert!(
            self.node(port).spawn(),
            "redis-server could not start again on {port} (port taken meanwhile?)"
        );
        self.wait_settled();
    }

    /// Waits until every live node (neither killed nor paused) reports `cluster_state:ok` with
    /// all slots assigned and knows all six nodes, all live nodes agree on which node serves
    /// which slot and which replicates which, and every listed replica's link is up.
    pub fn wait_settled(&self) {
        self.wait_until("the cluster to settle", || self.settled());
    }

    /// Waits until another node serves as primary every slot `old_primary` served when the test
    /// killed or paused it, by the account of every live node, each with `cluster_state:ok`;
    /// returns that node's port. Panics when `old_primary` served no slots then.
    pub fn wait_for_failover(&self, old_primary: u16) -> u16 {
        let slots = match self.served.get(&old_primary) {
            Some(slots) if !slots.is_empty() => slots,
            _ => panic!("{old_primary} was no primary when the test last killed or paused it"),
        };
        let mut promoted = 0;
        self.wait_until(&format!("a failover of {old_primary}"), || {
            promoted = self.failed_over(old_primary, slots)?;
            Ok(())
        });
        promoted
    }

    fn failed_over(&self, old: u16, slots: &[u16]) -> Result<u16, String> {
        let mut promoted = None;
        for port in self.live().filter(|&p| p != old) {
            let info = fields(port, &["CLUSTER", "INFO"])?;
            if info.get("cluster_state").map(String::as_str) != Some("ok") {
                return Err(format!("{port}: cluster_state is not ok"));
            }
            let view = view(port)?;
            let owners: BTreeSet<u16> = slots.iter().map(|&s| view.owner[usize::from(s)]).collect();
            let owner = match owners.into_iter().collect::<Vec<_>>()[..] {
                [owner] if owner != old && owner != 0 => owner,
                ref owners => return Err(format!("{port}: {old}'s slots served by {owners:?}")),
            };
            if promoted.is_some_and(|p| p != owner) {
                return Err(format!("nodes disagree: {promoted:?} or {owner}"));
            }
            promoted = Some(owner);
        }
        promoted.ok_or_else(|| "no live node".to_string())
    }

    fn settled(&self) -> Result<(), String> {
        let mut first: Option<(u16, View)> = None;
        for port in self.live() {
            let info = fields(port, &["CLUSTER", "INFO"])?;
            for (field, want) in [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_assigned", SLOTS.to_string()),
                ("cluster_slots_ok", SLOTS.to_string()),
                ("cluster_known_nodes", NODES.to_string()),
            ] {
                let got = info.get(field).map(String::as_str).unwrap_or("missing");
                if got != want {
                    return Err(format!("{port}: {field}:{got}"));
                }
            }
            let view = view(port)?;
            match &first {
                Some((p, v)) if *v != view => {
                    return Err(format!("{port} and {p} disagree on the topology"))
                }
                Some(_) => {}
                None => first = Some((port, view)),
            }
        }
        let (_, view) = first.ok_or("no live node")?;
        for &replica in view.replicas.values().flatten() {
            let info = fields(replica, &["INFO", "replication"])?;
            if info.get("master_link_status").map(String::as_str) != Some("up") {
                return Err(format!("{replica}: link to its primary not up"));
            }
        }
        Ok(())
    }

    /// Polls `ready` every [`POLL`] until it is `Ok`; panics with its last error after
    /// [`super::WAIT`].
    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + super::WAIT;
        loop {
            match ready() {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => panic!(
                    "waited {:?} for {what}: {why}\n{}",
                    super::WAIT,
                    self.describe()
                ),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// One line per node: its port, whether it runs, and how a live one sees itself.
    fn describe(&self) -> String {
        let line = |n: &Node| {
            if n.child.is_none() {
                return format!("{}: killed", n.port);
            }
            if n.paused {
                return format!("{}: paused", n.port);
            }
            let state = fields(n.port, &["CLUSTER", "INFO"])
                .map(|f| f.get("cluster_state").cloned().unwrap_or_default())
                .unwrap_or_else(|e| e);
            let link = fields(n.port, &["INFO", "replication"])
                .map(|f| f.get("master_link_status").cloned().unwrap_or("-".into()))
                .unwrap_or_else(|e| e);
            let myself = match command(n.port, &["CLUSTER", "NODES"]) {
                Ok(Reply::Bulk(Some(text))) => text
                    .lines()
                    .find(|l| l.contains("myself"))
                    .unwrap_or_default()
                    .to_string(),
                other => format!("{other:?}"),
            };
            format!(
                "{}: cluster_state {state}, link to primary {link}, {myself}",
                n.port
            )
        };
        self.nodes.iter().map(line).collect::<Vec<_>>().join("\n")
    }

    /// Records the slots `port` serves as primary, before the test kills or pauses it.
    fn note_served(&mut self, port: u16) {
        if !self.node(port).live() {
            return;
        }
        let owner = self.must_view().owner;
        let slots = (0..SLOTS)
            .filter(|&s| owner[usize::from(s)] == port)
            .collect();
        self.served.insert(port, slots);
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|n| n.live()).map(|n| n.port)
    }

    /// The topology as the first live node that answers sees it.
    fn view(&self) -> Result<View, String> {
        let mut why = "no live node".to_string();
        for port in self.live() {
            match view(port) {
                Ok(v) => return Ok(v),
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    fn must_view(&self) -> View {
        self.view()
            .unwrap_or_else(|why| panic!("no live node answers CLUSTER NODES: {why}"))
    }
}

/// One node's account of the topology, from `CLUSTER NODES`. Not from `CLUSTER SLOTS`: that
/// leaves out a replica until its replication offset, gossiped, is above 0, which on an idle
/// cluster takes the first replication ping (10 s).
#[derive(PartialEq)]
struct View {
    /// For each slot, the port of its primary (0: unassigned).
    owner: Vec<u16>,
    /// Each primary serving slots (also one marked failed, until another takes its slots), with
    /// its replicas (those marked failed left out).
    replicas: BTreeMap<u16, BTreeSet<u16>>,
}

fn view(port: u16) -> Result<View, String> {
    let Reply::Bulk(Some(text)) = command(port, &["CLUSTER", "NODES"])? else {
        return Err(format!("{port}: CLUSTER NODES is no string"));
    };
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

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

/// Sends one command to the node on `port` on a new connection, with timeouts, and reads its
/// reply. A Redis error reply is an `Err`.
fn command(port: u16, args: &[&str]) -> Result<Reply, String> {
    let fail = |e: std::io::Error| format!("{port}: {args:?}: {e}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .map_err(fail)?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request += &format!("${}\r\n{a}\r\n", a.len());
    }
    stream.write_all(request.as_bytes()).map_err(fail)?;
    match read_reply(&mut BufReader::new(stream)).map_err(fail)? {
        Reply::Error(e) => Err(format!("{port}: {args:?}: {e}")),
        reply => Ok(reply),
    }
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let Some(kind) = line.chars().next() else {
        return Err(bad("empty line"));
    };
    let rest = &line[1..];
    let len = || rest.parse::<i64>().map_err(|_| bad(line));
    Ok(match kind {
        '+' => Reply::Status(rest.to_string()),
        '-' => Reply::Error(rest.to_string()),
        ':' => Reply::Int(len()?),
        '$' => match usize::try_from(len()?) {
            Err(_) => Reply::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        '*' => match usize::try_from(len()?) {
            Err(_) => Reply::Array(None),
            Ok(n) => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad(line)),
    })
}

/// The `field:value` lines of an `INFO`-style reply.
fn fields(port: u16, args: &[&str]) -> Result<HashMap<String, String>, String> {
    let Reply::Bulk(Some(text)) = command(port, args)? else {
        return Err(format!("{port}: {args:?} is no string"));
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}
