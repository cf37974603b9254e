//! Networked source: a PostgreSQL table's changes through logical replication (`pgoutput`),
//! after a snapshot of its rows when asked.
//!
//! | file | job |
//! |---|---|
//! | `lib.rs` | config, the snapshot, the change stream, checkpoints and the slot's flush |
//! | `wire.rs` | the wire protocol: start-up, authentication, queries, copy-both |
//! | `pgoutput.rs` | pgoutput's messages |
//! | `columns.rs` | PostgreSQL types to the contract's, values parsed from their text |
//!
//! ```toml
//! [sources.orders]
//! type = "wasm"
//! plugin = "plugins/dist/postgres_cdc.wasm"
//! allow_tcp = ["db.internal:5432"]
//! call_timeout = "30s"
//! [sources.orders.config]
//! host = "db.internal"
//! user = "replicator"
//! password = "..."
//! database = "shop"
//! table = "orders"
//! ```
//!
//! Each row is one change: `op` (`r` snapshot read, `c` insert, `u` update, `d` delete, `t`
//! truncate), `lsn` (the commit's LSN; a snapshot's rows carry the slot's start), `seq`
//! (the change's place in its transaction), `xid`, `commit_ts`, then the table's columns
//! (a delete carries the key columns only). Ordered by (`lsn`, `seq`), the rows replay the
//! table; the latest row per key is its current state.
//!
//! The checkpoint is `LSN#N`: every transaction ending by LSN is delivered, and so are the
//! first N changes of the next. The slot's flush position moves only in `committed`, so
//! PostgreSQL keeps the WAL of every change the lake does not hold yet. While the slot has
//! nothing for this table, the flush position follows the server's, so the slot holds no
//! WAL for other tables' traffic.

mod columns;
mod pgoutput;
mod wire;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnType, Level, MAX_CHECKPOINT_BYTES, Poll, Source, log};

use columns::{Builder, Kind};
use pgoutput::{Message, PG_EPOCH_MICROS, Val};
use wire::{Conn, Params, ident, literal};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    host: String,
    #[serde(default = "port")]
    port: u16,
    user: String,
    #[serde(default)]
    password: Option<String>,
    database: String,
    #[serde(default = "public")]
    schema: String,
    table: String,
    /// Replication slot (default `sluice_<table>`), created when missing.
    #[serde(default)]
    slot: Option<String>,
    /// Publication (default `sluice_<table>`), created for the table when missing.
    #[serde(default)]
    publication: Option<String>,
    /// Read the table's rows before its changes.
    #[serde(default = "yes")]
    snapshot: bool,
    /// Longest a poll keeps reading the stream, in milliseconds (keep it under the
    /// source's `call_timeout`).
    #[serde(default = "max_poll_ms")]
    max_poll_ms: u64,
    /// Tell the server where the slot stands at least this often, in milliseconds (below
    /// the server's `wal_sender_timeout`).
    #[serde(default = "status_interval_ms")]
    status_interval_ms: u64,
}

fn port() -> u16 {
    5432
}
fn public() -> String {
    "public".into()
}
fn yes() -> bool {
    true
}
fn max_poll_ms() -> u64 {
    500
}
fn status_interval_ms() -> u64 {
    10_000
}

/// The columns every change carries, before the table's.
const META: [&str; 5] = ["op", "lsn", "seq", "xid", "commit_ts"];

/// One column of the table.
struct TableColumn {
    name: String,
    kind: Kind,
    /// `format_type`'s name, to cast snapshot keys.
    sql_type: String,
}

/// Where the connector stands; printed as the checkpoint.
#[derive(Clone, Debug, PartialEq)]
enum Mark {
    /// Reading the table's rows ordered by key, after `after` (none yet: from the start);
    /// `rows` read so far; changes stream from `at` once done.
    Snapshot {
        at: u64,
        rows: u64,
        after: Option<Vec<String>>,
    },
    /// Streaming from `lsn`, skipping the first `skip` changes of the first transaction.
    Stream { lsn: u64, skip: u64 },
}

