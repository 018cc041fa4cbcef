//! Port forwarding over the WebSocket channel protocol
//! (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`), the older way than
//! SPDY that client libraries such as the Python client use; kubectl
//! tunnels SPDY instead (`portforward.rs`).
//!
//! The kubelet's `portforward/websocket.go`, as clients see it:
//! - the ports come with the request (`?port=80&port=8080`, or
//!   comma-separated; the API server's `pods/portforward` calls the
//!   parameter `ports`, and both spellings are read here); each must be
//!   1–65535, else 400 before the upgrade;
//! - port `i` has channel `2i` for data and `2i+1` for errors; every
//!   message starts with its channel byte (base64 variant: text messages,
//!   the channel as an ASCII digit and the rest base64);
//! - the first message on each of a port's two channels is the port
//!   number, two bytes little-endian;
//! - the agent connects to each port once; bytes from the pod go out on the
//!   data channel, bytes the client sends on it go to the pod; a failed
//!   connection is reported as text on the error channel;
//! - the WebSocket closes once every port's connection has ended (the
//!   protocol has no per-channel close), or when the client closes it.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::portforward::{PodDialer, client_to_pod, close_normally, pod_to_client};

/// The binary channel subprotocol.
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
/// The same with base64 text messages.
pub const PROTOCOL_V4_BASE64: &str = "v4.base64.channel.k8s.io";

/// Which framing the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Binary,
    Base64,
}

impl Framing {
    /// The framing of the offered subprotocols, as the kubelet picks it: the
    /// binary or base64 v4 protocol, or binary when none is offered; `None`
    /// when only other protocols are offered.
    pub fn negotiate(offered: &[String]) -> Option<(Framing, Option<&'static str>)> {
        if offered.iter().any(|p| p == PROTOCOL_V4) {
            Some((Framing::Binary, Some(PROTOCOL_V4)))
        } else if offered.iter().any(|p| p == PROTOCOL_V4_BASE64) {
            Some((Framing::Base64, Some(PROTOCOL_V4_BASE64)))
        } else if offered.is_empty() {
            Some((Framing::Binary, None))
        } else {
            None
        }
    }

    fn message(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Framing::Binary => {
                let mut b = BytesMut::with_capacity(data.len() + 1);
                b.put_u8(channel);
                b.put_slice(data);
                Message::Binary(b.freeze())
            }
            Framing::Base64 => {
                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                text.push(char::from(b'0' + channel));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::Text(text.into())
            }
        }
    }

    /// The channel and payload of a message from the client.
    fn parse(self, msg: Message) -> Result<Option<(u8, Bytes)>, String> {
        match (self, msg) {
            (Framing::Binary, Message::Binary(b)) => match b.first() {
                None => Ok(None),
                Some(&channel) => Ok(Some((channel, b.slice(1..)))),
            },
            (Framing::Base64, Message::Text(t)) => {
                let t = t.as_str();
                let Some(first) = t.bytes().next() else {
                    return Ok(None);
                };
                if !first.is_ascii_digit() {
                    return Err(format!("invalid channel {:?}", char::from(first)));
                }
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t[1..])
                    .map_err(|e| format!("invalid base64 payload: {e}"))?;
                Ok(Some((first - b'0', Bytes::from(data))))
            }
            (_, Message::Ping(_) | Message::Pong(_)) => Ok(None),
            (_, other) => Err(format!("unexpected message {other:?}")),
        }
    }
}

