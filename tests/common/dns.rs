//! A minimal authoritative DNS server for tests: the records it is given,
//! over UDP and TCP on one ephemeral loopback port, hand-written wire format
//! (RFC 1035). Answers are never compressed except for the owner name,
//! which points at the question (offset 12). An EDNS OPT in the query is
//! answered with a minimal OPT (payload 1232, no options).
//!
//! Known name, no record of the asked type: NOERROR with an empty answer
//! (no SOA). Unknown name: NXDOMAIN. `ServFail` and `NoResponse` entries
//! make a name fail, for the temporary-error paths.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const TYPE_A: u16 = 1;
const TYPE_MX: u16 = 15;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

const TTL: u32 = 300;
/// The classic limit for a UDP answer without EDNS.
const UDP_PLAIN_LIMIT: usize = 512;
const EDNS_PAYLOAD: u16 = 1232;

/// One entry of the test zone. Names are case-insensitive, with or
/// without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    Mx {
        name: String,
        preference: u16,
        /// `"."` for a null MX (RFC 7505).
        exchange: String,
    },
    A {
        name: String,
        ip: Ipv4Addr,
    },
    Aaaa {
        name: String,
        ip: Ipv6Addr,
    },
    /// One TXT record (a single character-string of at most 255 bytes).
    Txt {
        name: String,
        text: String,
    },
    /// Every query for this name gets SERVFAIL.
    ServFail {
        name: String,
    },
    /// Queries for this name are dropped: the client times out.
    NoResponse {
        name: String,
    },
}

impl DnsRecord {
    pub fn mx(name: &str, preference: u16, exchange: &str) -> DnsRecord {
        DnsRecord::Mx {
            name: name.into(),
            preference,
            exchange: exchange.into(),
        }
    }

    pub fn a(name: &str, ip: &str) -> DnsRecord {
        DnsRecord::A {
            name: name.into(),
            ip: ip.parse().expect("IPv4 address"),
        }
    }

    pub fn aaaa(name: &str, ip: &str) -> DnsRecord {
        DnsRecord::Aaaa {
            name: name.into(),
            ip: ip.parse().expect("IPv6 address"),
        }
    }

    pub fn txt(name: &str, text: &str) -> DnsRecord {
        assert!(text.len() <= 255, "TXT string longer than 255 bytes");
        DnsRecord::Txt {
            name: name.into(),
            text: text.into(),
        }
    }

    fn name(&self) -> &str {
        match self {
            DnsRecord::Mx { name, .. }
            | DnsRecord::A { name, .. }
            | DnsRecord::Aaaa { name, .. }
            | DnsRecord::Txt { name, .. }
            | DnsRecord::ServFail { name }
            | DnsRecord::NoResponse { name } => name,
        }
    }

    fn rtype(&self) -> Option<u16> {
        match self {
            DnsRecord::Mx { .. } => Some(TYPE_MX),
            DnsRecord::A { .. } => Some(TYPE_A),
            DnsRecord::Aaaa { .. } => Some(TYPE_AAAA),
            DnsRecord::Txt { .. } => Some(TYPE_TXT),
            DnsRecord::ServFail { .. } | DnsRecord::NoResponse { .. } => None,
        }
    }
}

/// The running server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    records: Mutex<Vec<DnsRecord>>,
    stop: AtomicBool,
    queries: AtomicU64,
}

