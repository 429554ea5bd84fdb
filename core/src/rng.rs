//! A small seeded generator: every random choice of the simulator and of
//! the fault-injection harness on real processes draws from one, so a
//! run is a function of its seed.

use std::time::Duration;

/// SplitMix64: tiny, fast, good enough to pick partitions and delays, and
/// the same on every platform. Not for cryptography.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng { state: seed }
    }

    /// An independent generator for one purpose (`label`), so adding a
    /// draw for one purpose does not shift the draws of another.
    pub fn fork(&self, label: &str) -> SeededRng {
        let mut hash = self.state ^ 0xcbf2_9ce4_8422_2325;
        for byte in label.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut forked = SeededRng::new(hash);
        forked.next_u64();
        forked
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`0` when `bound` is `0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// An index into a slice of `len` elements (`0` when empty).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// A duration in `[low, high)` at millisecond resolution (`low` when
    /// the range is empty).
    pub fn millis(&mut self, low: Duration, high: Duration) -> Duration {
        let low_ms = low.as_millis() as u64;
        let high_ms = high.as_millis() as u64;
        Duration::from_millis(low_ms + self.below(high_ms.saturating_sub(low_ms)))
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p.clamp(0.0, 1.0)
    }

    /// `count` distinct indices of `0..len`, in increasing order.
    pub fn subset(&mut self, len: usize, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..len).collect();
        for i in (1..all.len()).rev() {
            let j = self.index(i + 1);
            all.swap(i, j);
        }
        let mut chosen: Vec<usize> = all.into_iter().take(count.min(len)).collect();
        chosen.sort_unstable();
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the generator is a pure function of its seed, forks are
    // independent of each other, and ranges are respected. Method: draw.
    #[test]
    fn generator_is_deterministic_and_in_range() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(a.fork("x").next_u64(), a.fork("y").next_u64());
        let low = Duration::from_millis(10);
        let high = Duration::from_millis(20);
        for _ in 0..1_000 {
            let d = a.millis(low, high);
            assert!(d >= low && d < high);
            assert!(a.below(3) < 3);
        }
        let subset = a.subset(5, 2);
        assert_eq!(subset.len(), 2);
        assert!(subset[0] < subset[1] && subset[1] < 5);
    }
}
