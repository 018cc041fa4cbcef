//! The network front end: UDP sockets and TCP listeners served by
//! `hickory-server`, whose handler answers from the current snapshot or
//! forwards upstream. hickory-server parses requests (FORMERR for one whose
//! header parses but not the rest, nothing for less), drops responses sent
//! to us, and truncates UDP answers to the client's payload size with TC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::answer::{Answer, answer};
use crate::forward::Forwarder;
use crate::snapshot::{Snapshot, Zone};
use crate::{DnsConfig, Error};

/// An idle TCP connection is closed after this long.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How many CNAMEs are followed for one question.
const MAX_CNAME_CHAIN: usize = 8;
/// Tries for a port-0 listen address whose UDP port is taken for TCP.
const FREE_PORT_TRIES: usize = 16;

/// The bound sockets, ready to serve: [`DnsServer::bind`] then
/// [`DnsServer::run`] (what [`crate::run`] does), so a caller can learn the
/// ports picked for port-0 addresses before serving.
pub struct DnsServer {
    config: DnsConfig,
    zone: Zone,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    local: Vec<SocketAddr>,
}

impl DnsServer {
    /// Binds UDP and TCP on every `config.listen` address.
    pub async fn bind(config: DnsConfig) -> Result<DnsServer, Error> {
        let zone = Zone::new(&config.cluster_domain, config.ttl)?;
        if config.listen.is_empty() {
            return Err(Error::NoListenAddress);
        }
        let mut server = DnsServer {
            zone,
            udp: Vec::new(),
            tcp: Vec::new(),
            local: Vec::new(),
            config,
        };
        for addr in server.config.listen.clone() {
            let (udp, tcp) = bind_pair(addr).await?;
            let local = udp
                .local_addr()
                .map_err(|source| Error::BindUdp { addr, source })?;
            server.local.push(local);
            server.udp.push(udp);
            server.tcp.push(tcp);
        }
        Ok(server)
    }

    /// The addresses actually bound, in `listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Watches the API and serves until a listener or a watch fails.
    /// Before the first complete list, names in the cluster domain are
    /// answered SERVFAIL (never a cacheable NXDOMAIN).
    pub async fn run(self, client: kube::Client) -> Result<(), Error> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(self.zone.clone())));
        let forwarder =
            Forwarder::new(self.config.upstream_resolv_conf.clone(), self.local.clone());
        let mut server = hickory_server::Server::new(Handler {
            snapshot: rx,
            forwarder: Arc::new(forwarder),
        });
        for socket in self.udp {
            server.register_socket(socket);
        }
        for listener in self.tcp {
            server.register_listener(listener, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        }
        info!(listen = ?self.local, domain = %self.zone.domain, "cluster dns serving");
        tokio::select! {
            result = server.block_until_done() => Err(Error::Serve(match result {
                Ok(()) => "every listener closed".to_string(),
                Err(e) => e.to_string(),
            })),
            e = crate::watch::watch(client, self.zone, tx) => Err(e),
        }
    }
}

/// UDP and TCP on the same address; for port 0, the same free port.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let tries = if addr.port() == 0 { FREE_PORT_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::BindUdp { addr, source })?;
        let port = udp
            .local_addr()
            .map_err(|source| Error::BindUdp { addr, source })?
            .port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(Error::BindTcp {
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(Error::NoListenAddress))
}

/// Answers one request: from the snapshot, or from upstream.
struct Handler {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    forwarder: Arc<Forwarder>,
}

/// Everything a response is made of, besides the request's id and flags.
struct Resolution {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Resolution {
    fn code(code: ResponseCode) -> Resolution {
        Resolution {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Answer within the client's advertised UDP payload size
        // (hickory-server truncates with TC beyond it; 512 without EDNS).
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload());
            ours
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;

        let resolution = if request.metadata.op_code != OpCode::Query {
            Resolution::code(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                Ok(info) => {
                    let query = info.query.original().clone();
                    self.resolve(query, request.metadata.recursion_desired)
                        .await
                }
                // Not exactly one question.
                Err(_) => Resolution::code(ResponseCode::FormErr),
            }
        };
        metadata.response_code = resolution.code;
        metadata.authoritative = resolution.authoritative;

        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let response = builder.build(
            metadata,
            resolution.answers.iter(),
            resolution.authorities.iter(),
            std::iter::empty(),
            resolution.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "sending the response failed");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn resolve(&self, query: Query, recursion_desired: bool) -> Resolution {
        let snapshot = self.snapshot.borrow().clone();
        let response = match answer(&query, &snapshot) {
            Answer::Zone(response) => response,
            Answer::Forward => return self.forward(&query, recursion_desired).await,
        };
        let mut resolution = Resolution {
            code: response.code,
            authoritative: true,
            answers: response.answers,
            authorities: response.authorities,
            additionals: response.additionals,
        };
        self.follow_cname(&query, &snapshot, &mut resolution, recursion_desired)
            .await;
        resolution
    }

    /// An ExternalName's CNAME, asked for another type: resolve the target
    /// too (from the snapshot when it is in the cluster domain, else
    /// upstream), so stub resolvers get the addresses in one answer, as
    /// from CoreDNS.
    async fn follow_cname(
        &self,
        query: &Query,
        snapshot: &Snapshot,
        resolution: &mut Resolution,
        recursion_desired: bool,
    ) {
        let qtype = query.query_type();
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
            return;
        }
        for _ in 0..MAX_CNAME_CHAIN {
            if resolution.answers.iter().any(|r| r.record_type() == qtype) {
                return;
            }
            let Some(target) = resolution.answers.last().and_then(|r| match &r.data {
                RData::CNAME(c) => Some(c.0.clone()),
                _ => None,
            }) else {
                return;
            };
            let next = Query::query(target, qtype);
            let more = match answer(&next, snapshot) {
                Answer::Zone(response) => response.answers,
                Answer::Forward => match self.forwarder.forward(&next, recursion_desired).await {
                    Ok(message) => message.answers,
                    Err(error) => {
                        debug!(%error, name = %next.name(), "following a cname upstream failed");
                        return;
                    }
                },
            };
            if more.is_empty() {
                return;
            }
            resolution.answers.extend(more);
        }
    }

    async fn forward(&self, query: &Query, recursion_desired: bool) -> Resolution {
        match self.forwarder.forward(query, recursion_desired).await {
            Ok(message) => Resolution {
                code: message.metadata.response_code,
                authoritative: message.metadata.authoritative,
                answers: message.answers,
                authorities: message.authorities,
                additionals: message.additionals,
            },
            Err(error) => {
                warn!(%error, name = %query.name(), "forwarding failed");
                Resolution::code(ResponseCode::ServFail)
            }
        }
    }
}
