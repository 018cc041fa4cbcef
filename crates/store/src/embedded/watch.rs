//! One task per watch: replay the log from disk until caught up, then follow
//! the committer's broadcast; fall back to the log whenever the broadcast
//! overflows for this watcher.

use std::sync::Arc;

use redb::ReadableDatabase;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::codec;
use super::{LOG, META, META_COMPACTED, Shared};
use crate::error::{Error, Result};
use crate::types::{Event, Revision, WatchStream};

/// Events read from disk per step of a catch-up.
const CATCH_UP_BATCH: usize = 1024;
/// Events buffered between the watch task and the stream's consumer.
const STREAM_BUFFER: usize = 256;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    prefix: String,
    after: Revision,
    live: broadcast::Receiver<Arc<Event>>,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        if let Err(e) = run(shared, &prefix, after, live, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Ends with `Ok` when the consumer went away; with `Err` for the consumer.
async fn run(
    shared: Arc<Shared>,
    prefix: &str,
    after: Revision,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: &mpsc::Sender<Result<Event>>,
) -> Result<()> {
    // Every revision up to `covered` was delivered or did not match.
    let mut covered = after;
    loop {
        // Catch up from the log.
        loop {
            let shared2 = shared.clone();
            let prefix2 = prefix.to_string();
            let (events, scanned_to, done) =
                tokio::task::spawn_blocking(move || read_log(&shared2, &prefix2, covered))
                    .await
                    .map_err(|_| Error::Closed)??;
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            covered = scanned_to;
            if done {
                break;
            }
        }
        // Follow the broadcast.
        loop {
            let received = tokio::select! {
                _ = tx.closed() => return Ok(()),
                r = live.recv() => r,
            };
            match received {
                Ok(event) => {
                    if event.revision <= covered {
                        continue;
                    }
                    covered = event.revision;
                    if event.key.starts_with(prefix)
                        && tx.send(Ok(Event::clone(&event))).await.is_err()
                    {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, prefix, "watcher lagged; replaying from the log");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
            }
        }
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
