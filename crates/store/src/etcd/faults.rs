//! What a failed etcd request tells about its effect, which decides whether
//! it may be retried (see the failover policy in the parent module).

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

/// How much a failure says about whether the request took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The request certainly did nothing: it never reached a server, or a
    /// server refused it before proposing it to raft. Anything may retry.
    NotApplied,
    /// A transient failure after the request may have reached a server: a
    /// write may or may not have been applied (now or later). Reads retry;
    /// writes must find out what happened before answering.
    Unknown,
    /// Retrying will not help (bad request, compacted revision, …).
    Permanent,
}

/// etcd's messages for requests refused before raft saw them.
const REFUSED_BEFORE_PROPOSAL: &[&str] = &[
    // the require-leader interceptor (we always send `hasleader`)
    "etcdserver: no leader",
    // applied index too far behind the committed one
    "etcdserver: too many requests",
    // raft dropped the proposal locally (a follower that knows no leader)
    "raft proposal dropped",
    "etcdserver: not capable",
];

pub(super) fn classify(e: &etcd_client::Error) -> Fault {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => classify_status(status),
        // The request stream of a watch closed, or the connection broke.
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => Fault::Unknown,
        _ => Fault::Permanent,
    }
}

fn classify_status(status: &tonic::Status) -> Fault {
    let message = status.message();
    if REFUSED_BEFORE_PROPOSAL.iter().any(|m| message.contains(m)) || is_connect_error(status) {
        return Fault::NotApplied;
    }
    match status.code() {
        // etcd's "request timed out" (with or without "leader failure" or
        // "connection lost"), "leader changed" and "server stopped" are all
        // Unavailable: the proposal may still be committed. So are broken
        // connections, and Internal/Unknown/Cancelled cover h2 resets and
        // our own deadline.
        Code::Unavailable
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted => Fault::Unknown,
        _ => Fault::Permanent,
    }
}

/// True when the channel could not connect to the member, so the request
/// was never sent. tonic maps its `ConnectError` to Unavailable and keeps
/// the original error as the source.
fn is_connect_error(status: &tonic::Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// etcd's answer to a write that names a lease it does not know (expired,
/// or revoked). Checked before the write is applied: nothing happened.
pub(super) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("requested lease not found"))
}

pub(super) fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

pub(super) fn is_future_revision(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision is a future revision"))
}

/// The error for a request that got no answer in time.
pub(super) fn timed_out(after: Duration) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
        "no answer from etcd within {after:?}"
    )))
}

/// Exponential backoff between attempts, within a total budget.
pub(super) struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(1);

    pub(super) fn new(budget: Duration) -> Backoff {
        Backoff {
            deadline: Instant::now() + budget,
            next: Self::FIRST,
        }
    }

    /// Sleeps before the next attempt; false when the budget is spent.
    pub(super) async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now + self.next > self.deadline {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::MAX);
        true
    }

    /// Starts over (after progress, e.g. a watch that delivered events).
    pub(super) fn reset(&mut self, budget: Duration) {
        *self = Backoff::new(budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn etcd_errors_are_classified_by_what_they_say_about_the_write() {
        let cases = [
            (
                "require-leader refusal",
                status(Code::Unavailable, "etcdserver: no leader"),
                Fault::NotApplied,
            ),
            (
                "overloaded apply",
                status(Code::ResourceExhausted, "etcdserver: too many requests"),
                Fault::NotApplied,
            ),
            (
                "proposal dropped",
                status(Code::Unknown, "raft proposal dropped"),
                Fault::NotApplied,
            ),
            (
                "proposal timeout",
                status(Code::Unavailable, "etcdserver: request timed out"),
                Fault::Unknown,
            ),
            (
                "timeout after leader failure",
                status(
                    Code::Unavailable,
                    "etcdserver: request timed out, possibly due to previous leader failure",
                ),
                Fault::Unknown,
            ),
            (
                "leader changed",
                status(Code::Unavailable, "etcdserver: leader changed"),
                Fault::Unknown,
            ),
            (
                "broken connection",
                status(Code::Unavailable, "error reading a body from connection"),
                Fault::Unknown,
            ),
            (
                "h2 reset",
                status(Code::Internal, "h2 protocol error"),
                Fault::Unknown,
            ),
            (
                "our deadline",
                timed_out(Duration::from_secs(1)),
                Fault::Unknown,
            ),
            (
                "compacted",
                status(
                    Code::OutOfRange,
                    "etcdserver: mvcc: required revision has been compacted",
                ),
                Fault::Permanent,
            ),
            (
                "too large",
                status(Code::InvalidArgument, "etcdserver: request is too large"),
                Fault::Permanent,
            ),
            (
                "no space",
                status(
                    Code::ResourceExhausted,
                    "etcdserver: mvcc: database space exceeded",
                ),
                Fault::Permanent,
            ),
            (
                "bad config",
                etcd_client::Error::InvalidArgs("x".into()),
                Fault::Permanent,
            ),
        ];
        for (name, error, want) in cases {
            assert_eq!(classify(&error), want, "{name}");
        }
    }

    #[test]
    fn a_connect_error_in_the_source_chain_means_not_applied() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::ConnectError(Box::new(refused));
        let status = tonic::Status::from_error(Box::new(connect));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(classify_status(&status), Fault::NotApplied);
    }
}
