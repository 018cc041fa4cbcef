//! A watch replays the log from disk until caught up, then follows the
//! committer's broadcast; it falls back to the log whenever the broadcast
//! overflows for this watcher.

use std::sync::Arc;

use redb::ReadableDatabase;
use std::collections::VecDeque;

use tokio::sync::broadcast;

use super::codec;
use super::{LOG, META, META_COMPACTED, Shared};
use crate::error::{Error, Result};
use crate::types::{Event, Revision, WatchStream};

/// Events read from disk per step of a catch-up.
const CATCH_UP_BATCH: usize = 1024;

/// The watch as a stream polled directly by its consumer: no task and no
/// extra channel between the committer's broadcast and the reader, so a
/// live event costs one hop.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    prefix: String,
    after: Revision,
    live: broadcast::Receiver<Arc<Event>>,
) -> WatchStream {
    let state = State {
        shared,
        prefix,
        covered: after,
        live,
        pending: VecDeque::new(),
        catching_up: true,
        failed: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    }))
}

struct State {
    shared: Arc<Shared>,
    prefix: String,
    /// Every revision up to here was delivered or did not match.
    covered: Revision,
    live: broadcast::Receiver<Arc<Event>>,
    /// Events read from the log, not yet delivered.
    pending: VecDeque<Event>,
    /// Replaying the log (at the start, and after the broadcast overflowed).
    catching_up: bool,
    /// An error was delivered: the stream ends.
    failed: bool,
}

impl State {
    async fn next(&mut self) -> Option<Result<Event>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.catching_up {
                let shared = self.shared.clone();
                let prefix = self.prefix.clone();
                let covered = self.covered;
                let read = tokio::task::spawn_blocking(move || read_log(&shared, &prefix, covered))
                    .await
                    .map_err(|_| Error::Closed)
                    .and_then(|r| r);
                match read {
                    Ok((events, scanned_to, done)) => {
                        self.pending.extend(events);
                        self.covered = scanned_to;
                        self.catching_up = !done;
                    }
                    Err(e) => return Some(self.fail(e)),
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    if event.revision <= self.covered {
                        continue;
                    }
                    self.covered = event.revision;
                    if event.key.starts_with(&self.prefix) {
                        return Some(Ok(Event::clone(&event)));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, prefix = %self.prefix, "watcher lagged; replaying from the log");
                    self.catching_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => return Some(self.fail(Error::Closed)),
            }
        }
    }

    fn fail(&mut self, e: Error) -> Result<Event> {
        self.failed = true;
        Err(e)
    }
}

/// Reads log entries after `after`: the matching events, the last revision
/// scanned, and whether the end of the log was reached.
fn read_log(
    shared: &Shared,
    prefix: &str,
    after: Revision,
) -> Result<(Vec<Event>, Revision, bool)> {
    let txn = shared.db.begin_read().map_err(|e| shared.err(e))?;
    let meta = txn.open_table(META).map_err(|e| shared.err(e))?;
    let compacted = meta
        .get(META_COMPACTED)
        .map_err(|e| shared.err(e))?
        .map(|v| v.value() as Revision)
        .unwrap_or(0);
    if after + 1 < compacted {
        return Err(Error::Compacted {
            requested: after,
            compacted,
        });
    }
    let log = txn.open_table(LOG).map_err(|e| shared.err(e))?;
    let mut events = Vec::new();
    let mut scanned_to = after;
    let mut scanned = 0usize;
    for entry in log.range((after as u64 + 1)..).map_err(|e| shared.err(e))? {
        let (rev, bytes) = entry.map_err(|e| shared.err(e))?;
        let revision = rev.value() as Revision;
        scanned_to = revision;
        scanned += 1;
        let event = codec::decode_event(revision, bytes.value())?;
        if event.key.starts_with(prefix) {
            events.push(event);
        }
        if scanned >= CATCH_UP_BATCH * 4 || events.len() >= CATCH_UP_BATCH {
            return Ok((events, scanned_to, false));
        }
    }
    Ok((events, scanned_to, true))
}
