use std::collections::{HashMap, HashSet};

use arrow_array::cast::AsArray;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};

use super::plan::ANOMALY_COLUMN;
use super::*;
use crate::scenario::ScenarioSpec;

fn scenario(text: &str) -> Arc<Scenario> {
    let spec: ScenarioSpec = toml::from_str(text).expect("parses");
    Arc::new(Scenario::compile(&spec, false).expect("compiles"))
}

fn compile_err(text: &str) -> String {
    let spec: ScenarioSpec = toml::from_str(text).expect("parses");
    let e = Scenario::compile(&spec, false).expect_err("invalid");
    format!("{}: {}", e.key, e.message)
}

/// Every stream's rows, concatenated per stream.
fn run_all(
    sc: &Arc<Scenario>,
    rows: Option<u64>,
    chunk: usize,
    threads: usize,
) -> Vec<RecordBatch> {
    let mut sim = Simulation::new(
        sc.clone(),
        RunOptions {
            start_us: 0,
            rows,
            end_us: None,
            threads,
        },
    );
    let n = sc.streams.len();
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    loop {
        match sim.step(chunk, None).expect("step") {
            Step::Rows { stream, batch } => parts[stream].push(batch),
            Step::Done => break,
            Step::Wait(_) => panic!("no clock"),
        }
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| arrow_select::concat::concat_batches(&sc.schema(i), &p).expect("concat"))
        .collect()
}

fn digest(batches: &[RecordBatch]) -> String {
    let mut h = Sha256::new();
    for b in batches {
        let mut buf = Vec::new();
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        w.write(b).expect("json");
        w.finish().expect("json");
        h.update(&buf);
    }
    format!("{:x}", h.finalize())
}

fn f64s<'a>(b: &'a RecordBatch, name: &str) -> &'a [f64] {
    b.column_by_name(name)
        .expect(name)
        .as_primitive::<Float64Type>()
        .values()
}
fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    b.column_by_name(name)
        .expect(name)
        .as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}
fn times(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name("ts")
        .expect("ts")
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec()
}

const ECOMMERCE: &str = include_str!("../../../examples/sim/ecommerce.toml");
const IOT: &str = include_str!("../../../examples/sim/iot-fleet.toml");
const HOSTS: &str = include_str!("../../../examples/sim/host-metrics.toml");
const WEB: &str = include_str!("../../../examples/sim/web-access.toml");

#[test]
fn examples_compile() {
    for text in [ECOMMERCE, IOT, HOSTS, WEB] {
        scenario(text);
    }
}

