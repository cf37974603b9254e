//! `sluice-bench mqtt [MESSAGES] [live|backlog]`: the mqtt connector under load. Debian's mosquitto
//! (`SLUICE_MQTT_BROKER`, else `/usr/sbin/mosquitto`) on loopback; two publishers (MQTT
//! 3.1.1 clients here, up to 1,000 messages in flight each: `mosquitto_pub -l` drops what it
//! has not sent when its input ends) publish MESSAGES (default 1,000,000) small JSON
//! messages at QoS 1 as fast as the broker takes them
//! while the connector (`$SLUICE_PLUGIN_DIR/mqtt.wasm`, else the plugins workspace's
//! release build) takes them on its persistent session into bronze, acknowledging each
//! once the lake holds it. With `backlog`, the messages are published while the agent is
//! away (its session exists) and the agent then takes the broker's queue: the connector's
//! own rate, not the publishers'.
//!
//! Prints the publish rate, the rate from the first publish to the last message committed,
//! the sustained landing rate (first to last bronze commit) and the time from the
//! connector reading a message (`received_at`) to the bronze commit that made it visible.
//! Then `mosquitto_sub`, mosquitto's own client, drains the same messages from a session
//! of its own that queued them meanwhile: the broker's delivery rate to a plain client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Kill, TempDir, commit_timeline, connector, free_tcp, free_udp, init_certs, now_us, percentile,
    row_groups, running_as_root, spawn_agent, start_processor, sustained, visible_after,
    write_networked_agent, write_reading_processor,
};

const PUBLISHERS: u64 = 2;
/// Messages a publisher sends before it waits for their acknowledgements.
const WINDOW: usize = 1000;

/// Publish each line of `lines` to `topic` at QoS 1 (MQTT 3.1.1), returning once the broker
/// acknowledged them all.
fn publish(port: u16, client_id: &str, topic: &str, lines: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to mosquitto");
    let _ = s.set_nodelay(true);
    let mut connect = vec![0, 4];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    connect.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    connect.extend_from_slice(client_id.as_bytes());
    s.write_all(&packet(0x10, &connect)).expect("CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "mosquitto refused the publisher");
    let lines: Vec<&str> = lines.lines().collect();
    let mut id = 0u16;
    for chunk in lines.chunks(WINDOW) {
        let mut out = Vec::with_capacity(chunk.len() * 64);
        for line in chunk {
            id = id % u16::MAX + 1;
            let mut body = (topic.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(line.as_bytes());
            out.extend_from_slice(&packet(0x32, &body));
        }
        s.write_all(&out).expect("PUBLISH");
        let mut acks = vec![0u8; chunk.len() * 4];
        s.read_exact(&mut acks).expect("PUBACK");
        assert!(
            acks.chunks(4).all(|a| a[0] == 0x40 && a[1] == 2),
            "mosquitto answered a PUBLISH with something else than PUBACK"
        );
    }
    let _ = s.write_all(&[0xE0, 0]);
}

/// An MQTT packet: its first byte, remaining length and body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn tool(env: &str, default: &str) -> PathBuf {
    let p = std::env::var(env).map_or_else(|_| PathBuf::from(default), PathBuf::from);
    assert!(
        p.exists(),
        "{} is missing: install Debian's mosquitto and mosquitto-clients (scripts/test.sh does) or set {env}",
        p.display()
    );
    p
}

/// mosquitto on `port`, queueing without limit for absent clients.
fn start_broker(dir: &TempDir, port: u16) -> Kill {
    let conf = dir.path().join("mosquitto.conf");
    let log = dir.path().join("mosquitto.log");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 0\nlog_dest file {}\n{}",
            log.display(),
            if running_as_root() { "user root\n" } else { "" }
        ),
    )
    .expect("mosquitto config");
    let broker = Kill(
        Command::new(tool("SLUICE_MQTT_BROKER", "/usr/sbin/mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto"),
    );
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker
}

/// `mosquitto_sub` on the peer's persistent session (MQTT 3.1.1, QoS 1).
fn peer_sub(port: u16) -> Command {
    let mut c = Command::new(tool("SLUICE_MQTT_SUB", "/usr/bin/mosquitto_sub"));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "-i", "bench-peer", "-q", "1", "-t", "bench/#"])
        .stdout(Stdio::null());
    c
}

fn write_configs(dir: &TempDir, quic: SocketAddr, api: SocketAddr, broker: u16) {
    write_reading_processor(dir, quic, api);
    let config = format!(
        "host = \"127.0.0.1\"\nport = {broker}\nclient_id = \"sluice-bench\"\ntopics = [\"bench/#\"]\nreceive_maximum = 32767\n"
    );
    write_networked_agent(
        dir,
        quic,
        "plant",
        &connector("mqtt", "mqtt"),
        &format!("127.0.0.1:{broker}"),
        "20ms",
        &config,
    );
}

