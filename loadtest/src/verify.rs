//! The checks on what the clients received: no ticket id twice, no event beyond its capacity.
//!
//! Every ticket id of every 200 answer is kept per event; after the run they go into one set
//! per event. A ticket seen twice means the server sold one seat to two buyers, and more sales
//! than the capacity mean it sold seats it does not have: both fail the run (exit code 2).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// Examples of duplicate tickets kept per event for the report.
const EXAMPLES: usize = 10;

/// What the clients received for one event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventCheck {
    /// Event id.
    pub event: String,
    /// 200 answers with a ticket.
    pub sold: u64,
    /// Distinct ticket ids among them.
    pub distinct: u64,
    /// Tickets of the event in all, when known.
    pub capacity: Option<u64>,
    /// Answers whose ticket id had been received before.
    pub duplicates: u64,
    /// Some of the duplicated ticket ids.
    pub duplicate_examples: Vec<String>,
}

/// The outcome of the ticket checks.
#[derive(Debug)]
pub struct TicketCheck {
    /// One entry per event, in `--events` order.
    pub events: Vec<EventCheck>,
    /// The distinct ticket ids of each event (same order), for the ledger check.
    pub received: Vec<HashSet<Box<str>>>,
    /// What failed, one sentence each; empty when all is well.
    pub failures: Vec<String>,
}

/// Checks the tickets received per event (`tickets[i]` belongs to `events[i]`) against each
/// other and against `capacity`.
pub fn check_tickets(
    events: &[String],
    tickets: Vec<Vec<Box<str>>>,
    capacity: &HashMap<String, u64>,
) -> TicketCheck {
    let mut out = TicketCheck {
        events: Vec::with_capacity(events.len()),
        received: Vec::with_capacity(events.len()),
        failures: Vec::new(),
    };
    for (event, list) in events.iter().zip(tickets) {
        let sold = list.len() as u64;
        let mut seen: HashSet<Box<str>> = HashSet::with_capacity(list.len());
        let mut duplicates = 0u64;
        let mut examples: Vec<String> = Vec::new();
        for ticket in list {
            if seen.contains(&ticket) {
                duplicates += 1;
                if examples.len() < EXAMPLES && !examples.iter().any(|e| **e == *ticket) {
                    examples.push(ticket.into());
                }
            } else {
                seen.insert(ticket);
            }
        }
        let cap = capacity.get(event).copied();
        if duplicates > 0 {
            out.failures.push(format!(
                "event {event}: {duplicates} answer(s) carried a ticket id already sold to another request (e.g. {})",
                examples.join(", ")
            ));
        }
        if let Some(cap) = cap {
            if sold > cap {
                out.failures.push(format!(
                    "event {event}: {sold} tickets sold ({} distinct) but the capacity is {cap}",
                    seen.len()
                ));
            }
        }
        out.events.push(EventCheck {
            event: event.clone(),
            sold,
            distinct: seen.len() as u64,
            capacity: cap,
            duplicates,
            duplicate_examples: examples,
        });
        out.received.push(seen);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Box<str>> {
        list.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn clean_sales_pass() {
        let events = vec!["1".to_string(), "2".to_string()];
        let caps = HashMap::from([("1".to_string(), 3), ("2".to_string(), 2)]);
        let check = check_tickets(
            &events,
            vec![ids(&["1-1", "1-2", "1-3"]), ids(&["2-1"])],
            &caps,
        );
        assert!(check.failures.is_empty(), "{:?}", check.failures);
        assert_eq!(check.events[0].sold, 3);
        assert_eq!(check.events[0].distinct, 3);
        assert_eq!(check.events[1].capacity, Some(2));
        assert_eq!(check.received[1].len(), 1);
    }

    #[test]
    fn a_ticket_sold_twice_fails() {
        let events = vec!["1".to_string()];
        let check = check_tickets(
            &events,
            vec![ids(&["1-1", "1-2", "1-1", "1-1"])],
            &HashMap::new(),
        );
        assert_eq!(check.events[0].duplicates, 2);
        assert_eq!(check.events[0].distinct, 2);
        assert_eq!(check.events[0].duplicate_examples, vec!["1-1".to_string()]);
        assert_eq!(check.failures.len(), 1);
        assert!(check.failures[0].contains("1-1"), "{}", check.failures[0]);
    }

    #[test]
    fn selling_beyond_capacity_fails() {
        let events = vec!["1".to_string()];
        let caps = HashMap::from([("1".to_string(), 2)]);
        let check = check_tickets(&events, vec![ids(&["1-1", "1-2", "1-3"])], &caps);
        assert_eq!(check.failures.len(), 1);
        assert!(
            check.failures[0].contains("capacity is 2"),
            "{}",
            check.failures[0]
        );
        let exact = check_tickets(&events, vec![ids(&["1-1", "1-2"])], &caps);
        assert!(exact.failures.is_empty());
    }

    #[test]
    fn unknown_capacity_only_checks_duplicates() {
        let events = vec!["x".to_string()];
        let check = check_tickets(&events, vec![ids(&["x-1", "x-2"])], &HashMap::new());
        assert!(check.failures.is_empty());
        assert_eq!(check.events[0].capacity, None);
    }
}