#[test]
fn identical_output_whatever_the_chunk_size_and_threads() {
    for text in [ECOMMERCE, IOT, HOSTS] {
        let sc = scenario(text);
        let a = digest(&run_all(&sc, Some(30_000), 8192, 1));
        let b = digest(&run_all(&sc, Some(30_000), 777, 4));
        let c = digest(&run_all(&sc, Some(30_000), 30_000, 2));
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
    // And a different seed changes it.
    let other = scenario(&ECOMMERCE.replace("seed = 5", "seed = 6"));
    assert_ne!(
        digest(&run_all(&scenario(ECOMMERCE), Some(5000), 8192, 1)),
        digest(&run_all(&other, Some(5000), 8192, 1))
    );
}

#[test]
fn related_streams_keep_their_keys() {
    let sc = scenario(ECOMMERCE);
    let out = run_all(&sc, Some(40_000), 4096, 1);
    let (orders, payments, shipments) = (&out[0], &out[1], &out[2]);
    let order_ids = strs(orders, "order_id");
    let by_id: HashMap<&str, usize> = order_ids
        .iter()
        .enumerate()
        .map(|(i, o)| (o.as_deref().expect("id"), i))
        .collect();
    assert_eq!(by_id.len(), orders.num_rows(), "order ids are unique");
    let (ot, pt) = (times(orders), times(payments));
    let (oa, pa) = (f64s(orders, "amount"), f64s(payments, "amount"));
    let (oc, pc) = (strs(orders, "customer_id"), strs(payments, "customer_id"));
    let mut paid = HashSet::new();
    for (i, id) in strs(payments, "order_id").iter().enumerate() {
        let id = id.as_deref().expect("order id");
        let o = by_id[id];
        assert!(pt[i] >= ot[o], "a payment follows its order");
        assert_eq!((pa[i], &pc[i]), (oa[o], &oc[o]));
        paid.insert(id.to_string());
    }
    // 96 % of orders are paid (orders near the end may be paid after it).
    let share = paid.len() as f64 / orders.num_rows() as f64;
    assert!((0.94..0.975).contains(&share), "{share}");
    for id in strs(shipments, "order_id") {
        assert!(
            paid.contains(&id.expect("order id")),
            "shipped orders were paid"
        );
    }
    assert!(
        times(payments).windows(2).all(|w| w[0] <= w[1]),
        "payments in time order"
    );
}

#[test]
fn rates_entities_and_distributions_hold_over_a_large_sample() {
    let sc = scenario(HOSTS);
    let out = run_all(&sc, None, 8192, 1);
    let (cpu, logs) = (&out[0], &out[1]);
    // 40 hosts every 15 s for two days.
    assert_eq!(cpu.num_rows(), 40 * 4 * 60 * 48);
    // Logs: Poisson, 6 per minute per host (plus a burst of 20x on 3 hosts for 10 min).
    let expected = 40.0 * 6.0 * 60.0 * 48.0 + 3.0 * 6.0 * 10.0 * 19.0;
    let n = logs.num_rows() as f64;
    assert!(
        (n - expected).abs() < 4.0 * expected.sqrt(),
        "{n} vs {expected}"
    );
    // Hosts are shared: every host of the logs is a host of the metrics.
    let hosts: HashSet<_> = strs(cpu, "host").into_iter().collect();
    assert_eq!(hosts.len(), 40);
    assert!(strs(logs, "host").into_iter().all(|h| hosts.contains(&h)));
    // Category frequencies.
    let levels = strs(logs, "level");
    let errors = levels
        .iter()
        .filter(|l| l.as_deref() == Some("ERROR"))
        .count() as f64
        / n;
    assert!((errors - 0.05).abs() < 0.005, "{errors}");
    // Seasonality: CPU peaks around 14:00 and bottoms out around 02:00, period one day.
    let (ts, cpu_pct) = (times(cpu), f64s(cpu, "cpu_pct"));
    let mut by_hour = [(0.0, 0u32); 24];
    for (t, v) in ts.iter().zip(cpu_pct) {
        let h = ((t / 3_600_000_000) % 24) as usize;
        by_hour[h].0 += v;
        by_hour[h].1 += 1;
    }
    let mean: Vec<f64> = by_hour.iter().map(|(s, n)| s / f64::from(*n)).collect();
    let peak = (0..24)
        .max_by(|a, b| mean[*a].total_cmp(&mean[*b]))
        .expect("hours");
    let low = (0..24)
        .min_by(|a, b| mean[*a].total_cmp(&mean[*b]))
        .expect("hours");
    assert!(
        (13..=15).contains(&peak) && (1..=3).contains(&low),
        "{mean:?}"
    );
    assert!(
        (mean[peak] - mean[low] - 40.0).abs() < 4.0,
        "daily amplitude 20"
    );
    // Expressions see the row: load1 = cpu_pct / 100 * cores.
    let cores = cpu
        .column_by_name("cores")
        .expect("cores")
        .as_primitive::<Int64Type>()
        .values();
    let load = f64s(cpu, "load1");
    for i in (0..cpu.num_rows()).step_by(997) {
        assert!((load[i] - (cpu_pct[i] / 100.0 * cores[i] as f64).max(0.0)).abs() < 1e-9);
    }
    // Random walks stay within their bounds (where no drift was injected on top).
    let labels = strs(cpu, ANOMALY_COLUMN);
    let mem = f64s(cpu, "mem_used_gb");
    assert!(
        labels.iter().any(Option::is_some),
        "the memory leak was injected"
    );
    for (v, label) in mem.iter().zip(&labels) {
        if label.is_none() {
            assert!((0.5..=60.0).contains(v), "{v}");
        }
    }
}

#[test]
fn anomaly_labels_match_the_injected_changes() {
    let sc = scenario(
        r#"
        seed = 1
        start = "2026-01-01T00:00:00Z"
        end = "2026-01-01T06:00:00Z"
        [entities.dev]
        count = 20
        [streams.m]
        entity = "dev"
        rate = { type = "constant", every = "10s" }
        [streams.m.fields]
        ts = { type = "timestamp" }
        dev = { type = "entity" }
        v = { type = "normal", mean = 10.0, stddev = 0.001 }
        w = { type = "normal", mean = 10.0, stddev = 0.5 }
        x = { type = "normal", mean = 0.0, stddev = 0.001 }
        [[streams.m.anomalies]]
        type = "spike"
        field = "v"
        probability = 0.01
        magnitude = 5.0
        [[streams.m.anomalies]]
        type = "stuck"
        field = "w"
        at = "2026-01-01T01:00:00Z"
        duration = "30m"
        entities = 3
        [[streams.m.anomalies]]
        type = "drift"
        field = "x"
        at = "2026-01-01T02:00:00Z"
        duration = "1h"
        per_hour = 6.0
        entities = 2
        [[streams.m.anomalies]]
        type = "dropout"
        at = "2026-01-01T04:00:00Z"
        duration = "20m"
        entities = 4
    "#,
    );
    let b = &run_all(&sc, None, 1000, 1)[0];
    let labels = strs(b, ANOMALY_COLUMN);
    let (v, w, x, ts, dev) = (
        f64s(b, "v"),
        f64s(b, "w"),
        f64s(b, "x"),
        times(b),
        strs(b, "dev"),
    );
    let hour = 3_600_000_000i64;
    let t0 = ts[0];
    let mut spikes = 0;
    let mut stuck: HashMap<String, Vec<f64>> = HashMap::new();
    for i in 0..b.num_rows() {
        let label = labels[i].as_deref();
        // Spikes: exactly the labelled rows are 5 higher (unless another label won).
        let has = |l: &str| label.is_some_and(|x| x.split(',').any(|y| y == l));
        // Spikes: exactly the labelled rows are 5 higher.
        if has("spike") {
            spikes += 1;
            assert!((v[i] - 15.0).abs() < 0.01);
        } else {
            assert!((v[i] - 10.0).abs() < 0.01);
        }
        if has("stuck") {
            stuck
                .entry(dev[i].clone().expect("dev"))
                .or_default()
                .push(w[i]);
            assert!((t0 + hour..t0 + hour * 3 / 2).contains(&ts[i]));
        }
        if has("drift") {
            let hours = (ts[i] - (t0 + 2 * hour)) as f64 / hour as f64;
            assert!((x[i] - 6.0 * hours).abs() < 0.01, "drift grows at 6/h");
        } else {
            assert!(x[i].abs() < 0.01);
        }
        if (t0 + 4 * hour..t0 + 4 * hour + hour / 3).contains(&ts[i]) {
            assert!(!has("dropout"));
        }
    }
    // 1 % of 43,200 events (20 devices every 10 s for 6 hours).
    assert!((350..520).contains(&spikes), "{spikes}");
    assert_eq!(stuck.len(), 3, "three stuck devices");
    for values in stuck.values() {
        assert!(
            values.windows(2).all(|p| p[0] == p[1]),
            "stuck values do not move"
        );
        assert_eq!(values.len(), 180);
    }
    // Four devices are silent for 20 minutes; the first event after each gap is labelled.
    let dropouts = labels
        .iter()
        .filter(|l| l.as_deref().is_some_and(|x| x.contains("dropout")))
        .count();
    assert_eq!(dropouts, 4);
    assert_eq!(b.num_rows(), 20 * 6 * 360 - 4 * 120);
}

#[test]
fn unpaced_streams_run_against_a_clock_without_waiting() {
    let text = r#"
        [streams.s]
        [streams.s.fields]
        ts = { type = "timestamp" }
        n = { type = "sequence" }
    "#;
    let spec: ScenarioSpec = toml::from_str(text).expect("parses");
    let sc = Arc::new(Scenario::compile(&spec, true).expect("compiles unpaced"));
    let mut sim = Simulation::new(
        sc,
        RunOptions {
            start_us: 0,
            rows: Some(10_000),
            end_us: None,
            threads: 1,
        },
    );
    // A clock far behind the wall clock must not stall an unpaced stream.
    let mut rows = 0;
    for _ in 0..100 {
        match sim.step(1000, Some(0)).expect("step") {
            Step::Rows { batch, .. } => rows += batch.num_rows(),
            Step::Done => break,
            Step::Wait(t) => panic!("an unpaced stream waited for {t}"),
        }
    }
    assert_eq!(rows, 10_000);
}

#[test]
fn late_events_arrive_out_of_order_but_all_arrive() {
    let text = r#"
        seed = 2
        start = "2026-01-01T00:00:00Z"
        [entities.s]
        count = 10
        [streams.r]
        entity = "s"
        rate = { type = "constant", every = "1s" }
        late = { fraction = 0.05, max_delay = "20s" }
        [streams.r.fields]
        ts = { type = "timestamp" }
        n = { type = "sequence" }
    "#;
    let b = &run_all(&scenario(text), Some(20_000), 512, 1)[0];
    let ts = times(b);
    let seq = b
        .column_by_name("n")
        .expect("n")
        .as_primitive::<Int64Type>()
        .values();
    let mut sorted: Vec<i64> = seq.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=20_000).collect::<Vec<_>>(), "every event once");
    // An event is out of order when an earlier-timed one came after it.
    let mut max_seen = i64::MIN;
    let mut behind = 0;
    for t in &ts {
        if *t < max_seen {
            behind += 1;
            assert!(max_seen - t <= 20_000_000, "no later than max_delay");
        }
        max_seen = max_seen.max(*t);
    }
    let share = f64::from(behind) / 20_000.0;
    assert!((0.03..0.06).contains(&share), "{share}");
}

