//! The knobs of a run's fault schedule. The default knobs are the
//! verification runs' own; in swarm mode (`RunOptions::swarm`) each seed
//! draws its own from the seed: which faults happen and how often, how
//! long they last, how many overlap, how bad the network is and how far
//! the clocks drift apart. A bug that needs many wipes-free partitions, or
//! long stalls with a lossy network, turns up in the seeds whose knobs
//! favour it, where the defaults would spread its ingredients thin (as
//! FoundationDB's simulation varies its knobs per run).

use rand::rngs::SmallRng;
use rand::Rng;

/// The kinds of single faults, in the order of [`Knobs::weights`].
pub(crate) const KINDS: usize = 10;

/// Index of each kind in [`Knobs::weights`].
pub(crate) mod kind {
    pub(crate) const CRASH: usize = 0;
    pub(crate) const STALL_DISK: usize = 1;
    pub(crate) const WIPE_WITNESS: usize = 2;
    pub(crate) const ISOLATE: usize = 3;
    pub(crate) const ONE_WAY: usize = 4;
    pub(crate) const SWITCHOVER: usize = 5;
    pub(crate) const MAINTENANCE: usize = 6;
    pub(crate) const LOSSY: usize = 7;
    pub(crate) const FULL_DISK: usize = 8;
    pub(crate) const LOW_DISK: usize = 9;
}

/// The knobs of one run (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Knobs {
    /// Relative weight of each single fault kind (see [`kind`]).
    pub(crate) weights: [u32; KINDS],
    /// Per cent of episodes that are a dangerous combination.
    pub(crate) combination_per_cent: u32,
    /// A single fault lasts this long (microseconds, drawn in range).
    pub(crate) length_us: (u64, u64),
    /// Per cent of episodes whose successor starts before they end.
    pub(crate) overlap_per_cent: u32,
    /// The pause between episodes (microseconds, drawn in range).
    pub(crate) gap_us: (u64, u64),
    /// The run's network: most loss and duplication (per mille), and the
    /// range of the longest delay (microseconds).
    pub(crate) base_drop_per_mille: u32,
    pub(crate) base_duplicate_per_mille: u32,
    pub(crate) base_max_delay_us: (u64, u64),
    /// Clock skew between members, at most (per mille).
    pub(crate) tick_skew_per_mille: u64,
}

impl Default for Knobs {
    /// The verification runs' knobs.
    fn default() -> Self {
        Knobs {
            weights: [20, 11, 4, 16, 14, 10, 10, 11, 2, 2],
            combination_per_cent: 20,
            length_us: (200_000, 4_000_000),
            overlap_per_cent: 30,
            gap_us: (100_000, 2_000_000),
            base_drop_per_mille: 20,
            base_duplicate_per_mille: 20,
            base_max_delay_us: (500, 10_000),
            tick_skew_per_mille: 20,
        }
    }
}

impl Knobs {
    /// A swarm run's knobs, drawn from `rng`: each kind of fault is off in
    /// about a third of the runs and weighted at random otherwise; the
    /// rest of the knobs span from calmer than the defaults to several
    /// times harsher.
    pub(crate) fn draw(rng: &mut SmallRng) -> Self {
        let mut weights = [0u32; KINDS];
        for w in &mut weights {
            *w = if rng.gen_bool(0.35) {
                0
            } else {
                rng.gen_range(1..=30)
            };
        }
        if weights.iter().all(|w| *w == 0) {
            weights[kind::CRASH] = 1;
        }
        let longest = rng.gen_range(1_000_000..=10_000_000);
        let gap = rng.gen_range(200_000..=3_000_000);
        Knobs {
            weights,
            combination_per_cent: rng.gen_range(0..=60),
            length_us: (100_000, longest),
            overlap_per_cent: rng.gen_range(0..=80),
            gap_us: (50_000, gap),
            base_drop_per_mille: rng.gen_range(0..=60),
            base_duplicate_per_mille: rng.gen_range(0..=60),
            base_max_delay_us: (500, rng.gen_range(1_000..=40_000)),
            tick_skew_per_mille: rng.gen_range(0..=50),
        }
    }

    /// Picks a fault kind by weight, drawing once from `rng` (with the
    /// default weights this is the draw the verification runs always
    /// made).
    pub(crate) fn pick(&self, rng: &mut SmallRng) -> usize {
        let total: u32 = self.weights.iter().sum();
        let mut at = rng.gen_range(0..total.max(1));
        for (k, w) in self.weights.iter().enumerate() {
            if at < *w {
                return k;
            }
            at -= w;
        }
        kind::CRASH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn picks_follow_the_weights() {
        let k = Knobs::default();
        assert_eq!(k.weights.iter().sum::<u32>(), 100);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = [0u32; KINDS];
        for _ in 0..100_000 {
            counts[k.pick(&mut rng)] += 1;
        }
        for (kind, (n, w)) in counts.iter().zip(k.weights).enumerate() {
            let expected = w * 1000;
            assert!(
                n.abs_diff(expected) <= expected / 10 + 100,
                "kind {kind}: {n} picks for weight {w}"
            );
        }
    }

    #[test]
    fn swarm_knobs_vary_and_always_leave_a_fault() {
        let mut rng = SmallRng::seed_from_u64(7);
        let drawn: Vec<Knobs> = (0..200).map(|_| Knobs::draw(&mut rng)).collect();
        assert!(drawn.iter().all(|k| k.weights.iter().any(|w| *w > 0)));
        assert!(drawn.iter().any(|k| k.weights[kind::WIPE_WITNESS] == 0));
        assert!(drawn.iter().any(|k| k.weights[kind::WIPE_WITNESS] > 20));
        assert!(drawn.iter().any(|k| k.length_us.1 > 8_000_000));
        assert!(drawn.iter().any(|k| k.tick_skew_per_mille > 40));
    }
}
