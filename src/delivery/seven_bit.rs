//! 8-bit MIME to 7-bit, for a next hop that does not announce 8BITMIME.
//!
//! RFC 6152 section 3: a relay may not send 8-bit data to a server that
//! did not offer 8BITMIME; it converts the message (RFC 2045) or bounces
//! it. As Postfix does, relaygate converts: every MIME leaf part whose
//! body has 8-bit bytes and is sent as `7bit`, `8bit`, `binary` (or with
//! no encoding named) is re-encoded as quoted-printable, through nested
//! multiparts and attached messages. A message that is not MIME at all is
//! left as it is ("just send 8", Postfix's choice too): there is no
//! standard way to convert it. Headers are never changed but for the
//! parts' `Content-Transfer-Encoding`. The conversion breaks DKIM
//! signatures over the body, as any conversion does; hops without
//! 8BITMIME are rare today.
//!
//! Pure: bytes in, bytes out, no I/O.

/// Whether a byte string holds a byte over 127.
fn has_8bit(bytes: &[u8]) -> bool {
    !bytes.is_ascii()
}

/// What a message comes to for a next hop without 8BITMIME.
#[derive(Debug, PartialEq, Eq)]
pub enum Conversion {
    /// 7-bit already, or not MIME ("just send 8").
    Unchanged,
    Converted(Vec<u8>),
    /// 8-bit content nested deeper than [`MAX_DEPTH`]: not sent (RFC 6152
    /// leaves a relay the bounce when it cannot convert).
    TooDeep,
}

/// The message converted to 7-bit, or why not.
pub fn downgrade(message: &[u8]) -> Conversion {
    if !has_8bit(message) {
        return Conversion::Unchanged;
    }
    let (head, body) = split_head(message);
    if header_value(head, b"mime-version").is_none() {
        return Conversion::Unchanged;
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 8);
    let mut too_deep = false;
    convert_entity(head, body, &mut out, (0, &mut too_deep), false);
    if too_deep {
        Conversion::TooDeep
    } else {
        Conversion::Converted(out)
    }
}

/// Nesting deeper than this is not converted, and the message is not
/// sent (one built to make the converter recurse without end).
pub const MAX_DEPTH: usize = 50;

/// How deep an entity is, and whether 8-bit content was found deeper
/// than [`MAX_DEPTH`].
type Depth<'a> = (usize, &'a mut bool);

