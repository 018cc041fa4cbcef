//! Store watches over etcd watches that survive a member's death.
//!
//! Each store watch is one etcd watch on its own gRPC stream, read by a task
//! that forwards events into a channel. The task remembers the revision after
//! the last event it delivered. When the stream breaks (the member died, or
//! lost its leader and etcd cancelled the stream because we ask for one),
//! the task opens a new etcd watch from that revision on whichever member
//! answers, so nothing is lost or repeated: etcd sends all events of one
//! revision in one response (we do not ask for fragments), and the new watch
//! starts after the last revision delivered.
//!
//! The stream ends with an error only when it cannot resume: the history
//! it needs was compacted ([`Error::Compacted`]), etcd gave a permanent
//! error, or no member accepted the watch for the whole retry budget.
//! Dropping the stream stops the task, which drops the gRPC stream; etcd then
//! cancels the watch.

use etcd_client::GetOptions;
use etcd_client::proto::PbEvent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::faults::{self, Fault, classify};
use super::{Conn, EtcdStore, key_value, prefix_range, unexpected};
use crate::error::{Error, Result};
use crate::types::{Event, EventKind, Revision, WatchStream};

/// Events buffered between the task and a slow consumer; beyond that the
/// task stops reading and etcd holds the rest.
const BUFFER: usize = 256;

pub(super) async fn start(store: &EtcdStore, prefix: &str, after: Revision) -> Result<WatchStream> {
    // Revisions start at 1; i64::MAX would overflow the start revision.
    let after = after.clamp(0, Revision::MAX - 1);
    let (key, end) = prefix_range(prefix);
    check_not_compacted(store, &key, &end, after).await?;
    let conn = store.conn.clone();
    let stream = conn
        .open_watch(key.clone(), end.clone(), after + 1, true)
        .await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(forward(conn, key, end, after + 1, stream, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Answers [`Error::Compacted`] from `watch()` itself when the history is
/// already gone: a read at `after + 1` fails exactly when a watch from there
/// would. (A compaction after this check still reaches the stream.)
async fn check_not_compacted(
    store: &EtcdStore,
    key: &[u8],
    end: &[u8],
    after: Revision,
) -> Result<()> {
    let result = store
        .conn
        .idempotent(|| {
            let mut kv = store.conn.client.kv_client();
            let options = GetOptions::new()
                .with_range(end.to_vec())
                .with_revision(after + 1)
                .with_count_only();
            let key = key.to_vec();
            async move { kv.get(key, Some(options)).await }
        })
        .await;
    match result {
        Ok(resp) => {
            store.conn.saw(resp.header());
            Ok(())
        }
        // Watching from the next revision is what watches usually do.
        Err(e) if faults::is_future_revision(&e) => Ok(()),
        Err(e) if faults::is_compacted(&e) => Err(Error::Compacted {
            requested: after,
            compacted: store.conn.compacted_revision().await.unwrap_or(0),
        }),
        Err(e) => Err(Error::Etcd(e)),
    }
}

/// The task behind one store watch. `next` is the first revision not yet
/// delivered.
async fn forward(
    conn: Conn,
    key: Vec<u8>,
    end: Vec<u8>,
    mut next: Revision,
    mut stream: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut backoff = conn.backoff();
    loop {
        let failure = loop {
            let message = tokio::select! {
                _ = tx.closed() => return,
                message = stream.message() => message,
            };
            let resp = match message {
                Ok(Some(resp)) => resp.0,
                Ok(None) => {
                    break etcd_client::Error::WatchError("etcd closed the watch stream".into());
                }
                Err(e) => break e,
            };
            if resp.compact_revision > 0 {
                let _ = tx
                    .send(Err(Error::Compacted {
                        requested: next - 1,
                        compacted: resp.compact_revision,
                    }))
                    .await;
                return;
            }
            if resp.canceled {
                break etcd_client::Error::WatchError(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason
                ));
            }
            if !resp.events.is_empty() {
                backoff.reset(conn.config.retry_budget);
            }
            for event in resp.events {
                match convert(event) {
                    Ok(event) => {
                        let revision = event.revision;
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                        next = revision + 1;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        };
        if classify(&failure) == Fault::Permanent || !backoff.wait().await {
            let _ = tx.send(Err(Error::Etcd(failure))).await;
            return;
        }
        tracing::info!(error = %failure, resume_at = next, "etcd watch broke; resuming");
        let reopened = tokio::select! {
            _ = tx.closed() => return,
            reopened = conn.open_watch(key.clone(), end.clone(), next, true) => reopened,
        };
        match reopened {
            Ok(s) => stream = s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

fn convert(event: PbEvent) -> Result<Event> {
    let kv = event
        .kv
        .ok_or_else(|| unexpected("watch event without a key"))?;
    let prev = event.prev_kv.map(key_value).transpose()?;
    match event.r#type {
        0 => {
            let current = key_value(kv)?;
            let kind = if current.create_revision == current.mod_revision {
                EventKind::Create
            } else {
                EventKind::Update
            };
            Ok(Event {
                kind,
                revision: current.mod_revision,
                key: current.key.clone(),
                current: Some(current),
                prev,
            })
        }
        1 => {
            // A delete's kv is a tombstone: the key and the delete's revision.
            let revision = kv.mod_revision;
            let key = key_value(kv)?.key;
            Ok(Event {
                kind: EventKind::Delete,
                revision,
                key,
                current: None,
                prev,
            })
        }
        other => Err(unexpected(&format!("watch event of unknown type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use etcd_client::proto::PbKeyValue;

    use super::*;

    fn kv(key: &str, value: &str, create: i64, modified: i64) -> PbKeyValue {
        PbKeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modified,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn etcd_events_map_to_store_events() {
        let cases = [
            (
                "a put of a new key is a create",
                PbEvent {
                    r#type: 0,
                    kv: Some(kv("a", "1", 5, 5)),
                    prev_kv: None,
                },
                (EventKind::Create, 5, true, false),
            ),
            (
                "a put of an existing key is an update",
                PbEvent {
                    r#type: 0,
                    kv: Some(kv("a", "2", 5, 7)),
                    prev_kv: Some(kv("a", "1", 5, 5)),
                },
                (EventKind::Update, 7, true, true),
            ),
            (
                "a delete carries the previous value",
                PbEvent {
                    r#type: 1,
                    kv: Some(kv("a", "", 0, 9)),
                    prev_kv: Some(kv("a", "2", 5, 7)),
                },
                (EventKind::Delete, 9, false, true),
            ),
        ];
        for (name, event, (kind, revision, has_current, has_prev)) in cases {
            let e = convert(event).unwrap();
            assert_eq!(
                (
                    e.kind,
                    e.revision,
                    e.current.is_some(),
                    e.prev.is_some(),
                    e.key.as_str()
                ),
                (kind, revision, has_current, has_prev, "a"),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        let no_kv = PbEvent {
            r#type: 0,
            kv: None,
            prev_kv: None,
        };
        let bad_type = PbEvent {
            r#type: 7,
            kv: Some(kv("a", "", 1, 1)),
            prev_kv: None,
        };
        let bad_key = PbEvent {
            r#type: 0,
            kv: Some(kv("", "", 1, 1)),
            prev_kv: None,
        };
        let mut bad_key = bad_key;
        if let Some(k) = bad_key.kv.as_mut() {
            k.key = vec![0xff, 0xfe];
        }
        for event in [no_kv, bad_type, bad_key] {
            assert!(convert(event).is_err());
        }
    }
}
