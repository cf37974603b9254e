//! Health that tells the truth: each part of a pipeline (a shipper lane, a table's lander,
//! a plugin) reports whether it is moving, and the endpoint answers from that.
//!
//! - `/health` (liveness) fails when a part has failed for good (a plugin given up on):
//!   restarting the process is the remedy.
//! - `/ready` also fails while a part has work waiting, or keeps failing, and has made no
//!   progress for `stalled_after` (a shipper whose acknowledgements stopped, a lander that
//!   cannot commit, a log that cannot be written): sending it more work will not help. It
//!   turns ready again with the next progress.
//!
//! A part that is idle (nothing waiting, no error) is never stalled, however long ago it
//! last moved.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The parts of one process and what each last said.
#[derive(Clone)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<String, Part>>>,
    stalled_after: Duration,
}

struct Part {
    /// What `waiting` counts ("batches", "rows").
    unit: &'static str,
    waiting: u64,
    /// The last progress, or when trouble (work waiting, an error) began after an idle
    /// spell.
    since: Instant,
    /// The error the part is retrying after, until it makes progress or recovers.
    error: Option<String>,
    /// Why the part has failed for good.
    failed: Option<String>,
}

/// The answer to `/health` or `/ready`: a status line, then one line per part that is
/// not well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// No part is unwell: answered with 200, otherwise 503.
    pub ok: bool,
    /// One line per unwell part (`sink stalled: ...`, `source failed: ...`); empty when `ok`.
    pub problems: Vec<String>,
}

impl Report {
    /// The response body.
    pub fn body(&self, ok: &str, not_ok: &str) -> String {
        let mut out = String::from(if self.ok { ok } else { not_ok });
        out.push('\n');
        for p in &self.problems {
            let _ = writeln!(out, "{p}");
        }
        out
    }
}

impl Health {
    /// A part with work waiting and no progress for `stalled_after` makes the process not
    /// ready.
    pub fn new(stalled_after: Duration) -> Self {
        Self {
            parts: Arc::default(),
            stalled_after,
        }
    }

