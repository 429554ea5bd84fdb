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
