use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::error::Result;

/// A cluster-wide revision, as etcd counts them (the first write is 1).
pub type Revision = i64;

/// One key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// The revision of the write that created this key.
    pub create_revision: Revision,
    /// The revision of the last write to this key.
    pub mod_revision: Revision,
}

/// Options of `create` and `update`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Remove the key this long after the write (Kubernetes keeps Events
    /// for an hour). `None` keeps it until deleted.
    pub ttl: Option<Duration>,
}

impl PutOptions {
    pub fn with_ttl(ttl: Duration) -> Self {
        PutOptions { ttl: Some(ttl) }
    }
}

/// Options of `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// At most this many items; 0 means no limit.
    pub limit: usize,
    /// Start after this key (exclusive): the last key of the previous page.
    pub continue_after: Option<String>,
    /// Read at this revision instead of the current one.
    pub revision: Option<Revision>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision of the snapshot the page was read from. Later pages must
    /// pass it as `ListOptions::revision`.
    pub revision: Revision,
    /// True when keys remain after the last item.
    pub more: bool,
}

/// The result of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The revision of the delete itself.
    pub revision: Revision,
    /// The value the key held until then.
    pub prev: KeyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The revision of the write.
    pub revision: Revision,
    pub key: String,
    /// The value after the write; `None` for a delete.
    pub current: Option<KeyValue>,
    /// The value before the write; `None` for a create.
    pub prev: Option<KeyValue>,
}

/// A watch: events in revision order. An `Err` item ends the stream (for
/// example [`crate::Error::Compacted`] when the watcher fell behind a
/// compaction); dropping the stream cancels the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// The first key after every key that starts with `prefix`, or `None` when
/// there is none (every byte is 0xff, or the prefix is empty).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_byte_and_drops_saturated_ones() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"/registry/pods/", Some(b"/registry/pods0")),
            (b"a", Some(b"b")),
            (b"a\xff", Some(b"b")),
            (b"\xff\xff", None),
            (b"", None),
        ];
        for (prefix, want) in cases {
            assert_eq!(prefix_end(prefix).as_deref(), *want, "prefix {prefix:?}");
        }
    }
}