    /// Register a part (idle until told otherwise); `unit` names what it waits on. A part
    /// registered again under the same name starts afresh.
    pub fn watch(&self, name: impl Into<String>, unit: &'static str) -> Watch {
        let name: Arc<str> = name.into().into();
        self.with(|parts| {
            parts.insert(
                name.to_string(),
                Part {
                    unit,
                    waiting: 0,
                    since: Instant::now(),
                    error: None,
                    failed: None,
                },
            )
        });
        Watch {
            health: self.clone(),
            name,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Part>) -> R) -> R {
        // Every update is one call: a panic elsewhere cannot leave a part half-written.
        f(&mut self.parts.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Liveness: no part has failed for good.
    pub fn live(&self) -> Report {
        self.report(false)
    }

    /// Readiness: no part has failed, and none has work waiting without progress.
    pub fn ready(&self) -> Report {
        self.report(true)
    }

    fn report(&self, stalls: bool) -> Report {
        let now = Instant::now();
        let problems: Vec<String> = self.with(|parts| {
            parts
                .iter()
                .filter_map(|(name, p)| {
                    if let Some(why) = &p.failed {
                        return Some(format!("{name} failed: {why}"));
                    }
                    let still = now.saturating_duration_since(p.since);
                    let troubled = p.waiting > 0 || p.error.is_some();
                    if !stalls || !troubled || still < self.stalled_after {
                        return None;
                    }
                    let mut line = match p.waiting {
                        0 => format!("{name} stalled: failing for {}s", still.as_secs()),
                        n => format!(
                            "{name} stalled: {n} {} waiting, no progress for {}s",
                            p.unit,
                            still.as_secs()
                        ),
                    };
                    if let Some(e) = &p.error {
                        let _ = write!(line, "; last error: {e}");
                    }
                    Some(line)
                })
                .collect()
        });
        Report {
            ok: problems.is_empty(),
            problems,
        }
    }
}

/// One part's handle on its health. Dropping it keeps the part's last word; see
/// [`Watch::done`].
#[derive(Clone)]
pub struct Watch {
    health: Health,
    name: Arc<str>,
}

impl Watch {
    fn update(&self, f: impl FnOnce(&mut Part)) {
        self.health.with(|parts| {
            if let Some(p) = parts.get_mut(&*self.name) {
                f(p);
            }
        });
    }

    /// `n` items wait for this part now, with no progress made.
    pub fn waiting(&self, n: u64) {
        self.update(|p| {
            if p.waiting == 0 && p.error.is_none() && n > 0 {
                p.since = Instant::now();
            }
            p.waiting = n;
        });
    }

    /// The part made progress. Clears the last error.
    pub fn progressed(&self) {
        self.update(|p| {
            p.since = Instant::now();
            p.error = None;
        });
    }

    /// The part is retrying after `error`: a stall if it lasts (until progress or
    /// [`Watch::recovered`]), even with nothing waiting.
    pub fn error(&self, error: impl Display) {
        let e = error.to_string();
        self.update(|p| {
            if p.waiting == 0 && p.error.is_none() {
                p.since = Instant::now();
            }
            p.error = Some(e);
        });
    }

    /// What failed works again (a connection is back), though nothing has moved yet.
    pub fn recovered(&self) {
        self.update(|p| p.error = None);
    }

    /// The part has failed for good: the process is unhealthy until it restarts.
    pub fn failed(&self, reason: impl Display) {
        let r = reason.to_string();
        self.update(|p| p.failed = Some(r));
    }

    /// The part has finished its work (its pipeline ended): it is no longer reported,
    /// unless it failed.
    pub fn done(&self) {
        self.health.with(|parts| {
            if parts.get(&*self.name).is_some_and(|p| p.failed.is_none()) {
                parts.remove(&*self.name);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_without_progress_is_a_stall() {
        let health = Health::new(Duration::from_millis(50));
        let lane = health.watch("sink telemetry", "batches");
        assert!(health.ready().ok);
        // Idle for longer than the stall time, then work arrives: not yet a stall.
        std::thread::sleep(Duration::from_millis(60));
        lane.waiting(3);
        assert!(health.ready().ok, "{:?}", health.ready());
        lane.error("connection lost: timed out");
        std::thread::sleep(Duration::from_millis(60));
        let r = health.ready();
        assert!(!r.ok);
        assert_eq!(r.problems.len(), 1);
        assert!(
            r.problems[0].starts_with("sink telemetry stalled: 3 batches waiting"),
            "{r:?}"
        );
        assert!(r.problems[0].ends_with("last error: connection lost: timed out"));
        assert!(health.live().ok, "a stall is not a reason to restart");
        lane.progressed();
        lane.waiting(2);
        assert!(health.ready().ok);
        assert!(
            health
                .ready()
                .body("ready", "not ready")
                .starts_with("ready\n")
        );
        // Failing with nothing waiting is a stall too, until it recovers.
        lane.waiting(0);
        lane.error("connection refused");
        std::thread::sleep(Duration::from_millis(60));
        let r = health.ready();
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert!(
            r.problems[0].starts_with("sink telemetry stalled: failing for"),
            "{r:?}"
        );
        assert!(r.problems[0].ends_with("last error: connection refused"));
        lane.recovered();
        assert!(health.ready().ok);
        lane.done();
        lane.waiting(9);
        std::thread::sleep(Duration::from_millis(60));
        assert!(health.ready().ok, "a part that is done is not reported");
    }

    #[test]
    fn a_failure_is_for_good() {
        let health = Health::new(Duration::from_secs(60));
        let plugin = health.watch("plugin \"logs\"", "calls");
        plugin.failed("trapped 3 times in 60s");
        plugin.progressed();
        plugin.done();
        for r in [health.live(), health.ready()] {
            assert!(!r.ok);
            assert_eq!(
                r.problems,
                ["plugin \"logs\" failed: trapped 3 times in 60s"]
            );
        }
        assert_eq!(
            health.live().body("ok", "unhealthy"),
            "unhealthy\nplugin \"logs\" failed: trapped 3 times in 60s\n"
        );
    }
}
