//! `rap-sim`: deterministic turmoil simulations and the invariant oracle
//! (DESIGN.md §8, §9).
//!
//! It will run the real authority, configstore and agent code on simulated
//! hosts under partitions, crashes, loss and delay, and check the split-brain
//! invariants over every seed (`RAP_SIM_SEED=N` replays one).
//!
//! Status: an empty boundary; the first simulations arrive with the
//! authority group.