impl Mark {
    fn parse(s: &str) -> Result<Mark, String> {
        let bad = || format!("checkpoint {s:?} is not this connector's");
        if let Some(rest) = s.strip_prefix("snapshot ") {
            let mut parts = rest.splitn(3, ' ');
            let at = parse_lsn(parts.next().ok_or_else(bad)?).ok_or_else(bad)?;
            let rows = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let after = serde_json::from_str(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
            return Ok(Mark::Snapshot { at, rows, after });
        }
        let (lsn, skip) = s.split_once('#').ok_or_else(bad)?;
        Ok(Mark::Stream {
            lsn: parse_lsn(lsn).ok_or_else(bad)?,
            skip: skip.parse().map_err(|_| bad())?,
        })
    }

    fn print(&self) -> String {
        match self {
            Mark::Snapshot { at, rows, after } => format!(
                "snapshot {} {rows} {}",
                lsn(*at),
                serde_json::to_string(after).unwrap_or_default()
            ),
            Mark::Stream { lsn: l, skip } => format!("{}#{skip}", lsn(*l)),
        }
    }
}

/// The transaction being received.
struct Txn {
    lsn: u64,
    ts: i64,
    xid: u32,
    /// Changes seen so far (emitted or skipped).
    seq: u64,
}

struct PostgresCdc {
    cfg: Config,
    conn: Conn,
    slot: String,
    publication: String,
    columns: Vec<TableColumn>,
    /// The server's WAL position when the columns were read.
    opened_at: u64,
    /// Indexes of the primary key's columns, in key order.
    key: Vec<usize>,
    out: Vec<Builder>,
    mark: Mark,
    streaming: bool,
    /// The table's relation id and, per table column, its place in the relation's tuples.
    relation: Option<(u32, Vec<Option<usize>>)>,
    txn: Option<Txn>,
    /// Changes of the first transaction after a restart that the lake already holds.
    skip: u64,
    /// The checkpoint of the last batch returned (or opened with), and the lake's (from
    /// `committed`).
    returned: Option<Mark>,
    lake: Option<Mark>,
    /// Every change of the table before this LSN has been returned (the stream was quiet).
    quiet: u64,
    /// The flush position last sent, and when a status was last sent.
    flushed: u64,
    status_at: Instant,
    reply: bool,
}

impl Source for PostgresCdc {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        // Named after the table, and its schema unless it is `public`.
        let default = if cfg.schema == "public" {
            format!("sluice_{}", cfg.table)
        } else {
            format!("sluice_{}_{}", cfg.schema, cfg.table)
        };
        let slot = cfg.slot.clone().unwrap_or(default.clone());
        let publication = cfg.publication.clone().unwrap_or(default);
        for (what, name) in [("slot", &slot), ("publication", &publication)] {
            if name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!(
                    "{what} {name:?}: use 1 to 63 lower-case letters, digits and underscores"
                ));
            }
        }
        let mark = checkpoint.as_deref().map(Mark::parse).transpose()?;
        let resumed = mark.clone();
        let mut conn = Conn::connect(&Params {
            host: &cfg.host,
            port: cfg.port,
            user: &cfg.user,
            password: cfg.password.as_deref(),
            database: &cfg.database,
            application_name: &format!("sluice {slot}"),
        })?;
        let opened_at = conn
            .query("SELECT pg_current_wal_lsn()")?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| parse_lsn(&s))
            .ok_or("no WAL position from the server")?;
        let (columns, key) = table_columns(&mut conn, &cfg.schema, &cfg.table)?;
        if let Some(c) = columns.iter().find(|c| META.contains(&c.name.as_str())) {
            return Err(format!(
                "column {:?} of {} has the name of a change column ({})",
                c.name,
                cfg.table,
                META.join(", ")
            ));
        }
        if cfg.snapshot && key.is_empty() {
            return Err(format!(
                "{}.{} has no primary key: a snapshot reads the table in key order (or set snapshot = false)",
                cfg.schema, cfg.table
            ));
        }
        ensure_publication(
            &mut conn,
            &publication,
            &cfg.schema,
            &cfg.table,
            columns.len(),
        )?;
        let (slot_at, flushed) = ensure_slot(&mut conn, &slot, &cfg.database, mark.is_some())?;
        let mark = match mark {
            Some(m) => m,
            None if cfg.snapshot => Mark::Snapshot {
                at: slot_at,
                rows: 0,
                after: None,
            },
            None => Mark::Stream {
                lsn: slot_at,
                skip: 0,
            },
        };
        let mut schema = vec![
            Column::required("op", ColumnType::Utf8),
            Column::required("lsn", ColumnType::Int64),
            Column::required("seq", ColumnType::Int64),
            Column::new("xid", ColumnType::Int64),
            Column::new("commit_ts", ColumnType::TimestampTz),
        ];
        let mut out = vec![
            Builder::new(Kind::Text),
            Builder::new(Kind::Int64),
            Builder::new(Kind::Int64),
            Builder::new(Kind::Int64),
            Builder::new(Kind::TimestampTz),
        ];
        for c in &columns {
            // Nullable whatever the table says: a delete carries the key columns only.
            schema.push(Column::new(c.name.clone(), c.kind.column_type()));
            out.push(Builder::new(c.kind));
        }
        let skip = match mark {
            Mark::Stream { skip, .. } => skip,
            Mark::Snapshot { .. } => 0,
        };
        log(
            Level::Info,
            &format!(
                "{}.{} through slot {slot} and publication {publication}, from {}",
                cfg.schema,
                cfg.table,
                mark.print()
            ),
        );
        Ok((
            PostgresCdc {
                cfg,
                conn,
                slot,
                publication,
                columns,
                opened_at,
                key,
                out,
                returned: resumed,
                mark,
                streaming: false,
                relation: None,
                txn: None,
                skip,
                lake: None,
                quiet: 0,
                flushed,
                status_at: Instant::now(),
                reply: false,
            },
            schema,
        ))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        let max_rows = max_rows.max(1) as usize;
        let mark = match &self.mark {
            Mark::Snapshot { at, rows, after } => {
                self.snapshot_page(*at, *rows, after.clone(), max_rows)?
            }
            Mark::Stream { .. } => self.stream(max_rows)?,
        };
        let rows = self.out[0].len();
        if rows == 0 {
            return Ok(Poll::idle());
        }
        let cols = self.out.iter_mut().map(Builder::finish).collect();
        let cp = mark.print();
        // A snapshot's key can be longer than the agent keeps: say why, and what to do.
        if cp.len() > MAX_CHECKPOINT_BYTES {
            return Err(format!(
                "a checkpoint of {} bytes (the snapshot's last key is too long; at most {MAX_CHECKPOINT_BYTES} are kept): set snapshot = false",
                cp.len()
            ));
        }
        self.returned = Some(mark);
        Ok(Poll::batch(Batch::columns(cols)).checkpoint(cp))
    }

    fn committed(&mut self, checkpoint: &str) -> Result<(), String> {
        self.lake = Some(Mark::parse(checkpoint)?);
        if self.streaming {
            self.send_status()?;
        }
        Ok(())
    }
}

