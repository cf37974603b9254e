//! Injected anomalies: when they strike (a schedule or a probability), which entities, and
//! what they do to a field's values. Event-level anomalies (dropouts, bursts) are applied
//! by the arrival processes in `schedule.rs` through the same [`Trigger`].

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};

use super::scenario::{AnomalyKind, AnomalySpec};

use super::calendar::US_PER_HOUR;

/// When an anomaly is active for an entity.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    mode: Mode,
    duration_us: i64,
    /// Per entity: the start and end of the window a probability opened.
    open: Vec<Option<(i64, i64)>>,
}

#[derive(Debug, Clone)]
enum Mode {
    /// From `at`, again every `every`, for the entities marked true.
    Scheduled {
        at_us: i64,
        every_us: Option<i64>,
        struck: Vec<bool>,
    },
    /// Each event of an entity outside a window opens one with this chance.
    Random { probability: f64 },
}

impl Trigger {
    /// Build from a checked spec; `seed` picks the struck entities.
    pub(crate) fn new(spec: &AnomalySpec, entities: u32, seed: u64) -> Self {
        let duration_us = spec
            .duration
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mode = match (spec.at, spec.probability) {
            (Some(at), _) => {
                let n = spec.entities.unwrap_or(1).min(entities) as usize;
                Mode::Scheduled {
                    at_us: at.timestamp_micros(),
                    every_us: spec
                        .every
                        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX).max(1)),
                    struck: pick(entities as usize, n, seed),
                }
            }
            (None, p) => Mode::Random {
                probability: p.unwrap_or(0.0),
            },
        };
        Self {
            mode,
            duration_us,
            open: vec![None; entities as usize],
        }
    }

    /// If the anomaly is active for `entity` at `t`: when its window began. `rng` decides
    /// random triggers; call once per event, in event order.
    pub(crate) fn check(&mut self, entity: u32, t: i64, rng: &mut impl Rng) -> Option<i64> {
        let e = entity as usize;
        match &self.mode {
            Mode::Scheduled {
                at_us,
                every_us,
                struck,
            } => {
                if !struck.get(e).copied().unwrap_or(false) || t < *at_us {
                    return None;
                }
                let start = match every_us {
                    Some(every) => at_us + (t - at_us) / every * every,
                    None => *at_us,
                };
                if self.duration_us > 0 {
                    return (t < start + self.duration_us).then_some(start);
                }
                // No duration: only the first event of each period (a one-event spike).
                if self.open[e] == Some((start, start)) {
                    return None;
                }
                self.open[e] = Some((start, start));
                Some(start)
            }
            Mode::Random { probability } => {
                if let Some((start, end)) = self.open[e]
                    && t < end
                {
                    return Some(start);
                }
                if rng.random::<f64>() < *probability {
                    self.open[e] = Some((t, t + self.duration_us));
                    return Some(t);
                }
                None
            }
        }
    }
}

/// `n` distinct entities out of `total`, chosen by `seed`.
fn pick(total: usize, n: usize, seed: u64) -> Vec<bool> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..total).collect();
    for i in 0..n.min(total) {
        let j = rng.random_range(i..total);
        order.swap(i, j);
    }
    let mut struck = vec![false; total];
    for &i in &order[..n.min(total)] {
        struck[i] = true;
    }
    struck
}

/// A field anomaly of a stream, applied to generated values.
pub(crate) struct FieldAnomaly {
    pub kind: AnomalyKind,
    /// Index of the label in the stream's anomaly list.
    pub label: u16,
    /// Index of the field among the stream's columns.
    pub field: usize,
    magnitude: f64,
    factor: f64,
    per_hour: f64,
    trigger: Trigger,
    rng: Xoshiro256PlusPlus,
    /// `stuck`: per entity, the last value seen outside the anomaly.
    last: Vec<Option<f64>>,
}

