//! Promotion of a surviving minority while the old majority lives on.

use crate::sweep;
use rap_sim::scenarios;

// Goal: a promotion signed with the cluster's key re-forms the survivors
// at the next authority term, and the old side, which kept granting its
// old term to stale clients while cut off, is fenced once the network
// heals: it grants nothing more, every node it reaches learns of the new
// term, one leader per (authority term, Raft term), the new group's
// fences survive. Method: a random minority (1 of 3, 2 of 5) is cut off,
// the operator promotes it once it reports `minority`, the network heals
// 2–4 s later; three seeds each, judged by every checker (among them
// `old-side-fenced` and `fenced-grants-nothing`).
#[test]
fn promotion_3_and_5_voters() {
    for voters in [3, 5] {
        let scenario = scenarios::promotion(1, voters);
        let plan = scenario.promotion.clone().expect("a promotion plan");
        assert_eq!(plan.survivors.len(), (voters - 1) / 2, "{plan:?}");
        sweep(
            &format!("promotion::promotion_3_and_5_voters ({voters})"),
            &[1, 2, 3],
            |seed| scenarios::promotion(seed, voters),
        );
    }
}

// Goal: after a promotion and the heal, the operator brings the old side
// back with signed rejoin orders (the product's `rejoin_member`, as
// `rapctl authority rejoin` uses it): each old member retires its storage,
// joins the new group empty, and then the whole cluster agrees on the new
// term, grants fences of it through every node and keeps every
// acknowledged fence; no two leaders in one (authority term, Raft term),
// including a rejoined node's view of the group before it has applied
// anything. Method: `promotion-rejoin-5` (3 old members rejoin) over
// three seeds, judged by every checker; the run fails if a rejoin is
// refused or the cluster does not converge.
#[test]
fn the_old_side_rejoins_after_a_promotion() {
    sweep(
        "promotion::the_old_side_rejoins_after_a_promotion",
        &[1, 2, 3],
        |seed| scenarios::by_name("promotion-rejoin-5", seed).expect("a named scenario"),
    );
}

// Goal: storage nodes check a signed order's age against their own wall
// clock: a node whose clock puts a fresh order outside its window (more
// than 2 min behind, or more than 10 min ahead) takes no order and says
// `ORDER_OUTSIDE_WINDOW`; a node inside it never refuses so; once the
// operator sets the clock right, a freshly signed order promotes it, and
// the run converges as any promotion does. Method: `promotion-skew-5`
// (every node's skew drawn from the seed, inside or outside the window)
// over seeds 1–4, judged by every checker (`order-clock-window` among
// them); at least one of them must see the refusal.
#[test]
fn promotion_orders_keep_to_the_nodes_clocks() {
    let mut refused = 0;
    rap_sim::sweep(
        "promotion::promotion_orders_keep_to_the_nodes_clocks",
        &[1, 2, 3, 4],
        |seed| {
            let scenario = scenarios::by_name("promotion-skew-5", seed).expect("a named scenario");
            let report = rap_sim::run(seed, &scenario);
            refused += report
                .events
                .iter()
                .filter(|e| {
                    matches!(e, rap_sim::Event::Promote { outcome, .. }
                        if outcome.starts_with("refused ORDER_OUTSIDE_WINDOW"))
                })
                .count();
            report.into_result()
        },
    );
    assert!(refused > 0, "no seed drew a clock outside the window");
}
