//! Container logs in the CRI log format (`<RFC3339Nano> <stream> <P|F>
//! <content>` per line, written by the runtime), read back the way
//! `kubectl logs` asks: `tailLines`, `sinceSeconds`/`sinceTime`,
//! `timestamps`, `limitBytes`, and `follow` (polling the file while the
//! container runs, and moving on to the new file when log rotation replaced
//! it). Only the live file is read, not rotated ones, as the kubelet does.
//! Parsing and selection are pure; only [`follow_file`] does IO.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// One parsed line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp as written (RFC 3339 with nanoseconds).
    pub time_text: String,
    pub time: Option<Timestamp>,
    pub stream: String,
    /// `P`: the content continues on the next line.
    pub partial: bool,
    pub content: Vec<u8>,
}

/// Parses one line (without its trailing newline); `None` when it is not in
/// the CRI format.
pub fn parse_line(line: &[u8]) -> Option<LogLine> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time_text = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let stream = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default().to_vec();
    let partial = tag.first() == Some(&b'P');
    Some(LogLine {
        time: time_text.parse().ok(),
        time_text,
        stream,
        partial,
        content,
    })
}

/// What the caller asked for (`PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<i64>,
    pub timestamps: bool,
    pub previous: bool,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<i64>,
}

/// Renders one line as `kubectl logs` prints it.
pub fn render_line(l: &LogLine, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(l.time_text.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&l.content);
    if !l.partial {
        out.push(b'\n');
    }
}

fn wanted(l: &LogLine, opts: &LogOptions) -> bool {
    match (opts.since, l.time) {
        (Some(since), Some(t)) => t >= since,
        _ => true,
    }
}

/// Selects and renders the lines of a whole file's content: since-filter,
/// then the last `tail_lines` (complete) lines, then the byte limit.
pub fn render(content: &[u8], opts: &LogOptions) -> Vec<u8> {
    let lines: Vec<LogLine> = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .filter(|l| wanted(l, opts))
        .collect();
    let start = match opts.tail_lines {
        Some(n) if n >= 0 => {
            // Count complete lines from the end; partial pieces belong to
            // the line they end in.
            let mut complete = 0i64;
            let mut start = lines.len();
            for (i, l) in lines.iter().enumerate().rev() {
                if !l.partial {
                    if complete == n {
                        break;
                    }
                    complete += 1;
                }
                start = i;
            }
            if n == 0 { lines.len() } else { start }
        }
        _ => 0,
    };
    let mut out = Vec::new();
    for l in &lines[start..] {
        render_line(l, opts.timestamps, &mut out);
    }
    if let Some(limit) = opts.limit_bytes.filter(|l| *l >= 0) {
        out.truncate(limit as usize);
    }
    out
}

