//! Skewed wall clocks of the storage nodes (turmoil has one clock: a skew
//! is an offset on the system's wall clock, handed to the node through
//! `NodeOptions::clock`). What a storage node checks against its wall
//! clock is the age of a signed order (promotion, rejoin): an order is
//! taken only if it was issued within [`ORDER_AGE_MS_MAX`] before, and at
//! most [`ORDER_SKEW_MS_MAX`] after, the node's now.
//!
//! Each node's skew is drawn from the seed, of one of four kinds: behind
//! or ahead inside the order window, or behind or ahead outside it (by at
//! least [`CLOCK_MARGIN_MS`], so the wall time a run takes between issuing
//! and checking an order never moves a node across the edge). An
//! operator told that an order is outside a node's window sets that
//! node's clock right and sends a fresh order ([`crate::operator`]).

use crate::events::NodeIndex;
use crate::seed::SimRng;
use rap_authority::promotion::{ORDER_AGE_MS_MAX, ORDER_SKEW_MS_MAX};
use rap_proto::time::{UnixMillis, WallClock};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// How far from the order window's edges a drawn skew stays.
pub const CLOCK_MARGIN_MS: i64 = 30_000;

/// The largest skew drawn outside the window (either way).
pub const CLOCK_SKEW_FAR_MS: i64 = 60 * 60 * 1000;

/// The storage nodes' clock skews, shared by their hosts and the operator.
#[derive(Clone, Debug)]
pub struct NodeClocks {
    skews: Arc<Vec<AtomicI64>>,
}

impl NodeClocks {
    /// One skew per node of `nodes`, drawn from `rng`.
    pub fn draw(rng: &mut SimRng, nodes: usize) -> Self {
        let mut ms = |from: i64, to: i64| {
            let span = u64::try_from(to - from).unwrap_or(0);
            let drawn = rng.millis(Duration::ZERO, Duration::from_millis(span.max(1)));
            from + i64::try_from(drawn.as_millis()).unwrap_or(0)
        };
        let skews = (0..nodes)
            .map(|_| {
                let kind = ms(0, 4);
                let skew = match kind {
                    // Behind, inside the window.
                    0 => -ms(0, ORDER_SKEW_MS_MAX - CLOCK_MARGIN_MS),
                    // Ahead, inside the window.
                    1 => ms(0, ORDER_AGE_MS_MAX - CLOCK_MARGIN_MS),
                    // Behind, outside: every fresh order is from its future.
                    2 => -ms(ORDER_SKEW_MS_MAX + CLOCK_MARGIN_MS, CLOCK_SKEW_FAR_MS),
                    // Ahead, outside: every fresh order is too old to it.
                    _ => ms(ORDER_AGE_MS_MAX + CLOCK_MARGIN_MS, CLOCK_SKEW_FAR_MS),
                };
                AtomicI64::new(skew)
            })
            .collect();
        NodeClocks {
            skews: Arc::new(skews),
        }
    }

    /// `node`'s skew now, in milliseconds (negative: behind).
    pub fn skew(&self, node: NodeIndex) -> i64 {
        self.skews
            .get(node)
            .map_or(0, |skew| skew.load(Ordering::SeqCst))
    }

    /// Sets `node`'s clock right (as an operator fixes its time sync).
    pub fn set_right(&self, node: NodeIndex) {
        if let Some(skew) = self.skews.get(node) {
            skew.store(0, Ordering::SeqCst);
        }
    }

    /// `node`'s wall clock, for `NodeOptions::clock`.
    pub fn clock_of(&self, node: NodeIndex) -> WallClock {
        let clocks = self.clone();
        Arc::new(move || UnixMillis::now().plus_ms(clocks.skew(node)))
    }
}

/// Whether a node whose clock is off by `skew_ms` takes a fresh order.
pub fn order_window_admits(skew_ms: i64) -> bool {
    (-ORDER_SKEW_MS_MAX..=ORDER_AGE_MS_MAX).contains(&skew_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the four kinds are all drawn, each clear of the window's edges
    // by the margin. Method: many draws.
    #[test]
    fn skews_keep_clear_of_the_window_edges() {
        let mut rng = SimRng::new(3);
        let clocks = NodeClocks::draw(&mut rng, 400);
        let mut inside = 0;
        for node in 0..400 {
            let skew = clocks.skew(node);
            let from_edges = (skew + ORDER_SKEW_MS_MAX)
                .abs()
                .min((skew - ORDER_AGE_MS_MAX).abs());
            assert!(from_edges >= CLOCK_MARGIN_MS, "{skew}");
            inside += usize::from(order_window_admits(skew));
        }
        assert!((100..300).contains(&inside), "{inside} of 400 inside");
        clocks.set_right(0);
        assert_eq!(clocks.skew(0), 0);
    }
}
