//! When events happen: each entity of a root stream has its own arrival process (constant,
//! Poisson or diurnal), with its own random stream, and the stream's events are those of all
//! entities merged in time order (ties by entity index). Dropouts and bursts act here, on the
//! events themselves. Delays of child events and late arrivals are drawn here too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};

use super::anomaly::Trigger;
use super::scenario::{
    AnomalyKind, AnomalySpec, DelayKind, DelaySpec, LateSpec, RateKind, RateSpec,
};

use super::calendar::{US_PER_SEC, hour_of_day, weekday};

/// One event, before its values are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    pub time_us: i64,
    pub entity: u32,
    /// Bit `i` set: anomaly `i` of the stream labels this event.
    pub label: u64,
}

/// A checked rate, in events per microsecond per entity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    kind: RateKind,
    per_us: f64,
    peak_hour: f64,
    trough: f64,
    weekend: f64,
}

impl Rate {
    /// From a spec whose `per_second` was checked.
    pub(crate) fn new(spec: &RateSpec) -> Result<Self, String> {
        let per_second = spec.per_second()?;
        let trough = spec.trough.unwrap_or(0.2);
        let weekend = spec.weekend.unwrap_or(1.0);
        let peak_hour = spec.peak_hour.unwrap_or(14.0);
        if spec.kind != RateKind::Diurnal
            && (spec.trough.is_some() || spec.weekend.is_some() || spec.peak_hour.is_some())
        {
            return Err("peak_hour, trough and weekend apply to diurnal rates only".into());
        }
        if !(0.0..=1.0).contains(&trough) {
            return Err(format!("trough must be within 0..1, got {trough}"));
        }
        if !(weekend.is_finite() && weekend >= 0.0) {
            return Err(format!("weekend must be >= 0, got {weekend}"));
        }
        if !(0.0..24.0).contains(&peak_hour) {
            return Err(format!("peak_hour must be within 0..24, got {peak_hour}"));
        }
        Ok(Self {
            kind: spec.kind,
            per_us: per_second / US_PER_SEC,
            peak_hour,
            trough,
            weekend,
        })
    }

    /// Constant rate of `per_second` events per entity.
    #[cfg(test)]
    pub(crate) fn constant(per_second: f64) -> Self {
        Self {
            kind: RateKind::Constant,
            per_us: per_second / US_PER_SEC,
            peak_hour: 0.0,
            trough: 1.0,
            weekend: 1.0,
        }
    }

    /// The diurnal intensity at `t` relative to the peak rate.
    fn shape(&self, t: i64) -> f64 {
        let hour = hour_of_day(t);
        let weekend = matches!(weekday(t), 5 | 6);
        let wave = (1.0 + (std::f64::consts::TAU * (hour - self.peak_hour) / 24.0).cos()) / 2.0;
        (self.trough + (1.0 - self.trough) * wave) * if weekend { self.weekend } else { 1.0 }
    }
}

/// Per-entity state of an arrival process.
struct Clock {
    /// Constant rates: position in intervals since the start (fractional: the stagger).
    pos: f64,
    /// Random rates: time of the next event, µs as f64 to accumulate small gaps exactly.
    t: f64,
    rng: Xoshiro256PlusPlus,
    /// Dropouts (as label bits) that swallowed events just before; they label the next one.
    after_dropout: u64,
}

/// An event-level anomaly of a stream.
struct EventAnomaly {
    kind: AnomalyKind,
    label: u16,
    factor: f64,
    trigger: Trigger,
}

/// The events of one root stream, in time order.
pub(crate) struct Arrivals {
    rate: Option<Rate>,
    start_us: i64,
    clocks: Vec<Clock>,
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    anomalies: Vec<EventAnomaly>,
    /// Constant rates without event anomalies: the gap between consecutive events of the
    /// merged stream (entities take turns), so no heap is needed.
    periodic: Option<f64>,
    /// Periodic and unpaced streams: index of the next event (entity = index mod count).
    next_index: u64,
    entities: u32,
}

