//! Replies from a next hop, read without I/O: bytes go in, whole replies
//! come out. Liberal where RFC 5321 asks it (4.2: any text, or none, is
//! acceptable; 4.2.1: act on the first digit), bounded where a hostile
//! server could make it grow: a line is cut at [`MAX_LINE`] octets and a
//! reply of more than [`MAX_LINES`] lines is refused, so a server that
//! sends an endless line costs a few kilobytes, not gigabytes.

/// Octets of a reply line kept (RFC 5321 4.5.3.1.5 allows 512); the rest
/// of a longer line is read and dropped.
pub const MAX_LINE: usize = 2048;
/// Lines in one reply; more is not SMTP.
pub const MAX_LINES: usize = 200;

/// One whole reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and its separator (lossy
    /// UTF-8, possibly empty).
    pub lines: Vec<String>,
}

impl Reply {
    /// 2, 3, 4 or 5: what the reply means (RFC 5321 4.2.1).
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// The reply on one line, as logs, events and bounces carry it:
    /// "550 5.1.1 no such user", control characters as spaces, at most
    /// 500 characters.
    pub fn one_line(&self) -> String {
        let mut text = self.code.to_string();
        for line in &self.lines {
            let line = line.trim();
            if !line.is_empty() {
                text.push(' ');
                text.push_str(line);
            }
        }
        super::client::one_line(&text)
    }
}

/// The next hop spoke something that is not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSmtp(pub String);

/// Gathers reply lines from the bytes read so far.
#[derive(Debug, Default)]
pub struct ReplyReader {
    /// The line being read, up to [`MAX_LINE`] octets.
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: dropping to its end.
    skipping: bool,
    /// The lines of the reply under way: code and text.
    lines: Vec<(u16, String)>,
}

impl ReplyReader {
    /// Takes bytes; returns how many it used and the reply they ended,
    /// if one ended (the rest are for the next call).
    pub fn feed(&mut self, bytes: &[u8]) -> (usize, Option<Result<Reply, NotSmtp>>) {
        let mut used = 0;
        while used < bytes.len() {
            let rest = &bytes[used..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                self.take(rest);
                return (bytes.len(), None);
            };
            self.take(&rest[..lf]);
            used += lf + 1;
            if let Some(done) = self.end_line() {
                return (used, Some(done));
            }
        }
        (used, None)
    }

    fn take(&mut self, part: &[u8]) {
        if self.skipping {
            return;
        }
        let room = MAX_LINE - self.line.len();
        if part.len() > room {
            self.line.extend_from_slice(&part[..room]);
            self.skipping = true;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    /// A line ended: the reply, if it was the last line (or an error).
    fn end_line(&mut self) -> Option<Result<Reply, NotSmtp>> {
        let mut line = std::mem::take(&mut self.line);
        self.skipping = false;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let code = match line.get(..3) {
            Some(&[a @ b'2'..=b'5', b, c]) if b.is_ascii_digit() && c.is_ascii_digit() => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => {
                self.lines.clear();
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
                return Some(Err(NotSmtp(format!(
                    "not an SMTP reply: {:?}",
                    super::client::one_line(&shown)
                ))));
            }
        };
        let more = line.get(3) == Some(&b'-');
        let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
        self.lines.push((code, text));
        if more {
            if self.lines.len() >= MAX_LINES {
                self.lines.clear();
                return Some(Err(NotSmtp(format!(
                    "a reply of more than {MAX_LINES} lines"
                ))));
            }
            return None;
        }
        let lines = std::mem::take(&mut self.lines);
        // The first line's code is the reply's (the others must repeat it).
        let code = lines.first().map_or(code, |(c, _)| *c);
        Some(Ok(Reply {
            code,
            lines: lines.into_iter().map(|(_, t)| t).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(input: &[u8]) -> Vec<Result<Reply, NotSmtp>> {
        let mut r = ReplyReader::default();
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let (used, reply) = r.feed(&input[at..]);
            at += used;
            out.extend(reply);
        }
        out
    }

    #[test]
    fn replies_as_rfc_5321_allows_them() {
        let got =
            replies(b"250-first\r\n250 last\r\n250\r\n270 2.0.0 ok\r\n550 5.1.1 \xe9t\xe9\r\n");
        let want = |code, lines: &[&str]| {
            Ok(Reply {
                code,
                lines: lines.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(got[0], want(250, &["first", "last"]));
        // No text at all; a second digit RFC 5321 does not name; 8-bit text.
        assert_eq!(got[1], want(250, &[""]));
        assert_eq!(got[2], want(270, &["2.0.0 ok"]));
        assert!(got[2].as_ref().unwrap().is_positive());
        assert_eq!(got[3], want(550, &["5.1.1 \u{fffd}t\u{fffd}"]));
        assert_eq!(
            got[3].as_ref().unwrap().one_line(),
            "550 5.1.1 \u{fffd}t\u{fffd}"
        );
        // A bare LF ends a line too.
        assert_eq!(replies(b"354 go\n")[0], want(354, &["go"]));
    }

    #[test]
    fn what_is_not_a_reply_is_said_so() {
        for bad in [
            &b"999 no\r\n"[..],
            b"2x0 no\r\n",
            b"\r\n",
            b"hello\r\n",
            b"25\r\n",
        ] {
            let got = replies(bad);
            assert!(
                matches!(got.as_slice(), [Err(NotSmtp(_))]),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_kept_short_and_a_long_reply_refused() {
        let mut r = ReplyReader::default();
        let mut input = b"220 ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 * MAX_LINE));
        // Fed in pieces, as a socket would: nothing is kept past MAX_LINE.
        for piece in input.chunks(1000) {
            assert_eq!(r.feed(piece), (piece.len(), None));
            assert!(r.line.len() <= MAX_LINE);
        }
        let (_, reply) = r.feed(b"\r\n");
        let reply = reply.unwrap().unwrap();
        assert_eq!(reply.lines[0].len(), MAX_LINE - 4);
        let many: Vec<u8> = "250-x\r\n".repeat(MAX_LINES + 1).into_bytes();
        assert!(matches!(replies(&many).as_slice(), [Err(NotSmtp(_))]));
    }
}
