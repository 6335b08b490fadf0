//! Addresses as text, written without `fmt`'s machinery: a refused session
//! writes its client's address about ten times (the headless log, the
//! event log's JSON and its index, the decision's reason), and
//! `Ipv4Addr`'s `Display` costs about a thousand instructions each time.
//! The text is exactly `Display`'s.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Longest text: `[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535`.
const MAX: usize = 64;

/// An address's text, on the stack.
#[derive(Clone, Copy)]
pub struct AddrText {
    buf: [u8; MAX],
    len: u8,
}

impl AddrText {
    /// `192.0.2.1`, `2001:db8::1`.
    pub fn ip(ip: IpAddr) -> AddrText {
        let mut t = AddrText::empty();
        match ip {
            IpAddr::V4(v4) => t.push_v4(v4),
            IpAddr::V6(_) => t.push_display(&ip),
        }
        t
    }

    /// `192.0.2.1:25`, `[2001:db8::1]:25`.
    pub fn socket(addr: SocketAddr) -> AddrText {
        let mut t = AddrText::empty();
        match addr {
            SocketAddr::V4(v4) => {
                t.push_v4(*v4.ip());
                t.push(b':');
                t.push_decimal(u32::from(v4.port()));
            }
            SocketAddr::V6(_) => t.push_display(&addr),
        }
        t
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons, brackets and hex letters are
        // ever written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    fn empty() -> AddrText {
        AddrText {
            buf: [0; MAX],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if usize::from(self.len) < MAX {
            self.buf[usize::from(self.len)] = b;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            self.push(d);
        }
    }

    fn push_v4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.push_decimal(u32::from(octet));
        }
    }

    fn push_display(&mut self, value: &dyn fmt::Display) {
        use std::io::Write;
        let mut rest = &mut self.buf[usize::from(self.len)..];
        let room = rest.len();
        let _ = write!(rest, "{value}");
        let written = room - rest.len();
        self.len += written as u8;
    }
}

impl fmt::Display for AddrText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// For `#[serde(serialize_with)]`: a socket address as its text, as serde
/// writes it for JSON (and serde's own form for any other format).
pub fn serialize_socket<S: serde::Serializer>(
    addr: &SocketAddr,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(AddrText::socket(*addr).as_str())
    } else {
        serde::Serialize::serialize(addr, serializer)
    }
}

/// The same for an IP address.
pub fn serialize_ip<S: serde::Serializer>(ip: &IpAddr, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(AddrText::ip(*ip).as_str())
    } else {
        serde::Serialize::serialize(ip, serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_display_s() {
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for text in ips {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
            for port in [0u16, 7, 25, 65535] {
                let addr = SocketAddr::new(ip, port);
                assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
            }
        }
        let scoped: SocketAddr = "[fe80::1%4294967295]:65535".parse().unwrap();
        assert_eq!(AddrText::socket(scoped).as_str(), scoped.to_string());
        // Width and alignment are honoured, as Display's are.
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(format!("{:>12}|", AddrText::ip(ip)), format!("{ip:>12}|"));
    }

    #[test]
    fn json_is_serde_s() {
        #[derive(serde::Serialize)]
        struct Fast {
            #[serde(serialize_with = "serialize_socket")]
            a: SocketAddr,
            #[serde(serialize_with = "serialize_ip")]
            b: IpAddr,
        }
        #[derive(serde::Serialize)]
        struct Plain {
            a: SocketAddr,
            b: IpAddr,
        }
        for (a, b) in [
            ("192.0.2.1:25", "198.51.100.7"),
            ("[::1]:587", "2001:db8::1"),
        ] {
            let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(
                serde_json::to_string(&Fast { a, b }).unwrap(),
                serde_json::to_string(&Plain { a, b }).unwrap()
            );
        }
    }
}