#[test]
fn errors_name_the_key() {
    let base = r#"
        [entities.d]
        count = 2
        [streams.s]
        entity = "d"
        rate = { type = "constant", every = "1s" }
        [streams.s.fields]
        ts = { type = "timestamp" }
        v = { type = "uniform", min = 0.0, max = 1.0 }
    "#;
    let cases = [
        (
            "v = { type = \"uniform\", min = 0.0, max = 1.0 }",
            "v = { type = \"expr\", expr = \"w + 1\" }\nw = { type = \"expr\", expr = \"v * 2\" }",
            "streams.s.fields: expressions refer to each other in a cycle: v, w",
        ),
        (
            "entity = \"d\"",
            "entity = \"nope\"",
            "streams.s.entity: no entity set named \"nope\"",
        ),
        (
            "every = \"1s\"",
            "every = \"1s\", per_second = 2",
            "streams.s.rate: give only one of",
        ),
        (
            "v = { type",
            "z = { type = \"attribute\", name = \"colour\" }\nv = { type",
            "streams.s.fields.z: the stream's entities have no attribute \"colour\"",
        ),
        (
            "v = { type",
            "z = { type = \"expr\", expr = \"v + 'a'\" }\nv = { type",
            "streams.s.fields.z: `+` cannot combine a float64 and a string",
        ),
        (
            "count = 2",
            "count = 2\nid = \"dev\"",
            "entities.d.id: \"dev\" has no {index}",
        ),
    ];
    for (from, to, want) in cases {
        let err = compile_err(&base.replace(from, to));
        assert!(err.starts_with(want), "{err}\nwanted: {want}");
    }
    let anomaly = |a: &str| compile_err(&format!("{base}\n[[streams.s.anomalies]]\n{a}"));
    assert!(
        anomaly("type = \"spike\"\nfield = \"v\"\nmagnitude = 1.0")
            .contains("streams.s.anomalies.0.at: give `at`")
    );
    assert!(
        anomaly("type = \"drift\"\nfield = \"v\"\nprobability = 0.1\nduration = \"1m\"")
            .contains("per_hour")
    );
    assert!(
        anomaly("type = \"spike\"\nfield = \"ts\"\nprobability = 0.1\nmagnitude = 1.0")
            .contains("float64 fields")
    );
    assert!(anomaly("type = \"burst\"\nprobability = 0.1\nduration = \"1m\"").contains("factor"));
    assert!(compile_err(&format!("{base}\n[streams.c]\nparent = {{ stream = \"c\", delay = {{ type = \"constant\", after = \"1s\" }} }}\n[streams.c.fields]\nts = {{ type = \"timestamp\" }}")).contains("cycle"));
}

