//! The real `sluice-processor` binary against misbehaving peers: malformed frames, invalid
//! Arrow IPC, envelopes that lie, and connections without a valid certificate. Each is
//! refused with a clear reason and a counter; the process stays up; what was accepted
//! before stays in the table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_protocol::{
    AckStatus, BatchFrame, Envelope, Frame, Hello, encode_batch, read_frame, schema_fingerprint,
    write_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-processor");

/// A processor process with its own directory and ports; killed on drop.
struct TestProcessor {
    child: Child,
    dir: tempfile::TempDir,
    quic: SocketAddr,
    api: SocketAddr,
}

impl Drop for TestProcessor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free tcp port")
}

fn certs_init(dir: &Path) {
    let out = Command::new(BIN)
        .args(["certs", "init", "--agent", "edge-01", "--dir"])
        .arg(dir)
        .output()
        .expect("run certs init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestProcessor {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        certs_init(&dir.path().join("certs"));
        certs_init(&dir.path().join("other-ca"));
        let quic = free_udp();
        let api = free_tcp();
        let config = dir.path().join("processor.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[processor]
data_dir = "data"
[quic]
listen = "{quic}"
cert = "certs/server.pem"
key = "certs/server.key"
ca = "certs/ca.pem"
max_frame_bytes = "1MiB"
frame_timeout = "2s"
max_connections_per_agent = 3
max_lanes_per_agent = 8
[api]
listen = "{api}"
anonymous = ["metrics"]
[access]
allow = {{ "edge-01" = ["t"] }}
[lander]
commit_interval = "100ms"
"#
            ),
        )
        .expect("write config");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn processor");
        let p = Self {
            child,
            dir,
            quic,
            api,
        };
        for _ in 0..300 {
            if p.metrics().await.is_some() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("processor did not come up");
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn metrics(&self) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(self.api).await.ok()?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.api);
        s.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    }

    /// Value of one counter sample (0 when absent).
    async fn counter(&self, sample: &str) -> f64 {
        let text = self.metrics().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    fn query(&self, sql: &str) -> String {
        let out = Command::new(BIN)
            .args(["query", "--config"])
            .arg(self.dir.path().join("processor.toml"))
            .arg(sql)
            .output()
            .expect("run query");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A QUIC client presenting `cert`/`key` (or no certificate at all).
fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![sluice_protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

async fn connect(p: &TestProcessor) -> quinn::Connection {
    let certs = p.certs();
    let ep = client(
        &certs.join("ca.pem"),
        Some((
            &certs.join("agent-edge-01.pem"),
            &certs.join("agent-edge-01.key"),
        )),
    );
    ep.connect(p.quic, "localhost")
        .expect("connect")
        .await
        .expect("handshake")
}

fn batch(first: i64, n: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(first..first + n)),
            Arc::new(Float64Array::from_iter_values(
                (first..first + n).map(|i| i as f64 / 2.0),
            )),
        ],
    )
    .expect("batch")
}

fn batch_frame(agent: &str, seq: u64, b: &RecordBatch) -> Frame {
    Frame::Batch(BatchFrame {
        envelope: Envelope {
            agent: agent.into(),
            stream: "t".into(),
            seq,
            schema_fingerprint: schema_fingerprint(&b.schema()),
            created_at_us: 0,
            rows: b.num_rows() as u32,
            checkpoint: Some(format!("after-{seq}")),
        },
        ipc: Bytes::from(encode_batch(b).expect("encode")),
    })
}

/// Open a stream and say `Hello` as edge-01 for stream `t`; the answer is left unread.
async fn hello(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("open lane");
    write_frame(
        &mut send,
        &Frame::Hello(Hello {
            agent: "edge-01".into(),
            stream: "t".into(),
        }),
    )
    .await
    .expect("hello");
    (send, recv)
}

/// Open a lane (Hello/Welcome) and return its halves and the committed mark.
async fn lane(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream, u64) {
    let (send, mut recv) = hello(conn).await;
    match read_frame(&mut recv, 1 << 20).await {
        Ok(Some(Frame::Welcome(w))) => (send, recv, w.committed_seq),
        other => panic!("expected welcome, got {other:?}"),
    }
}