/// Streams a log file into `tx`: first what [`render`] selects, then, with
/// `follow`, new lines as they are written, until `running` says the
/// container stopped and the file has no more data, or the receiver hangs
/// up.
pub async fn follow_file<F, Fut>(
    path: PathBuf,
    opts: LogOptions,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    running: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut content = Vec::new();
    if let Err(e) = file.read_to_end(&mut content).await {
        let _ = tx.send(Err(e)).await;
        return;
    }
    // Only complete lines now; a trailing fragment is read again later.
    let cut = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let mut offset = cut as u64;
    let first = render(&content[..cut], &opts);
    let mut budget = opts.limit_bytes.filter(|l| *l >= 0).map(|l| l as usize);
    if let Some(b) = budget.as_mut() {
        *b = b.saturating_sub(first.len());
    }
    if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    if !opts.follow {
        return;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut idle_checks = 0u32;
    loop {
        if budget == Some(0) {
            return;
        }
        let mut chunk = Vec::new();
        let read = async {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            file.read_to_end(&mut chunk).await
        }
        .await;
        match read {
            Ok(0) => {
                if let Some(next) = replaced(&path, &file).await {
                    // Rotated: the runtime reopened the path only after its
                    // last write to the old file, so what the old file has
                    // now is all it will ever have.
                    let mut rest = Vec::new();
                    let drained = async {
                        file.seek(std::io::SeekFrom::Start(offset)).await?;
                        file.read_to_end(&mut rest).await
                    }
                    .await;
                    if let Err(e) = drained {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    pending.extend_from_slice(&rest);
                    file = next;
                    offset = 0;
                    idle_checks = 0;
                } else {
                    idle_checks += 1;
                    // Every ~second without data: has the container stopped?
                    if idle_checks.is_multiple_of(4) && !running().await {
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
            Ok(n) => {
                idle_checks = 0;
                offset += n as u64;
                pending.extend_from_slice(&chunk);
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = pending.drain(..=end).collect();
        let mut out = Vec::new();
        for l in complete
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(parse_line)
            .filter(|l| wanted(l, &opts))
        {
            render_line(&l, opts.timestamps, &mut out);
        }
        if let Some(b) = budget.as_mut() {
            out.truncate(*b);
            *b -= out.len();
        }
        if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
    }
}

/// The file now at `path` when it is no longer `file` (log rotation renamed
/// `file` away and the runtime opened a new one).
async fn replaced(path: &Path, file: &tokio::fs::File) -> Option<tokio::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let current = file.metadata().await.ok()?;
    let at_path = tokio::fs::metadata(path).await.ok()?;
    if (at_path.dev(), at_path.ino()) == (current.dev(), current.ino()) {
        return None;
    }
    tokio::fs::File::open(path).await.ok()
}

/// The CRI log line a runtime writes for `content` (used by tests and the
/// fake runtime).
pub fn format_line(time: Timestamp, stream: &str, content: &str) -> String {
    format!(
        "{} {stream} F {content}\n",
        time.strftime("%Y-%m-%dT%H:%M:%S.%9fZ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-01-01T00:00:01.000000001Z stdout F one\n\
2024-01-01T00:00:02.000000000Z stderr F two\n\
2024-01-01T00:00:03.000000000Z stdout P thr\n\
2024-01-01T00:00:03.500000000Z stdout F ee\n\
2024-01-01T00:00:04.000000000Z stdout F four\n";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn logs_render_as_kubectl_asks() {
        let cases = [
            (
                "everything",
                LogOptions::default(),
                "one\ntwo\nthree\nfour\n",
            ),
            (
                "tail two lines joins partials",
                LogOptions {
                    tail_lines: Some(2),
                    ..Default::default()
                },
                "three\nfour\n",
            ),
            (
                "tail zero",
                LogOptions {
                    tail_lines: Some(0),
                    ..Default::default()
                },
                "",
            ),
            (
                "tail more than there is",
                LogOptions {
                    tail_lines: Some(10),
                    ..Default::default()
                },
                "one\ntwo\nthree\nfour\n",
            ),
            (
                "since a time",
                LogOptions {
                    since: Some(ts("2024-01-01T00:00:02Z")),
                    ..Default::default()
                },
                "two\nthree\nfour\n",
            ),
            (
                "limit bytes",
                LogOptions {
                    limit_bytes: Some(6),
                    ..Default::default()
                },
                "one\ntw",
            ),
            (
                "timestamps",
                LogOptions {
                    timestamps: true,
                    tail_lines: Some(1),
                    ..Default::default()
                },
                "2024-01-01T00:00:04.000000000Z four\n",
            ),
        ];
        for (name, opts, want) in cases {
            let got = render(LOG.as_bytes(), &opts);
            assert_eq!(String::from_utf8_lossy(&got), want, "{name}");
        }
    }

    #[tokio::test]
    async fn a_follow_moves_on_to_the_new_file_after_a_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0.log");
        let t = ts("2024-01-01T00:00:00Z");
        let append = |p: &Path, text: &str| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("open log");
            f.write_all(format_line(t, "stdout", text).as_bytes())
                .expect("write log");
        };
        append(&path, "one");
        let (tx, mut rx) = mpsc::channel(16);
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        let follow = tokio::spawn(follow_file(path.clone(), opts, tx, || async { true }));
        let mut seen = String::new();
        let mut expect = async |want: &str| {
            while !seen.ends_with(want) {
                let chunk = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
                match chunk {
                    Ok(Some(Ok(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
                    other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
                }
            }
        };
        expect("one\n").await;
        // Written to the old file after the rename, before the reopen.
        let rotated = dir.path().join("0.log.20240101-000000");
        std::fs::rename(&path, &rotated).expect("rename");
        append(&rotated, "two");
        append(&path, "three");
        expect("three\n").await;
        append(&path, "four");
        expect("four\n").await;
        assert_eq!(seen, "one\ntwo\nthree\nfour\n");
        follow.abort();
    }

    #[test]
    fn cri_lines_parse_and_format_round_trip() {
        let t = ts("2024-05-06T07:08:09.123456789Z");
        let line = format_line(t, "stdout", "hello world");
        let parsed = parse_line(line.trim_end().as_bytes());
        let parsed = parsed.map(|l| (l.time, l.stream, l.partial, l.content));
        assert_eq!(
            parsed,
            Some((
                Some(t),
                "stdout".to_string(),
                false,
                b"hello world".to_vec()
            ))
        );
        assert_eq!(parse_line(b"garbage"), None);
    }
}
