//! The lane loop: one per stream, shipping what the stream's write-ahead log holds, in order,
//! over a [`Transport`] (QUIC or Kafka), which only says how to open a session, send a batch
//! and hear what became of it.
//!
//! A batch's sequence is the log's base plus its lsn. At most `window` batches are
//! unacknowledged; one leaves the log only once the far side acknowledges it, and after any
//! failure the lane opens a new session and resends, in order, everything unacknowledged.
//! Failures back off exponentially (with jitter, so a fleet does not retry in lockstep) up
//! to `backoff_max`. Once `stop` fires the lane keeps going for `drain_timeout`; what is
//! still unacknowledged then stays in the log and ships at the next start.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::telemetry::Metrics;
use crate::wal::{WalError, WalHandle, WalRecord};

/// A stream's write-ahead log, as its lane uses it.
pub struct LaneLog {
    /// Records in lsn order, read on a thread of their own.
    pub records: mpsc::Receiver<Result<WalRecord, WalError>>,
    /// Acknowledgements, and the log's sequence base.
    pub handle: WalHandle,
}

/// Where a stream's checkpointing sources resume: set once, by the lane's first session
/// (`Some(None)`: from the start).
pub type ResumeTx = watch::Sender<Option<Option<String>>>;

/// The newest checkpoint of a stream whose batch, and every batch before it, the lake is
/// known to hold: what a source may release upstream (`connector.committed`). A lane sets
/// it only if its transport's acknowledgements are commits (QUIC); behind Kafka the
/// processor's API is asked instead (`committed.rs`).
pub type CommittedTx = watch::Sender<Option<String>>;

/// What a lane tells its stream's sources.
pub struct Feedback {
    /// Where to resume.
    pub resume: ResumeTx,
    /// What the lake holds.
    pub committed: CommittedTx,
}

/// Outcome of a lane once its input has closed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LaneSummary {
    /// Batches the far side has (committed, or recognised as duplicates).
    pub acked_batches: u64,
    /// Batches the far side refused for good, counted as lost.
    pub rejected_batches: u64,
    /// Batches not yet acknowledged when the drain deadline passed: they stay in the
    /// write-ahead log and ship at the next start.
    pub unshipped_batches: u64,
}

/// How a lane paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// First wait after a failure; doubled on each further one.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// After `stop`, how long to keep trying to deliver what is unacknowledged.
    pub drain_timeout: Duration,
}

/// What a transport's error says about retrying.
pub trait Failure: std::error::Error + From<WalError> + Send + 'static {
    /// The `reason` label it is counted under.
    fn reason(&self) -> &'static str;
    /// Only the far side can fix it (a refused stream): retry at the slowest pace.
    fn retry_slowly(&self) -> bool {
        false
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum LaneError<E> {
    /// The transport failed.
    #[error(transparent)]
    Transport(E),
    /// The far side acknowledged a batch other than the oldest unacknowledged one.
    #[error("out-of-order acknowledgement: expected seq {expected:?}, got {got}")]
    AckOrder {
        /// The oldest unacknowledged sequence, if any.
        expected: Option<u64>,
        /// The acknowledged one.
        got: u64,
    },
}

impl<E: Failure> LaneError<E> {
    /// The `reason` label it is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Transport(e) => e.reason(),
            Self::AckOrder { .. } => "ack_order",
        }
    }
}

/// What became of a batch at the far side.
#[derive(Debug)]
pub struct Delivery {
    /// The batch's sequence.
    pub seq: u64,
    /// Its fate.
    pub outcome: Outcome,
}

/// A batch's fate at the far side.
#[derive(Debug)]
pub enum Outcome {
    /// Landed (QUIC: committed to the table; Kafka: written by every in-sync broker).
    Committed,
    /// The far side already had it.
    Duplicate,
    /// The far side keeps it in a quarantine table (it did not fit its table): acknowledged.
    Quarantined {
        /// Why, as the far side said.
        message: String,
    },
    /// Refused for good: resending cannot help, so it leaves the log, counted as lost.
    Rejected {
        /// The `reason` label of the lost rows.
        reason: &'static str,
        /// What the far side said.
        message: String,
    },
}

