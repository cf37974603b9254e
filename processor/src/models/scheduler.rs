//! Runs the models inside `sluice-processor serve`: every poll, each model in dependency
//! order whose schedule is due, until it has caught up with its inputs. A failing model is
//! retried with backoff and does not stop the others.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ModelGraph, Runner, Schedule};

/// Runs at most this many catch-up runs of one model before giving the others a turn.
const MAX_RUNS_PER_TURN: usize = 16;

/// The running model scheduler.
pub struct Scheduler {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Scheduler {
    /// Start running `graph`'s models, checking their inputs every `poll`.
    pub fn start(runner: Runner, graph: ModelGraph, poll: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut last_ran: HashMap<String, Instant> = HashMap::new();
            let mut failing: HashMap<String, (Instant, Duration)> = HashMap::new();
            loop {
                for model in &graph.order {
                    if *stopped.borrow() {
                        return;
                    }
                    let now = Instant::now();
                    if let Schedule::Every(every) = model.cfg.schedule
                        && last_ran.get(&model.name).is_some_and(|t| now < *t + every)
                    {
                        continue;
                    }
                    if failing
                        .get(&model.name)
                        .is_some_and(|(until, _)| now < *until)
                    {
                        continue;
                    }
                    for _ in 0..MAX_RUNS_PER_TURN {
                        match runner.run(model).await {
                            Ok(report) => {
                                failing.remove(&model.name);
                                if report.outcome == "ran" {
                                    last_ran.insert(model.name.clone(), Instant::now());
                                }
                                if !report.more || *stopped.borrow() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let wait = failing
                                    .get(&model.name)
                                    .map_or(Duration::from_secs(1), |(_, w)| {
                                        (*w * 2).min(Duration::from_secs(60))
                                    });
                                tracing::error!(model = %model.name, retry_in = ?wait, "model run failed: {e}");
                                failing.insert(model.name.clone(), (Instant::now() + wait, wait));
                                break;
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Self { stop, handle }
    }

    /// Stop after the run in progress (a run is never cut short between its commits).
    /// Stop after the run in progress, or cut it off after `grace` (a model's commit is
    /// one compare-and-swap: it is in or it is not).
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        crate::tasks::stop_within(self.handle, grace, "the model scheduler").await;
    }
}