const NESTED: &str = r#"
seed = 3
start = "2026-01-01T00:00:00Z"

[entities.device]
count = 5

[streams.readings]
entity = "device"
rate = { type = "constant", every = "6h" }

[streams.readings.fields]
ts = { type = "timestamp" }
day = { type = "date" }
price = { type = "decimal", min = 0.5, max = 99.99, precision = 6, scale = 2 }
tags = { type = "list", item = { type = "choice", values = ["a", "b", "c"] }, min_len = 1, max_len = 3 }
labels = { type = "map", keys = ["site", "rack"], value = { type = "fake", fake = "hostname" } }
position = { type = "struct", fields = { x = { type = "uniform", min = 0.0, max = 1.0 }, floor = { type = "poisson", lambda = 2.0 } } }
"#;

#[test]
fn nested_dates_and_decimals_are_generated_the_same_whatever_the_chunking() {
    use arrow_array::Array;
    use arrow_schema::DataType;
    let sc = scenario(NESTED);
    let out = run_all(&sc, Some(40), 7, 1);
    let b = &out[0];
    assert_eq!(b.num_rows(), 40);
    assert_eq!(
        b.column_by_name("day").expect("day").data_type(),
        &DataType::Date32
    );
    let days = b
        .column_by_name("day")
        .expect("day")
        .as_primitive::<arrow_array::types::Date32Type>();
    // Every 6 h from 2026-01-01 (day 20454) for 5 devices: 40 events span two days.
    assert_eq!(days.value(0), 20_454);
    assert_eq!(days.value(39), 20_455);
    let price = b.column_by_name("price").expect("price");
    assert_eq!(price.data_type(), &DataType::Decimal128(6, 2));
    let price = price.as_primitive::<arrow_array::types::Decimal128Type>();
    assert!(price.values().iter().all(|v| (50..=9999).contains(v)));
    let tags = b.column_by_name("tags").expect("tags").as_list::<i32>();
    assert!((0..40).all(|i| (1..=3).contains(&tags.value_length(i))));
    let all_tags = tags.values().as_string::<i32>();
    assert!(all_tags.iter().all(|t| matches!(t, Some("a" | "b" | "c"))));
    let labels = b.column_by_name("labels").expect("labels").as_map();
    assert_eq!(labels.value_length(3), 2);
    assert_eq!(labels.keys().as_string::<i32>().value(1), "rack");
    let position = b.column_by_name("position").expect("position").as_struct();
    assert_eq!(position.num_columns(), 2);
    assert_eq!(
        position.column_by_name("floor").expect("floor").data_type(),
        &DataType::Int64
    );
    // The chunk size and threads do not change a value.
    assert_eq!(digest(&out), digest(&run_all(&sc, Some(40), 40, 2)));
    assert_eq!(digest(&out), digest(&run_all(&sc, Some(40), 3, 4)));
}

#[test]
fn nested_fields_that_cannot_stand_alone_are_refused() {
    for (field, words) in [
        (
            r#"{ type = "list", item = { type = "expr", expr = "1" }, max_len = 2 }"#,
            "nested",
        ),
        (
            r#"{ type = "list", item = { type = "uniform", min = 0.0, max = 1.0 }, min_len = 3, max_len = 2 }"#,
            "min_len",
        ),
        (
            r#"{ type = "map", keys = [], value = { type = "constant", value = 1 } }"#,
            "keys",
        ),
        (r#"{ type = "struct", fields = {} }"#, "fields"),
        (
            r#"{ type = "decimal", min = 0.0, max = 1000.0, precision = 4, scale = 2 }"#,
            "digits",
        ),
        (r#"{ type = "expr", expr = "position + 1" }"#, "position"),
    ] {
        let text = NESTED.replace(r#"day = { type = "date" }"#, &format!("bad = {field}"));
        let err = compile_err(&text);
        assert!(err.contains(words), "{field}: {err}");
    }
}
