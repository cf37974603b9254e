//! Host metrics from `/proc`: CPU time shares since the previous sample, memory and load
//! averages, one row per `interval_ms`. Needs its files granted, `allow_files =
//! ["/proc/stat", "/proc/meminfo", "/proc/loadavg", "/proc/sys/kernel/hostname"]` (never
//! `/proc` itself: it holds the agent's own memory and environment); without them, `open`
//! fails with a clear error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_interval")]
    interval_ms: u64,
    /// Host name column; default: /proc/sys/kernel/hostname.
    host: Option<String>,
}

fn default_interval() -> u64 {
    10_000
}

struct HostMetrics {
    interval: Duration,
    host: String,
    last_sample: Option<SystemTime>,
    last_cpu: CpuTimes,
}

#[derive(Default, Clone, Copy)]
struct CpuTimes {
    user: u64,
    system: u64,
    idle: u64,
    total: u64,
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {path}: {e} (is it granted with allow_files?)"))
}

fn cpu_times() -> Result<CpuTimes, String> {
    let stat = read("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("no aggregate cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return Err(format!("unexpected /proc/stat cpu line: {line}"));
    }
    // user nice system idle iowait irq softirq steal ...
    Ok(CpuTimes {
        user: v[0] + v[1],
        system: v[2] + v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0),
        idle: v[3] + v[4],
        total: v.iter().take(8).sum(),
    })
}

fn meminfo_kb(key: &str, text: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Source for HostMetrics {
    fn open(config: &str, _checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let host = match cfg.host {
            Some(h) => h,
            None => read("/proc/sys/kernel/hostname")?.trim().to_string(),
        };
        let first = cpu_times()?;
        let schema = vec![
            Column::required("ts", ColumnType::TimestampMicros),
            Column::required("host", ColumnType::Utf8),
            Column::required("cpu_user", ColumnType::Float64),
            Column::required("cpu_system", ColumnType::Float64),
            Column::required("cpu_idle", ColumnType::Float64),
            Column::required("mem_total_kb", ColumnType::Int64),
            Column::required("mem_available_kb", ColumnType::Int64),
            Column::required("load1", ColumnType::Float64),
            Column::required("load5", ColumnType::Float64),
            Column::required("load15", ColumnType::Float64),
        ];
        Ok((
            HostMetrics {
                interval: Duration::from_millis(cfg.interval_ms.max(10)),
                host,
                last_sample: None,
                last_cpu: first,
            },
            schema,
        ))
    }

    fn poll(&mut self, _max_rows: u32) -> Result<Poll, String> {
        let now = SystemTime::now();
        if let Some(last) = self.last_sample
            && now.duration_since(last).unwrap_or_default() < self.interval
        {
            return Ok(Poll::idle());
        }
        self.last_sample = Some(now);
        let cpu = cpu_times()?;
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let total = d(cpu.total, self.last_cpu.total).max(1.0);
        let (user, system, idle) = (
            d(cpu.user, self.last_cpu.user) / total,
            d(cpu.system, self.last_cpu.system) / total,
            d(cpu.idle, self.last_cpu.idle) / total,
        );
        self.last_cpu = cpu;
        let mem = read("/proc/meminfo")?;
        let load = read("/proc/loadavg")?;
        let l: Vec<f64> = load
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        if l.len() != 3 {
            return Err(format!("unexpected /proc/loadavg: {load}"));
        }
        let ts = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Ok(Poll::batch(Batch::columns(vec![
            TypedColumn::timestamp_micros(vec![ts]),
            TypedColumn::utf8([self.host.as_str()]),
            TypedColumn::float64(vec![user]),
            TypedColumn::float64(vec![system]),
            TypedColumn::float64(vec![idle]),
            TypedColumn::int64(vec![meminfo_kb("MemTotal:", &mem).unwrap_or(0)]),
            TypedColumn::int64(vec![meminfo_kb("MemAvailable:", &mem).unwrap_or(0)]),
            TypedColumn::float64(vec![l[0]]),
            TypedColumn::float64(vec![l[1]]),
            TypedColumn::float64(vec![l[2]]),
        ])))
    }
}

sluice_plugin::export_source!(HostMetrics);
