//! The router's decisions as DNS, for the zone `[router] zone`.
//!
//! - `<zone>` A/AAAA: the nearest healthy region for the client's location:
//!   the location an EDNS Client Subnet option falls in (a router
//!   location's `client_subnets`), else the router's own.
//! - `<location>.<zone>` A/AAAA: the same for clients at that location.
//! - `<region>` names are answered by `<location>` when a region shares
//!   the name (a region's location is a location).
//!
//! Records carry `ttl_s`. A region whose address is a host name is answered
//! with a CNAME. A name outside the zone is REFUSED; a name in the zone
//! that is not a location is NXDOMAIN; a known name asked for another type
//! (MX, TXT, ...) has no data (NOERROR, the zone's SOA in authority); the
//! apex answers SOA and NS; when every region is down, SERVFAIL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use parallax_core::config::Subnet;

use crate::Router;
use crate::api::RouteQuery;

/// Answers the router's decisions as DNS.
#[derive(Debug)]
pub struct DnsHandler {
    router: Router,
    zone: LowerName,
    /// Subnets by location, longest prefix first.
    subnets: Vec<(Subnet, String)>,
}

impl DnsHandler {
    /// A handler for `router`'s zone (`[router] zone`).
    pub fn new(router: Router, zone: &str) -> Result<DnsHandler, String> {
        let name = Name::from_ascii(zone)
            .map_err(|e| format!("router.zone `{zone}` is not a DNS name: {e}"))?;
        let mut subnets = Vec::new();
        for (location, site) in &router.config().routers {
            for s in &site.client_subnets {
                subnets.push((*s, location.clone()));
            }
        }
        subnets.sort_by_key(|(s, _)| std::cmp::Reverse(s.prefix()));
        Ok(DnsHandler {
            router,
            zone: LowerName::from(name),
            subnets,
        })
    }

    /// The location of a client whose query carried `subnet`, if one of
    /// the routers' `client_subnets` holds it.
    fn location_of(&self, ip: IpAddr, prefix: u8) -> Option<&str> {
        self.subnets
            .iter()
            .find(|(s, _)| s.contains(ip, prefix))
            .map(|(_, l)| l.as_str())
    }

    /// `<label>.<zone>`.
    fn in_zone(&self, label: &str) -> Name {
        let zone = Name::from(self.zone.clone());
        Name::from_ascii(label)
            .and_then(|n| n.append_domain(&zone))
            .unwrap_or(zone)
    }

    fn soa(&self) -> Record {
        let zone = Name::from(self.zone.clone());
        let (ns, mail) = (self.in_zone("ns"), self.in_zone("hostmaster"));
        let ttl = self.router.config().router.ttl_s;
        let serial = (self.router.now_ms() / 1_000) as u32;
        Record::from_rdata(
            zone,
            ttl,
            RData::SOA(SOA::new(ns, mail, serial, 3_600, 600, 86_400, ttl)),
        )
    }

    /// What to answer for `name`/`qtype` from a client at `location`
    /// (`None`: the router's own).
    fn answer(&self, name: &LowerName, qtype: RecordType, ecs: Option<&str>) -> Answer {
        if !self.zone.zone_of(name) {
            return Answer::Refused;
        }
        let ttl = self.router.config().router.ttl_s;
        let labels = name.num_labels() - self.zone.num_labels();
        let location = match labels {
            0 => {
                match qtype {
                    RecordType::SOA => return Answer::Records(vec![self.soa()]),
                    RecordType::NS => {
                        let ns = RData::NS(NS(self.in_zone("ns")));
                        let zone = Name::from(self.zone.clone());
                        return Answer::Records(vec![Record::from_rdata(zone, ttl, ns)]);
                    }
                    _ => {}
                }
                ecs.map(str::to_owned)
            }
            1 => {
                let first = Name::from(name.clone());
                let label = first
                    .iter()
                    .next()
                    .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                    .unwrap_or_default();
                if self.router.config().location_of(&label).is_none() {
                    return Answer::NxDomain;
                }
                Some(label)
            }
            _ => return Answer::NxDomain,
        };
        if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::CNAME) {
            return Answer::NoData;
        }
        let q = RouteQuery {
            from: location,
            ..RouteQuery::default()
        };
        let Ok(route) = self.router.route(&q) else {
            return Answer::ServFail;
        };
        let owner = Name::from(name.clone());
        let host = host_of(&route.url);
        let record = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if qtype == RecordType::A => Some(RData::A(A(v4))),
            Ok(IpAddr::V6(v6)) if qtype == RecordType::AAAA => Some(RData::AAAA(AAAA(v6))),
            Ok(_) => None,
            Err(_) => Name::from_ascii(&host).ok().map(|n| RData::CNAME(CNAME(n))),
        };
        match record {
            Some(r) => Answer::Records(vec![Record::from_rdata(owner, ttl, r)]),
            None => Answer::NoData,
        }
    }
}