impl Arrivals {
    /// `rate` none: unpaced (event time is taken when the rows are generated).
    pub(crate) fn new(
        rate: Option<Rate>,
        entities: u32,
        start_us: i64,
        seed: u64,
        anomalies: &[(u16, &AnomalySpec)],
    ) -> Self {
        let entities = entities.max(1);
        let mut clocks: Vec<Clock> = (0..entities)
            .map(|e| Clock {
                pos: f64::from(e) / f64::from(entities),
                t: start_us as f64,
                rng: Xoshiro256PlusPlus::seed_from_u64(mix(seed, u64::from(e))),
                after_dropout: 0,
            })
            .collect();
        let anomalies: Vec<EventAnomaly> = anomalies
            .iter()
            .map(|(label, spec)| EventAnomaly {
                kind: spec.kind,
                label: *label,
                factor: spec.factor.unwrap_or(1.0),
                trigger: Trigger::new(spec, entities, mix(seed, 0xa11 + u64::from(*label))),
            })
            .collect();
        let mut heap = BinaryHeap::new();
        let periodic = rate
            .filter(|r| r.kind == RateKind::Constant && anomalies.is_empty())
            .map(|r| 1.0 / (r.per_us * f64::from(entities)));
        if let Some(rate) = rate.filter(|_| periodic.is_none()) {
            for (e, c) in clocks.iter_mut().enumerate() {
                let t = first_time(&rate, c, start_us);
                heap.push(Reverse((t, e as u32)));
            }
        }
        Self {
            rate,
            start_us,
            clocks,
            heap,
            anomalies,
            periodic,
            next_index: 0,
            entities,
        }
    }

    fn periodic_time(&self, step_us: f64) -> i64 {
        self.start_us + (self.next_index as f64 * step_us).round() as i64
    }

