//! The single writer. See the module docs of `embedded` for the protocol.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use redb::{Durability, ReadableTable, Table};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::codec::{self, Record};
use super::{KV, LOG, META, META_COMPACTED, META_REVISION, Shared, TTL, now_ms};
use crate::error::{Error, Result};
use crate::types::{Deleted, Event, EventKind, KeyValue, Revision};

#[derive(Debug)]
pub(crate) enum Op {
    Create {
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
        ttl: Option<Duration>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    /// Deletes `key` if it still has the revision that set its TTL.
    Expire {
        key: String,
        mod_revision: Revision,
    },
    Compact {
        revision: Revision,
    },
}

#[derive(Debug)]
pub(crate) enum OpResult {
    Put(KeyValue),
    Deleted(Deleted),
    Compacted,
    /// An expiry that found the key rewritten or gone.
    Skipped,
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<OpResult>>,
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    events: broadcast::Sender<Arc<Event>>,
    max_batch: usize,
}

struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, u64, &'static [u8]>,
    ttl: Table<'t, (u64, &'static str), u64>,
}

impl Committer {
    pub fn new(
        shared: Arc<Shared>,
        events: broadcast::Sender<Arc<Event>>,
        max_batch: usize,
    ) -> Self {
        Committer {
            shared,
            events,
            max_batch,
        }
    }

    pub fn run(self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = requests.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    /// Applies and commits one batch, then publishes its events and answers
    /// every request in it.
    fn commit(&self, batch: &mut Vec<Request>) {
        let mut answers: Vec<Result<OpResult>> = Vec::with_capacity(batch.len());
        let mut events: Vec<Arc<Event>> = Vec::new();
        let outcome = self.apply_batch(batch, &mut answers, &mut events);
        match outcome {
            Ok(revision) => {
                self.shared.revision.store(revision, Ordering::SeqCst);
                for event in events {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(event);
                }
                for (req, answer) in batch.drain(..).zip(answers) {
                    let _ = req.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                let message = e.to_string();
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(Error::CommitFailed(message.clone())));
                }
            }
        }
    }

    fn apply_batch(
        &self,
        batch: &[Request],
        answers: &mut Vec<Result<OpResult>>,
        events: &mut Vec<Arc<Event>>,
    ) -> Result<Revision> {
        let shared = &self.shared;
        let mut txn = shared.db.begin_write().map_err(|e| shared.err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| shared.err(e))?;
        let mut revision = shared.revision.load(Ordering::SeqCst);
        {
            let mut tables = Tables {
                kv: txn.open_table(KV).map_err(|e| shared.err(e))?,
                log: txn.open_table(LOG).map_err(|e| shared.err(e))?,
                ttl: txn.open_table(TTL).map_err(|e| shared.err(e))?,
            };
            let mut meta = txn.open_table(META).map_err(|e| shared.err(e))?;
            let now = now_ms();
            for req in batch {
                if let Op::Compact { revision: target } = req.op {
                    answers.push(self.compact(&mut tables, &mut meta, target, revision));
                    continue;
                }
                match self.apply(&mut tables, &req.op, revision + 1, now) {
                    Ok((answer, Some(event))) => {
                        revision += 1;
                        tables
                            .log
                            .insert(revision as u64, codec::encode_event(&event).as_slice())
                            .map_err(|e| shared.err(e))?;
                        events.push(Arc::new(event));
                        answers.push(Ok(answer));
                    }
                    Ok((answer, None)) => answers.push(Ok(answer)),
                    // A semantic answer fails only this request.
                    Err(e) if e.is_semantic() => answers.push(Err(e)),
                    // A database fault fails the whole batch.
                    Err(e) => return Err(e),
                }
            }
            meta.insert(META_REVISION, revision as u64)
                .map_err(|e| shared.err(e))?;
        }
        txn.commit().map_err(|e| shared.err(e))?;
        Ok(revision)
    }

    fn compact(
        &self,
        tables: &mut Tables<'_>,
        meta: &mut Table<'_, &'static str, u64>,
        target: Revision,
        current: Revision,
    ) -> Result<OpResult> {
        let shared = &self.shared;
        let compacted = shared.compacted.load(Ordering::SeqCst);
        if target <= compacted {
            return Err(Error::Compacted {
                requested: target,
                compacted,
            });
        }
        if target > current {
            return Err(Error::FutureRevision {
                requested: target,
                current,
            });
        }
        tables
            .log
            .retain_in(..(target as u64), |_, _| false)
            .map_err(|e| shared.err(e))?;
        meta.insert(META_COMPACTED, target as u64)
            .map_err(|e| shared.err(e))?;
        // Published before the commit lands: a watcher that reads the new
        // value early only refuses a revision that is about to be gone.
        shared.compacted.store(target, Ordering::SeqCst);
        Ok(OpResult::Compacted)
    }