/// A DNS server (UDP and TCP on one address) answering for a router's zone.
pub struct DnsServer {
    /// The address it answers on.
    pub addr: SocketAddr,
    server: Server<DnsHandler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Answers `zone` for `router` on `listen` (UDP and TCP; port 0 picks one).
    pub async fn start(
        router: Router,
        zone: &str,
        listen: SocketAddr,
    ) -> Result<DnsServer, String> {
        let handler = DnsHandler::new(router, zone)?;
        let cannot = |e: std::io::Error| {
            format!(
                "cannot answer DNS on {listen}: {e}. Fix: stop whatever uses that port, or change dns_listen"
            )
        };
        let udp = tokio::net::UdpSocket::bind(listen).await.map_err(cannot)?;
        let addr = udp.local_addr().map_err(cannot)?;
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(cannot)?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Ok(DnsServer { addr, server })
    }

    /// Stops answering.
    pub async fn stop(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "The DNS server stopped with an error.");
        }
    }
}

/// What a query gets.
#[derive(Debug)]
enum Answer {
    Records(Vec<Record>),
    NoData,
    NxDomain,
    Refused,
    ServFail,
}

/// The host of a base URL: `http://127.0.0.1:7101` -> `127.0.0.1`,
/// `http://[::1]:7101` -> `::1`, `https://eu.example.com` -> `eu.example.com`.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    if let Ok(sa) = authority.parse::<SocketAddr>() {
        return sa.ip().to_string();
    }
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_owned();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned()
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut edns = None;
        let mut ecs = None;
        if let Some(req) = request.edns.as_ref() {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            edns = Some(e);
            if let Some(EdnsOption::Subnet(s)) = req.option(EdnsCode::Subnet) {
                ecs = self.location_of(s.addr(), s.source_prefix());
            }
        }
        let query = match request.request_info() {
            Ok(info) if request.metadata.op_code == OpCode::Query => info.query.clone(),
            _ => {
                let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                    .error_msg(&request.metadata, ResponseCode::Refused);
                return send(response_handle.send_response(response).await, request);
            }
        };
        let answer = self.answer(query.name(), query.query_type(), ecs);
        self.router.count_dns(match &answer {
            Answer::Records(_) => "answer",
            Answer::NoData => "nodata",
            Answer::NxDomain => "nxdomain",
            Answer::Refused => "refused",
            Answer::ServFail => "servfail",
        });
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let soa = [self.soa()];
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let sent = match answer {
            Answer::Records(records) => {
                response_handle
                    .send_response(builder.build(meta, &records, &[], &[], &[]))
                    .await
            }
            Answer::NoData => {
                response_handle
                    .send_response(builder.build(meta, &[], &soa, &[], &[]))
                    .await
            }
            Answer::NxDomain => {
                meta.response_code = ResponseCode::NXDomain;
                response_handle
                    .send_response(builder.build(meta, &[], &soa, &[], &[]))
                    .await
            }
            Answer::Refused | Answer::ServFail => {
                let code = if matches!(answer, Answer::Refused) {
                    ResponseCode::Refused
                } else {
                    ResponseCode::ServFail
                };
                response_handle
                    .send_response(builder.error_msg(&request.metadata, code))
                    .await
            }
        };
        send(sent, request)
    }
}

fn send(
    sent: Result<ResponseInfo, hickory_server::net::NetError>,
    request: &Request,
) -> ResponseInfo {
    sent.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "A DNS answer could not be sent.");
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = ResponseCode::ServFail;
        hickory_server::proto::op::Header {
            metadata: meta,
            counts: Default::default(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_url() {
        assert_eq!(host_of("http://127.0.0.1:7101"), "127.0.0.1");
        assert_eq!(host_of("http://[::1]:7101/"), "::1");
        assert_eq!(host_of("https://eu.example.com"), "eu.example.com");
        assert_eq!(
            host_of("https://eu.example.com:8443/base"),
            "eu.example.com"
        );
    }
}