    /// Time of the next event, if the stream is paced.
    pub(crate) fn peek_time(&self) -> Option<i64> {
        if let Some(step) = self.periodic {
            return Some(self.periodic_time(step));
        }
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next event. Unpaced streams get `now_us` as the time.
    pub(crate) fn next(&mut self, now_us: i64) -> Event {
        let entity = (self.next_index % u64::from(self.entities)) as u32;
        if let Some(step) = self.periodic {
            let time_us = self.periodic_time(step);
            self.next_index += 1;
            return Event {
                time_us,
                entity,
                label: 0,
            };
        }
        let Some(rate) = self.rate else {
            self.next_index += 1;
            return Event {
                time_us: now_us,
                entity,
                label: 0,
            };
        };
        loop {
            let Some(Reverse((t, e))) = self.heap.pop() else {
                // Never empty: every pop pushes the entity back.
                return Event {
                    time_us: now_us,
                    entity: 0,
                    label: 0,
                };
            };
            // Event-level anomalies decide on this event, in this entity's order.
            let mut factor = 1.0;
            let mut label = 0;
            let mut dropped = 0;
            let clock = &mut self.clocks[e as usize];
            for a in &mut self.anomalies {
                if a.trigger.check(e, t, &mut clock.rng).is_some() {
                    match a.kind {
                        AnomalyKind::Dropout => dropped |= 1u64 << a.label,
                        AnomalyKind::Burst => {
                            factor *= a.factor;
                            label |= 1u64 << a.label;
                        }
                        _ => {}
                    }
                }
            }
            let next = advance(&rate, clock, self.start_us, factor);
            self.heap.push(Reverse((next, e)));
            if dropped != 0 {
                clock.after_dropout |= dropped;
                continue;
            }
            label |= std::mem::take(&mut clock.after_dropout);
            return Event {
                time_us: t,
                entity: e,
                label,
            };
        }
    }
}

fn first_time(rate: &Rate, c: &mut Clock, start_us: i64) -> i64 {
    match rate.kind {
        RateKind::Constant => start_us + (c.pos / rate.per_us).round() as i64,
        _ => {
            c.t = start_us as f64;
            advance_random(rate, c, 1.0)
        }
    }
}

/// The entity's next event time, at `factor` times its rate.
fn advance(rate: &Rate, c: &mut Clock, start_us: i64, factor: f64) -> i64 {
    match rate.kind {
        RateKind::Constant => {
            c.pos += 1.0 / factor;
            start_us + (c.pos / rate.per_us).round() as i64
        }
        _ => advance_random(rate, c, factor),
    }
}

/// Poisson gaps; diurnal by thinning against the peak rate.
fn advance_random(rate: &Rate, c: &mut Clock, factor: f64) -> i64 {
    let peak = rate.per_us
        * factor
        * if rate.kind == RateKind::Diurnal {
            rate.weekend.max(1.0)
        } else {
            1.0
        };
    loop {
        let gap: f64 = Exp1.sample(&mut c.rng);
        c.t += gap / peak;
        if rate.kind != RateKind::Diurnal {
            break;
        }
        let keep = rate.shape(c.t as i64) / rate.weekend.max(1.0);
        if c.rng.random::<f64>() < keep {
            break;
        }
    }
    c.t.round() as i64
}

/// Seeds for sub-streams: a different, well-mixed seed for every `(seed, n)`.
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    // SplitMix64 finaliser over the pair.
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random duration in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Delay {
    Constant(f64),
    Uniform(f64, f64),
    Exponential(f64),
    Lognormal { mu: f64, sigma: f64 },
}

impl Delay {
    pub(crate) fn new(spec: &DelaySpec) -> Result<Self, String> {
        let us = |d: Option<std::time::Duration>, name: &str| {
            d.map(|d| d.as_secs_f64() * US_PER_SEC)
                .ok_or_else(|| format!("a {:?} delay needs `{name}`", spec.kind))
        };
        let only = |allowed: &[&str]| {
            let given = [
                ("after", spec.after.is_some()),
                ("min", spec.min.is_some()),
                ("max", spec.max.is_some()),
                ("mean", spec.mean.is_some()),
                ("median", spec.median.is_some()),
                ("sigma", spec.sigma.is_some()),
            ];
            match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
                Some((k, _)) => Err(format!("`{k}` does not apply to a {:?} delay", spec.kind)),
                None => Ok(()),
            }
        };
        Ok(match spec.kind {
            DelayKind::Constant => {
                only(&["after"])?;
                Delay::Constant(us(spec.after, "after")?)
            }
            DelayKind::Uniform => {
                only(&["min", "max"])?;
                let (lo, hi) = (us(spec.min, "min")?, us(spec.max, "max")?);
                if lo > hi {
                    return Err("min must not exceed max".into());
                }
                Delay::Uniform(lo, hi)
            }
            DelayKind::Exponential => {
                only(&["mean"])?;
                Delay::Exponential(us(spec.mean, "mean")?)
            }
            DelayKind::Lognormal => {
                only(&["median", "sigma"])?;
                let median = us(spec.median, "median")?;
                let sigma = spec.sigma.unwrap_or(1.0);
                if median <= 0.0 || !(sigma.is_finite() && sigma > 0.0) {
                    return Err("median and sigma must be > 0".into());
                }
                Delay::Lognormal {
                    mu: median.ln(),
                    sigma,
                }
            }
        })
    }

    pub(crate) fn sample(&self, rng: &mut Xoshiro256PlusPlus) -> i64 {
        let us = match *self {
            Delay::Constant(d) => d,
            Delay::Uniform(lo, hi) => lo + (hi - lo) * rng.random::<f64>(),
            Delay::Exponential(mean) => {
                let e: f64 = Exp1.sample(rng);
                e * mean
            }
            Delay::Lognormal { mu, sigma } => {
                let z: f64 = StandardNormal.sample(rng);
                (mu + sigma * z).exp()
            }
        };
        us.round().clamp(0.0, i64::MAX as f64 / 4.0) as i64
    }
}

/// Late arrivals: the chance and the largest delay, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Late {
    pub fraction: f64,
    pub max_delay_us: i64,
}