/// Writes one MIME entity (its header block and body), converted. In a
/// `multipart/digest`, a part without a type is a message (RFC 2046
/// 5.1.5): `in_digest`.
fn convert_entity(head: &[u8], body: &[u8], out: &mut Vec<u8>, depth: Depth, in_digest: bool) {
    let (depth, too_deep) = depth;
    if depth > MAX_DEPTH || !has_8bit(body) {
        *too_deep |= depth > MAX_DEPTH && has_8bit(body);
        out.extend_from_slice(head);
        out.extend_from_slice(body);
        return;
    }
    let content_type = header_value(head, b"content-type").unwrap_or_else(|| {
        if in_digest {
            "message/rfc822".into()
        } else {
            String::new()
        }
    });
    let (media, params) = media_type(&content_type);
    // `8bit (a comment)` is `8bit` (RFC 2045 6.1, RFC 822 comments).
    let encoding = header_value(head, b"content-transfer-encoding")
        .map(|e| {
            e.split('(')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let identity = matches!(encoding.as_str(), "" | "7bit" | "8bit" | "binary");
    if media.starts_with("multipart/")
        || (media.starts_with("message/") && media != "message/rfc822")
    {
        // A multipart is converted part by part; one without a boundary,
        // and message types other than rfc822 (partial, external-body),
        // may carry no other encoding (RFC 2046 5.1, 5.2): as they are.
        let Some(boundary) = param(&params, "boundary")
            .or_else(|| param_2231(&params, "boundary"))
            .filter(|_| identity && media.starts_with("multipart/"))
        else {
            out.extend_from_slice(head);
            out.extend_from_slice(body);
            return;
        };
        // Converted in place after the header, which is relabelled 7bit
        // afterwards if it said otherwise (no second copy of the body).
        let head_at = out.len();
        out.extend_from_slice(head);
        let body_at = out.len();
        let digest = media == "multipart/digest";
        convert_multipart(body, boundary.as_bytes(), out, (depth, too_deep), digest);
        let relabel = !(encoding.is_empty() || encoding == "7bit");
        if relabel && !has_8bit(&out[body_at..]) {
            out.splice(head_at..body_at, with_encoding(head, b"7bit"));
        }
        return;
    }
    if media == "message/rfc822" && identity {
        // The attached message is converted in turn; it is then 7bit.
        let (inner_head, inner_body) = split_head(body);
        let head_at = out.len();
        out.extend_from_slice(head);
        let body_at = out.len();
        convert_entity(inner_head, inner_body, out, (depth + 1, too_deep), false);
        if !has_8bit(&out[body_at..]) {
            out.splice(head_at..body_at, with_encoding(head, b"7bit"));
        }
        return;
    }
    if !identity {
        // Already base64 or quoted-printable: 8-bit bytes here are the
        // sender's error, and not ours to guess at.
        out.extend_from_slice(head);
        out.extend_from_slice(body);
        return;
    }
    out.extend_from_slice(&with_encoding(head, b"quoted-printable"));
    // Line breaks are the text's own only in text (RFC 2045 6.7 rule 4):
    // anything else keeps its CR and LF bytes, encoded.
    let text = media.is_empty() || media.starts_with("text/");
    // Room for the encoding at once: growing by doubling would hold up
    // to twice what a large part needs.
    let encoded = body
        .iter()
        .filter(|b| !(33..=126).contains(*b) || **b == b'=')
        .count();
    let bytes = body.len() + 2 * encoded;
    out.reserve(bytes + bytes / (QP_LINE - 3) * 3 + 8);
    quoted_printable(body, text, out);
}

/// The parts of a multipart body, each converted; preamble, delimiters
/// and epilogue kept.
fn convert_multipart(body: &[u8], boundary: &[u8], out: &mut Vec<u8>, depth: Depth, digest: bool) {
    let (depth, too_deep) = depth;
    // Byte offsets of each delimiter line's start, and whether it closes.
    let mut delimiters: Vec<(usize, usize, bool)> = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let end = find_crlf(body, at).map_or(body.len(), |n| n + 2);
        let line = &body[at..end];
        if let Some(rest) = line.strip_prefix(b"--")
            && let Some(after) = rest.strip_prefix(boundary)
        {
            let closes = after.starts_with(b"--");
            let tail = if closes { &after[2..] } else { after };
            if tail
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                delimiters.push((at, end, closes));
                if closes {
                    break;
                }
            }
        }
        at = end;
    }
    let Some(&(first, _, _)) = delimiters.first() else {
        out.extend_from_slice(body);
        return;
    };
    // The preamble and the epilogue are for no reader (RFC 2046 5.1.1):
    // an 8-bit byte there becomes `?` rather than go out 8-bit.
    let outside = |text: &[u8], out: &mut Vec<u8>| {
        out.extend(text.iter().map(|&b| if b < 0x80 { b } else { b'?' }));
    };
    outside(&body[..first], out);
    for (i, &(start, end, closes)) in delimiters.iter().enumerate() {
        out.extend_from_slice(&body[start..end]);
        if closes {
            outside(&body[end..], out);
            return;
        }
        // The part runs to the CRLF before the next delimiter (that CRLF
        // belongs to the delimiter, RFC 2046 5.1.1).
        let next = delimiters.get(i + 1).map_or(body.len(), |d| d.0);
        let part_end = if next >= end + 2 && body.get(next - 2..next) == Some(b"\r\n") {
            next - 2
        } else {
            next
        };
        let part = &body[end..part_end.max(end)];
        let (head, part_body) = split_head(part);
        convert_entity(head, part_body, out, (depth + 1, &mut *too_deep), digest);
        out.extend_from_slice(&body[part_end.max(end)..next]);
    }
}

/// Where the next CRLF starts, from `from`.
fn find_crlf(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let mut i = 0;
    while let Some(n) = rest
        .get(i..)
        .and_then(|r| r.iter().position(|b| *b == b'\n'))
    {
        let lf = i + n;
        if lf > 0 && rest[lf - 1] == b'\r' {
            return Some(from + lf - 1);
        }
        i = lf + 1;
    }
    None
}

/// The header block (through its blank line) and the body after it. A
/// part with no blank line is all header.
fn split_head(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return entity.split_at(2);
    }
    match entity.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(n) => entity.split_at(n + 4),
        None => (entity, &[]),
    }
}

