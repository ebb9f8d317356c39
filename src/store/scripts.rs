//! The Lua scripts, embedded in the binary and identified by their SHA-1, with the NOSCRIPT
//! recovery that makes a Redis restart or `SCRIPT FLUSH` invisible to buyers.

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::scripts::Script;
use fred::types::{FromValue, MultipleKeys, MultipleValues, Value};

/// `lua/purchase.lua`: sells tickets to a batch of purchases, idempotent per batch id; behind
/// `lua/answers.lua`, the Idempotency-Key answers' buckets it shares with `settle.lua`.
pub const PURCHASE: &str = concat!(
    include_str!("../../lua/answers.lua"),
    include_str!("../../lua/purchase.lua")
);
/// `lua/cancel.lua`: makes a purchase of unknown outcome void and returns its ticket.
pub const CANCEL: &str = include_str!("../../lua/cancel.lua");
/// `lua/install.lua`: installs a seeded pool unless the event exists.
pub const INSTALL: &str = include_str!("../../lua/install.lua");
/// `lua/claim.lua`: renews an instance's leases and tops up its fallback reserves, of one event
/// or (a single Redis) several, and reports the other instances' leases.
pub const CLAIM: &str = include_str!("../../lua/claim.lua");
/// `lua/settle.lua`: writes fallback sales into the ledger, idempotently; behind
/// `lua/answers.lua`, as [`PURCHASE`].
pub const SETTLE: &str = concat!(
    include_str!("../../lua/answers.lua"),
    include_str!("../../lua/settle.lua")
);
/// `lua/release.lua`: hands an instance's reserve back to the pool (its own, or a held-back one
/// by an operator's decision).
pub const RELEASE: &str = include_str!("../../lua/release.lua");
/// `lua/counts.lua`: unsold and held-back tickets of many events, read only (a single Redis).
pub const COUNTS: &str = include_str!("../../lua/counts.lua");
/// `lua/quarantine.lua`: holds back the reserve of an instance whose lease expired.
pub const QUARANTINE: &str = include_str!("../../lua/quarantine.lua");

/// A script and its SHA-1, computed once.
#[derive(Debug, Clone)]
pub struct LuaScript {
    script: Script,
}

impl LuaScript {
    /// Wraps the source `lua`.
    pub fn new(lua: &'static str) -> Self {
        Self {
            script: Script::from_lua(lua),
        }
    }

    /// The SHA-1 that EVALSHA names.
    pub fn sha1(&self) -> &str {
        self.script.sha1()
    }

    /// Loads the script into the server behind `client`: every primary of a cluster.
    ///
    /// # Errors
    /// The client's error.
    pub async fn load(&self, client: &Client) -> Result<(), Error> {
        let lua = self.script.lua().expect("built from source").clone();
        if client.is_clustered() {
            client.script_load_cluster::<(), _>(lua).await
        } else {
            client.script_load::<String, _>(lua).await.map(drop)
        }
    }

    /// Runs the script with EVALSHA. On NOSCRIPT (the server restarted, a replica was promoted
    /// in a failover, or the script cache was flushed) runs it once with EVAL, which also
    /// caches it on that server; `on_reload` is told. EVAL goes by the keys, so on a cluster it
    /// reaches the very node that said NOSCRIPT.
    ///
    /// # Errors
    /// The client's error, or the script's.
    pub async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: impl Into<MultipleKeys> + Send,
        args: Vec<Value>,
        on_reload: impl FnOnce(),
    ) -> Result<R, Error> {
        let keys: MultipleKeys = keys.into();
        let args: MultipleValues = args.into_iter().collect();
        match client
            .evalsha(self.script.sha1().clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if is_noscript(&e) => {
                on_reload();
                let lua = self.script.lua().expect("built from source").clone();
                client.eval(lua, keys, args).await
            }
            other => other,
        }
    }
}

/// Whether `e` is Redis saying it does not know the script.
pub fn is_noscript(e: &Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}