impl Late {
    pub(crate) fn new(spec: &LateSpec) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&spec.fraction) {
            return Err(format!(
                "fraction must be within 0..1, got {}",
                spec.fraction
            ));
        }
        let max_delay_us = i64::try_from(spec.max_delay.as_micros()).unwrap_or(i64::MAX);
        if max_delay_us <= 0 {
            return Err("max_delay must be greater than zero".into());
        }
        Ok(Self {
            fraction: spec.fraction,
            max_delay_us,
        })
    }

    /// How long after its event time an event is emitted (0 for most).
    pub(crate) fn draw(&self, rng: &mut Xoshiro256PlusPlus) -> i64 {
        if rng.random::<f64>() < self.fraction {
            1 + (rng.random::<f64>() * (self.max_delay_us - 1) as f64) as i64
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{US_PER_DAY, US_PER_HOUR};

    fn rate(text: &str) -> Rate {
        Rate::new(&toml::from_str(text).expect("rate")).expect("valid")
    }

    fn take(a: &mut Arrivals, n: usize) -> Vec<Event> {
        (0..n).map(|_| a.next(0)).collect()
    }

    #[test]
    fn constant_rates_are_staggered_round_robin() {
        let mut a = Arrivals::new(Some(Rate::constant(100.0)), 4, 1_000_000, 1, &[]);
        let ev = take(&mut a, 9);
        let times: Vec<i64> = ev.iter().map(|e| e.time_us - 1_000_000).collect();
        assert_eq!(
            times,
            [0, 2500, 5000, 7500, 10000, 12500, 15000, 17500, 20000]
        );
        let ents: Vec<u32> = ev.iter().map(|e| e.entity).collect();
        assert_eq!(ents, [0, 1, 2, 3, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn poisson_rate_and_order() {
        let mut a = Arrivals::new(
            Some(rate("type = \"poisson\"\nper_second = 10")),
            50,
            0,
            7,
            &[],
        );
        let ev = take(&mut a, 100_000);
        assert!(
            ev.windows(2).all(|w| w[0].time_us <= w[1].time_us),
            "time order"
        );
        // 50 entities × 10/s = 500/s: 100,000 events take about 200 s.
        let secs = ev.last().expect("events").time_us as f64 / 1e6;
        assert!((secs - 200.0).abs() < 4.0, "{secs}");
    }

    #[test]
    fn diurnal_peaks_at_the_peak_hour() {
        let mut a = Arrivals::new(
            Some(rate(
                "type = \"diurnal\"\nper_second = 1\npeak_hour = 15\ntrough = 0.1",
            )),
            10,
            0,
            3,
            &[],
        );
        let mut per_hour = [0u32; 24];
        loop {
            let e = a.next(0);
            if e.time_us >= 2 * US_PER_DAY {
                break;
            }
            per_hour[((e.time_us % US_PER_DAY) / US_PER_HOUR) as usize] += 1;
        }
        let busiest = (0..24).max_by_key(|h| per_hour[*h]).expect("hours");
        let quietest = (0..24).min_by_key(|h| per_hour[*h]).expect("hours");
        assert!((14..=16).contains(&busiest), "{per_hour:?}");
        assert!((2..=4).contains(&quietest), "{per_hour:?}");
        // Peak 10 entities × 3600/h × 2 days = 72,000 at most; the trough is a tenth of it.
        let ratio = f64::from(per_hour[quietest]) / f64::from(per_hour[busiest]);
        assert!((0.05..0.2).contains(&ratio), "{ratio}");
    }

    #[test]
    fn dropouts_remove_events_and_bursts_add_them_labelled() {
        let drop: AnomalySpec =
            toml::from_str("type = \"dropout\"\nat = \"1970-01-01T00:00:10Z\"\nduration = \"10s\"")
                .expect("spec");
        let burst: AnomalySpec = toml::from_str(
            "type = \"burst\"\nat = \"1970-01-01T00:00:30Z\"\nduration = \"10s\"\nfactor = 5",
        )
        .expect("spec");
        let mut a = Arrivals::new(
            Some(Rate::constant(1.0)),
            1,
            0,
            1,
            &[(0, &drop), (1, &burst)],
        );
        let ev: Vec<Event> = std::iter::from_fn(|| Some(a.next(0)))
            .take_while(|e| e.time_us < 50_000_000)
            .collect();
        let secs: Vec<i64> = ev.iter().map(|e| e.time_us / 1_000_000).collect();
        assert!(!secs.iter().any(|s| (10..20).contains(s)), "{secs:?}");
        assert_eq!(
            ev.iter().find(|e| e.time_us >= 20_000_000).map(|e| e.label),
            Some(1)
        );
        let in_burst = ev
            .iter()
            .filter(|e| (30..40).contains(&(e.time_us / 1_000_000)))
            .count();
        assert!((45..=51).contains(&in_burst), "{in_burst}");
        assert!(ev.iter().filter(|e| e.label == 2).count() >= 45);
    }
}