/// A header field's value, unfolded (the first field of that name).
fn header_value(head: &[u8], name: &[u8]) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = value.as_mut() {
            if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.push(b' ');
                v.extend_from_slice(line.trim_ascii());
                continue;
            }
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':')
            && line[..colon].trim_ascii().eq_ignore_ascii_case(name)
        {
            value = Some(line[colon + 1..].trim_ascii().to_vec());
        }
    }
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The header block with its `Content-Transfer-Encoding` set to
/// `encoding` (replaced where there is one, added before the blank line
/// where not).
fn with_encoding(head: &[u8], encoding: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 48);
    let field = |out: &mut Vec<u8>| {
        out.extend_from_slice(b"Content-Transfer-Encoding: ");
        out.extend_from_slice(encoding);
        out.extend_from_slice(b"\r\n");
    };
    let mut replaced = false;
    let mut skipping = false;
    let mut at = 0;
    while at < head.len() {
        let end = find_crlf(head, at).map_or(head.len(), |n| n + 2);
        let line = &head[at..end];
        at = end;
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if skipping && folded {
            continue;
        }
        skipping = false;
        if line == b"\r\n" {
            if !replaced {
                field(&mut out);
                replaced = true;
            }
            out.extend_from_slice(line);
            continue;
        }
        let is_cte = line.iter().position(|b| *b == b':').is_some_and(|c| {
            line[..c]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-transfer-encoding")
        });
        if is_cte && !folded {
            if !replaced {
                field(&mut out);
                replaced = true;
            }
            skipping = true;
            continue;
        }
        out.extend_from_slice(line);
    }
    if !replaced {
        field(&mut out);
    }
    out
}

/// `type/subtype` in lower case and the parameters' text after it.
fn media_type(value: &str) -> (String, String) {
    match value.split_once(';') {
        Some((media, params)) => (media.trim().to_ascii_lowercase(), params.to_string()),
        None => (value.trim().to_ascii_lowercase(), String::new()),
    }
}

