//! Forwarding names outside the cluster domain to the upstream servers of a
//! resolv.conf: UDP first, TCP again when the upstream truncates, each
//! server in the file's order until one answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Edns, Message, MessageType, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

/// The payload size advertised upstream: the DNS flag day 2020 default, no
/// IP fragmentation on common paths.
const UPSTREAM_PAYLOAD: u16 = 1232;
/// How long one upstream server gets per transport.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// resolv(5) uses at most this many `nameserver` lines.
const MAX_UPSTREAMS: usize = 3;

/// Why a question could not be forwarded (the client then gets SERVFAIL).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("reading {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no usable nameserver in {path}")]
    NoUpstream { path: PathBuf },
    #[error("encoding the query: {0}")]
    Encode(#[source] hickory_proto::ProtoError),
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream} sent an answer that does not parse: {reason}")]
    Malformed {
        upstream: SocketAddr,
        reason: String,
    },
}

/// The `nameserver` addresses of a resolv.conf, in order (at most three,
/// as resolv(5)); IPv6 zone suffixes (`%eth0`) and unparsable lines are
/// skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            words.next()?.parse::<IpAddr>().ok()
        })
        .take(MAX_UPSTREAMS)
        .collect()
}

/// Forwards questions to the servers of a resolv.conf, re-reading the file
/// when its modification time changes.
pub(crate) struct Forwarder {
    path: PathBuf,
    /// Our own listen addresses: a resolv.conf naming the cluster DNS
    /// itself must not make a query loop.
    exclude: Vec<SocketAddr>,
    cache: Mutex<Option<(Option<SystemTime>, Vec<SocketAddr>)>>,
}

impl Forwarder {
    pub(crate) fn new(path: PathBuf, exclude: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            path,
            exclude,
            cache: Mutex::new(None),
        }
    }

    fn upstreams(&self) -> Result<Vec<SocketAddr>, ForwardError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, servers)) = cache.as_ref()
            && modified.is_some()
            && *at == modified
        {
            return Ok(servers.clone());
        }
        let text =
            std::fs::read_to_string(&self.path).map_err(|source| ForwardError::ResolvConf {
                path: self.path.clone(),
                source,
            })?;
        let servers: Vec<SocketAddr> = parse_resolv_conf(&text)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .filter(|s| !self.is_self(*s))
            .collect();
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((modified, servers.clone()));
        }
        Ok(servers)
    }

    fn is_self(&self, upstream: SocketAddr) -> bool {
        self.exclude.iter().any(|own| {
            own.port() == upstream.port()
                && (own.ip() == upstream.ip() || own.ip().is_unspecified())
        })
    }

    /// The first upstream's answer to `query`, with its id already the
    /// caller's to replace.
    pub(crate) async fn forward(
        &self,
        query: &Query,
        recursion_desired: bool,
    ) -> Result<Message, ForwardError> {
        let upstreams = self.upstreams()?;
        let mut last = ForwardError::NoUpstream {
            path: self.path.clone(),
        };
        for upstream in upstreams {
            match exchange(upstream, query, recursion_desired).await {
                Ok(message) => return Ok(message),
                Err(e) => {
                    debug!(%upstream, error = %e, "upstream failed, trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// One question to one upstream: UDP, then TCP if the answer came truncated.
pub(crate) async fn exchange(
    upstream: SocketAddr,
    query: &Query,
    recursion_desired: bool,
) -> Result<Message, ForwardError> {
    let mut message = Message::query();
    message.metadata.id = fastrand::u16(..);
    message.metadata.recursion_desired = recursion_desired;
    message.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    message.set_edns(edns);
    let bytes = message.to_vec().map_err(ForwardError::Encode)?;

    let answer = udp_exchange(upstream, &bytes, &message).await?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    debug!(%upstream, "truncated over udp, asking again over tcp");
    tcp_exchange(upstream, &bytes, &message).await
}

async fn udp_exchange(
    upstream: SocketAddr,
    bytes: &[u8],
    sent: &Message,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(bytes).await.map_err(io)?;
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let n = timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| ForwardError::Timeout {
                upstream,
                timeout: UPSTREAM_TIMEOUT,
            })?
            .map_err(io)?;
        // Anything that is not the answer to this question (a late answer,
        // a spoofing attempt) is ignored until the deadline.
        match Message::from_vec(&buf[..n]) {
            Ok(answer) if answers(&answer, sent) => return Ok(answer),
            Ok(_) => debug!(%upstream, "ignoring an unrelated udp message"),
            Err(e) => debug!(%upstream, error = %e, "ignoring a udp message that does not parse"),
        }
    }
}

async fn tcp_exchange(
    upstream: SocketAddr,
    bytes: &[u8],
    sent: &Message,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
        let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::Malformed {
            upstream,
            reason: "query too long for tcp".into(),
        })?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await.map_err(io)?;
        let len = stream.read_u16().await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.map_err(io)?;
        Ok::<_, ForwardError>(buf)
    };
    let buf = timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| ForwardError::Timeout {
            upstream,
            timeout: UPSTREAM_TIMEOUT,
        })??;
    let answer = Message::from_vec(&buf).map_err(|e| ForwardError::Malformed {
        upstream,
        reason: e.to_string(),
    })?;
    if !answers(&answer, sent) {
        return Err(ForwardError::Malformed {
            upstream,
            reason: "the answer is for another question".into(),
        });
    }
    Ok(answer)
}

/// Whether `answer` is the response to `sent` (same id and question).
fn answers(answer: &Message, sent: &Message) -> bool {
    answer.metadata.message_type == MessageType::Response
        && answer.metadata.id == sent.metadata.id
        && answer.queries.len() == sent.queries.len()
        && answer.queries.iter().zip(&sent.queries).all(|(a, b)| {
            a.name().eq_ignore_root(b.name())
                && a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_yields_nameservers_in_order_at_most_three() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("empty", "", &[]),
            (
                "comments and options are skipped",
                "# generated\nsearch default.svc.cluster.local\noptions ndots:5\nnameserver 192.0.2.1\n",
                &["192.0.2.1"],
            ),
            (
                "ipv6 and order kept",
                "nameserver 2001:db8::1\nnameserver 192.0.2.2\n",
                &["2001:db8::1", "192.0.2.2"],
            ),
            (
                "only the first three",
                "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 192.0.2.4\n",
                &["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            ),
            (
                "garbage and zone ids skipped",
                "nameserver\nnameserver nope\nnameserver fe80::1%eth0\n  nameserver   192.0.2.9  \n",
                &["192.0.2.9"],
            ),
        ];
        for (name, text, want) in cases {
            let got: Vec<String> = parse_resolv_conf(text)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn resolv_conf_naming_the_dns_itself_is_not_an_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 10.43.0.10\nnameserver 192.0.2.1\n").unwrap();
        let own: SocketAddr = "10.43.0.10:53".parse().unwrap();
        let forwarder = Forwarder::new(path, vec![own]);
        assert_eq!(
            forwarder.upstreams().unwrap(),
            vec!["192.0.2.1:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
