//! Time units and the calendar arithmetic the simulator shares (UTC, microseconds since
//! the Unix epoch).

pub const US_PER_SEC: f64 = 1e6;
pub const US_PER_HOUR: i64 = 3_600_000_000;
pub const US_PER_DAY: i64 = 86_400_000_000;

/// The hour of the day at `t`, with its fraction (0.0 ..< 24.0).
pub fn hour_of_day(t: i64) -> f64 {
    t.rem_euclid(US_PER_DAY) as f64 / US_PER_HOUR as f64
}

/// The day of the week at `t`, 0 = Monday (the Unix epoch was a Thursday).
pub fn weekday(t: i64) -> i64 {
    (t.div_euclid(US_PER_DAY) + 3).rem_euclid(7)
}
