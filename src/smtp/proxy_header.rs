//! The PROXY protocol header (HAProxy's, v1 text and v2 binary) a load
//! balancer puts before the SMTP bytes, parsed without I/O: the I/O layer
//! feeds what it has read and gets "need more", the client's addresses and
//! how many bytes the header took, or why the header is refused.
//!
//! The parsing itself is the `ppp` crate's (well kept, used by other
//! proxies, both versions); this module adds what a mail server needs
//! around it: an early "not a header at all" (the first byte decides),
//! size caps so a peer cannot make us buffer without end, and only the
//! header kinds a TCP SMTP listener can use (TCP4, TCP6, LOCAL).

use ppp::{HeaderResult, PartialResult, v1, v2};
use std::net::SocketAddr;

/// The longest v1 header (the spec's 107 bytes, CRLF included).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: 16 bytes and the addresses, with room
/// for the TLVs HAProxy adds (unique id, SSL details), not the 64 KiB the
/// length field allows.
pub const V2_MAX: usize = 16 + 2048;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied connection: the client and the address it connected to.
    Proxied {
        client: SocketAddr,
        local: SocketAddr,
    },
    /// The proxy speaking for itself (v2 LOCAL, v1 UNKNOWN: a health
    /// check): the connection's own addresses stand.
    Local,
}

/// How far parsing got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyParse {
    /// A prefix of a valid header: read more.
    Incomplete,
    /// A whole header in the first `consumed` bytes.
    Done {
        header: ProxyHeader,
        consumed: usize,
    },
    /// Not a header we take; why, for the log.
    Refused(String),
}

