//! DKIM signing (RFC 6376): relaygate signs the mail its own users send
//! (clients that authenticated, or that the allow list allows) when the
//! domain of its `From:` has a key (`relaygate dkim add`), so that mail
//! sent straight to recipients' MX hosts passes DKIM and DMARC.
//!
//! `rsa-sha256` with `relaxed/relaxed` canonicalization, the header fields
//! a signer is advised to cover (RFC 6376 5.4.1) that the message has, and
//! `From` once more than it has, so that no `From` can be added after
//! signing. Pure: bytes in, the signature header field out; ring signs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use std::fmt;
use std::sync::Arc;

/// Header fields signed when present, in this order.
const SIGNED: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
];

/// A selector is one or more DNS labels (RFC 6376 3.1).
pub fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A private key that signs, with its public half for the DNS record.
pub struct DkimKey {
    pair: RsaKeyPair,
}

impl fmt::Debug for DkimKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DkimKey({} bits)", self.pair.public().modulus_len() * 8)
    }
}

impl DkimKey {
    /// An RSA private key in PEM (PKCS#8 `BEGIN PRIVATE KEY`, or PKCS#1
    /// `BEGIN RSA PRIVATE KEY`), as `openssl genpkey` writes it.
    pub fn from_pem(pem: &str) -> Result<DkimKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => {
                return Err(
                    "not an RSA key: DKIM here signs with rsa-sha256 (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)"
                        .into(),
                );
            }
        }
        .map_err(|e| format!("not a usable RSA key: {}", rejection_words(&e.to_string())))?;
        Ok(DkimKey { pair })
    }

    /// Its size, for `dkim show`.
    pub fn bits(&self) -> usize {
        self.pair.public().modulus_len() * 8
    }

    /// The `p=` of the DNS record: the public key as a DER
    /// SubjectPublicKeyInfo, in base64.
    pub fn public_key_base64(&self) -> String {
        BASE64.encode(spki(self.pair.public().as_ref()))
    }

    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN`.
    pub fn dns_record(&self) -> String {
        format!("v=DKIM1; k=rsa; p={}", self.public_key_base64())
    }
}

/// Why ring refused a key (its `KeyRejected` says `TooSmall`), in words.
fn rejection_words(ring_says: &str) -> String {
    match ring_says {
        "TooSmall" => "shorter than 2048 bits (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)".into(),
        "TooLarge" => "longer than 8192 bits".into(),
        "WrongAlgorithm" => "it is another kind of key: DKIM here signs with rsa-sha256 (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)".into(),
        "InvalidEncoding" | "InvalidComponent" | "InconsistentComponents" => {
            "the key's contents are damaged or inconsistent".into()
        }
        "VersionNotSupported" => "a PKCS#8 version this build does not read".into(),
        other => format!("refused ({other}); an RSA key of 2048 to 8192 bits is needed"),
    }
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=0x7f => vec![n as u8],
        0x80..=0xff => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// An RSAPublicKey (PKCS#1) wrapped as a SubjectPublicKeyInfo, the form
/// DKIM records carry (RFC 6376 3.6.1).
fn spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1 (rsaEncryption), NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    bits.extend(der_len(rsa_public_key.len() + 1));
    bits.push(0); // no unused bits
    bits.extend_from_slice(rsa_public_key);
    let mut out = vec![0x30];
    out.extend(der_len(ALGORITHM.len() + bits.len()));
    out.extend_from_slice(ALGORITHM);
    out.extend(bits);
    out
}

/// What signs for one domain.
#[derive(Debug, Clone)]
pub struct DkimSigner {
    pub domain: String,
    pub selector: String,
    /// [`digest`] of the PEM the key came from: a reload reuses the
    /// parsed key while it is the same.
    pub pem_digest: [u8; 32],
    pub key: Arc<DkimKey>,
}

/// SHA-256 of a key's PEM.
pub fn digest(pem: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl DkimSigner {
    /// The message with a `DKIM-Signature` header field on top, signed at
    /// `now` (Unix seconds). Err when the message has no header section
    /// to sign (it then goes unsigned).
    pub fn sign(&self, message: &[u8], now: u64) -> Result<Vec<u8>, String> {
        let (head, body) = split(message).ok_or("no header section")?;
        let fields = header_fields(head);
        let body_hash = ring::digest::digest(&ring::digest::SHA256, &relaxed_body(body));
        // Bottom-up: a name signed twice takes the last instance first.
        let mut signed_names = Vec::new();
        let mut canonical = Vec::new();
        for name in SIGNED {
            let instances: Vec<&&[u8]> = fields
                .iter()
                .filter(|f| field_name(f).eq_ignore_ascii_case(name))
                .collect();
            for field in instances.iter().rev() {
                signed_names.push(*name);
                canonical.extend(relaxed_header(field));
            }
            if *name == "from" {
                // Once more than there are: no From can be added.
                signed_names.push("from");
            }
        }
        let unsigned = format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={}; s={};\r\n\tt={now}; h={};\r\n\tbh={};\r\n\tb=",
            self.domain,
            self.selector,
            signed_names.join(":"),
            BASE64.encode(body_hash.as_ref())
        );
        let mut last = relaxed_header(unsigned.as_bytes());
        // The signature's own field goes in without its CRLF (RFC 6376
        // 3.7).
        last.truncate(last.len().saturating_sub(2));
        canonical.extend(last);
        let mut signature = vec![0; self.key.pair.public().modulus_len()];
        self.key
            .pair
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                &canonical,
                &mut signature,
            )
            .map_err(|e| format!("signing: {e}"))?;
        let mut out = Vec::with_capacity(message.len() + unsigned.len() + 400);
        out.extend_from_slice(unsigned.as_bytes());
        out.extend_from_slice(BASE64.encode(&signature).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// The header section (with its last CRLF) and the body. A message with
/// no empty line is all header section (RFC 5322 2.1: the body is
/// optional).
fn split(message: &[u8]) -> Option<(&[u8], &[u8])> {
    if message.starts_with(b"\r\n") || message.is_empty() {
        return None;
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => Some((&message[..end + 2], &message[end + 4..])),
        None if message.ends_with(b"\r\n") => Some((message, &[])),
        None => None,
    }
}

/// Each header field with its continuation lines and final CRLF.
fn header_fields(head: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        if head[i] == b'\n' {
            let next = head.get(i + 1);
            if !matches!(next, Some(b' ' | b'\t')) {
                fields.push(&head[start..=i]);
                start = i + 1;
            }
        }
        i += 1;
    }
    if start < head.len() {
        fields.push(&head[start..]);
    }
    fields
}

fn field_name(field: &[u8]) -> &str {
    let name = field.split(|&b| b == b':').next().unwrap_or_default();
    std::str::from_utf8(name).unwrap_or_default().trim()
}

/// RFC 6376 3.4.2: the name lower-cased, the value unfolded, runs of
/// white space made one space, white space around the colon and at the
/// end removed; CRLF at the end.
fn relaxed_header(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let mut out: Vec<u8> = field[..colon]
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(u8::to_ascii_lowercase)
        .collect();
    out.push(b':');
    let (mut space, mut started) = (false, false);
    for &b in field.get(colon + 1..).unwrap_or_default() {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = true,
            _ => {
                if space && started {
                    out.push(b' ');
                }
                space = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// RFC 6376 3.4.4: white space at line ends removed, runs of it made one
/// space, empty lines at the end removed, CRLF after the last line.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut blank_run = 0usize;
    let lines = body.split(|&b| b == b'\n');
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canon = Vec::with_capacity(line.len());
        let mut space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                space = true;
            } else {
                if space {
                    canon.push(b' ');
                }
                space = false;
                canon.push(b);
            }
        }
        if canon.is_empty() {
            blank_run += 1;
            continue;
        }
        for _ in 0..blank_run {
            out.extend_from_slice(b"\r\n");
        }
        blank_run = 0;
        out.extend_from_slice(&canon);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The domain of the first address in the `From:` field, lower-cased;
/// none unless there is exactly one `From:` (RFC 5322 3.6).
pub fn from_domain(message: &[u8]) -> Option<String> {
    let (head, _) = split(message)?;
    let mut froms = header_fields(head)
        .into_iter()
        .filter(|f| field_name(f).eq_ignore_ascii_case("from"));
    let field = froms.next()?;
    if froms.next().is_some() {
        return None;
    }
    let colon = field.iter().position(|&b| b == b':')?;
    let value = String::from_utf8_lossy(&field[colon + 1..]).into_owned();
    let domain = first_address_domain(&value)?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// The domain of the first mailbox in an address list (RFC 5322 3.4):
/// comments dropped, quoted strings kept whole, the `<...>` of a name-addr
/// if there is one, a group's `name:` and `;` skipped.
fn first_address_domain(value: &str) -> Option<String> {
    // The value without comments, each character marked quoted or not.
    let mut chars: Vec<(char, bool)> = Vec::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                chars.push((c, true));
            }
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            c => chars.push((c, quoted)),
        }
    }
    let plain = |c: char| move |&(x, q): &(char, bool)| x == c && !q;
    // A name-addr: the first <...> outside quotes.
    let mailbox: &[(char, bool)] = match chars.iter().position(plain('<')) {
        Some(open) => {
            let len = chars[open + 1..].iter().position(plain('>'))?;
            &chars[open + 1..open + 1 + len]
        }
        None => {
            // An addr-spec, perhaps after a group's display name.
            let start = chars.iter().position(plain(':')).map_or(0, |i| i + 1);
            let rest = &chars[start..];
            let end = rest
                .iter()
                .position(|&(c, q)| !q && (c == ',' || c == ';'))
                .unwrap_or(rest.len());
            &rest[..end]
        }
    };
    let at = mailbox.iter().rposition(plain('@'))?;
    Some(mailbox[at + 1..].iter().map(|&(c, _)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_canonicalization_as_rfc_6376_3_4_5_shows_it() {
        // The example of RFC 6376 3.4.5.
        let head = b"A: X\r\nB : Y\t\r\n\tZ  \r\n";
        let fields = header_fields(head);
        assert_eq!(fields.len(), 2);
        assert_eq!(relaxed_header(fields[0]), b"a:X\r\n");
        assert_eq!(relaxed_header(fields[1]), b"b:Y Z\r\n");
        assert_eq!(relaxed_header(b"Subject:  a: b \r\n"), b"subject:a: b\r\n");
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(relaxed_body(body), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"x"), b"x\r\n");
    }

    #[test]
    fn the_from_domain_is_found() {
        for (m, d) in [
            (
                &b"From: Alice <alice@Example.COM>\r\n\r\nx"[..],
                Some("example.com"),
            ),
            (b"Subject: s\r\nfrom: bob@b.test\r\n\r\n", Some("b.test")),
            (b"From: a@a.test\r\nFrom: b@b.test\r\n\r\n", None),
            (b"Subject: s\r\n\r\nFrom: x@y.test\r\n", None),
            (b"no header section", None),
            // Found by an attack: quotes and comments may hold < > and @.
            (
                b"From: \"Bob <bob@evil.test>\" <alice@example.com>\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: Alice (comment <x@evil.test>) <alice@example.com>\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: alice@example.com (Alice <a@evil.test>)\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: alice@example.com (Alice)\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: \"a>b\" <alice@example.com>\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: Team: alice@example.com;\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: \"x@evil.test\"@example.com\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: Team: Alice <alice@example.com>, b@c.test;\r\n\r\n",
                Some("example.com"),
            ),
            (
                b"From: \"Doe, John\" <john@example.com>\r\n\r\n",
                Some("example.com"),
            ),
            (b"From:\r\n alice@example.com\r\n\r\n", Some("example.com")),
            // No body, no empty line: all header section.
            (
                b"From: alice@example.com\r\nSubject: t\r\n",
                Some("example.com"),
            ),
        ] {
            assert_eq!(from_domain(m).as_deref(), d);
        }
    }

    #[test]
    fn keys_that_cannot_sign_are_refused() {
        assert!(DkimKey::from_pem("not pem").is_err());
        let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let e = DkimKey::from_pem(&ec).unwrap_err();
        assert!(e.contains("RSA"), "{e}");
    }

    #[test]
    fn selectors_are_dns_labels() {
        for ok in ["s1", "s2026", "mail.2026", "a-b"] {
            assert!(valid_selector(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "a_b", "sé"] {
            assert!(!valid_selector(bad), "{bad}");
        }
    }

    #[test]
    fn spki_lengths_are_der() {
        assert_eq!(der_len(5), [5]);
        assert_eq!(der_len(200), [0x81, 200]);
        assert_eq!(der_len(270), [0x82, 1, 14]);
        let wrapped = spki(&[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert_eq!(&wrapped[..2], &[0x30, 15 + 2 + 6]);
    }
}
