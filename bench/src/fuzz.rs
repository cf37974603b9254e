//! `sluice-bench fuzz [SECONDS] [SEED]`: the long run of the fuzz harness the test suite
//! runs briefly (`sluice_protocol::hostile::fuzz`). Mutated frames, IPC payloads and Kafka
//! headers go through the decoders the processor runs on a peer's bytes, round-robin, for
//! SECONDS (default 600). A panic stops the run and names the target, seed and case, which
//! replay it; otherwise it prints the cases per target and per second.

use std::time::{Duration, Instant};

use sluice_protocol::hostile::fuzz::{Corpus, Mutator, Outcomes, Target, run};

/// Cases per target between clock checks and progress lines.
const ROUND: u64 = 2_000;

pub fn main(seconds: u64, seed: u64) {
    let corpus = Corpus::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut totals = [Outcomes::default(); Target::ALL.len()];
    let mut round = 0u64;
    println!("fuzzing frames, IPC payloads and Kafka headers for {seconds}s (seed {seed})");
    while Instant::now() < deadline {
        for (i, target) in Target::ALL.into_iter().enumerate() {
            // Each round of each target has a seed of its own, so a finding replays alone.
            let case_seed = seed ^ (round << 8) ^ i as u64;
            let mut mutator = Mutator::new(case_seed);
            let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(target, &corpus, &mut mutator, ROUND)
            }));
            match o {
                Ok(o) => {
                    totals[i].accepted += o.accepted;
                    totals[i].refused += o.refused;
                }
                Err(_) => {
                    eprintln!(
                        "FINDING: a {} input panicked (round seed {case_seed}, {ROUND} cases)",
                        target.name()
                    );
                    std::process::exit(1);
                }
            }
        }
        round += 1;
        if round.is_multiple_of(50) {
            let cases: u64 = totals.iter().map(|o| o.accepted + o.refused).sum();
            eprintln!("  {:>5.0}s  {cases} cases", started.elapsed().as_secs_f64());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = 0;
    for (target, o) in Target::ALL.iter().zip(totals) {
        let n = o.accepted + o.refused;
        all += n;
        println!(
            "{:<14} {n:>12} cases  {:>10.0}/s  accepted {:>10}  refused {:>10}",
            target.name(),
            n as f64 / elapsed,
            o.accepted,
            o.refused
        );
    }
    let caught = sluice_protocol::decoder_panics();
    println!("{all} cases in {elapsed:.0}s, no panic escaped; decoder panics caught: {caught}");
    if caught > 0 {
        eprintln!("FINDING: arrow's decoder panicked on inputs check_stream let through");
        std::process::exit(1);
    }
}
