//! Invariant 9: a higher authority term is believed only with its signed
//! promotion order.

use rap_sim::scenarios;

// Goal: forged Raft RPCs from a non-member host, claiming a higher
// authority term with no proof, garbage, or an order signed by a key the
// cluster does not trust (as the forger or claiming to be a member), are
// all refused, no node ever reports `fenced`, and the group keeps
// granting unique, increasing fences through a crash and restart.
// Method: the `forged-terms` scenario over four seeds, judged by every
// checker (`no_unproven_term_believed` among them); the forged RPCs must
// have reached the nodes (some answered UNPROVEN_TERM).
#[test]
fn forged_higher_terms_fence_nobody() {
    rap_sim::sweep(
        "forged::forged_higher_terms_fence_nobody",
        &[1, 2, 3, 4],
        |seed| {
            let report = rap_sim::run(seed, &scenarios::forged_terms(seed));
            let refused = report
            .events
            .iter()
            .filter(|e| matches!(e, rap_sim::Event::Forged { outcome, .. } if outcome == "UNPROVEN_TERM"))
            .count();
            let summary = report.into_result()?;
            if refused == 0 {
                return Err(format!(
                    "no forged RPC reached a node's term check: {summary}"
                ));
            }
            Ok(format!(
                "{summary}; {refused} forged RPCs refused UNPROVEN_TERM"
            ))
        },
    );
}

// Goal: the oracle itself catches what it must: a `fenced` view and an
// answered forgery are violations. Method: hand-made event logs.
#[test]
fn the_oracle_flags_unproven_fencing() {
    use rap_authority::partition::PartitionView;
    use rap_sim::Event;
    use rap_sim::checkers::no_unproven_term_believed;
    use std::time::Duration;
    let fenced = vec![Event::View {
        at: Duration::from_millis(5),
        node: 1,
        view: PartitionView::Fenced,
    }];
    assert_eq!(no_unproven_term_believed(&fenced).len(), 1);
    let answered = vec![Event::Forged {
        at: Duration::from_millis(5),
        node: 0,
        from: "forger".into(),
        term: 3,
        proof: "none",
        outcome: "accepted".into(),
    }];
    assert_eq!(no_unproven_term_believed(&answered).len(), 1);
    let refused = vec![Event::Forged {
        at: Duration::from_millis(5),
        node: 0,
        from: "forger".into(),
        term: 3,
        proof: "none",
        outcome: "UNPROVEN_TERM".into(),
    }];
    assert!(no_unproven_term_believed(&refused).is_empty());
}
