//! When a failed plugin is restarted, and when it is given up on.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Restart settings of one plugin.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// First delay; doubles after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// This many failures within `failure_window` give the plugin up.
    pub max_failures: u32,
    pub failure_window: Duration,
}

/// The failure history of one plugin.
pub struct Restarts {
    policy: RestartPolicy,
    failures: VecDeque<Instant>,
    backoff: Duration,
    count: u32,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            failures: VecDeque::new(),
            backoff: policy.backoff_initial,
            count: 0,
        }
    }

    /// Record a failure now: `Ok(delay)` before the next restart, or `Err(reason)` when
    /// the plugin has failed too often within the window and is given up.
    pub fn failed(&mut self, failure: &dyn std::fmt::Display) -> Result<Restart, String> {
        let now = Instant::now();
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.failure_window)
        {
            self.failures.pop_front();
        }
        if self.failures.len() >= self.policy.max_failures as usize {
            return Err(format!(
                "{failure} ({} failures within {:?})",
                self.failures.len(),
                self.policy.failure_window
            ));
        }
        self.count += 1;
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        Ok(Restart {
            delay,
            number: self.count,
        })
    }
}

/// The next restart: after `delay`, the `number`th of this plugin.
pub struct Restart {
    pub delay: Duration,
    pub number: u32,
}

/// Sleep for `d` unless `stop` fires first; false when stopped.
pub fn sleep(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if *stop.borrow() {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    !*stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_then_gives_up_within_the_window() {
        let mut r = Restarts::new(RestartPolicy {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(25),
            max_failures: 4,
            failure_window: Duration::from_secs(60),
        });
        let delays: Vec<_> = (0..3)
            .map(|_| r.failed(&"boom").map(|x| x.delay).expect("restart"))
            .collect();
        assert_eq!(
            delays,
            [10, 20, 25].map(Duration::from_millis).to_vec(),
            "doubling, capped"
        );
        let reason = r.failed(&"boom").err().expect("given up");
        assert!(reason.starts_with("boom (4 failures within"), "{reason}");
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut r = Restarts::new(RestartPolicy {
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            max_failures: 2,
            failure_window: Duration::from_millis(20),
        });
        for _ in 0..5 {
            r.failed(&"x").expect("only one failure in any window");
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}
