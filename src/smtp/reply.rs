//! SMTP replies as they go on the wire: a code, an RFC 3463 enhanced status
//! (RFC 2034) and one or more lines of text.

use crate::policy::decision;
use std::borrow::Cow;
use std::fmt;

/// One SMTP reply. Every 2xx/4xx/5xx reply carries an enhanced status code;
/// only the greeting, the EHLO response (RFC 2034 exempts both, and
/// convention leaves them bare) and the 3xx prompts (334, 354) go without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code, like `"5.5.2"`.
    pub status: Option<&'static str>,
    /// At least one line; an empty list renders as one empty line. Fixed
    /// texts are borrowed: most replies allocate nothing for their text.
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code (greeting, prompts).
    pub fn bare(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// The 220 greeting.
    pub fn greeting(hostname: &str) -> Reply {
        Reply::bare(220, format!("{hostname} ESMTP relaygate"))
    }

    /// The reply before the I/O layer drops an idle client.
    pub fn timeout(hostname: &str) -> Reply {
        Reply::new(421, "4.4.2", format!("{hostname} Error: timeout exceeded"))
    }

    /// The reply to every client when the server shuts down.
    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::new(
            421,
            "4.3.2",
            format!("{hostname} Service shutting down, closing transmission channel"),
        )
    }

    /// The first text line (for tests and logs).
    pub fn text(&self) -> &str {
        self.lines.first().map_or("", |l| l.as_ref())
    }

    /// 2xx and 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The reply as the client sees it: `code-` on every line but the last,
    /// `code ` on the last, each line ending in CRLF. CR, LF and other
    /// control characters in the text are replaced, so nothing echoed back
    /// (a rule's text, a client's argument) can inject a reply line.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.lines
                .iter()
                .map(|l| l.len() + 16)
                .sum::<usize>()
                .max(16),
        );
        self.each_line(|part| {
            out.extend_from_slice(part.as_bytes());
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        out
    }

    /// Hands the wire form to `put` piece by piece (the one layout both
    /// `to_wire` and `Display` use).
    fn each_line<E>(&self, mut put: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        let empty = [Cow::Borrowed("")];
        let lines: &[Cow<'static, str>] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let mut code = [0u8; 3];
        let digits = [self.code / 100 % 10, self.code / 10 % 10, self.code % 10];
        for (d, c) in digits.iter().zip(code.iter_mut()) {
            *c = b'0' + *d as u8;
        }
        let code = std::str::from_utf8(&code).unwrap_or("000");
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            put(code)?;
            put(if i == last { " " } else { "-" })?;
            if let Some(status) = self.status {
                put(status)?;
                if !line.is_empty() {
                    put(" ")?;
                }
            }
            // Control characters become '?', in runs between them; a text
            // too long for the line is cut short with "...".
            let room = MAX_LINE - 6 - self.status.map_or(0, |s| s.len() + 1);
            // Its length once shown: each control character is one '?'.
            let shown = |l: &str| {
                l.chars()
                    .map(|c| if c.is_control() { 1 } else { c.len_utf8() })
                    .sum::<usize>()
            };
            let mut left = if line.len() > room && shown(line) > room {
                room - 3
            } else {
                room
            };
            let mut cut = false;
            let mut text = |piece: &str, put: &mut dyn FnMut(&str) -> Result<(), E>| {
                if cut {
                    return Ok(false);
                }
                if piece.len() <= left {
                    left -= piece.len();
                    return put(piece).map(|()| true);
                }
                let mut keep = left;
                while !piece.is_char_boundary(keep) {
                    keep -= 1;
                }
                cut = true;
                put(&piece[..keep])?;
                put("...").map(|()| false)
            };
            let mut rest: &str = line;
            while let Some(at) = crate::events::control_at(rest) {
                if !text(&rest[..at], &mut put)? || !text("?", &mut put)? {
                    rest = "";
                    break;
                }
                let width = rest[at..].chars().next().map_or(1, char::len_utf8);
                rest = &rest[at + width..];
            }
            text(rest, &mut put)?;
            put("\r\n")?;
        }
        Ok(())
    }
}

/// The longest reply line, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_LINE: usize = 512;

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.each_line(|part| f.write_str(part))
    }
}

