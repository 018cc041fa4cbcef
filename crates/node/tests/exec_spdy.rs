//! The agent server's exec over SPDY/3.1 (the remotecommand protocol that
//! kubectl ≤ 1.29 speaks), against the fake runtime over HTTPS: the
//! upgrade handshake, one stream per stream type, stdout, stderr, stdin
//! echo and the v4 status for exit codes 0 and 3.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use common::{Cluster, TOKEN, container_state};
use serde_json::json;
use skiff_node::spdy::{self, FLAG_FIN, Frame, Headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// The client's end of one exec connection.
struct Client {
    r: ReadHalf<Tls>,
    w: WriteHalf<Tls>,
    enc: spdy::Encoder,
    dec: spdy::Decoder,
    next_id: u32,
}

/// What the server sent on each stream, and which streams it ended.
#[derive(Default, Debug)]
struct Collected {
    data: std::collections::HashMap<u32, Vec<u8>>,
    fin: std::collections::HashSet<u32>,
}

impl Client {
    /// Upgrades `path` to SPDY offering `versions`; the chosen version.
    async fn connect(c: &Cluster, path: &str, versions: &str) -> Result<(Client, String)> {
        let tcp = tokio::net::TcpStream::connect(c.agent_addr).await?;
        let config = skiff_node::tls::insecure_client_config()?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
                tcp,
            )
            .await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {versions}\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await?;
        // The response head, byte by byte so nothing after it is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if tls.read(&mut b).await? == 0 {
                bail!("connection closed in the response: {head:?}");
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
        let version = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-stream-protocol-version")
                    .then(|| v.trim().to_string())
            })
            .context("no X-Stream-Protocol-Version in the answer")?;
        let (r, w) = tokio::io::split(tls);
        Ok((
            Client {
                r,
                w,
                enc: spdy::Encoder::new()?,
                dec: spdy::Decoder::new(),
                next_id: 1,
            },
            version,
        ))
    }

    async fn send(&mut self, f: Frame) -> Result<()> {
        let bytes = self.enc.encode(&f)?;
        self.w.write_all(&bytes).await?;
        self.w.flush().await?;
        Ok(())
    }

    /// Opens a stream of `kind`; its id once the server accepted it.
    async fn open(&mut self, kind: &str) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 2;
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: Headers::new().with("streamType", kind),
        })
        .await?;
        match self.recv().await? {
            Some(Frame::SynReply { stream_id, .. }) if stream_id == id => Ok(id),
            other => bail!("expected SYN_REPLY for {id}, got {other:?}"),
        }
    }

    async fn recv(&mut self) -> Result<Option<Frame>> {
        Ok(
            tokio::time::timeout(Duration::from_secs(10), self.dec.read(&mut self.r))
                .await
                .context("no frame within 10 s")??,
        )
    }

    /// Reads until every stream of `streams` has ended (or the connection).
    async fn collect(&mut self, streams: &[u32]) -> Result<Collected> {
        let mut got = Collected::default();
        while !streams.iter().all(|s| got.fin.contains(s)) {
            match self.recv().await? {
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) => {
                    got.data
                        .entry(stream_id)
                        .or_default()
                        .extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        got.fin.insert(stream_id);
                    }
                }
                Some(_) => {}
                None => bail!("connection closed before the streams ended: {got:?}"),
            }
        }
        Ok(got)
    }
}

fn text(got: &Collected, id: u32) -> String {
    String::from_utf8_lossy(got.data.get(&id).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

fn status(got: &Collected, id: u32) -> Result<serde_json::Value> {
    serde_json::from_slice(got.data.get(&id).context("no status")?).context("status JSON")
}

const V4_FIRST: &str = "v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io";

#[tokio::test]
async fn exec_over_spdy_carries_stdio_and_the_v4_status() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1"}]}
    }))
    .await?;
    c.wait_pod("shell", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;

    // echo: stdout, then a Success status; stderr ends empty.
    let (mut cl, version) = Client::connect(
        &c,
        "/exec/default/shell/app?command=echo&command=hello&command=world&stdout=true&stderr=true",
        V4_FIRST,
    )
    .await?;
    assert_eq!(version, "v4.channel.k8s.io");
    let error = cl.open("error").await?;
    let stdout = cl.open("stdout").await?;
    let stderr = cl.open("stderr").await?;
    let got = cl.collect(&[error, stdout, stderr]).await?;
    assert_eq!(text(&got, stdout), "hello world\n");
    assert_eq!(text(&got, stderr), "");
    assert_eq!(status(&got, error)?["status"], "Success");

    // stdin echo: the client's FIN closes the command's input.
    let (mut cl, _) = Client::connect(
        &c,
        "/exec/default/shell/app?command=cat&stdin=true&stdout=true",
        V4_FIRST,
    )
    .await?;
    let error = cl.open("error").await?;
    let stdin = cl.open("stdin").await?;
    let stdout = cl.open("stdout").await?;
    cl.send(Frame::data(stdin, Bytes::from_static(b"ping ")))
        .await?;
    cl.send(Frame::data(stdin, Bytes::from_static(b"pong")))
        .await?;
    cl.send(Frame::fin(stdin)).await?;
    let got = cl.collect(&[error, stdout]).await?;
    assert_eq!(text(&got, stdout), "ping pong");
    assert_eq!(status(&got, error)?["status"], "Success");

    // exit 3: stderr, and a Failure status with the exit code.
    let (mut cl, _) = Client::connect(
        &c,
        "/exec/default/shell/app?command=sh&command=-c&command=exit%203&stdout=true&stderr=true",
        V4_FIRST,
    )
    .await?;
    let error = cl.open("error").await?;
    let stdout = cl.open("stdout").await?;
    let stderr = cl.open("stderr").await?;
    let got = cl.collect(&[error, stdout, stderr]).await?;
    assert_eq!(text(&got, stderr), "bye\n");
    let st = status(&got, error)?;
    assert_eq!(st["status"], "Failure");
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "3");

    // v2: the error stream carries only the error text.
    let (mut cl, version) = Client::connect(
        &c,
        "/exec/default/shell/app?command=sh&command=-c&command=exit%203&stderr=true",
        "v2.channel.k8s.io, channel.k8s.io",
    )
    .await?;
    assert_eq!(version, "v2.channel.k8s.io");
    let error = cl.open("error").await?;
    let stderr = cl.open("stderr").await?;
    let got = cl.collect(&[error, stderr]).await?;
    let message = text(&got, error);
    assert!(
        message.starts_with("command terminated with non-zero exit code")
            && message.ends_with("exit code 3"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_protocol_version_is_refused() -> Result<()> {
    let c = Cluster::start().await?;
    c.create_pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "fake/app:1"}]}
    }))
    .await?;
    c.wait_pod("shell", 30, "running", |p| {
        (container_state(p, "app").as_deref() == Some("running")).then_some(())
    })
    .await?;
    let err = Client::connect(
        &c,
        "/exec/default/shell/app?command=echo&stdout=true",
        "v9.channel.k8s.io",
    )
    .await
    .err()
    .context("the upgrade succeeded")?;
    assert!(err.to_string().starts_with("HTTP/1.1 403"), "{err}");
    Ok(())
}