/// What differs between the QUIC and Kafka lanes.
pub trait Transport: Send + Sync + 'static {
    /// Its errors.
    type Error: Failure;
    /// One connected session.
    type Session: Session<Error = Self::Error>;
    /// Logged when a session fails (`"lane interrupted"`).
    const INTERRUPTED: &'static str;
    /// An opened session proves the far side healthy (QUIC's handshake does; a Kafka
    /// producer is made without asking any broker, so only deliveries do).
    const OPEN_PROVES_PEER: bool;
    /// An acknowledgement says the batch is in the lake (QUIC: the processor acks after its
    /// commit), not only that the far side has it (Kafka: the brokers do).
    const ACKS_ARE_COMMITS: bool;

    /// Window, backoff and drain settings.
    fn pacing(&self) -> Pacing;

    /// Before the first session: where the lane ships (for logs) and, for a log new to
    /// this transport, its sequence base.
    fn prepare(
        &self,
        lane: &mut LaneState,
        resume: &ResumeTx,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Connect and start a session. May settle pending batches the far side says it has
    /// (`LaneState::settle_through`), and tells checkpointing sources where to resume.
    fn open(
        &self,
        lane: &mut LaneState,
        resume: &ResumeTx,
    ) -> impl Future<Output = Result<Self::Session, Self::Error>> + Send;
}

/// A connected session of one lane.
pub trait Session: Send {
    /// Its errors.
    type Error;
    /// Send one batch.
    fn send(
        &mut self,
        seq: u64,
        record: &WalRecord,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The next batch's fate, in the order they were sent. Cancel-safe: it is raced
    /// against the log's next record.
    fn delivered(&mut self) -> impl Future<Output = Result<Delivery, Self::Error>> + Send;
    /// Everything is acknowledged and the log is closed: end politely.
    fn finish(self);
}

/// Per-lane state that survives sessions.
pub struct LaneState {
    /// The stream.
    pub stream: Arc<str>,
    /// Where it ships, for logs (`processor 10.0.0.1:7000`, `topic sluice.cpu`).
    pub destination: String,
    /// The stream's write-ahead log.
    pub log: WalHandle,
    /// Sent (or to be resent) and not yet acknowledged, in lsn order.
    pub pending: VecDeque<WalRecord>,
    /// The log's sequence base, once known.
    pub base: Option<u64>,
    /// Highest sequence the far side has said it holds.
    pub committed: u64,
    /// Told the checkpoint of each batch the lake holds (when acks are commits).
    checkpoints: Option<CommittedTx>,
    input_done: bool,
    summary: LaneSummary,
}

impl LaneState {
    fn new(stream: Arc<str>, log: WalHandle, checkpoints: Option<CommittedTx>) -> Self {
        Self {
            stream,
            destination: String::new(),
            log,
            pending: VecDeque::new(),
            base: None,
            committed: 0,
            checkpoints,
            input_done: false,
            summary: LaneSummary::default(),
        }
    }

    /// The sequence a record ships with.
    pub fn seq(&self, lsn: u64) -> u64 {
        self.base.unwrap_or(0) + lsn
    }

    /// The far side holds everything up to `committed` (said on a reconnect): what is
    /// pending up to there was delivered before the previous session dropped its ack.
    pub fn settle_through(&mut self, committed: u64, metrics: &Metrics) {
        self.committed = self.committed.max(committed);
        let mut last = None;
        while let Some(r) = self.pending.front() {
            if self.seq(r.lsn) > committed {
                break;
            }
            metrics.acked(&self.stream, r.batch.rows);
            self.summary.acked_batches += 1;
            last = Some(r.lsn);
            if let Some(r) = self.pending.pop_front() {
                self.landed(&r);
            }
        }
        if let Some(lsn) = last {
            self.ack_log(lsn);
        }
    }

    /// The lake holds `r` and everything before it: pass its checkpoint on. A refused
    /// batch counts too: it is counted as lost and never sent again, so holding its rows
    /// upstream would only grow what the upstream keeps.
    fn landed(&self, r: &WalRecord) {
        if let (Some(tx), Some(c)) = (&self.checkpoints, &r.batch.checkpoint) {
            tx.send_if_modified(|now| {
                let changed = now.as_deref() != Some(c.as_str());
                *now = Some(c.clone());
                changed
            });
        }
    }

