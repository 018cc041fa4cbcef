//! Byte layouts of the embedded database's records. Little-endian, length
//! prefixed; decoding never panics on bad bytes, it answers `Error::Corrupt`.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::types::{Event, EventKind, KeyValue, Revision};

/// A live key's record in the `kv` table: revisions, expiry, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Milliseconds since the Unix epoch after which the key is removed; 0
    /// for none.
    pub expires_at_ms: u64,
    pub value: Bytes,
}

const RECORD_HEADER: usize = 24;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + self.value.len());
        out.extend_from_slice(&(self.create_revision as u64).to_le_bytes());
        out.extend_from_slice(&(self.mod_revision as u64).to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let mut r = Reader::new(bytes);
        let create_revision = r.u64()? as Revision;
        let mod_revision = r.u64()? as Revision;
        let expires_at_ms = r.u64()?;
        let value = Bytes::copy_from_slice(r.rest());
        Ok(Record {
            create_revision,
            mod_revision,
            expires_at_ms,
            value,
        })
    }

    pub fn into_key_value(self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

/// Encodes one entry of the `log` table (keyed by the event's revision).
pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    let size = 1
        + 4
        + event.key.len()
        + [&event.current, &event.prev]
            .iter()
            .map(|kv| 1 + kv.as_ref().map_or(0, |kv| 20 + kv.value.len()))
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(match event.kind {
        EventKind::Create => 0,
        EventKind::Update => 1,
        EventKind::Delete => 2,
    });
    out.extend_from_slice(&(event.key.len() as u32).to_le_bytes());
    out.extend_from_slice(event.key.as_bytes());
    for kv in [&event.current, &event.prev] {
        match kv {
            None => out.push(0),
            Some(kv) => {
                out.push(1);
                out.extend_from_slice(&(kv.create_revision as u64).to_le_bytes());
                out.extend_from_slice(&(kv.mod_revision as u64).to_le_bytes());
                out.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
                out.extend_from_slice(&kv.value);
            }
        }
    }
    out
}

pub(crate) fn decode_event(revision: Revision, bytes: &[u8]) -> Result<Event> {
    let mut r = Reader::new(bytes);
    let kind = match r.u8()? {
        0 => EventKind::Create,
        1 => EventKind::Update,
        2 => EventKind::Delete,
        other => {
            return Err(Error::Corrupt(format!(
                "log entry {revision}: event kind {other}"
            )));
        }
    };
    let key_len = r.u32()? as usize;
    let key = std::str::from_utf8(r.take(key_len)?)
        .map_err(|e| Error::Corrupt(format!("log entry {revision}: key is not utf-8: {e}")))?
        .to_string();
    let mut kvs = [None, None];
    for slot in &mut kvs {
        if r.u8()? == 1 {
            let create_revision = r.u64()? as Revision;
            let mod_revision = r.u64()? as Revision;
            let len = r.u32()? as usize;
            let value = Bytes::copy_from_slice(r.take(len)?);
            *slot = Some(KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision,
            });
        }
    }
    let [current, prev] = kvs;
    Ok(Event {
        kind,
        revision,
        key,
        current,
        prev,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::Corrupt(format!(
                "record truncated: wanted {n} bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, c: Revision, m: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from(value.to_string()),
            create_revision: c,
            mod_revision: m,
        }
    }

    #[test]
    fn events_round_trip_through_the_log_encoding() {
        let cases = [
            Event {
                kind: EventKind::Create,
                revision: 7,
                key: "/a".into(),
                current: Some(kv("/a", "one", 7, 7)),
                prev: None,
            },
            Event {
                kind: EventKind::Update,
                revision: 9,
                key: "/a".into(),
                current: Some(kv("/a", "two", 7, 9)),
                prev: Some(kv("/a", "one", 7, 7)),
            },
            Event {
                kind: EventKind::Delete,
                revision: 10,
                key: "/a".into(),
                current: None,
                prev: Some(kv("/a", "", 7, 9)),
            },
        ];
        for event in cases {
            let bytes = encode_event(&event);
            assert_eq!(decode_event(event.revision, &bytes).unwrap(), event);
        }
    }

    #[test]
    fn truncated_records_are_corrupt_not_a_panic() {
        let event = Event {
            kind: EventKind::Create,
            revision: 1,
            key: "/k".into(),
            current: Some(kv("/k", "value", 1, 1)),
            prev: None,
        };
        let bytes = encode_event(&event);
        for cut in 0..bytes.len() {
            assert!(decode_event(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Record::decode(&[1, 2, 3]).is_err());
        assert!(decode_event(1, &[9]).is_err());
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            create_revision: 3,
            mod_revision: 5,
            expires_at_ms: 1234,
            value: Bytes::from_static(b"hello"),
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }
}