impl FieldAnomaly {
    pub(crate) fn new(
        spec: &AnomalySpec,
        label: u16,
        field: usize,
        entities: u32,
        seed: u64,
    ) -> Self {
        Self {
            kind: spec.kind,
            label,
            field,
            magnitude: spec.magnitude.unwrap_or(0.0),
            factor: spec.factor.unwrap_or(1.0),
            per_hour: spec.per_hour.unwrap_or(0.0),
            trigger: Trigger::new(spec, entities, seed),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_a11a),
            last: vec![None; entities as usize],
        }
    }

    /// Change `values` (one per event) where the anomaly is active and mark those events in
    /// `labels` (bit `label` of each event's label mask).
    pub(crate) fn apply(
        &mut self,
        values: &mut [f64],
        times: &[i64],
        entities: &[u32],
        labels: &mut [u64],
    ) {
        for i in 0..values.len() {
            let (e, t) = (entities[i], times[i]);
            match self.trigger.check(e, t, &mut self.rng) {
                Some(start) => {
                    let v = &mut values[i];
                    match self.kind {
                        AnomalyKind::Spike => *v = *v * self.factor + self.magnitude,
                        AnomalyKind::Drift => {
                            *v += self.per_hour * (t - start) as f64 / US_PER_HOUR as f64;
                        }
                        AnomalyKind::Stuck => {
                            if let Some(last) = self.last[e as usize] {
                                *v = last;
                            } else {
                                self.last[e as usize] = Some(*v);
                            }
                        }
                        AnomalyKind::Dropout | AnomalyKind::Burst => {}
                    }
                    labels[i] |= 1u64 << self.label;
                }
                None => self.last[e as usize] = Some(values[i]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> AnomalySpec {
        toml::from_str(text).expect("anomaly")
    }

    #[test]
    fn scheduled_windows_strike_the_chosen_entities_and_repeat() {
        let s = spec(
            "type = \"drift\"\nat = \"1970-01-01T00:00:00Z\"\nevery = \"10us\"\nduration = \"3us\"\nentities = 2",
        );
        let mut t = Trigger::new(&s, 5, 9);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let struck: Vec<u32> = (0..5)
            .filter(|e| t.check(*e, 1, &mut rng).is_some())
            .collect();
        assert_eq!(struck.len(), 2);
        let e = struck[0];
        assert_eq!(t.check(e, 12, &mut rng), Some(10));
        assert_eq!(t.check(e, 13, &mut rng), None);
        assert_eq!(t.check(e, 29, &mut rng), None);
        assert_eq!(t.check(e, 30, &mut rng), Some(30));
    }

    #[test]
    fn a_scheduled_spike_strikes_one_event() {
        let s = spec("type = \"spike\"\nat = \"1970-01-01T00:00:00.000010Z\"\nmagnitude = 5.0");
        let mut a = FieldAnomaly::new(&s, 0, 0, 1, 1);
        let mut values = vec![1.0; 6];
        let mut labels = vec![0u64; 6];
        a.apply(&mut values, &[0, 5, 12, 13, 20, 30], &[0; 6], &mut labels);
        assert_eq!(values, [1.0, 1.0, 6.0, 1.0, 1.0, 1.0]);
        assert_eq!(labels, [0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn stuck_repeats_the_last_value_and_drift_grows() {
        let s = spec("type = \"stuck\"\nat = \"1970-01-01T00:00:00.000010Z\"\nduration = \"10us\"");
        let mut a = FieldAnomaly::new(&s, 0, 0, 1, 1);
        let mut values = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        let mut labels = vec![0u64; 5];
        a.apply(&mut values, &[0, 9, 10, 15, 20], &[0; 5], &mut labels);
        assert_eq!(values, [1.0, 2.0, 2.0, 2.0, 5.0]);
        assert_eq!(labels, [0, 0, 1, 1, 0]);

        let s = spec(
            "type = \"drift\"\nat = \"1970-01-01T00:00:00Z\"\nduration = \"3h\"\nper_hour = 2.0",
        );
        let mut a = FieldAnomaly::new(&s, 0, 0, 1, 1);
        let mut values = vec![10.0; 2];
        let mut labels = vec![0u64; 2];
        let hour = 3_600_000_000;
        a.apply(&mut values, &[hour, 2 * hour], &[0; 2], &mut labels);
        assert_eq!(values, [12.0, 14.0]);
    }

    #[test]
    fn random_windows_open_at_about_the_probability() {
        let s = spec("type = \"spike\"\nprobability = 0.01\nmagnitude = 1.0");
        let mut a = FieldAnomaly::new(&s, 0, 0, 10, 3);
        let n = 200_000;
        let mut values = vec![0.0; n];
        let mut labels = vec![0u64; n];
        let times: Vec<i64> = (0..n as i64).collect();
        let entities: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        a.apply(&mut values, &times, &entities, &mut labels);
        let hits = labels.iter().filter(|l| **l == 1).count();
        assert!((1700..2300).contains(&hits), "{hits}");
        assert_eq!(values.iter().filter(|v| **v == 1.0).count(), hits);
    }
}