    /// Everything up to `lsn` is delivered: let the log delete it (off the async threads,
    /// as that may sync files).
    fn ack_log(&self, lsn: u64) {
        let log = self.log.clone();
        let stream = self.stream.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = log.ack(lsn) {
                tracing::warn!(%stream, "cannot record an acknowledgement in the write-ahead log: {e}");
            }
        });
    }

    fn report_inflight(&self, metrics: &Metrics) {
        metrics.set_inflight(
            &self.stream,
            self.pending.len(),
            self.pending.front().map(|r| r.batch.created_at_us),
        );
    }

    /// Apply the far side's word on the oldest pending batch.
    fn on_delivery<E>(&mut self, d: Delivery, metrics: &Metrics) -> Result<(), LaneError<E>> {
        let expected = self.pending.front().map(|r| self.seq(r.lsn));
        if expected != Some(d.seq) {
            return Err(LaneError::AckOrder {
                expected,
                got: d.seq,
            });
        }
        let Some(r) = self.pending.pop_front() else {
            return Err(LaneError::AckOrder {
                expected,
                got: d.seq,
            });
        };
        self.committed = self.committed.max(d.seq);
        self.ack_log(r.lsn);
        self.landed(&r);
        let rows = r.batch.rows;
        match d.outcome {
            Outcome::Committed => {
                metrics.acked(&self.stream, rows);
                self.summary.acked_batches += 1;
            }
            Outcome::Duplicate => {
                metrics.duplicate(&self.stream, rows);
                self.summary.acked_batches += 1;
            }
            Outcome::Quarantined { message } => {
                tracing::warn!(
                    stream = %self.stream,
                    to = %self.destination,
                    seq = d.seq,
                    rows,
                    "batch kept in the processor's quarantine table: {message}"
                );
                metrics.quarantined(&self.stream, rows);
                self.summary.acked_batches += 1;
            }
            Outcome::Rejected { reason, message } => {
                tracing::error!(
                    stream = %self.stream,
                    to = %self.destination,
                    seq = d.seq,
                    rows,
                    bytes = r.batch.ipc.len(),
                    "batch refused for good, counted as lost: {message}"
                );
                metrics.lost(&self.stream, reason, u64::from(rows));
                self.summary.rejected_batches += 1;
            }
        }
        Ok(())
    }
}

/// Ship everything the log yields over `transport`. Returns once the log is closed and every
/// batch is acknowledged, or once `stop` fires and the drain timeout has passed.
pub async fn run<T: Transport>(
    transport: Arc<T>,
    metrics: Arc<Metrics>,
    stream: Arc<str>,
    log: LaneLog,
    feedback: Feedback,
    mut stop: watch::Receiver<bool>,
) -> LaneSummary {
    let Feedback { resume, committed } = feedback;
    let LaneLog {
        records: mut input,
        handle,
    } = log;
    let mut lane = LaneState::new(
        stream.clone(),
        handle,
        T::ACKS_ARE_COMMITS.then_some(committed),
    );
    let pacing = transport.pacing();
    if let Err(e) = transport.prepare(&mut lane, &resume).await {
        tracing::error!(%stream, "cannot start the lane: {e}");
        metrics.sink_error(&stream, e.reason(), &e);
        lane.log.close();
        return lane.summary;
    }
    let mut backoff = pacing.backoff_initial;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if lane.input_done && lane.pending.is_empty() {
            break;
        }
        if drain_deadline.is_none() && *stop.borrow() {
            drain_deadline = Some(Instant::now() + pacing.drain_timeout);
        }
        let session = session(
            &*transport,
            &metrics,
            pacing,
            &mut lane,
            &mut input,
            &resume,
            &mut backoff,
        );
        let result = match drain_deadline {
            Some(d) => match tokio::time::timeout_at(d, session).await {
                Ok(r) => r,
                Err(_) => break,
            },
            None => tokio::select! {
                r = session => r,
                // Stop requested: loop around to arm the drain deadline.
                _ = stop.changed() => continue,
            },
        };
        let Err(e) = result else { continue };
        metrics.sink_error(&stream, e.reason(), &e);
        if matches!(&e, LaneError::Transport(t) if t.retry_slowly()) {
            backoff = pacing.backoff_max;
            tracing::error!(stream = %stream, to = %lane.destination, retry_in = ?backoff, "{e}");
        } else {
            tracing::warn!(
                stream = %stream,
                to = %lane.destination,
                unacked = lane.pending.len(),
                retry_in = ?backoff,
                "{}: {e}",
                T::INTERRUPTED
            );
        }
        let sleep = tokio::time::sleep(jitter(backoff));
        match drain_deadline {
            Some(d) => {
                if tokio::time::timeout_at(d, sleep).await.is_err() {
                    break;
                }
            }
            None => tokio::select! {
                _ = sleep => {}
                _ = stop.changed() => {}
            },
        }
        backoff = (backoff * 2).min(pacing.backoff_max);
    }
    let left = lane.pending.len() as u64;
    if left > 0 || !lane.input_done {
        let rows: u64 = lane.pending.iter().map(|r| u64::from(r.batch.rows)).sum();
        tracing::warn!(
            stream = %stream,
            to = %lane.destination,
            batches_in_flight = left,
            rows_in_flight = rows,
            "drain timeout: what is not acknowledged stays in the write-ahead log and ships at the next start"
        );
    }
    lane.summary.unshipped_batches = left;
    // Wake a writer waiting for space that will not come now.
    lane.log.close();
    metrics.set_inflight(&stream, 0, None);
    lane.summary
}