/// A decision's enhanced status as a static string. Decisions the engine
/// makes always carry a static one; one read back from JSON falls back to
/// the generic code of its class.
#[allow(clippy::ptr_arg)] // Borrowed vs Owned is the point.
fn static_status(code: u16, status: &std::borrow::Cow<'static, str>) -> &'static str {
    match status {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(_) => match code / 100 {
            2 => "2.0.0",
            4 => "4.0.0",
            _ => "5.0.0",
        },
    }
}

impl From<decision::Reply> for Reply {
    fn from(reply: decision::Reply) -> Reply {
        Reply::new(
            reply.code,
            static_status(reply.code, &reply.status),
            reply.text,
        )
    }
}

impl From<&decision::Reply> for Reply {
    fn from(reply: &decision::Reply) -> Reply {
        Reply::new(
            reply.code,
            static_status(reply.code, &reply.status),
            reply.text.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The byte scan finds what a char-by-char search finds, in any
        /// text: ASCII, C0, DEL, C1 and other non-ASCII characters.
        #[test]
        fn control_at_is_the_first_control_char(
            text in "[a-z \\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{a0}-\\u{ff}é€😀]{0,40}"
        ) {
            proptest::prop_assert_eq!(crate::events::control_at(&text), text.find(char::is_control));
        }

        /// Whatever the text echoes back, each line fits in 512 octets,
        /// and a text that fits is written whole.
        #[test]
        fn every_line_fits_in_512_octets(
            text in "[a-z \\x00-\\x1f\\u{80}-\\u{9f}é€😀]{0,700}",
            status in proptest::option::of(proptest::sample::select(vec!["5.5.4", "2.0.0"])),
        ) {
            let reply = Reply { code: 555, status, lines: vec![text.clone().into(), "b".into()] };
            let wire = reply.to_wire();
            let wire = std::str::from_utf8(&wire).unwrap();
            for line in wire.split_inclusive("\r\n") {
                proptest::prop_assert!(line.len() <= MAX_LINE, "{} octets", line.len());
            }
            let first = wire.split("\r\n").next().unwrap();
            let shown: String = text.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
            let prefix = match status { Some(s) => format!("555-{s} "), None => "555-".into() };
            let prefix = if text.is_empty() && status.is_some() { prefix.trim_end().to_string() } else { prefix };
            if prefix.len() + shown.len() + 2 <= MAX_LINE {
                proptest::prop_assert_eq!(first, format!("{prefix}{shown}"));
            } else {
                proptest::prop_assert!(first.ends_with("..."));
                proptest::prop_assert!(shown.starts_with(&first[prefix.len()..first.len() - 3]));
            }
        }
    }

    #[test]
    fn an_echoed_keyword_is_cut_short() {
        let long = "K".repeat(2000);
        let wire = Reply::new(555, "5.5.4", format!("Unsupported parameter {long}")).to_string();
        assert_eq!(wire.len(), MAX_LINE);
        assert!(wire.starts_with("555 5.5.4 Unsupported parameter KKK"));
        assert!(wire.ends_with("KKK...\r\n"));
    }

    #[test]
    fn one_line_with_status() {
        assert_eq!(
            Reply::new(250, "2.0.0", "Ok").to_string(),
            "250 2.0.0 Ok\r\n"
        );
    }

    #[test]
    fn multi_line_continues_with_dash() {
        let r = Reply {
            code: 250,
            status: None,
            lines: vec!["mx.example".into(), "PIPELINING".into(), "8BITMIME".into()],
        };
        assert_eq!(
            r.to_string(),
            "250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
        let h = Reply {
            code: 214,
            status: Some("2.0.0"),
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(h.to_string(), "214-2.0.0 a\r\n214 2.0.0 b\r\n");
    }

    #[test]
    fn greeting_and_prompts_are_bare() {
        assert_eq!(
            Reply::greeting("mx.example").to_string(),
            "220 mx.example ESMTP relaygate\r\n"
        );
        assert_eq!(Reply::bare(334, "").to_string(), "334 \r\n");
    }

    #[test]
    fn control_characters_cannot_inject_lines() {
        let r = Reply::new(550, "5.7.1", "no\r\n250 2.0.0 ok");
        assert_eq!(r.to_string(), "550 5.7.1 no??250 2.0.0 ok\r\n");
        assert_eq!(
            Reply {
                code: 250,
                status: Some("2.0.0"),
                lines: vec![]
            }
            .to_string(),
            "250 2.0.0\r\n"
        );
    }

    #[test]
    fn timeout_and_shutdown() {
        assert!(Reply::timeout("h").to_string().starts_with("421 4.4.2 "));
        assert!(
            Reply::shutting_down("h")
                .to_string()
                .starts_with("421 4.3.2 ")
        );
    }

    #[test]
    fn policy_reply_converts() {
        let p = decision::Reply {
            code: 554,
            status: "5.7.1".into(),
            text: "<a@b>: Relay access denied".into(),
        };
        assert_eq!(
            Reply::from(&p).to_string(),
            "554 5.7.1 <a@b>: Relay access denied\r\n"
        );
    }
}