impl DnsServer {
    /// Serves `records` on 127.0.0.1, UDP and TCP on the same ephemeral port.
    pub fn start(records: Vec<DnsRecord>) -> DnsServer {
        for r in &records {
            encode_name(r.name()).unwrap_or_else(|e| panic!("bad DNS record {r:?}: {e}"));
            match r {
                DnsRecord::Mx { exchange, .. } => {
                    encode_name(exchange).unwrap_or_else(|e| panic!("bad DNS record {r:?}: {e}"));
                }
                DnsRecord::Txt { text, .. } => {
                    assert!(
                        text.len() <= 255,
                        "bad DNS record {r:?}: TXT over 255 bytes"
                    );
                }
                _ => {}
            }
        }
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("udp local addr");
        let state = Arc::new(Shared {
            records: Mutex::new(records),
            stop: AtomicBool::new(false),
            queries: AtomicU64::new(0),
        });
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        tcp.set_nonblocking(true).expect("tcp nonblocking");
        let s = state.clone();
        let udp_thread = std::thread::spawn(move || serve_udp(udp, s));
        let s = state.clone();
        let tcp_thread = std::thread::spawn(move || serve_tcp(tcp, s));
        DnsServer {
            addr,
            state,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// The address (UDP and TCP) to point a resolver at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the zone; later queries see the new records.
    pub fn set_records(&self, records: Vec<DnsRecord>) {
        *self.state.records.lock().expect("records lock") = records;
    }

    /// How many queries were received (answered or not).
    pub fn queries(&self) -> u64 {
        self.state.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same loopback port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = TcpListener::bind(addr) {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP after 50 tries");
}

fn serve_udp(sock: UdpSocket, state: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    while !state.stop.load(Ordering::SeqCst) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout: look at the stop flag again
        };
        state.queries.fetch_add(1, Ordering::SeqCst);
        let records = state.records.lock().expect("records lock").clone();
        if let Some(reply) = answer(&buf[..n], &records, Transport::Udp) {
            let _ = sock.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: TcpListener, state: Arc<Shared>) {
    let mut conns = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let s = state.clone();
                conns.push(std::thread::spawn(move || serve_tcp_conn(stream, s)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), several per connection.
fn serve_tcp_conn(mut stream: TcpStream, state: Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while !state.stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let msg: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            state.queries.fetch_add(1, Ordering::SeqCst);
            let records = state.records.lock().expect("records lock").clone();
            if let Some(reply) = answer(&msg, &records, Transport::Tcp) {
                let Ok(rlen) = u16::try_from(reply.len()) else {
                    return;
                };
                let mut framed = rlen.to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The question of a query, as parsed.
struct Question<'a> {
    /// The name's wire bytes exactly as received (case preserved).
    wire: &'a [u8],
    /// Lower-case dotted name without the trailing dot ("" for the root).
    name: String,
    qtype: u16,
    qclass: u16,
}

/// The reply to one query message, or `None` to stay silent (not a query,
/// too short to answer, or a `NoResponse` name).
fn answer(query: &[u8], records: &[DnsRecord], transport: Transport) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = [query[0], query[1]];
    let flags = u16::from_be_bytes([query[2], query[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response: never answer those
    }
    let opcode = ((flags >> 11) & 0x0f) as u8;
    let rd = flags & 0x0100 != 0;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let ancount = u16::from_be_bytes([query[6], query[7]]);
    let nscount = u16::from_be_bytes([query[8], query[9]]);
    let arcount = u16::from_be_bytes([query[10], query[11]]);

    let header_only = |rcode: u8| reply_header(id, opcode, rd, rcode, false);
    if opcode != 0 {
        return Some(header_only(RCODE_NOTIMP));
    }
    if qdcount != 1 {
        return Some(header_only(RCODE_FORMERR));
    }
    let Some((q, mut pos)) = parse_question(query, 12) else {
        return Some(header_only(RCODE_FORMERR));
    };
    // Skip answer and authority records (normally none) to find an OPT.
    let mut edns = false;
    for i in 0..(u32::from(ancount) + u32::from(nscount) + u32::from(arcount)) {
        let Some((rtype, next)) = skip_record(query, pos) else {
            return Some(header_only(RCODE_FORMERR));
        };
        if i >= u32::from(ancount) + u32::from(nscount) && rtype == TYPE_OPT {
            edns = true;
        }
        pos = next;
    }

    let of_name: Vec<&DnsRecord> = records
        .iter()
        .filter(|r| normalize(r.name()) == q.name)
        .collect();
    if of_name
        .iter()
        .any(|r| matches!(r, DnsRecord::NoResponse { .. }))
    {
        return None;
    }
    let (rcode, answers): (u8, Vec<&DnsRecord>) = if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        (RCODE_REFUSED, Vec::new())
    } else if of_name
        .iter()
        .any(|r| matches!(r, DnsRecord::ServFail { .. }))
    {
        (RCODE_SERVFAIL, Vec::new())
    } else if of_name.is_empty() {
        (RCODE_NXDOMAIN, Vec::new())
    } else {
        let matching = of_name
            .into_iter()
            .filter(|r| q.qtype == TYPE_ANY || r.rtype() == Some(q.qtype))
            .collect();
        (RCODE_NOERROR, matching)
    };

    let mut body = Vec::new();
    // Question, echoed byte for byte.
    body.extend_from_slice(q.wire);
    body.extend_from_slice(&q.qtype.to_be_bytes());
    body.extend_from_slice(&q.qclass.to_be_bytes());
    for r in &answers {
        encode_answer(&mut body, r);
    }
    if edns {
        // Minimal OPT: root owner, our payload size, rcode ext/version/flags 0.
        body.push(0);
        body.extend_from_slice(&TYPE_OPT.to_be_bytes());
        body.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    let limit = match (transport, edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, true) => usize::from(EDNS_PAYLOAD),
        (Transport::Udp, false) => UDP_PLAIN_LIMIT,
    };
    let Ok(an) = u16::try_from(answers.len()) else {
        return Some(header_only(RCODE_SERVFAIL));
    };
    let mut reply = reply_header(id, opcode, rd, rcode, false);
    set_counts(&mut reply, 1, an, u16::from(edns));
    reply.extend_from_slice(&body);
    if reply.len() > limit {
        // Truncated: the question only, TC set; the client retries over TCP.
        let mut tc = reply_header(id, opcode, rd, rcode, true);
        set_counts(&mut tc, 1, 0, 0);
        tc.extend_from_slice(q.wire);
        tc.extend_from_slice(&q.qtype.to_be_bytes());
        tc.extend_from_slice(&q.qclass.to_be_bytes());
        return Some(tc);
    }
    Some(reply)
}

/// Header of a reply, all counts zero: QR, the query's opcode, AA for a
/// standard query (we are authoritative for everything we know), the
/// query's RD, RA clear (no recursion offered).
fn reply_header(id: [u8; 2], opcode: u8, rd: bool, rcode: u8, truncated: bool) -> Vec<u8> {
    let mut flags: u16 = 0x8000 | (u16::from(opcode & 0x0f) << 11) | u16::from(rcode & 0x0f);
    if opcode == 0 {
        flags |= 0x0400; // AA
    }
    if truncated {
        flags |= 0x0200; // TC
    }
    if rd {
        flags |= 0x0100; // RD echoed
    }
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&id);
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&[0u8; 8]);
    h
}

/// Sets QDCOUNT, ANCOUNT and ARCOUNT of a reply (NSCOUNT stays 0).
fn set_counts(reply: &mut [u8], qd: u16, an: u16, ar: u16) {
    reply[4..6].copy_from_slice(&qd.to_be_bytes());
    reply[6..8].copy_from_slice(&an.to_be_bytes());
    reply[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// Parses the one question at `pos`; names in questions must not be
/// compressed (nothing to point back to).
fn parse_question(msg: &[u8], mut pos: usize) -> Option<(Question<'_>, usize)> {
    let start = pos;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None; // a pointer or a reserved label type
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
    if pos - start > 255 {
        return None;
    }
    let wire = &msg[start..pos];
    let fixed = msg.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    Some((
        Question {
            wire,
            name: labels.join("."),
            qtype,
            qclass,
        },
        pos + 4,
    ))
}

/// Skips one resource record; returns its type and the next offset.
fn skip_record(msg: &[u8], mut pos: usize) -> Option<(u16, usize)> {
    loop {
        let len = *msg.get(pos)?;
        if len & 0xc0 == 0xc0 {
            pos += 2; // a pointer ends the name
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        pos += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    let fixed = msg.get(pos..pos + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let end = pos + 10 + rdlen;
    if end > msg.len() {
        return None;
    }
    Some((rtype, end))
}

/// One answer record; its owner is the question's name, so it is written
/// as a pointer to offset 12 (where the question name starts).
fn encode_answer(out: &mut Vec<u8>, r: &DnsRecord) {
    let (rtype, rdata) = match r {
        DnsRecord::Mx {
            preference,
            exchange,
            ..
        } => {
            let mut d = preference.to_be_bytes().to_vec();
            d.extend(encode_name(exchange).expect("validated at start"));
            (TYPE_MX, d)
        }
        DnsRecord::A { ip, .. } => (TYPE_A, ip.octets().to_vec()),
        DnsRecord::Aaaa { ip, .. } => (TYPE_AAAA, ip.octets().to_vec()),
        DnsRecord::Txt { text, .. } => {
            let mut d = vec![u8::try_from(text.len()).expect("checked in txt()")];
            d.extend_from_slice(text.as_bytes());
            (TYPE_TXT, d)
        }
        DnsRecord::ServFail { .. } | DnsRecord::NoResponse { .. } => return,
    };
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&TTL.to_be_bytes());
    let rdlen = u16::try_from(rdata.len()).expect("small rdata");
    out.extend_from_slice(&rdlen.to_be_bytes());
    out.extend_from_slice(&rdata);
}

/// Uncompressed wire form of a dotted name ("." or "" is the root).
fn encode_name(name: &str) -> Result<Vec<u8>, String> {
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("label {label:?} in {name:?} must be 1 to 63 bytes"));
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    if out.len() > 255 {
        return Err(format!("name {name:?} longer than 255 bytes"));
    }
    Ok(out)
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