/// One session: open, resend what is unacknowledged, then ship from the log.
async fn session<T: Transport>(
    transport: &T,
    metrics: &Metrics,
    pacing: Pacing,
    lane: &mut LaneState,
    input: &mut mpsc::Receiver<Result<WalRecord, WalError>>,
    resume: &ResumeTx,
    backoff: &mut Duration,
) -> Result<(), LaneError<T::Error>> {
    let mut session = transport
        .open(lane, resume)
        .await
        .map_err(LaneError::Transport)?;
    if T::OPEN_PROVES_PEER {
        *backoff = pacing.backoff_initial;
        metrics.sink_recovered(&lane.stream);
    }
    for r in &lane.pending {
        send(&mut session, metrics, lane, lane.seq(r.lsn), r).await?;
    }
    lane.report_inflight(metrics);
    loop {
        if lane.input_done && lane.pending.is_empty() {
            session.finish();
            return Ok(());
        }
        tokio::select! {
            d = session.delivered() => {
                let d = d.map_err(LaneError::Transport)?;
                if !T::OPEN_PROVES_PEER && !matches!(d.outcome, Outcome::Rejected { .. }) {
                    *backoff = pacing.backoff_initial;
                }
                lane.on_delivery(d, metrics)?;
                lane.report_inflight(metrics);
            }
            next = input.recv(), if !lane.input_done && lane.pending.len() < pacing.window => {
                match next {
                    Some(Ok(r)) => {
                        let seq = lane.seq(r.lsn);
                        if seq <= lane.committed {
                            // Shipped by an earlier run whose ack was lost: the far side
                            // has it.
                            metrics.acked(&lane.stream, r.batch.rows);
                            lane.summary.acked_batches += 1;
                            lane.ack_log(r.lsn);
                            lane.landed(&r);
                            continue;
                        }
                        // Pending before it is sent: a send that fails leaves it to be
                        // sent again by the next session. (Taken from the log's reader
                        // and dropped on that error, it was skipped, and acks of later
                        // batches then removed it from the log.)
                        lane.pending.push_back(r);
                        lane.report_inflight(metrics);
                        if let Some(r) = lane.pending.back() {
                            send(&mut session, metrics, lane, seq, r).await?;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::error!(stream = %lane.stream, "write-ahead log damaged, the rest of the segment is skipped: {e}");
                        metrics.wal_corrupt(&lane.stream, 1);
                    }
                    None => lane.input_done = true,
                }
            }
        }
    }
}

async fn send<S: Session>(
    session: &mut S,
    metrics: &Metrics,
    lane: &LaneState,
    seq: u64,
    r: &WalRecord,
) -> Result<(), LaneError<S::Error>> {
    session.send(seq, r).await.map_err(LaneError::Transport)?;
    metrics.sent(&lane.stream, r.batch.rows, r.batch.ipc.len());
    Ok(())
}

/// Up to 25% random jitter so many agents do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    //! The lane loop against a scripted far side, which lands a batch when it receives it
    //! (as the processor commits before it acks) and then acknowledges it, unless the
    //! script says to drop the session, refuse, reject or keep silent.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use sluice_ops::ApiMetrics;

    use super::*;
    use crate::pipeline::ReadyBatch;
    use crate::wal::{self, WalMetricsSink, WalOptions, WhenFull};

    #[derive(Default)]
    struct Far {
        /// Every batch received, resends included, in order.
        received: Vec<u64>,
        /// What the far side holds, each batch once.
        landed: Vec<u64>,
        committed: u64,
        sessions: usize,
        /// Refuse this many sessions first.
        refuse: usize,
        /// Drop the session (losing the ack) at the n-th send of it, once.
        cut_at: Option<usize>,
        /// Refuse these batches for good.
        reject: Vec<u64>,
        /// Acknowledge the second unacknowledged batch first, once.
        swap_once: bool,
        /// Receive, but never land or acknowledge anything (a far side that hangs).
        silent: bool,
    }

    #[derive(Debug, thiserror::Error)]
    enum FakeError {
        #[error("refused")]
        Refused,
        #[error("cut")]
        Cut,
        #[error(transparent)]
        Wal(#[from] WalError),
    }

    impl Failure for FakeError {
        fn reason(&self) -> &'static str {
            match self {
                Self::Refused => "refused",
                Self::Cut => "cut",
                Self::Wal(_) => "wal",
            }
        }
        fn retry_slowly(&self) -> bool {
            matches!(self, Self::Refused)
        }
    }

    struct Fake {
        far: Arc<Mutex<Far>>,
        pacing: Pacing,
    }

    impl Transport for Fake {
        type Error = FakeError;
        type Session = FakeSession;
        const INTERRUPTED: &'static str = "fake session ended";
        const OPEN_PROVES_PEER: bool = true;
        const ACKS_ARE_COMMITS: bool = true;

        fn pacing(&self) -> Pacing {
            self.pacing
        }

        async fn prepare(&self, lane: &mut LaneState, _: &ResumeTx) -> Result<(), FakeError> {
            lane.destination = "the far side".into();
            lane.base = Some(1000);
            Ok(())
        }

        async fn open(&self, lane: &mut LaneState, _: &ResumeTx) -> Result<FakeSession, FakeError> {
            let committed = {
                let mut far = self.far.lock().unwrap();
                far.sessions += 1;
                if far.refuse > 0 {
                    far.refuse -= 1;
                    return Err(FakeError::Refused);
                }
                far.committed
            };
            lane.settle_through(committed, &Metrics::default());
            Ok(FakeSession {
                far: self.far.clone(),
                acks: VecDeque::new(),
                sent: 0,
            })
        }
    }

    struct FakeSession {
        far: Arc<Mutex<Far>>,
        acks: VecDeque<Delivery>,
        sent: usize,
    }

    impl Session for FakeSession {
        type Error = FakeError;

        async fn send(&mut self, seq: u64, _: &WalRecord) -> Result<(), FakeError> {
            self.sent += 1;
            let mut far = self.far.lock().unwrap();
            far.received.push(seq);
            if far.silent {
                return Ok(());
            }
            let outcome = if far.reject.contains(&seq) {
                Outcome::Rejected {
                    reason: "rejected",
                    message: "no".into(),
                }
            } else if seq <= far.committed {
                Outcome::Duplicate
            } else {
                far.committed = seq;
                far.landed.push(seq);
                Outcome::Committed
            };
            if far.cut_at == Some(self.sent) {
                far.cut_at = None;
                return Err(FakeError::Cut);
            }
            self.acks.push_back(Delivery { seq, outcome });
            Ok(())
        }

        async fn delivered(&mut self) -> Result<Delivery, FakeError> {
            tokio::task::yield_now().await;
            if self.acks.is_empty() {
                return std::future::pending().await;
            }
            let mut far = self.far.lock().unwrap();
            if far.swap_once && self.acks.len() >= 2 {
                far.swap_once = false;
                self.acks.swap(0, 1);
            }
            Ok(self.acks.pop_front().expect("an ack"))
        }

        fn finish(self) {}
    }

    fn pacing() -> Pacing {
        Pacing {
            window: 4,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(100),
            drain_timeout: Duration::from_millis(200),
        }
    }

    /// A log holding `n` batches, closed for writing, and the lane's view of it.
    async fn log_of(dir: &std::path::Path, n: u32) -> (LaneLog, WalHandle) {
        let opts = WalOptions {
            segment_size: 1 << 20,
            max_size: 1 << 30,
            when_full: WhenFull::Block,
        };
        let (writer, handle, reader, _) =
            wal::open(dir, opts, WalMetricsSink::default()).expect("log");
        for i in 1..=n {
            let batch = ReadyBatch {
                ipc: Bytes::from(vec![7; 100]),
                rows: i,
                schema_fingerprint: 1,
                created_at_us: i64::from(i),
                checkpoint: Some(format!("c{i}")),
            };
            writer.append(batch).await.expect("append");
        }
        drop(writer);
        let log = LaneLog {
            records: reader.spawn(2).expect("reader"),
            handle: handle.clone(),
        };
        (log, handle)
    }

    async fn ship(
        far: Far,
        n: u32,
        stop: watch::Receiver<bool>,
    ) -> (LaneSummary, Far, Arc<Metrics>, WalHandle) {
        let (committed, _) = watch::channel(None);
        ship_telling(far, n, stop, committed).await
    }

    /// [`ship`], telling `committed` the checkpoints the far side holds.
    async fn ship_telling(
        far: Far,
        n: u32,
        stop: watch::Receiver<bool>,
        committed: CommittedTx,
    ) -> (LaneSummary, Far, Arc<Metrics>, WalHandle) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, handle) = log_of(dir.path(), n).await;
        let far = Arc::new(Mutex::new(far));
        let fake = Arc::new(Fake {
            far: far.clone(),
            pacing: pacing(),
        });
        let metrics = Arc::new(Metrics::default());
        let (resume, _) = watch::channel(None);
        let summary = tokio::time::timeout(
            Duration::from_secs(20),
            run(
                fake,
                metrics.clone(),
                "s".into(),
                log,
                Feedback { resume, committed },
                stop,
            ),
        )
        .await
        .expect("the lane ends");
        let far = std::mem::take(&mut *far.lock().unwrap());
        (summary, far, metrics, handle)
    }

    fn seqs(n: u64) -> Vec<u64> {
        (1001..=1000 + n).collect()
    }

    /// The log's acknowledgements are recorded off the lane's task: wait for them.
    async fn acked_through(handle: &WalHandle, lsn: u64) {
        for _ in 0..500 {
            if handle.acked() >= lsn {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the log acknowledged {} of {lsn}", handle.acked());
    }

    fn counted(metrics: &Metrics, line: &str) -> bool {
        metrics.render().lines().any(|l| l == line)
    }

    #[tokio::test]
    async fn every_batch_lands_once_in_order_within_the_window_and_leaves_the_log() {
        let (_stop, stop) = watch::channel(false);
        let (summary, far, _, handle) = ship(Far::default(), 50, stop).await;
        assert_eq!(far.landed, seqs(50));
        assert_eq!(far.received, seqs(50), "nothing was sent twice");
        assert_eq!(summary.acked_batches, 50);
        assert_eq!(summary.unshipped_batches, 0);
        acked_through(&handle, 50).await;
    }

    #[tokio::test]
    async fn a_session_lost_before_its_acks_resends_the_rest_and_lands_each_batch_once() {
        let far = Far {
            cut_at: Some(3),
            ..Far::default()
        };
        let (_stop, stop) = watch::channel(false);
        let (summary, far, metrics, handle) = ship(far, 20, stop).await;
        assert_eq!(far.sessions, 2);
        assert_eq!(far.landed, seqs(20), "landed once each, in order");
        assert_eq!(summary.acked_batches, 20);
        // The batch whose ack the cut lost is settled by the next session's committed mark,
        // not sent again.
        assert_eq!(far.received.iter().filter(|&&s| s == 1003).count(), 1);
        assert!(counted(
            &metrics,
            r#"sluice_agent_sink_errors_total{stream="s",reason="cut"} 1"#
        ));
        acked_through(&handle, 20).await;
    }

    #[tokio::test]
    async fn sources_are_told_the_checkpoint_of_each_batch_the_lake_holds_in_order() {
        // A cut session: the batch whose ack was lost is settled by the next session's
        // mark, and its checkpoint is passed on like any acknowledged one.
        let far = Far {
            cut_at: Some(3),
            ..Far::default()
        };
        let (_stop, stop) = watch::channel(false);
        let (committed, mut told) = watch::channel::<Option<String>>(None);
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while told.changed().await.is_ok() {
                if let Some(c) = told.borrow_and_update().clone() {
                    seen.push(c[1..].parse::<u32>().expect("c<n>"));
                }
            }
            seen
        });
        let (summary, _, _, _) = ship_telling(far, 20, stop, committed).await;
        assert_eq!(summary.acked_batches, 20);
        let seen = seen.await.expect("watcher");
        assert_eq!(seen.last(), Some(&20), "the newest: {seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "never backwards: {seen:?}"
        );
    }

    #[tokio::test]
    async fn an_acknowledgement_out_of_order_ends_the_session_and_nothing_is_lost() {
        let far = Far {
            swap_once: true,
            ..Far::default()
        };
        let (_stop, stop) = watch::channel(false);
        let (summary, far, metrics, handle) = ship(far, 10, stop).await;
        assert_eq!(far.sessions, 2);
        assert_eq!(far.landed, seqs(10));
        assert_eq!(summary.acked_batches, 10);
        assert!(counted(
            &metrics,
            r#"sluice_agent_sink_errors_total{stream="s",reason="ack_order"} 1"#
        ));
        acked_through(&handle, 10).await;
    }

    #[tokio::test]
    async fn a_batch_refused_for_good_leaves_the_log_counted_as_lost() {
        let far = Far {
            reject: vec![1004],
            ..Far::default()
        };
        let (_stop, stop) = watch::channel(false);
        let (summary, far, metrics, handle) = ship(far, 8, stop).await;
        assert_eq!(summary.rejected_batches, 1);
        assert_eq!(summary.acked_batches, 7);
        assert!(!far.landed.contains(&1004));
        assert!(counted(
            &metrics,
            r#"sluice_agent_lost_rows_total{stream="s",reason="rejected"} 4"#
        ));
        acked_through(&handle, 8).await;
    }

    #[tokio::test]
    async fn a_refused_session_is_retried_at_the_slowest_pace() {
        let far = Far {
            refuse: 1,
            ..Far::default()
        };
        let (_stop, stop) = watch::channel(false);
        let started = std::time::Instant::now();
        let (summary, far, _, _) = ship(far, 5, stop).await;
        assert_eq!(far.sessions, 2);
        assert_eq!(summary.acked_batches, 5);
        assert!(
            started.elapsed() >= pacing().backoff_max,
            "retried after {:?}, before backoff_max",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn on_stop_the_lane_drains_until_its_deadline_the_rest_stays_in_the_log_and_sources_hear_nothing()
     {
        let far = Far {
            silent: true,
            ..Far::default()
        };
        let (stop_tx, stop) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = stop_tx.send(true);
            stop_tx
        });
        let (committed, told) = watch::channel::<Option<String>>(None);
        let (summary, far, _, handle) = ship_telling(far, 10, stop, committed).await;
        drop(stopper.await);
        assert_eq!(*told.borrow(), None, "sent is not committed");
        // Stopping starts a drain session, which resends what is in flight; nothing past the
        // window is sent while nothing is acknowledged.
        assert!(
            far.received.iter().all(|s| seqs(4).contains(s)),
            "no more than the window in flight: {:?}",
            far.received
        );
        assert_eq!(summary.unshipped_batches, 4);
        assert_eq!(summary.acked_batches, 0);
        assert_eq!(handle.acked(), 0, "nothing unacknowledged left the log");
    }
}