    /// Applies one write at `revision`. Returns the answer and the event to
    /// log, or `None` when nothing was written.
    fn apply(
        &self,
        t: &mut Tables<'_>,
        op: &Op,
        revision: Revision,
        now: u64,
    ) -> Result<(OpResult, Option<Event>)> {
        let shared = &self.shared;
        let key = match op {
            Op::Create { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key, .. }
            | Op::Expire { key, .. } => key.as_str(),
            Op::Compact { .. } => {
                return Err(Error::Corrupt("compaction reached the write path".into()));
            }
        };
        let existing = match t.kv.get(key).map_err(|e| shared.err(e))? {
            Some(v) => Some(Record::decode(v.value())?),
            None => None,
        };
        match op {
            Op::Create { value, ttl, .. } => {
                if existing.is_some() {
                    return Err(Error::AlreadyExists { key: key.into() });
                }
                let record = Record {
                    create_revision: revision,
                    mod_revision: revision,
                    expires_at_ms: expiry(now, *ttl),
                    value: value.clone(),
                };
                self.put(t, key, &record, None)?;
                let kv = record.into_key_value(key);
                Ok((
                    OpResult::Put(kv.clone()),
                    Some(Event {
                        kind: EventKind::Create,
                        revision,
                        key: key.into(),
                        current: Some(kv),
                        prev: None,
                    }),
                ))
            }
            Op::Update {
                value,
                expected,
                ttl,
                ..
            } => {
                let Some(old) = existing else {
                    return Err(Error::NotFound { key: key.into() });
                };
                if old.mod_revision != *expected {
                    return Err(Error::Conflict {
                        key: key.into(),
                        expected: *expected,
                        actual: old.mod_revision,
                    });
                }
                let record = Record {
                    create_revision: old.create_revision,
                    mod_revision: revision,
                    expires_at_ms: expiry(now, *ttl),
                    value: value.clone(),
                };
                self.put(t, key, &record, Some(old.expires_at_ms))?;
                let kv = record.into_key_value(key);
                Ok((
                    OpResult::Put(kv.clone()),
                    Some(Event {
                        kind: EventKind::Update,
                        revision,
                        key: key.into(),
                        current: Some(kv),
                        prev: Some(old.into_key_value(key)),
                    }),
                ))
            }
            Op::Delete { .. } | Op::Expire { .. } => {
                let expected = match op {
                    Op::Delete { expected, .. } => *expected,
                    Op::Expire { mod_revision, .. } => Some(*mod_revision),
                    _ => None,
                };
                let is_expiry = matches!(op, Op::Expire { .. });
                let Some(old) = existing else {
                    if is_expiry {
                        return Ok((OpResult::Skipped, None));
                    }
                    return Err(Error::NotFound { key: key.into() });
                };
                if let Some(expected) = expected
                    && old.mod_revision != expected
                {
                    if is_expiry {
                        return Ok((OpResult::Skipped, None));
                    }
                    return Err(Error::Conflict {
                        key: key.into(),
                        expected,
                        actual: old.mod_revision,
                    });
                }
                t.kv.remove(key).map_err(|e| shared.err(e))?;
                if old.expires_at_ms != 0 {
                    t.ttl
                        .remove((old.expires_at_ms, key))
                        .map_err(|e| shared.err(e))?;
                }
                let prev = old.into_key_value(key);
                Ok((
                    OpResult::Deleted(Deleted {
                        revision,
                        prev: prev.clone(),
                    }),
                    Some(Event {
                        kind: EventKind::Delete,
                        revision,
                        key: key.into(),
                        current: None,
                        prev: Some(prev),
                    }),
                ))
            }
            Op::Compact { .. } => Err(Error::Corrupt("compaction reached the write path".into())),
        }
    }

    fn put(
        &self,
        t: &mut Tables<'_>,
        key: &str,
        record: &Record,
        old_expiry: Option<u64>,
    ) -> Result<()> {
        let shared = &self.shared;
        t.kv.insert(key, record.encode().as_slice())
            .map_err(|e| shared.err(e))?;
        if let Some(old) = old_expiry
            && old != 0
        {
            t.ttl.remove((old, key)).map_err(|e| shared.err(e))?;
        }
        if record.expires_at_ms != 0 {
            t.ttl
                .insert((record.expires_at_ms, key), record.mod_revision as u64)
                .map_err(|e| shared.err(e))?;
        }
        Ok(())
    }
}

fn expiry(now: u64, ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(ttl) => now.saturating_add((ttl.as_millis() as u64).max(1)),
    }
}
