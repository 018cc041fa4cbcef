//! Container output in the CRI log format, one record per line:
//! `2016-10-06T00:17:09.669794202Z stdout F hello`, with `P` instead of `F`
//! for the pieces of a line longer than the buffer (or cut by EOF).
//!
//! Blocking code: it runs in the container's monitor process (see
//! `monitor.rs`), which has no async runtime.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Longest record payload; longer lines are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// RFC 3339 with nanoseconds in UTC, as Go's `time.RFC3339Nano` but with a
/// fixed 9 fraction digits (what containerd writes).
pub fn format_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One CRI log record (without the trailing newline in `content`).
pub fn format_record(t: SystemTime, stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    out.extend_from_slice(format_timestamp(t).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Splits a stream into records: complete lines become `F` records, a line
/// longer than `max` is emitted in `P` pieces, and what is left at EOF
/// without a newline becomes a `P` record.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; returns `(partial, content)` records ready to write.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    self.drain_full(&mut out);
                    out.push((false, std::mem::take(&mut self.pending)));
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    self.drain_full(&mut out);
                }
            }
        }
        out
    }

    /// Pieces of `max` bytes of an unterminated line go out as partials.
    fn drain_full(&mut self, out: &mut Vec<(bool, Vec<u8>)>) {
        while self.pending.len() > self.max {
            let rest = self.pending.split_off(self.max);
            out.push((true, std::mem::replace(&mut self.pending, rest)));
        }
    }

    /// The stream ended: an unterminated remainder is a partial record.
    pub fn finish(&mut self) -> Option<(bool, Vec<u8>)> {
        (!self.pending.is_empty()).then(|| (true, std::mem::take(&mut self.pending)))
    }
}

/// The log file both streams of a container append to.
///
/// Log rotation (the node agent's, as the kubelet's `ContainerLogManager`)
/// renames the file and then asks for [`LogSink::reopen`]: every record goes
/// whole to either the renamed file or the new one, never lost in between.
#[derive(Debug, Clone)]
pub struct LogSink {
    path: Arc<PathBuf>,
    file: Arc<Mutex<Option<File>>>,
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl LogSink {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_append(path)?;
        Ok(LogSink {
            path: Arc::new(path.to_path_buf()),
            file: Arc::new(Mutex::new(Some(file))),
        })
    }

    /// Opens the log path again (creating the file if it was renamed away)
    /// and writes the following records there (the CRI's
    /// `ReopenContainerLog`). On failure the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let file = open_append(&self.path)?;
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = guard.as_mut() {
            let _ = old.flush();
        }
        *guard = Some(file);
        Ok(())
    }

    fn write(&self, record: &[u8]) {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_mut() {
            // A full disk must not block the container: drop the record.
            let _ = f.write_all(record);
        }
    }

    /// Copies `reader` into the log until EOF (or a read error: a terminal's
    /// master ends with EIO), handing every chunk to `tee` as well.
    pub fn copy(&self, stream: Stream, mut reader: impl Read, tee: impl Fn(Stream, &[u8])) {
        let mut splitter = LineSplitter::new(MAX_LINE);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            tee(stream, &buf[..n]);
            let now = SystemTime::now();
            for (partial, content) in splitter.push(&buf[..n]) {
                self.write(&format_record(now, stream, partial, &content));
            }
        }
        if let Some((partial, content)) = splitter.finish() {
            self.write(&format_record(SystemTime::now(), stream, partial, &content));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_with_nine_fraction_digits() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (1_475_713_029, 669_794_202, "2016-10-06T00:17:09.669794202Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000000005Z"),
            (4_102_444_799, 999_999_999, "2099-12-31T23:59:59.999999999Z"),
        ];
        for (secs, nanos, want) in cases {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(format_timestamp(t), want);
        }
    }

    #[test]
    fn records_have_time_stream_tag_and_content() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202);
        assert_eq!(
            format_record(t, Stream::Stdout, false, b"hello"),
            b"2016-10-06T00:17:09.669794202Z stdout F hello\n"
        );
        assert_eq!(
            format_record(t, Stream::Stderr, true, b"par"),
            b"2016-10-06T00:17:09.669794202Z stderr P par\n"
        );
    }

    #[test]
    fn a_reopened_sink_writes_to_a_new_file_at_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c/0.log");
        let sink = LogSink::open(&path).expect("open");
        sink.copy(Stream::Stdout, &b"one\n"[..], |_, _| {});
        let rotated = dir.path().join("c/0.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        sink.copy(Stream::Stdout, &b"two\n"[..], |_, _| {});
        sink.reopen().expect("reopen");
        sink.copy(Stream::Stderr, &b"three\n"[..], |_, _| {});
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (old, new) = (read(&rotated), read(&path));
        assert!(old.ends_with(" stdout F two\n"), "{old}");
        assert_eq!(old.lines().count(), 2, "{old}");
        assert!(new.ends_with(" stderr F three\n"), "{new}");
        assert_eq!(new.lines().count(), 1, "{new}");
    }

    #[test]
    fn lines_split_into_full_and_partial_records() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"ab\ncd"), vec![(false, b"ab".to_vec())]);
        assert_eq!(s.push(b"e\n"), vec![(false, b"cde".to_vec())]);
        assert_eq!(
            s.push(b"0123456789\n"),
            vec![
                (true, b"0123".to_vec()),
                (true, b"4567".to_vec()),
                (false, b"89".to_vec())
            ]
        );
        assert_eq!(s.push(b"\n"), vec![(false, Vec::new())]);
        assert_eq!(s.push(b"tail"), vec![]);
        assert_eq!(s.finish(), Some((true, b"tail".to_vec())));
        assert_eq!(s.finish(), None);
    }
}