async fn next_ack(recv: &mut quinn::RecvStream) -> sluice_protocol::Ack {
    match tokio::time::timeout(Duration::from_secs(30), read_frame(recv, 1 << 20)).await {
        Ok(Ok(Some(Frame::Ack(a)))) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// The lane is closed by the processor: reading ends without another frame.
async fn expect_lane_closed(recv: &mut quinn::RecvStream) {
    let r = tokio::time::timeout(Duration::from_secs(30), read_frame(recv, 1 << 20))
        .await
        .expect("processor should close the lane");
    assert!(
        !matches!(r, Ok(Some(Frame::Ack(_)))),
        "unexpected ack on a refused lane: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_nothing_accepted_is_lost() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut p = TestProcessor::start().await;
    let conn = connect(&p).await;

    // A good batch lands first.
    let (mut send, mut recv, mark) = lane(&conn).await;
    assert_eq!(mark, 0);
    write_frame(&mut send, &batch_frame("edge-01", 1, &batch(0, 100)))
        .await
        .expect("send");
    assert_eq!(next_ack(&mut recv).await.status, AckStatus::Committed);

    // Invalid Arrow IPC: this batch is rejected with a reason, the lane stays usable.
    let mut bogus = batch_frame("edge-01", 2, &batch(100, 10));
    if let Frame::Batch(b) = &mut bogus {
        b.ipc = Bytes::from_static(b"this is not arrow ipc at all");
    }
    write_frame(&mut send, &bogus).await.expect("send");
    let ack = next_ack(&mut recv).await;
    assert_eq!(ack.status, AckStatus::Rejected);
    assert!(ack.message.contains("invalid Arrow IPC"), "{}", ack.message);

    // An envelope whose row count lies.
    let mut liar = batch_frame("edge-01", 3, &batch(110, 10));
    if let Frame::Batch(b) = &mut liar {
        b.envelope.rows = 11;
    }
    write_frame(&mut send, &liar).await.expect("send");
    let ack = next_ack(&mut recv).await;
    assert_eq!(ack.status, AckStatus::Rejected);
    assert!(
        ack.message.contains("envelope says 11 rows"),
        "{}",
        ack.message
    );

    // A batch whose column has a type the table's cannot take: kept in quarantine, and
    // acknowledged as such.
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)])),
        vec![Arc::new(arrow_array::StringArray::from(vec!["x"]))],
    )
    .expect("batch");
    write_frame(&mut send, &batch_frame("edge-01", 4, &other))
        .await
        .expect("send");
    let ack = next_ack(&mut recv).await;
    assert_eq!(ack.status, AckStatus::Quarantined);
    assert!(ack.message.contains("has type Utf8"), "{}", ack.message);

    // The same lane still lands good batches; a redelivery is acknowledged as a duplicate.
    write_frame(&mut send, &batch_frame("edge-01", 5, &batch(200, 50)))
        .await
        .expect("send");
    assert_eq!(next_ack(&mut recv).await.status, AckStatus::Committed);
    write_frame(&mut send, &batch_frame("edge-01", 5, &batch(200, 50)))
        .await
        .expect("send");
    assert_eq!(next_ack(&mut recv).await.status, AckStatus::Duplicate);

    // A compression bomb (a buffer claiming 2^62 bytes uncompressed) and a buffer outside
    // its body: each would have aborted or panicked the decoder; both are rejected.
    for (seq, hostile) in [
        (
            6,
            sluice_protocol::hostile::compression_bomb(&batch(300, 10)),
        ),
        (
            7,
            sluice_protocol::hostile::buffer_outside_body(&batch(300, 10)),
        ),
    ] {
        let mut frame = batch_frame("edge-01", seq, &batch(300, 10));
        if let Frame::Batch(b) = &mut frame {
            b.ipc = Bytes::from(hostile.expect("hostile payload"));
        }
        write_frame(&mut send, &frame).await.expect("send");
        let ack = next_ack(&mut recv).await;
        assert_eq!(ack.status, AckStatus::Rejected);
        assert!(ack.message.contains("invalid Arrow IPC"), "{}", ack.message);
    }
    assert!(p.alive(), "the processor survives the bomb");

    // Garbage instead of a frame: the lane is closed and counted.
    let (mut send2, mut recv2) = conn.open_bi().await.expect("open");
    send2
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    expect_lane_closed(&mut recv2).await;

    // A header announcing a frame far over the limit.
    let (mut send3, mut recv3) = conn.open_bi().await.expect("open");
    let mut header = Vec::from(*b"SLC");
    header.extend_from_slice(&[sluice_protocol::VERSION, 1]);
    header.extend_from_slice(&(1u32 << 30).to_be_bytes());
    send3.write_all(&header).await.expect("write");
    expect_lane_closed(&mut recv3).await;

    // A batch for another agent on this agent's lane.
    let (mut send4, mut recv4, _) = lane(&conn).await;
    write_frame(&mut send4, &batch_frame("edge-02", 1, &batch(0, 1)))
        .await
        .expect("send");
    expect_lane_closed(&mut recv4).await;

    // A hello for an agent other than the one the certificate names.
    let (mut send6, mut recv6) = conn.open_bi().await.expect("open");
    write_frame(
        &mut send6,
        &Frame::Hello(Hello {
            agent: "edge-02".into(),
            stream: "t".into(),
        }),
    )
    .await
    .expect("hello");
    expect_lane_closed(&mut recv6).await;

    // A batch before any hello.
    let (mut send5, mut recv5) = conn.open_bi().await.expect("open");
    write_frame(&mut send5, &batch_frame("edge-01", 9, &batch(0, 1)))
        .await
        .expect("send");
    expect_lane_closed(&mut recv5).await;

    assert!(p.alive(), "processor must survive hostile frames");
    for (sample, want) in [
        (
            "sluice_processor_frames_rejected_total{reason=\"bad_magic\"}",
            1.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"frame_too_large\"}",
            1.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"wrong_agent\"}",
            1.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"identity_mismatch\"}",
            1.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"unexpected_frame\"}",
            1.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"invalid_ipc\"}",
            3.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"row_count_mismatch\"}",
            1.0,
        ),
        (
            "sluice_processor_batches_quarantined_total{table=\"bronze.t\",reason=\"type_change\"}",
            1.0,
        ),
        (
            "sluice_processor_batches_duplicate_total{table=\"bronze.t\"}",
            1.0,
        ),
        (
            "sluice_processor_committed_rows_total{table=\"bronze.t\"}",
            150.0,
        ),
    ] {
        assert_eq!(p.counter(sample).await, want, "{sample}");
    }

    // Nothing accepted was lost: exactly the two good batches are in the table.
    let out =
        p.query("SELECT count(*) AS n, sum(id) AS s, count(DISTINCT _seq) AS b FROM bronze.t");
    let want_sum: i64 = (0..100).sum::<i64>() + (200..250).sum::<i64>();
    assert!(out.contains(&format!("| 150 | {want_sum} | 2 ")), "{out}");
    conn.close(quinn::VarInt::from_u32(0), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_valid_certificate_are_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut p = TestProcessor::start().await;
    let certs = p.certs();
    let other = p.dir.path().join("other-ca");

    // No client certificate at all, then a certificate from another CA: both refused.
    let ep = client(&certs.join("ca.pem"), None);
    assert!(
        refused(&ep, p.quic).await,
        "a client without a certificate must be refused"
    );
    let ep = client(
        &certs.join("ca.pem"),
        Some((
            &other.join("agent-edge-01.pem"),
            &other.join("agent-edge-01.key"),
        )),
    );
    assert!(
        refused(&ep, p.quic).await,
        "a certificate from another CA must be refused"
    );
    assert_refusal_counted(&mut p, 2).await;

    // A client that does not trust the processor's CA refuses it, too (no way to disable).
    let ep = client(
        &other.join("ca.pem"),
        Some((
            &certs.join("agent-edge-01.pem"),
            &certs.join("agent-edge-01.key"),
        )),
    );
    let err = ep
        .connect(p.quic, "localhost")
        .expect("connect")
        .await
        .expect_err("server certificate from an unknown CA must fail");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A proper agent still gets in.
    let conn = connect(&p).await;
    let (_s, _r, mark) = lane(&conn).await;
    assert_eq!(mark, 0);
}

