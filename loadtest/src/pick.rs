//! Weighted random choice of the event a request buys.
//!
//! Each worker owns a small, fast, non-cryptographic RNG (`fastrand`); a pick is one random
//! number and a binary search over cumulative weights, so it costs nothing next to a request.

/// Picks an event index with probability proportional to its weight.
#[derive(Debug, Clone)]
pub struct EventPicker {
    /// Running sums of the weights; the last one is the total.
    cumulative: Vec<u64>,
}

impl EventPicker {
    /// A picker over `weights` (one per event, each at least 1).
    ///
    /// # Errors
    /// When there is no weight or a weight is 0.
    pub fn new(weights: &[u32]) -> Result<EventPicker, String> {
        if weights.is_empty() {
            return Err("no event to pick from".into());
        }
        let mut total = 0u64;
        let mut cumulative = Vec::with_capacity(weights.len());
        for &w in weights {
            if w == 0 {
                return Err("an event weight is 0".into());
            }
            total += u64::from(w);
            cumulative.push(total);
        }
        Ok(EventPicker { cumulative })
    }

    /// The index of the next event.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        if self.cumulative.len() == 1 {
            return 0;
        }
        let total = *self.cumulative.last().expect("not empty");
        let r = rng.u64(0..total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_is_always_picked() {
        let p = EventPicker::new(&[7]).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!((0..100).all(|_| p.pick(&mut rng) == 0));
    }

    #[test]
    fn picks_follow_the_weights() {
        let p = EventPicker::new(&[5, 1, 4]).unwrap();
        let mut rng = fastrand::Rng::with_seed(42);
        let mut counts = [0u32; 3];
        let n = 100_000;
        for _ in 0..n {
            counts[p.pick(&mut rng)] += 1;
        }
        let share = |i: usize| f64::from(counts[i]) / f64::from(n);
        assert!((share(0) - 0.5).abs() < 0.01, "{counts:?}");
        assert!((share(1) - 0.1).abs() < 0.01, "{counts:?}");
        assert!((share(2) - 0.4).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn equal_weights_cover_every_event() {
        let p = EventPicker::new(&[1, 1, 1, 1]).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            seen[p.pick(&mut rng)] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn bad_weights_are_refused() {
        assert!(EventPicker::new(&[]).is_err());
        assert!(EventPicker::new(&[1, 0]).is_err());
    }
}
