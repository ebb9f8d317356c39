//! `ticketd reserves`: the operator's view of the fallback reserves, and the one way to put a
//! held-back reserve back on sale without its owner.
//!
//! `ticketd reserves` lists, per event, every instance's reserve: live (with the time left on
//! its lease) or held back (its lease expired; not for sale). `ticketd reserves release --event
//! E --instance I --yes` returns a held-back reserve to the pool. That is a decision, not a
//! repair: the owner may have sold some of those tickets while it was cut off from Redis, and
//! only its journal knows which. Restarting the owner on its `--journal-dir` settles them and
//! returns the reserve with no risk; release only when that journal is lost for good.

use std::collections::HashMap;
use std::process::ExitCode;

use fred::clients::Pool;
use fred::interfaces::{ClientLike, HashesInterface, ListInterface};
use fred::types::Value;

use crate::config::{ReservesArgs, ReservesCommand};
use crate::event::EventKeys;
use crate::seed::{command_pool, load_catalog};
use crate::store::fallback::unix_ms;
use crate::store::scripts::{LuaScript, RELEASE};

/// One instance's reserve of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRow {
    /// Event id.
    pub event: String,
    /// Instance id.
    pub instance: String,
    /// Tickets in the reserve list (sold-and-unsettled ones included).
    pub tickets: u64,
    /// `Some(ms left)` for a live lease (negative: expired, not yet held back); `None`: held
    /// back.
    pub lease_left_ms: Option<i64>,
}

/// Every reserve of every event in the catalogue.
///
/// # Errors
/// A Redis error.
pub async fn list(pool: &Pool) -> Result<Vec<ReserveRow>, fred::error::Error> {
    let client = pool.next();
    let now = unix_ms() as i64;
    let mut rows = Vec::new();
    for (event, _) in load_catalog(pool).await? {
        let keys = EventKeys::new(&event);
        let leases: Vec<Value> = client
            .custom(
                fred::cmd!("ZRANGE"),
                vec![
                    Value::from(keys.leases.clone()),
                    0.into(),
                    (-1).into(),
                    "WITHSCORES".into(),
                ],
            )
            .await?;
        let held: HashMap<String, i64> = client.hgetall(keys.held.clone()).await?;
        let mut instances: Vec<(String, Option<i64>)> = leases
            .chunks(2)
            .filter_map(|pair| {
                let expiry = pair.get(1)?.as_f64()? as i64;
                Some((pair[0].as_string()?, Some(expiry - now)))
            })
            .collect();
        instances.extend(held.into_keys().map(|i| (i, None)));
        instances.sort();
        for (instance, lease_left_ms) in instances {
            let tickets: u64 = client.llen(EventKeys::reserve(&event, &instance)).await?;
            rows.push(ReserveRow {
                event: event.clone(),
                instance,
                tickets,
                lease_left_ms,
            });
        }
    }
    Ok(rows)
}

/// Returns instance `instance`'s held-back reserve of `event` to the pool. `Ok(None)`: that
/// reserve is not held back (its owner holds a live lease, or there is none).
///
/// # Errors
/// A Redis error.
pub async fn release(
    pool: &Pool,
    event: &str,
    instance: &str,
) -> Result<Option<u64>, fred::error::Error> {
    let keys = EventKeys::new(event);
    let script_keys = vec![
        keys.tickets.clone(),
        EventKeys::reserve(event, instance),
        keys.leases.clone(),
        keys.reserved.clone(),
        keys.held.clone(),
        keys.reserve_gen.clone(),
    ];
    let args = vec![Value::from(instance), Value::from("held")];
    let n: i64 = LuaScript::new(RELEASE)
        .run(pool.next(), script_keys, args, || ())
        .await?;
    Ok(u64::try_from(n).ok())
}

/// The text table of `rows`.
pub fn render(rows: &[ReserveRow]) -> String {
    let mut out = format!(
        "{:<20} {:<18} {:>8}  {}\n",
        "EVENT", "INSTANCE", "TICKETS", "STATE"
    );
    for r in rows {
        let state = match r.lease_left_ms {
            None => "HELD BACK (lease expired; not for sale)".to_owned(),
            Some(ms) if ms >= 0 => format!("live, lease {:.1}s left", ms as f64 / 1000.0),
            Some(ms) => format!("lease expired {:.1}s ago", -ms as f64 / 1000.0),
        };
        out.push_str(&format!(
            "{:<20} {:<18} {:>8}  {}\n",
            r.event, r.instance, r.tickets, state
        ));
    }
    let held: u64 = rows
        .iter()
        .filter(|r| r.lease_left_ms.is_none())
        .map(|r| r.tickets)
        .sum();
    out.push_str(&format!("{held} tickets held back\n"));
    out
}

/// What `release` tells the operator before it acts.
pub const RELEASE_WARNING: &str = "WARNING: a held-back reserve may hold tickets its instance sold while it was cut off from Redis; only that instance's journal knows which. Restarting the instance on its --journal-dir settles them and returns the reserve safely. Releasing it instead puts every one of its tickets back on sale: a ticket the instance had sold can then be sold again (if the instance does come back, the conflict is logged and counted in ticketd_settle_conflicts_total).";

/// `ticketd reserves [release ...]`.
pub async fn run(args: ReservesArgs) -> ExitCode {
    let pool = match command_pool(args.common.redis_url(), "reserves").await {
        Ok(pool) => pool,
        Err(code) => return code,
    };
    let code = match args.command {
        None => match list(&pool).await {
            Ok(rows) => {
                print!("{}", render(&rows));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticketd reserves: {e}");
                ExitCode::FAILURE
            }
        },
        Some(ReservesCommand::Release {
            event,
            instance,
            yes,
        }) => {
            eprintln!("{RELEASE_WARNING}");
            if !yes {
                eprintln!("ticketd reserves release: nothing done; add --yes to release the reserve of instance {instance} for event {event}");
                ExitCode::from(crate::config::EXIT_CONFIG)
            } else {
                match release(&pool, &event, &instance).await {
                    Ok(Some(n)) => {
                        tracing::warn!(
                            event,
                            instance,
                            tickets = n,
                            "held-back reserve released to the pool by an operator"
                        );
                        println!(
                            "event {event}: {n} tickets of instance {instance} back in the pool"
                        );
                        ExitCode::SUCCESS
                    }
                    Ok(None) => {
                        eprintln!("ticketd reserves release: instance {instance} has no held-back reserve of event {event} (a live lease, or none); nothing done");
                        ExitCode::FAILURE
                    }
                    Err(e) => {
                        eprintln!("ticketd reserves release: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), pool.quit()).await;
    code
}