/// The bench.
pub fn run(processor_bin: &Path, agent_bin: &Path, messages: u64, backlog: bool) {
    let dir = TempDir::new();
    init_certs(processor_bin, &dir);
    let port = free_tcp().port();
    let _broker = start_broker(&dir, port);
    // The peer's session exists before the run, so the broker queues every message for it.
    let st = peer_sub(port)
        .args(["-W", "1"])
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_sub");
    assert!(
        st.code().is_some_and(|c| c == 0 || c == 27),
        "mosquitto_sub could not subscribe: {st}"
    );
    let (quic, api) = (free_udp(), free_tcp());
    write_configs(&dir, quic, api, port);
    let _processor = start_processor(processor_bin, &dir.path().join("processor.toml"), api);
    let start_agent = || spawn_agent(agent_bin, &dir);
    let mut agent = Some(start_agent());
    // Publishing once the connector's session is there.
    let up = Instant::now();
    while !std::fs::read_to_string(dir.path().join("mosquitto.log"))
        .unwrap_or_default()
        .contains("as sluice-bench")
    {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the connector did not connect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    if backlog {
        // The broker queues for the connector's session while the agent is away.
        agent = None;
    }
    println!(
        "mqtt bench: {messages} messages at QoS 1 from {PUBLISHERS} publishers, mosquitto -> agent (wasm, MQTT 5 session) -> QUIC -> processor -> bronze, {}",
        if backlog {
            "published while the agent is away, then taken from the broker's queue"
        } else {
            "live"
        }
    );
    let per = messages.div_ceil(PUBLISHERS);
    let batches: Vec<String> = (0..PUBLISHERS)
        .map(|p| {
            (p * per..((p + 1) * per).min(messages))
                .map(|n| {
                    format!(
                        "{{\"n\":{n},\"device\":\"d-{:03}\",\"temp\":{}.{}}}\n",
                        n % 500,
                        20 + n % 15,
                        n % 10
                    )
                })
                .collect()
        })
        .collect();
    let committed = "sluice_processor_committed_rows_total{table=\"bronze.plant\"}";
    let publish_all = |started: Instant| {
        std::thread::scope(|s| {
            let publishers: Vec<_> = batches
                .iter()
                .enumerate()
                .map(|(i, lines)| {
                    s.spawn(move || {
                        publish(
                            port,
                            &format!("bench-pub-{i}"),
                            &format!("bench/p{i}"),
                            lines,
                        )
                    })
                })
                .collect();
            for p in publishers {
                p.join().expect("publisher");
            }
        });
        started.elapsed().as_secs_f64()
    };
    let (started, timeline, published_in) = if backlog {
        let published_in = publish_all(Instant::now());
        let started = Instant::now();
        agent = Some(start_agent());
        let (_, timeline) = commit_timeline(api, committed, messages, started);
        (started, timeline, published_in)
    } else {
        let started = Instant::now();
        let (timeline, published_in) = std::thread::scope(|s| {
            let publishing = s.spawn(|| publish_all(started));
            let (_, timeline) = commit_timeline(api, committed, messages, started);
            (timeline, publishing.join().expect("publishers"))
        });
        (started, timeline, published_in)
    };
    let _agent = agent;
    // From the first commit to the last, in seconds since `started`.
    let first = timeline
        .iter()
        .find(|t| t.1 > 0.0)
        .map_or(f64::NAN, |t| t.0);
    let last = timeline.last().map_or(f64::NAN, |t| t.0);
    // Groups of 1,000 messages in the stream's order: when the first was read, and how many.
    let groups = row_groups(
        api,
        "SELECT CAST(min(received_at) AS BIGINT) AS r, count(*) AS n FROM bronze.plant GROUP BY seq / 1000 ORDER BY seq / 1000",
        messages,
    );
    // On the wall clock, as `received_at` is.
    let clock0 = now_us() as f64 / 1e6 - started.elapsed().as_secs_f64();
    let on_clock: Vec<(f64, f64)> = timeline.iter().map(|&(t, n)| (clock0 + t, n)).collect();
    let per_message = visible_after(&groups, &on_clock);
    println!(
        "  publish             {:>10.0} msg/s ({messages} in {published_in:.2} s)",
        messages as f64 / published_in
    );
    println!(
        "  {} -> all in bronze {:>10.0} msg/s ({last:.2} s; first commit at {first:.2} s)",
        if backlog {
            "agent start"
        } else {
            "first publish"
        },
        messages as f64 / last
    );
    let landing = sustained(&timeline);
    println!("  sustained landing   {landing:>10.0} msg/s (first to last bronze commit)");
    println!(
        "  read -> bronze      p50 {:.2} s  p99 {:.2} s  max {:.2} s",
        percentile(&per_message, 0.5),
        percentile(&per_message, 0.99),
        percentile(&per_message, 1.0)
    );
    let peer_started = Instant::now();
    let st = peer_sub(port)
        .args(["-C", &messages.to_string()])
        .status()
        .expect("mosquitto_sub");
    assert!(st.success(), "mosquitto_sub failed");
    let peer = messages as f64 / peer_started.elapsed().as_secs_f64();
    println!(
        "  mosquitto_sub       {peer:>10.0} msg/s (the same messages afterwards, queued for its own session, to /dev/null; sustained landing is {:.2}x of it)",
        landing / peer
    );
}
