//! Raft messages duplicated and reordered.

use crate::sweep;
use rap_sim::scenarios;

// Goal: a storage node that receives some Raft messages a second time,
// after newer ones (a sender's retry racing its first copy, a message
// held up in an old connection), keeps every invariant: one leader per
// term, unique and increasing fences, no grant through a minority,
// convergence after heal. Method: the symmetric-partition schedule with
// 5–15 % of AppendEntries, Vote and InstallSnapshot messages delivered
// again 1–300 ms later; three seeds each for 3 and 5 voters.
#[test]
fn duplicated_and_reordered_messages() {
    for voters in [3, 5] {
        let scenario = scenarios::echoes(1, voters);
        assert!(scenario.echo.is_some_and(|plan| plan.rate > 0.0));
        sweep(
            &format!("echoes::duplicated_and_reordered_messages ({voters})"),
            &[1, 2, 3],
            |seed| scenarios::echoes(seed, voters),
        );
    }
}
