//! The lander's side of quarantine: a batch that can never land in its table kept in the
//! stream's quarantine table, and its mark recorded in the stream's table.

use arrow_array::RecordBatch;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::columns::{Plan, plan, to_table_batch};
use super::super::lander::{LandRequest, Origin, Verdict};
use super::super::pending::{After, Landed, Pending};
use super::super::quarantine;
use super::{LanderTask, OpenTable};

impl LanderTask {
    /// A batch that can never land in its table, for `reason` (`code` is its metric
    /// reason). An agent's batch is kept in the stream's quarantine table and acknowledged
    /// once that commit is in; a run of JSON rows is refused, and its messages go to the
    /// dead-letter table; so is a batch being replayed from quarantine.
    pub(super) async fn refuse(
        &mut self,
        stream: &str,
        req: LandRequest,
        reason: String,
        code: &'static str,
    ) {
        let bronze = format!("{}.{stream}", self.cfg.namespace);
        let rows = req.batch.num_rows();
        let (agent, seq) = (req.envelope.agent.clone(), req.envelope.seq);
        if !req.quarantine || matches!(req.origin, Some(Origin::Rows { .. })) {
            tracing::warn!(table = %bronze, %agent, seq, "rejected batch: {reason}");
            self.metrics.batch_rejected(&bronze, code, rows);
            if !req.quarantine {
                // A replay: the agent's later batches must not land before this one, which
                // would then count as landed. They wait (unanswered) for another replay.
                self.blocked
                    .insert((stream.to_string(), agent), req.first_seq());
            }
            let _ = req.reply.send(Verdict::Rejected(reason));
            return;
        }
        let key = quarantine::key(stream);
        let name = quarantine::table_name(stream);
        let table = OpenTable {
            namespace: quarantine::NAMESPACE,
            name: &name,
            user: &quarantine::schema(),
            partition: &[],
            layer: "quarantine",
        };
        if !self.tables.contains_key(&key) && !self.open_table(&key, table).await {
            self.blocked
                .insert((stream.to_string(), agent), req.first_seq());
            drop(req.reply);
            return;
        }
        let mut req = req;
        let record = match quarantine::record(&req, &reason, code) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(table = %bronze, %agent, seq, "cannot quarantine a batch ({reason}): {e}");
                self.metrics.batch_rejected(&bronze, code, rows);
                let _ = req.reply.send(Verdict::Rejected(reason));
                return;
            }
        };
        // Taken: a resend is a duplicate from now on, and no gap in the agent's batches.
        if let Some(b) = self.tables.get_mut(stream) {
            b.accepted.raise(&agent, seq);
        }
        req.batch = record;
        let Some(state) = self.tables.get(&key) else {
            return;
        };
        let env = &req.envelope;
        if Landed::of(
            &env.agent,
            env.seq,
            req.batch.num_rows(),
            req.origin.as_ref(),
            &state.committed.marks,
        ) == Landed::All
        {
            // Quarantined before; the bronze table may not have its mark yet.
            let (checkpoint, created, received) = (
                env.checkpoint.clone(),
                env.created_at_us,
                req.received_at_us,
            );
            self.mark_in(stream, &agent, seq, checkpoint, created, received);
        }
        // A resend of a batch quarantined before is answered as a duplicate, not counted
        // again.
        let Some(req) = self.unlanded(&key, req) else {
            return;
        };
        tracing::warn!(table = %bronze, %agent, seq, rows, "batch quarantined in {key}: {reason}");
        self.metrics.batch_quarantined(&bronze, code, rows);
        let Some(state) = self.tables.get(&key) else {
            return;
        };
        let shaped = match plan(&req.batch.schema(), &state.schema, false) {
            Ok(Plan::Fits(m)) => to_table_batch(&req, &m, &state.schema).map_err(|e| e.to_string()),
            Ok(Plan::Evolve(change)) => Err(format!("the quarantine table lacks {change}")),
            Err(e) => Err(e.to_string()),
        };
        match shaped {
            Ok(batch) => self.accept(
                &key,
                req,
                batch,
                After::Quarantined {
                    stream: stream.to_string(),
                    reason,
                },
            ),
            Err(e) => {
                tracing::error!(table = %key, "cannot quarantine a batch ({reason}): {e}");
                let _ = req.reply.send(Verdict::Rejected(reason));
            }
        }
    }

    /// Record in `stream`'s table that `agent`'s batch `seq` is taken care of (it is in
    /// quarantine): its mark and checkpoint go in with the table's next commit, no rows.
    pub(super) fn mark_in(
        &mut self,
        stream: &str,
        agent: &str,
        seq: u64,
        checkpoint: Option<String>,
        created_at_us: i64,
        received_at_us: i64,
    ) {
        let Some(state) = self.tables.get_mut(stream) else {
            return;
        };
        state.accepted.raise(agent, seq);
        state.pending_since.get_or_insert_with(Instant::now);
        state.pending.push(Pending {
            agent: agent.to_string(),
            seq,
            checkpoint,
            created_at_us,
            received_at_us,
            origin: None,
            wire_bytes: 0,
            batch: RecordBatch::new_empty(state.schema.clone()),
            reply: oneshot::channel().0,
            after: After::Mark,
        });
    }
}