/// Parses the start of a connection.
pub fn parse(input: &[u8]) -> ProxyParse {
    let Some(first) = input.first() else {
        return ProxyParse::Incomplete;
    };
    let v2 = match first {
        b'P' => false,
        b'\r' => true,
        _ => {
            return ProxyParse::Refused(format!(
                "no PROXY header: the connection starts with {:?}",
                crate::events::printable(&String::from_utf8_lossy(&input[..input.len().min(16)]))
            ));
        }
    };
    if v2 {
        let n = input.len().min(V2_SIGNATURE.len());
        if input[..n] != V2_SIGNATURE[..n] {
            return ProxyParse::Refused("a malformed PROXY v2 signature".into());
        }
        if input.len() >= 16 {
            let length = usize::from(u16::from_be_bytes([input[14], input[15]]));
            if 16 + length > V2_MAX {
                return ProxyParse::Refused(format!(
                    "a PROXY v2 header of {} bytes (at most {V2_MAX})",
                    16 + length
                ));
            }
        }
    } else {
        let n = input.len().min(6);
        if input[..n] != b"PROXY "[..n] {
            return ProxyParse::Refused("no PROXY header: the connection starts with text".into());
        }
        if !input[..input.len().min(V1_MAX)].contains(&b'\n') && input.len() >= V1_MAX {
            return ProxyParse::Refused(format!("a PROXY v1 line longer than {V1_MAX} bytes"));
        }
    }
    let parsed = if v2 {
        HeaderResult::V2(v2::Header::try_from(input))
    } else {
        // v1 is parsed once its line is whole (a port cut short reads as
        // a bad port), and up to its end only.
        let Some(end) = input.iter().position(|b| *b == b'\n') else {
            return ProxyParse::Incomplete;
        };
        HeaderResult::V1(v1::Header::try_from(&input[..=end]))
    };
    if parsed.is_incomplete() {
        return ProxyParse::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let consumed = h.header.len();
            let header = match h.addresses {
                v1::Addresses::Unknown => ProxyHeader::Local,
                v1::Addresses::Tcp4(a) => ProxyHeader::Proxied {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    local: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v1::Addresses::Tcp6(a) => ProxyHeader::Proxied {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    local: SocketAddr::from((a.destination_address, a.destination_port)),
                },
            };
            ProxyParse::Done { header, consumed }
        }
        HeaderResult::V2(Ok(h)) => {
            let consumed = h.header.len();
            if h.command == v2::Command::Local {
                return ProxyParse::Done {
                    header: ProxyHeader::Local,
                    consumed,
                };
            }
            if h.protocol != v2::Protocol::Stream {
                return ProxyParse::Refused(format!(
                    "a PROXY v2 header for {:?}, not TCP",
                    h.protocol
                ));
            }
            let header = match h.addresses {
                v2::Addresses::IPv4(a) => ProxyHeader::Proxied {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    local: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v2::Addresses::IPv6(a) => ProxyHeader::Proxied {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    local: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => {
                    return ProxyParse::Refused(
                        "a PROXY v2 header without a TCP client address".into(),
                    );
                }
            };
            ProxyParse::Done { header, consumed }
        }
        HeaderResult::V1(Err(e)) => {
            ProxyParse::Refused(format!("a malformed PROXY v1 header: {e}"))
        }
        HeaderResult::V2(Err(e)) => {
            ProxyParse::Refused(format!("a malformed PROXY v2 header: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn done(input: &[u8]) -> (ProxyHeader, usize) {
        match parse(input) {
            ProxyParse::Done { header, consumed } => (header, consumed),
            other => panic!("{other:?} for {input:?}"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\r\nEHLO x\r\n";
        let (h, n) = done(line);
        assert_eq!(n, line.len() - b"EHLO x\r\n".len());
        assert_eq!(
            h,
            ProxyHeader::Proxied {
                client: "203.0.113.7:51234".parse().unwrap(),
                local: "192.0.2.1:25".parse().unwrap()
            }
        );
        let (h, _) = done(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n");
        assert_eq!(
            h,
            ProxyHeader::Proxied {
                client: "[2001:db8::7]:4000".parse().unwrap(),
                local: "[2001:db8::1]:25".parse().unwrap()
            }
        );
        assert_eq!(done(b"PROXY UNKNOWN\r\n").0, ProxyHeader::Local);
    }

    #[test]
    fn v2_tcp4_tcp6_local_with_tlvs() {
        let addrs4 = [203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 0, 25];
        let h = v2(1, 0x11, &addrs4, &[0x05, 0, 2, b'i', b'd']);
        let mut input = h.clone();
        input.extend_from_slice(b"EHLO");
        let (header, n) = done(&input);
        assert_eq!(n, h.len());
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                client: "203.0.113.7:51234".parse().unwrap(),
                local: "192.0.2.1:25".parse().unwrap()
            }
        );
        let mut addrs6 = Vec::new();
        addrs6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        addrs6.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        addrs6.extend_from_slice(&[0x0f, 0xa0, 0, 25]);
        let (header, _) = done(&v2(1, 0x21, &addrs6, &[]));
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                client: "[2001:db8::7]:4000".parse().unwrap(),
                local: "[2001:db8::1]:25".parse().unwrap()
            }
        );
        assert_eq!(done(&v2(0, 0x00, &[], &[])).0, ProxyHeader::Local);
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\r\n".to_vec();
        let v2h = v2(
            1,
            0x11,
            &[203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 0, 25],
            &[],
        );
        for h in [v1, v2h] {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n]), ProxyParse::Incomplete, "{n} of {h:?}");
            }
        }
    }

    #[test]
    fn what_is_not_a_header_is_refused_at_once() {
        for bad in [
            &b"EHLO client\r\n"[..],
            b"HELO",
            b"PROXZ",
            b"PROXY TCP4 999.0.0.1 192.0.2.1 1 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 25\r\n",
            b"PROXY UDP4 203.0.113.7 192.0.2.1 1 25\r\n",
            b"\r\n\r\n\0\r\nQUIX\n",
            b"\x16\x03\x01",
        ] {
            assert!(
                matches!(parse(bad), ProxyParse::Refused(_)),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
        // Without its end of line, a v1 header stops at 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), ProxyParse::Refused(_)));
        // A v2 header announcing more than we take is refused at its 16th byte.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), ProxyParse::Refused(_)));
        // UDP (datagram) and UNIX are not for an SMTP listener.
        let udp = v2(1, 0x12, &[203, 0, 113, 7, 192, 0, 2, 1, 0, 1, 0, 25], &[]);
        assert!(matches!(parse(&udp), ProxyParse::Refused(_)));
        let unix = v2(1, 0x31, &[0u8; 216], &[]);
        assert!(matches!(parse(&unix), ProxyParse::Refused(_)));
    }
}