/// A parameter given the RFC 2231 way: `name*=charset'lang'%xx...`
/// (percent-encoded), or in pieces `name*0=`, `name*1*=`...
fn param_2231(params: &str, name: &str) -> Option<String> {
    let decode = |v: &str, encoded: bool| -> String {
        if !encoded {
            return v.to_string();
        }
        let v = match v.splitn(3, '\'').collect::<Vec<_>>().as_slice() {
            [_, _, value] => value.to_string(),
            _ => v.to_string(),
        };
        let bytes = v.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let Some(n) = v
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(n);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    if let Some(v) = param(params, &format!("{name}*")) {
        return Some(decode(&v, true));
    }
    let mut whole = String::new();
    for n in 0..100 {
        if let Some(v) = param(params, &format!("{name}*{n}*")) {
            // Only the first piece names the charset.
            whole.push_str(&decode(&if n == 0 { v } else { format!("''{v}") }, true));
        } else if let Some(v) = param(params, &format!("{name}*{n}")) {
            whole.push_str(&v);
        } else {
            break;
        }
    }
    (!whole.is_empty()).then_some(whole)
}

/// A parameter's value (quoted or not) from a `;`-separated list.
fn param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    loop {
        rest = rest.trim_start_matches([';', ' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if key.eq_ignore_ascii_case(name) && !value.is_empty() {
            return Some(value);
        }
        rest = next;
    }
}

/// Longest encoded line, soft break included (RFC 2045 6.7 rule 5).
const QP_LINE: usize = 76;

/// `body` as quoted-printable (RFC 2045 6.7): CRLF line breaks kept as
/// hard breaks, lines kept under 76 characters with soft breaks, every
/// byte that is not printable ASCII (and `=`, and whitespace before a
/// line end) encoded.
pub fn quoted_printable(body: &[u8], text: bool, out: &mut Vec<u8>) {
    if !text {
        // One logical line: every CR and LF an encoded byte.
        binary_quoted_printable(body, out);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    /// How a piece of the body ends.
    #[derive(PartialEq)]
    enum End {
        /// CRLF: a hard line break.
        Crlf,
        /// A lone LF: encoded, the line goes on after a soft break.
        BareLf,
        /// The end of the body.
        Body,
    }
    let mut pieces = body.split(|b| *b == b'\n').peekable();
    while let Some(piece) = pieces.next() {
        let (line, end) = if pieces.peek().is_none() {
            (piece, End::Body)
        } else if let Some(line) = piece.strip_suffix(b"\r") {
            (line, End::Crlf)
        } else {
            (piece, End::BareLf)
        };
        let mut width = 0;
        let mut put = |out: &mut Vec<u8>, encoded: &[u8]| {
            // Room for this and a soft break's `=`.
            if width + encoded.len() > QP_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            out.extend_from_slice(encoded);
            width += encoded.len();
        };
        for (i, &b) in line.iter().enumerate() {
            let trailing = i + 1 == line.len() && end != End::BareLf;
            let literal = match b {
                b' ' | b'\t' => !trailing,
                b'=' => false,
                33..=126 => true,
                _ => false,
            };
            if literal {
                put(out, &[b]);
            } else {
                put(out, &[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
        }
        match end {
            End::Crlf => out.extend_from_slice(b"\r\n"),
            End::BareLf => {
                put(out, b"=0A");
                out.extend_from_slice(b"=\r\n");
            }
            End::Body => {}
        }
    }
}

/// Quoted-printable for data that is not text: no hard line breaks, so a
/// decoder gives back every byte, CR and LF included.
fn binary_quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut width = 0;
    for &b in body {
        let literal = matches!(b, 33..=60 | 62..=126);
        let need = if literal { 1 } else { 3 };
        if width + need > QP_LINE - 1 {
            out.extend_from_slice(b"=\r\n");
            width = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
        width += need;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`downgrade`] as an option: the converted bytes, or none.
    fn down(message: &[u8]) -> Option<Vec<u8>> {
        match downgrade(message) {
            Conversion::Converted(out) => Some(out),
            Conversion::Unchanged => None,
            Conversion::TooDeep => panic!("too deep"),
        }
    }

    /// Decodes quoted-printable, for the tests.
    fn decode_qp(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'=' if text.get(i + 1..i + 3) == Some(b"\r\n") => i += 3,
                b'=' => {
                    let hex = std::str::from_utf8(&text[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn lines_fit(text: &[u8]) -> bool {
        text.split(|b| *b == b'\n')
            .all(|l| l.strip_suffix(b"\r").unwrap_or(l).len() <= QP_LINE)
    }

    #[test]
    fn a_plain_8bit_text_message_becomes_quoted_printable() {
        let msg = "Received: from x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nSubject: hi\r\n\r\nGrüße aus Köln = 100%\r\n.dot line \r\n";
        let out = down(msg.as_bytes()).expect("converted");
        let text = String::from_utf8(out.clone()).expect("ascii");
        assert!(out.is_ascii(), "{text}");
        assert!(
            text.starts_with("Received: from x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\nSubject: hi\r\n\r\n"),
            "{text}"
        );
        let (_, body) = split_head(&out);
        assert_eq!(
            decode_qp(body),
            "Grüße aus Köln = 100%\r\n.dot line \r\n".as_bytes()
        );
        assert!(
            text.contains("Gr=C3=BC=C3=9Fe aus K=C3=B6ln =3D 100%\r\n.dot line=20\r\n"),
            "{text}"
        );
    }

    #[test]
    fn ascii_and_non_mime_messages_are_left_alone() {
        assert_eq!(down(b"Subject: a\r\n\r\nplain\r\n"), None);
        assert_eq!(down("Subject: a\r\n\r\nGrüße\r\n".as_bytes()), None);
    }

    #[test]
    fn nested_multiparts_and_attached_messages_are_converted_part_by_part() {
        let msg = concat!(
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed;\r\n boundary=\"outer b\"\r\n",
            "\r\n",
            "preamble\r\n",
            "--outer b\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "\r\n",
            "première partie\r\n",
            "--outer b\r\n",
            "Content-Type: multipart/alternative; boundary=inner\r\n",
            "\r\n",
            "--inner\r\n",
            "Content-Type: text/html\r\n",
            "Content-Transfer-Encoding: 8BIT\r\n",
            "\r\n",
            "<p>ñ</p>\r\n",
            "--inner--\r\n",
            "--outer b\r\n",
            "Content-Type: application/pdf\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "\r\n",
            "QUJD\r\n",
            "--outer b\r\n",
            "Content-Type: message/rfc822\r\n",
            "\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: text/plain\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "attaché\r\n",
            "--outer b--\r\n",
            "epilogue\r\n",
        );
        let out = down(msg.as_bytes()).expect("converted");
        let text = String::from_utf8(out.clone()).expect("ascii");
        assert!(out.is_ascii(), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\npremi=C3=A8re partie\r\n--outer b\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>=C3=B1</p>\r\n--inner--\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--outer b\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nattach=C3=A9\r\n--outer b--\r\nepilogue\r\n"),
            "{text}"
        );
        assert!(text.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"outer b\"\r\n\r\npreamble\r\n--outer b\r\n"), "{text}");
    }

    #[test]
    fn long_lines_get_soft_breaks_and_trailing_space_is_encoded() {
        let line = "é".repeat(60) + " \t";
        let mut out = Vec::new();
        quoted_printable(format!("{line}\r\nend").as_bytes(), true, &mut out);
        assert!(out.is_ascii());
        assert!(lines_fit(&out), "{}", String::from_utf8_lossy(&out));
        assert_eq!(decode_qp(&out), format!("{line}\r\nend").as_bytes());
        assert!(String::from_utf8_lossy(&out).contains(" =09\r\nend"));
    }

    #[test]
    fn parts_that_may_not_be_encoded_are_left_and_digests_hold_messages() {
        // message/partial and a multipart without a boundary: as they are.
        for ty in ["message/partial; id=1; number=1", "multipart/mixed"] {
            let msg = format!("MIME-Version: 1.0\r\nContent-Type: {ty}\r\n\r\nna\u{ef}ve\r\n");
            let out = down(msg.as_bytes()).expect("looked at");
            assert_eq!(out, msg.as_bytes(), "{ty}");
        }
        // In a digest, a part without a type is a message; the multipart
        // that was labelled 8bit is 7bit once converted.
        let msg = concat!(
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/digest; boundary=d\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "--d\r\n",
            "\r\n",
            "Subject: inner\r\n",
            "Content-Type: text/plain\r\n",
            "\r\n",
            "caf\u{e9}\r\n",
            "--d--\r\n",
        );
        let out = String::from_utf8(down(msg.as_bytes()).expect("converted")).unwrap();
        assert!(out.is_ascii(), "{out}");
        assert!(
            out.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=d\r\nContent-Transfer-Encoding: 7bit\r\n\r\n--d\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n--d--\r\n"),
            "{out}"
        );
    }

    /// `depth` multiparts, one in another, an 8-bit text at the bottom.
    fn nested(depth: usize) -> Vec<u8> {
        let mut msg = String::from("MIME-Version: 1.0\r\n");
        for d in 0..depth {
            msg.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{d}\r\n\r\n--b{d}\r\n"
            ));
        }
        msg.push_str("Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit (as sent)\r\n\r\nd\u{e9}j\u{e0}\r\n");
        for d in (0..depth).rev() {
            msg.push_str(&format!("--b{d}--\r\n"));
        }
        msg.into_bytes()
    }

    #[test]
    fn deep_nesting_is_converted_to_a_limit_then_refused() {
        let out = down(&nested(30)).expect("converted");
        assert!(out.is_ascii());
        let text = String::from_utf8(out).unwrap();
        // The encoding's comment did not hide it.
        assert!(
            text.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nd=C3=A9j=C3=A0\r\n"),
            "{text}"
        );
        assert_eq!(downgrade(&nested(MAX_DEPTH + 5)), Conversion::TooDeep);
    }

    #[test]
    fn rfc_2231_boundaries_and_8bit_preambles() {
        for ty in [
            "multipart/mixed; boundary*=us-ascii'en'b%31",
            "multipart/mixed; boundary*0=b; boundary*1=1",
        ] {
            let msg = format!(
                "MIME-Version: 1.0\r\nContent-Type: {ty}\r\n\r\npr\u{e9}ambule\r\n--b1\r\nContent-Type: text/plain\r\n\r\nn\u{e9}\r\n--b1--\r\n\u{e9}pilogue\r\n"
            );
            let out = String::from_utf8(down(msg.as_bytes()).expect("converted")).unwrap();
            assert!(out.is_ascii(), "{ty}: {out}");
            assert!(out.contains("n=C3=A9\r\n--b1--"), "{ty}: {out}");
            assert!(
                out.contains("pr??ambule") && out.contains("??pilogue"),
                "{out}"
            );
        }
    }

    #[test]
    fn binary_parts_keep_their_cr_and_lf_bytes() {
        let msg = "MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\u{ff}\r\n\n\r=\r\n";
        let out = down(msg.as_bytes()).expect("converted");
        let (_, body) = split_head(&out);
        assert!(body.is_ascii());
        assert_eq!(decode_qp(body), "\u{ff}\r\n\n\r=\r\n".as_bytes());
        assert!(String::from_utf8_lossy(body).contains("=0D=0A=0A=0D"));
    }

    proptest::proptest! {
        /// Any body: the encoding is 7-bit, its lines fit, and it decodes
        /// to the body byte for byte.
        #[test]
        fn quoted_printable_round_trips(body in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b' '),
                proptest::strategy::Just(b'='),
            ],
            0..600,
        )) {
            let body: Vec<u8> = body;
            let mut out = Vec::new();
            quoted_printable(&body, true, &mut out);
            proptest::prop_assert!(out.is_ascii());
            proptest::prop_assert!(lines_fit(&out));
            // Only CRLF pairs, never a bare CR or LF, in the encoding.
            for (i, b) in out.iter().enumerate() {
                if *b == b'\n' {
                    proptest::prop_assert!(i > 0 && out[i - 1] == b'\r');
                }
                if *b == b'\r' {
                    proptest::prop_assert_eq!(out.get(i + 1), Some(&b'\n'));
                }
            }
            proptest::prop_assert_eq!(decode_qp(&out), body);
        }

        /// Any jumble of MIME pieces (delimiters, headers, folded lines,
        /// 8-bit bytes, bare CR/LF): no panic, and the output stays near
        /// the input's size (quoted-printable at most triples a byte).
        #[test]
        fn any_mime_jumble_converts_without_harm(pieces in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b"--b\r\n".to_vec()),
                proptest::strategy::Just(b"--b--\r\n".to_vec()),
                proptest::strategy::Just(b"--b".to_vec()),
                proptest::strategy::Just(b"\r\n".to_vec()),
                proptest::strategy::Just(b"\r\n\r\n".to_vec()),
                proptest::strategy::Just(b"Content-Type: multipart/mixed; boundary=b\r\n".to_vec()),
                proptest::strategy::Just(b"Content-Type: message/rfc822\r\n".to_vec()),
                proptest::strategy::Just(b"Content-Type: multipart/x; boundary=\"b\\\r\n".to_vec()),
                proptest::strategy::Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
                proptest::strategy::Just(b" folded\r\n".to_vec()),
                proptest::strategy::Just(b"MIME-Version: 1.0\r\n".to_vec()),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            ],
            0..40,
        )) {
            let mut msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
            for p in pieces {
                msg.extend_from_slice(&p);
            }
            msg.push(0xC3);
            if let Conversion::Converted(out) = downgrade(&msg) {
                proptest::prop_assert!(out.len() <= msg.len() * 4 + 4096);
            }
        }

        /// Any bytes as a binary part: 7-bit, lines that fit, every byte back.
        #[test]
        fn binary_quoted_printable_round_trips(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            quoted_printable(&body, false, &mut out);
            proptest::prop_assert!(out.is_ascii());
            proptest::prop_assert!(lines_fit(&out));
            proptest::prop_assert_eq!(decode_qp(&out), body);
        }

        /// Any multipart of random parts: converted, it is 7-bit, and each
        /// text part decodes to what it was.
        #[test]
        fn multiparts_convert_to_7bit(parts in proptest::collection::vec("[a-zé€ \r\n=.]{0,200}", 1..5)) {
            let mut msg = String::from("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n");
            for p in &parts {
                msg.push_str("--zz\r\nContent-Type: text/plain\r\n\r\n");
                msg.push_str(&p.replace('\r', "").replace('\n', "\r\n"));
                msg.push_str("\r\n");
            }
            msg.push_str("--zz--\r\n");
            match down(msg.as_bytes()) {
                None => proptest::prop_assert!(msg.is_ascii()),
                Some(out) => {
                    proptest::prop_assert!(out.is_ascii());
                    let text = String::from_utf8(out).unwrap();
                    let pieces: Vec<&str> = text.split("--zz\r\n").skip(1).collect();
                    proptest::prop_assert_eq!(pieces.len(), parts.len());
                    for (piece, original) in pieces.iter().zip(&parts) {
                        let piece = piece.strip_suffix("--zz--\r\n").unwrap_or(piece);
                        let (head, body) = piece.split_once("\r\n\r\n").unwrap();
                        let body = body.strip_suffix("\r\n").unwrap_or(body);
                        let want = original.replace('\r', "").replace('\n', "\r\n");
                        if want.is_ascii() {
                            proptest::prop_assert_eq!(body, want.as_str());
                        } else {
                            proptest::prop_assert!(head.contains("quoted-printable"));
                            proptest::prop_assert_eq!(decode_qp(body.as_bytes()), want.as_bytes());
                        }
                    }
                }
            }
        }
    }
}