/// The ports of a request's query (`port` and `ports`, repeated or
/// comma-separated), in order; an error names what is wrong.
pub fn ports_of(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "port" && key != "ports" {
            continue;
        }
        if value.is_empty() {
            return Err(format!("query parameter {key:?} cannot be empty"));
        }
        for p in value.split(',') {
            let port: u16 = p
                .trim()
                .parse()
                .map_err(|_| format!("unable to parse {p:?} as a port"))?;
            if port == 0 {
                return Err(format!("port {p:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Serves one WebSocket: forwards `ports` until every connection ended or
/// the client went away.
pub async fn serve(
    socket: WebSocket,
    framing: Framing,
    ports: Vec<u16>,
    dialer: Arc<dyn PodDialer>,
) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
        close_normally(sink).await;
    });

    let mut to_pods = Vec::with_capacity(ports.len());
    let mut forwards = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        to_pods.push(tx);
        let data = (2 * i) as u8;
        let out = out_tx.clone();
        let dialer = dialer.clone();
        // The port number first on both channels, before any data.
        for channel in [data, data + 1] {
            let _ = out
                .send(framing.message(channel, &port.to_le_bytes()))
                .await;
        }
        forwards.spawn(forward(framing, data, port, dialer, out, rx));
    }
    drop(out_tx);

    loop {
        tokio::select! {
            done = forwards.join_next() => {
                if done.is_none() {
                    break;
                }
            }
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "port-forward websocket read failed");
                        break;
                    }
                };
                match framing.parse(msg) {
                    Ok(None) => {}
                    Ok(Some((channel, data))) => {
                        // Data for port i on channel 2i; the error channels
                        // are the server's to write.
                        if channel % 2 == 0
                            && let Some(tx) = to_pods.get(usize::from(channel / 2))
                        {
                            let _ = tx.send(data).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "port-forward websocket: bad message; closing");
                        break;
                    }
                }
            }
        }
    }
    // Ends the connections still open (client gone) and, once the last
    // sender is dropped, the writer's close frame.
    forwards.abort_all();
    drop(to_pods);
    while forwards.join_next().await.is_some() {}
    let _ = writer.await;
}

/// One port: connect, then copy until the pod's side ends (or the client
/// stops sending and the pod answers nothing more).
async fn forward(
    framing: Framing,
    data_channel: u8,
    port: u16,
    dialer: Arc<dyn PodDialer>,
    out: mpsc::Sender<Message>,
    mut from_client: mpsc::Receiver<Bytes>,
) {
    let tcp = match dialer.dial(port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message = format!("error forwarding port {port} to {}: {e}", dialer.describe());
            tracing::info!(%message, "port-forward");
            let _ = out
                .send(framing.message(data_channel + 1, message.as_bytes()))
                .await;
            return;
        }
    };
    let (mut pod_read, mut pod_write) = tcp.into_split();
    let to_pod = async move {
        client_to_pod(&mut from_client, &mut pod_write).await;
        // The client can still read what the pod sends.
        std::future::pending::<()>().await;
    };
    let from_pod = pod_to_client(&mut pod_read, &out, |data| {
        framing.message(data_channel, data)
    });
    tokio::select! {
        _ = to_pod => {}
        _ = from_pod => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_port_and_ports_repeated_or_comma_separated() {
        assert_eq!(ports_of("port=80"), Ok(vec![80]));
        assert_eq!(ports_of("ports=80,8080&port=9"), Ok(vec![80, 8080, 9]));
        assert_eq!(ports_of("ports=80&ports=81"), Ok(vec![80, 81]));
        assert!(ports_of("").is_err());
        assert!(ports_of("container=x").is_err());
        assert!(ports_of("ports=").is_err());
        assert!(ports_of("ports=0").is_err());
        assert!(ports_of("ports=70000").is_err());
        assert!(ports_of("ports=http").is_err());
    }

    #[test]
    fn frames_carry_the_channel_first() {
        let Message::Binary(b) = Framing::Binary.message(3, b"hi") else {
            panic!("binary framing gives binary messages");
        };
        assert_eq!(&b[..], b"\x03hi");
        let Message::Text(t) = Framing::Base64.message(1, &8080u16.to_le_bytes()) else {
            panic!("base64 framing gives text messages");
        };
        assert_eq!(t.as_str(), "1kB8=");
        assert_eq!(
            Framing::Base64.parse(Message::Text("0aGk=".into())),
            Ok(Some((0, Bytes::from_static(b"hi"))))
        );
        assert_eq!(
            Framing::Binary.parse(Message::Binary(Bytes::from_static(b"\x02abc"))),
            Ok(Some((2, Bytes::from_static(b"abc"))))
        );
        assert!(
            Framing::Binary
                .parse(Message::Text("0aGk=".into()))
                .is_err()
        );
    }

    #[test]
    fn the_kubelets_subprotocols_are_negotiated() {
        let offer = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Framing::negotiate(&offer(&["v4.channel.k8s.io"])),
            Some((Framing::Binary, Some(PROTOCOL_V4)))
        );
        assert_eq!(
            Framing::negotiate(&offer(&["v4.base64.channel.k8s.io"])),
            Some((Framing::Base64, Some(PROTOCOL_V4_BASE64)))
        );
        assert_eq!(Framing::negotiate(&[]), Some((Framing::Binary, None)));
        assert_eq!(Framing::negotiate(&offer(&["v5.channel.k8s.io"])), None);
    }
}