/// Whether the processor refuses this client. With TLS 1.3 the client may finish its side of
/// the handshake before the server has checked its certificate, so the refusal can arrive
/// at connect, at opening a stream, or as the connection closing under a pending read.
async fn refused(ep: &quinn::Endpoint, addr: SocketAddr) -> bool {
    let Ok(conn) = ep.connect(addr, "localhost").expect("connect").await else {
        return true;
    };
    let Ok((mut s, mut r)) = conn.open_bi().await else {
        return true;
    };
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 1];
    // An accepted connection would just wait here for a complete frame.
    match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
        Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn assert_refusal_counted(p: &mut TestProcessor, at_least: u32) {
    let mut n = 0.0;
    for _ in 0..50 {
        n = p
            .counter("sluice_processor_connections_rejected_total{reason=\"tls_handshake\"}")
            .await;
        if n >= f64::from(at_least) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n >= f64::from(at_least), "refusals counted: {n}");
    assert!(p.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gets_only_its_share_of_connections_and_lanes_and_cannot_trickle_a_frame() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut p = TestProcessor::start().await;
    // Three connections are its share; the fourth is closed with the reason.
    // Each is proven taken by a lane welcomed on it before the next one comes.
    let mut conns = Vec::new();
    let mut lanes = Vec::new();
    for _ in 0..3 {
        let c = connect(&p).await;
        lanes.push(lane(&c).await);
        conns.push(c);
    }
    let fourth = connect(&p).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), fourth.closed())
        .await
        .expect("the fourth connection is closed");
    assert!(
        format!("{closed}").contains("max_connections_per_agent"),
        "{closed}"
    );

    // Eight lanes are its share (three are open); the ninth is closed.
    for _ in 0..5 {
        lanes.push(lane(&conns[0]).await);
    }
    let (_send9, mut recv9) = hello(&conns[0]).await;
    expect_lane_closed(&mut recv9).await;
    drop(lanes);

    // A frame header declaring 512 KiB, then a trickle: the lane is closed after
    // frame_timeout instead of being held.
    let (mut send, mut recv) = lane_when_free(&conns[1]).await;
    let mut header = Vec::from(*b"SLC");
    header.extend_from_slice(&[sluice_protocol::VERSION, 3]);
    header.extend_from_slice(&(512u32 << 10).to_be_bytes());
    send.write_all(&header).await.expect("header");
    let started = std::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if send.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    expect_lane_closed(&mut recv).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    trickle.abort();

    assert!(p.alive());
    for (sample, want) in [
        (
            "sluice_processor_connections_rejected_total{reason=\"too_many_connections\"}",
            1.0,
        ),
        (
            "sluice_processor_frames_rejected_total{reason=\"frame_timeout\"}",
            1.0,
        ),
    ] {
        assert_eq!(p.counter(sample).await, want, "{sample}");
    }
    // At least the ninth lane (a lane opened while the processor had not yet seen others
    // end is refused too, and retried).
    let lanes_refused = p
        .counter("sluice_processor_frames_rejected_total{reason=\"too_many_lanes\"}")
        .await;
    assert!(lanes_refused >= 1.0, "{lanes_refused}");
    // Its share is back once it closes something (as soon as the processor sees it).
    drop(conns);
    let again = connect(&p).await;
    lane_when_free(&again).await;
}

/// A lane on `conn` once the agent's share has room again (the processor frees a lane's
/// slot when it sees the lane end).
async fn lane_when_free(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (send, mut recv) = hello(conn).await;
        if let Ok(Some(Frame::Welcome(_))) = read_frame(&mut recv, 1 << 20).await {
            return (send, recv);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the share never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