impl PostgresCdc {
    /// Read the next rows of the table in key order; the mark after them.
    fn snapshot_page(
        &mut self,
        at: u64,
        rows: u64,
        after: Option<Vec<String>>,
        max_rows: usize,
    ) -> Result<Mark, String> {
        let names: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        let keys: Vec<String> = self.key.iter().map(|&i| names[i].clone()).collect();
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            names.join(", "),
            ident(&self.cfg.schema),
            ident(&self.cfg.table)
        );
        if let Some(after) = &after {
            if after.len() != self.key.len() {
                return Err("the checkpoint's snapshot key does not fit the table's key".into());
            }
            let values: Vec<String> = self
                .key
                .iter()
                .zip(after)
                .map(|(&i, v)| format!("{}::{}", literal(v), self.columns[i].sql_type))
                .collect();
            sql += &format!(" WHERE ({}) > ({})", keys.join(", "), values.join(", "));
        }
        sql += &format!(" ORDER BY {} LIMIT {max_rows}", keys.join(", "));
        let mut n = 0u64;
        let mut last: Option<Vec<String>> = None;
        let (out, key) = (&mut self.out, &self.key);
        let width = self.columns.len();
        self.conn.query_each(&sql, |buf, row| {
            if row.len() != width {
                return Err(format!(
                    "the server sent a row of {} values for {width} columns",
                    row.len()
                ));
            }
            out[0].push_str("r");
            out[1].push_i64(at as i64);
            out[2].push_i64((rows + n) as i64);
            out[3].push_null();
            out[4].push_null();
            for (j, v) in row.iter().enumerate() {
                let b = &mut out[META.len() + j];
                match v {
                    Some(r) => b.push_text(&buf[r.clone()])?,
                    None => b.push_null(),
                }
            }
            last = Some(
                key.iter()
                    .map(|&i| {
                        row[i]
                            .clone()
                            .map(|r| String::from_utf8_lossy(&buf[r]).into_owned())
                            .unwrap_or_default()
                    })
                    .collect(),
            );
            n += 1;
            Ok(())
        })?;
        if (n as usize) < max_rows {
            log(
                Level::Info,
                &format!(
                    "snapshot done: {} rows; streaming from {}",
                    rows + n,
                    lsn(at)
                ),
            );
            self.mark = Mark::Stream { lsn: at, skip: 0 };
        } else {
            self.mark = Mark::Snapshot {
                at,
                rows: rows + n,
                after: last,
            };
        }
        Ok(self.mark.clone())
    }

    /// Take what the stream has, up to `max_rows` changes or `max_poll_ms`; the mark after.
    fn stream(&mut self, max_rows: usize) -> Result<Mark, String> {
        if !self.streaming {
            let Mark::Stream { lsn: from, .. } = self.mark else {
                return Err("internal: streaming before the snapshot ends".into());
            };
            self.conn.start_copy(&format!(
                "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" '{}')",
                ident(&self.slot),
                lsn(from),
                self.publication
            ))?;
            self.streaming = true;
            self.send_status()?;
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.max_poll_ms);
        loop {
            while self.out[0].len() < max_rows {
                let Some((tag, body)) = self.conn.next_buffered()? else {
                    break;
                };
                match tag {
                    b'd' if !self.copy_data(body.start, body.end, max_rows)? => {
                        self.conn.unread(body.start);
                        break;
                    }
                    b'E' => return Err(wire::server_error(&self.conn.buf()[body])),
                    b'c' => return Err("the server ended the replication stream".into()),
                    _ => {}
                }
            }
            if self.reply {
                self.send_status()?;
            }
            if self.out[0].len() >= max_rows
                || Instant::now() >= deadline
                || self.conn.has_message()
            {
                break;
            }
            if !self.conn.read_available()? {
                break;
            }
        }
        if self.status_at.elapsed() >= Duration::from_millis(self.cfg.status_interval_ms) {
            self.send_status()?;
        }
        let Mark::Stream { lsn: done, .. } = self.mark else {
            return Err("internal: the mark left the stream".into());
        };
        Ok(Mark::Stream {
            lsn: done,
            skip: self.txn.as_ref().map_or(0, |t| t.seq),
        })
    }

    /// Take one copy-data message: `false` if its changes do not fit in this poll's rows.
    fn copy_data(&mut self, start: usize, end: usize, max_rows: usize) -> Result<bool, String> {
        let buf = self.conn.buf();
        match buf.get(start) {
            Some(b'w') => {
                let msg = pgoutput::decode(buf, start + 25, end)?;
                let rows = self.rows_of(&msg);
                let taken = self.out[0].len();
                if taken + rows > max_rows {
                    if taken == 0 {
                        return Err(format!(
                            "an update of a key is {rows} rows, more than max_rows {max_rows}"
                        ));
                    }
                    return Ok(false);
                }
                self.change(msg)?;
                Ok(true)
            }
            Some(b'k') => {
                let msg = &buf[start..end];
                let wal_end = wire::u64_at(msg, 1)?;
                let reply = msg.get(17).copied() == Some(1);
                // Quiet: no transaction open, nothing taken this poll, so every change
                // before the server's position has been returned.
                if self.txn.is_none() && self.out[0].is_empty() {
                    self.quiet = self.quiet.max(wal_end);
                }
                self.reply |= reply;
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// How many rows `msg` adds.
    fn rows_of(&self, msg: &Message) -> usize {
        match msg {
            Message::Insert { rel, .. } | Message::Delete { rel, .. } if self.ours(*rel) => 1,
            Message::Update { rel, old, new } if self.ours(*rel) => match old {
                Some(old) if self.key_changed(old, new) => 2,
                _ => 1,
            },
            Message::Truncate { rels } if rels.iter().any(|r| self.ours(*r)) => 1,
            _ => 0,
        }
    }

    fn change(&mut self, msg: Message) -> Result<(), String> {
        match msg {
            Message::Begin { lsn, ts, xid } => {
                self.txn = Some(Txn {
                    lsn,
                    ts,
                    xid,
                    seq: 0,
                });
            }
            Message::Commit { end } => {
                self.txn = None;
                self.skip = 0;
                self.mark = Mark::Stream { lsn: end, skip: 0 };
                if self.out[0].is_empty() {
                    self.quiet = self.quiet.max(end);
                }
            }
            Message::Relation {
                id,
                schema,
                name,
                columns,
            } => {
                if schema != self.cfg.schema || name != self.cfg.table {
                    return Ok(());
                }
                // Columns are read at open. A change committed since that the columns do
                // not describe means the table changed: reopen to read them again. One
                // committed before describes columns dropped or renamed since: those
                // values have no column now.
                let since_open = self.txn.as_ref().is_none_or(|t| t.lsn >= self.opened_at);
                let mut place = vec![None; self.columns.len()];
                for (i, rc) in columns.iter().enumerate() {
                    let j = self.columns.iter().position(|c| c.name == rc.name);
                    match j {
                        Some(j) if Kind::of(rc.oid, rc.typmod) == self.columns[j].kind => {
                            place[j] = Some(i)
                        }
                        Some(_) if since_open => {
                            return Err(
                                self.reshaped(&format!("column {:?} changed type", rc.name))
                            );
                        }
                        // Parsed as the column's type now, or failing with the column named.
                        Some(j) => place[j] = Some(i),
                        None if since_open => {
                            return Err(self.reshaped(&format!("column {:?} was added", rc.name)));
                        }
                        None => {}
                    }
                }
                self.relation = Some((id, place));
            }
            Message::Insert { rel, new } if self.ours(rel) => self.row("c", &new, None)?,
            Message::Update { rel, old, new } if self.ours(rel) => {
                // A new key: the old key's row is gone.
                if let Some(old) = &old
                    && self.key_changed(old, &new)
                {
                    self.row("d", old, None)?;
                }
                self.row("u", &new, old.as_deref())?;
            }
            Message::Delete { rel, old } if self.ours(rel) => self.row("d", &old, None)?,
            Message::Truncate { rels } if rels.iter().any(|r| self.ours(*r)) => {
                self.row("t", &[], None)?
            }
            _ => {}
        }
        Ok(())
    }

    fn ours(&self, rel: u32) -> bool {
        self.relation.as_ref().is_some_and(|(id, _)| *id == rel)
    }

    fn reshaped(&self, what: &str) -> String {
        format!(
            "{}.{} changed shape ({what}); the source restarts to read the new columns",
            self.cfg.schema, self.cfg.table
        )
    }

    fn key_changed(&self, old: &[Val], new: &[Val]) -> bool {
        let Some((_, place)) = &self.relation else {
            return false;
        };
        let buf = self.conn.buf();
        self.key.iter().any(|&k| match place[k] {
            Some(i) => match (old.get(i), new.get(i)) {
                (Some(Val::Text(a)), Some(Val::Text(b))) => buf[a.clone()] != buf[b.clone()],
                _ => false,
            },
            None => false,
        })
    }

    /// Add one change (`values` in the relation's column order; `old` fills what an update
    /// left unchanged), unless the lake has it already.
    fn row(&mut self, op: &str, values: &[Val], old: Option<&[Val]>) -> Result<(), String> {
        let txn = self.txn.as_mut().ok_or("a change outside a transaction")?;
        let seq = txn.seq;
        txn.seq += 1;
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        let (lsn, ts, xid) = (txn.lsn, txn.ts, txn.xid);
        let Some((_, place)) = &self.relation else {
            return Err("a change before its relation".into());
        };
        let buf = self.conn.buf();
        let out = &mut self.out;
        out[0].push_str(op);
        out[1].push_i64(lsn as i64);
        out[2].push_i64(seq as i64);
        out[3].push_i64(xid as i64);
        out[4].push_i64(ts);
        for (j, p) in place.iter().enumerate() {
            let b = &mut out[META.len() + j];
            let mut v = p.and_then(|i| values.get(i)).unwrap_or(&Val::Null);
            if *v == Val::Unchanged {
                // Only a full old row (REPLICA IDENTITY FULL) has the value; a key-only
                // one has nulls there, which are not the value.
                v = match p.and_then(|i| old?.get(i)) {
                    Some(t @ Val::Text(_)) => t,
                    _ => &Val::Unchanged,
                };
            }
            match v {
                Val::Text(r) => b
                    .push_text(&buf[r.clone()])
                    .map_err(|e| format!("column {:?}: {e}", self.columns[j].name))?,
                Val::Null => b.push_null(),
                Val::Unchanged => {
                    return Err(format!(
                        "column {:?}: an update left a large (TOASTed) value unchanged, so the server did not send it. Set REPLICA IDENTITY FULL on {}.{} for later changes; this one cannot be read again: drop the slot and the source's state to snapshot anew",
                        self.columns[j].name, self.cfg.schema, self.cfg.table
                    ));
                }
            }
        }
        Ok(())
    }

    /// Tell the server how far the lake holds the stream (and answer its keepalive).
    fn send_status(&mut self) -> Result<(), String> {
        let lsn_of = |m: &Option<Mark>| match m {
            Some(Mark::Stream { lsn, .. }) => *lsn,
            _ => 0,
        };
        // Never past what this connector returned, whatever it is told.
        let mut flush = lsn_of(&self.lake).min(lsn_of(&self.returned));
        // The lake holds all that was returned, which ends between transactions, and
        // nothing of the table came since the quiet position: the slot can move there.
        // (Not inside a transaction: a restart would skip the rest of it in the next one.)
        if self.lake.is_some()
            && self.lake == self.returned
            && matches!(self.lake, Some(Mark::Stream { skip: 0, .. }))
        {
            flush = flush.max(self.quiet);
        }
        // Never backwards (PostgreSQL takes the value as it comes); 0 means "unchanged".
        let flush = if flush > self.flushed { flush } else { 0 };
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        for v in [flush, flush, flush] {
            msg.extend_from_slice(&v.to_be_bytes());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        msg.extend_from_slice(&(now - PG_EPOCH_MICROS).to_be_bytes());
        msg.push(0);
        self.conn.send_copy_data(&msg)?;
        if flush > 0 {
            self.flushed = flush;
        }
        self.reply = false;
        self.status_at = Instant::now();
        Ok(())
    }
}

/// The table's columns and its primary key's, in key order.
fn table_columns(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<(Vec<TableColumn>, Vec<usize>), String> {
    let rel = literal(&format!("{}.{}", ident(schema), ident(table)));
    let rows = conn.query(&format!(
        "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), \
         coalesce((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) \
         WHERE k.att = a.attnum), 0) \
         FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
         WHERE a.attrelid = to_regclass({rel}) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum"
    ))?;
    if rows.is_empty() {
        return Err(format!("no table {schema}.{table} (or it has no columns)"));
    }
    let mut columns = Vec::new();
    let mut key = Vec::new();
    for r in rows {
        let field = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let oid: u32 = field(1).parse().map_err(|_| "bad pg_attribute row")?;
        let typmod: i32 = field(2).parse().map_err(|_| "bad pg_attribute row")?;
        let key_at: usize = field(4).parse().map_err(|_| "bad pg_index row")?;
        if key_at > 0 {
            key.push((key_at, columns.len()));
        }
        columns.push(TableColumn {
            name: field(0),
            kind: Kind::of(oid, typmod),
            sql_type: field(3),
        });
    }
    key.sort();
    Ok((columns, key.into_iter().map(|(_, i)| i).collect()))
}

/// Create the publication for the table if it is missing.
fn ensure_publication(
    conn: &mut Conn,
    name: &str,
    schema: &str,
    table: &str,
    columns: usize,
) -> Result<(), String> {
    // The table's entry as a JSON object: its row filter and column list exist from
    // PostgreSQL 15 on.
    let found = conn.query(&format!(
        "SELECT p.pubinsert AND p.pubupdate AND p.pubdelete, \
         (SELECT to_jsonb(t) FROM pg_publication_tables t WHERE t.pubname = p.pubname \
          AND t.schemaname = {} AND t.tablename = {}) \
         FROM pg_publication p WHERE p.pubname = {}",
        literal(schema),
        literal(table),
        literal(name)
    ))?;
    if let Some(row) = found.first() {
        let field = |i: usize| row.get(i).cloned().flatten();
        let refuse = |why: &str| Err(format!("publication {name} {why}: changes would be missed"));
        if field(0).as_deref() != Some("t") {
            return refuse("does not publish inserts, updates and deletes");
        }
        let Some(entry) = field(1) else {
            return refuse(&format!("does not include {schema}.{table}"));
        };
        let entry: serde_json::Value = serde_json::from_str(&entry)
            .map_err(|e| format!("publication {name}: the server's entry for the table: {e}"))?;
        if !entry["rowfilter"].is_null() {
            return refuse("filters the table's rows");
        }
        if entry["attnames"]
            .as_array()
            .is_some_and(|a| a.len() < columns)
        {
            return refuse("publishes only some of the table's columns");
        }
    } else {
        conn.query(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}.{}",
            ident(name),
            ident(schema),
            ident(table)
        ))?;
        log(Level::Info, &format!("created publication {name}"));
    }
    Ok(())
}

/// The slot's position to start from and its confirmed flush position, creating the slot
/// if it is missing and nothing was delivered yet (`resuming` false).
fn ensure_slot(
    conn: &mut Conn,
    slot: &str,
    database: &str,
    resuming: bool,
) -> Result<(u64, u64), String> {
    let rows = conn.query(&format!(
        "SELECT database, plugin, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {}",
        literal(slot)
    ))?;
    if let Some(row) = rows.first() {
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        if field(0) != database || field(1) != "pgoutput" {
            return Err(format!(
                "slot {slot} exists for database {:?} and plugin {:?}, not {database:?} and pgoutput",
                field(0),
                field(1)
            ));
        }
        let at = parse_lsn(&field(2)).ok_or("the slot has no confirmed position")?;
        return Ok((at, at));
    }
    if resuming {
        return Err(format!(
            "slot {slot} is gone, so the changes since the checkpoint may be lost; to start over, remove this source's checkpoint (its state) and it will snapshot the table again"
        ));
    }
    let rows = conn.query(&format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        ident(slot)
    ))?;
    let at = rows
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|s| parse_lsn(&s))
        .ok_or("CREATE_REPLICATION_SLOT returned no consistent point")?;
    log(Level::Info, &format!("created slot {slot} at {}", lsn(at)));
    Ok((at, at))
}

/// `16/B374D848` as a number.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A number as PostgreSQL prints an LSN.
fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

sluice_plugin::export_source!(PostgresCdc);
