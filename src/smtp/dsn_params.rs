//! The DSN extension's envelope parameters (RFC 3461): what a client asks
//! to be told about its message. `RET` and `ENVID` come with MAIL,
//! `NOTIFY` and `ORCPT` with each RCPT. They are checked here, stored with
//! the message, passed on to a next hop that offers DSN, and followed by
//! the notices relaygate sends itself (a bounce only if the recipient's
//! NOTIFY asks for failures, a "relayed" notice when it asks for success
//! and the next hop cannot take the request further).
//!
//! Values travel as xtext (RFC 3461 4): `+XX` for `+`, `=` and anything
//! outside `!`..`~`. They are kept decoded, and only printable ASCII is
//! taken, so a decoded value can never carry a line break into a notice;
//! nor a value that is empty or begins or ends with a space, which a
//! notice's header field could not return exactly (RFC 3464 2.2.1). The
//! one exception is an ORCPT of type `utf-8` in an SMTPUTF8 transaction,
//! which may also hold UTF-8 characters as they are (RFC 6533 3).

/// `RET`: how much of the message a failure notice returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message (`RET=FULL`), when it is small enough.
    Full,
    /// Its header section only (`RET=HDRS`).
    Headers,
}

impl Ret {
    pub fn parse(value: &str) -> Option<Ret> {
        if value.eq_ignore_ascii_case("FULL") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case("HDRS") {
            Some(Ret::Headers)
        } else {
            None
        }
    }

    /// As the parameter and the spool write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Headers => "HDRS",
        }
    }
}

/// `NOTIFY`: when the sender wants a notice about a recipient. All three
/// false is `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// `NEVER`, or a comma-separated list of `SUCCESS`, `FAILURE` and
    /// `DELAY` (any case, each at most once; `NEVER` only alone).
    pub fn parse(value: &str) -> Option<Notify> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Notify {
                success: false,
                failure: false,
                delay: false,
            });
        }
        let mut n = Notify {
            success: false,
            failure: false,
            delay: false,
        };
        for word in value.split(',') {
            let slot = if word.eq_ignore_ascii_case("SUCCESS") {
                &mut n.success
            } else if word.eq_ignore_ascii_case("FAILURE") {
                &mut n.failure
            } else if word.eq_ignore_ascii_case("DELAY") {
                &mut n.delay
            } else {
                return None;
            };
            if *slot {
                return None;
            }
            *slot = true;
        }
        Some(n)
    }

    /// As the parameter and the spool write it: `NEVER` or the list in
    /// the order SUCCESS, FAILURE, DELAY.
    pub fn as_param(self) -> String {
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect();
        if words.is_empty() {
            "NEVER".into()
        } else {
            words.join(",")
        }
    }

    /// Whether a failure is reported: without NOTIFY, yes (RFC 3461 4.1).
    pub fn wants_failure(notify: Option<Notify>) -> bool {
        notify.is_none_or(|n| n.failure)
    }

    /// Whether a delay is reported, when relaygate warns of delays at all:
    /// without NOTIFY, yes (as Postfix does).
    pub fn wants_delay(notify: Option<Notify>) -> bool {
        notify.is_none_or(|n| n.delay)
    }

    /// Whether a success is reported: only when asked for.
    pub fn wants_success(notify: Option<Notify>) -> bool {
        notify.is_some_and(|n| n.success)
    }
}

/// `ORCPT`: the recipient as the sender first addressed it, reported in
/// notices as `Original-Recipient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRecipient {
    /// The parameter's value as the client sent it: passed on unchanged
    /// (RFC 3461 5.2.1), case and encoding included.
    pub raw: String,
    /// The address type as sent (`rfc822`, `utf-8`, ...).
    pub addr_type: String,
    /// The address, decoded from xtext.
    pub address: String,
}

impl OriginalRecipient {
    /// `addr-type ";" xtext`, at most 500 characters (RFC 3461 4.2).
    /// With `utf8` (an SMTPUTF8 transaction, or the spool reading back
    /// what such a transaction stored), a `utf-8` address may also hold
    /// UTF-8 characters as they are.
    pub fn parse(value: &str, utf8: bool) -> Option<OriginalRecipient> {
        if value.len() > 500 {
            return None;
        }
        let (kind, xtext) = value.split_once(';')?;
        let atom = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
        };
        if !atom(kind) {
            return None;
        }
        let address = decode(xtext, utf8 && kind.eq_ignore_ascii_case("utf-8"))?;
        if !exact_in_a_field(&address) {
            return None;
        }
        Some(OriginalRecipient {
            raw: value.to_string(),
            addr_type: kind.to_string(),
            address,
        })
    }

    /// As the parameter writes it: exactly as it was given.
    pub fn as_param(&self) -> String {
        self.raw.clone()
    }

    /// As `Original-Recipient` reports it (RFC 3464 2.3.1): the type and
    /// the decoded address; a `utf-8` one in its own form as sent (RFC
    /// 6533 3), whose UTF-8 the notice escapes.
    pub fn reported(&self) -> String {
        if self.addr_type.eq_ignore_ascii_case("utf-8") {
            self.raw.clone()
        } else {
            format!("{};{}", self.addr_type, self.address)
        }
    }
}

/// `ENVID`: the sender's own name for the transaction, at most 100
/// characters as sent (RFC 3461 4.4). Kept as sent, to pass on unchanged
/// (RFC 3461 5.2.1); notices return it decoded as `Original-Envelope-Id`.
pub fn parse_envid(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > 100 {
        return None;
    }
    xtext_decode(value)
        .filter(|v| exact_in_a_field(v))
        .map(|_| value.to_string())
}

/// Whether a header field can return the value exactly: not empty, and
/// no space at either end for a reader to drop.
fn exact_in_a_field(v: &str) -> bool {
    !v.is_empty() && !v.starts_with(' ') && !v.ends_with(' ')
}

/// Decodes xtext; `None` if it is not xtext, or if what it decodes to is
/// not printable ASCII (a space is printable; CR, LF and NUL are not).
pub fn xtext_decode(s: &str) -> Option<String> {
    decode(s, false)
}

/// [`xtext_decode`]; with `unicode`, UTF-8 characters that are neither
/// controls nor spaces are also taken as they are.
fn decode(s: &str, unicode: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0x80.. if unicode => {
                let c = s.get(i..)?.chars().next()?;
                if c.is_control() || c.is_whitespace() {
                    return None;
                }
                out.push(c);
                i += c.len_utf8();
            }
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                // Upper-case hex only (RFC 3461 4: HEXCHAR); lower case
                // is taken too, as real clients send it.
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                let v = u8::from_str_radix(hex, 16).ok()?;
                if !(0x20..=0x7e).contains(&v) {
                    return None;
                }
                out.push(char::from(v));
                i += 3;
            }
            b'!'..=b'~' if b != b'=' => {
                out.push(char::from(b));
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// What MAIL asked for (RFC 3461 4.3, 4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageDsn {
    pub ret: Option<Ret>,
    /// ENVID as sent (xtext).
    pub envid: Option<String>,
}

impl MessageDsn {
    /// ENVID decoded, as a notice returns it.
    pub fn envid_text(&self) -> Option<String> {
        self.envid
            .as_deref()
            .map(|e| xtext_decode(e).unwrap_or_else(|| e.to_string()))
    }

    /// The parameters MAIL carries to a next hop that offers DSN, each
    /// with its leading space.
    pub fn mail_params(&self) -> String {
        let mut p = String::new();
        if let Some(ret) = self.ret {
            p.push_str(" RET=");
            p.push_str(ret.as_str());
        }
        if let Some(envid) = &self.envid {
            p.push_str(" ENVID=");
            p.push_str(envid);
        }
        p
    }
}

/// What one RCPT asked for (RFC 3461 4.1, 4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientDsn {
    pub notify: Option<Notify>,
    pub orcpt: Option<OriginalRecipient>,
}

impl RecipientDsn {
    /// The parameters RCPT carries to a next hop that offers DSN, each
    /// with its leading space.
    pub fn rcpt_params(&self) -> String {
        let mut p = String::new();
        if let Some(n) = self.notify {
            p.push_str(" NOTIFY=");
            p.push_str(&n.as_param());
        }
        if let Some(o) = &self.orcpt {
            p.push_str(" ORCPT=");
            p.push_str(&o.as_param());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Printable ASCII as xtext, as a client writes it.
    fn xtext_encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("+{b:02X}"));
            }
        }
        out
    }

    #[test]
    fn notify_takes_never_alone_or_a_list_without_repeats() {
        assert_eq!(
            Notify::parse("NEVER").map(Notify::as_param),
            Some("NEVER".into())
        );
        assert_eq!(
            Notify::parse("delay,Success").map(Notify::as_param),
            Some("SUCCESS,DELAY".into())
        );
        for bad in [
            "",
            "NEVER,SUCCESS",
            "SUCCESS,SUCCESS",
            "SUCCESS,",
            "ALWAYS",
            "SUCCESS FAILURE",
        ] {
            assert_eq!(Notify::parse(bad), None, "{bad:?}");
        }
        assert!(Notify::wants_failure(None));
        assert!(!Notify::wants_success(None));
        let never = Notify::parse("NEVER");
        assert!(!Notify::wants_failure(never) && !Notify::wants_success(never));
    }

    #[test]
    fn xtext_hides_plus_equals_and_spaces_and_refuses_line_breaks() {
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("a+2Bb+3Dc+20d").as_deref(), Some("a+b=c d"));
        assert_eq!(xtext_decode("x+0D+0AInjected: yes"), None);
        assert_eq!(xtext_decode("x+00"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a+G0"), None);
        assert_eq!(xtext_decode("é"), None);
    }

    #[test]
    fn orcpt_needs_a_type_and_an_address() {
        // Passed on exactly as sent (RFC 3461 5.2.1), reported decoded.
        let o = OriginalRecipient::parse("RFC822;bob+2bsales@far.test", false).expect("valid");
        assert_eq!(o.addr_type, "RFC822");
        assert_eq!(o.address, "bob+sales@far.test");
        assert_eq!(o.as_param(), "RFC822;bob+2bsales@far.test");
        assert_eq!(o.reported(), "RFC822;bob+sales@far.test");
        for bad in ["bob@far.test", ";bob@far.test", "rfc822;", "rfc 822;a@b"] {
            assert_eq!(OriginalRecipient::parse(bad, false), None, "{bad:?}");
        }
        assert_eq!(
            OriginalRecipient::parse(&format!("rfc822;{}", "a".repeat(500)), false),
            None
        );
        // Returned exactly in a notice, or not taken.
        for bad in ["rfc822;+20a@b", "rfc822;a@b+20", "rfc822;+20"] {
            assert_eq!(OriginalRecipient::parse(bad, false), None, "{bad:?}");
        }
        let spaced = OriginalRecipient::parse("rfc822;+22a+20+20b+22@x", false).expect("valid");
        assert_eq!(spaced.address, "\"a  b\"@x");
        // UTF-8 as it is: only a utf-8 address of an SMTPUTF8 transaction.
        let u = OriginalRecipient::parse("utf-8;j\u{fc}rgen@dsn.test", true).expect("valid");
        assert_eq!(u.address, "j\u{fc}rgen@dsn.test");
        assert_eq!(OriginalRecipient::parse(&u.as_param(), true), Some(u));
        assert_eq!(
            OriginalRecipient::parse("utf-8;j\u{fc}rgen@dsn.test", false),
            None
        );
        assert_eq!(
            OriginalRecipient::parse("rfc822;j\u{fc}rgen@dsn.test", true),
            None
        );
        assert_eq!(OriginalRecipient::parse("utf-8;a\u{2028}b@x", true), None);
    }

    #[test]
    fn envid_is_at_most_100_characters_as_sent() {
        assert_eq!(parse_envid(&"a".repeat(100)).map(|e| e.len()), Some(100));
        assert_eq!(parse_envid(&"a".repeat(101)), None);
        assert_eq!(parse_envid(""), None);
        assert_eq!(parse_envid("+20"), None);
        assert_eq!(parse_envid("+20ab"), None);
        assert_eq!(parse_envid("a+20+20b").as_deref(), Some("a+20+20b"));
        // Passed on as sent, lower-case hex and all; returned decoded.
        let dsn = MessageDsn {
            ret: Some(Ret::Headers),
            envid: parse_envid("QQ+20314+2b"),
        };
        assert_eq!(dsn.mail_params(), " RET=HDRS ENVID=QQ+20314+2b");
        assert_eq!(dsn.envid_text().as_deref(), Some("QQ 314+"));
    }

    proptest! {
        #[test]
        fn xtext_round_trips_printable_text(s in "[ -~]{0,80}") {
            let encoded = xtext_encode(&s);
            prop_assert!(encoded.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            prop_assert_eq!(xtext_decode(&encoded), Some(s));
        }

        #[test]
        fn decoded_xtext_is_always_printable(s in "\\PC{0,40}") {
            if let Some(d) = xtext_decode(&s) {
                prop_assert!(d.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            }
        }

        /// An ORCPT is passed on exactly as sent and reported decoded,
        /// whatever the hex case the client wrote.
        #[test]
        fn orcpt_is_kept_as_sent_and_reported_decoded(
            address in "[!-~][ -~]{0,60}[!-~]",
            kind in "(rfc822|RFC822|x-Local)",
            lower in any::<bool>(),
        ) {
            let mut xtext = xtext_encode(&address);
            if lower {
                xtext = xtext.replace("+2B", "+2b").replace("+3D", "+3d");
            }
            let value = format!("{kind};{xtext}");
            let o = OriginalRecipient::parse(&value, false);
            prop_assert!(o.is_some() == (value.len() <= 500));
            if let Some(o) = o {
                prop_assert_eq!(o.as_param(), value);
                prop_assert_eq!(&o.address, &address);
                prop_assert_eq!(o.reported(), format!("{kind};{address}"));
            }
        }

        /// NOTIFY takes any non-empty set of SUCCESS, FAILURE, DELAY in any
        /// order and case, and means the same set.
        #[test]
        fn notify_means_its_set_whatever_the_order(
            words in proptest::sample::subsequence(vec!["success", "FAILURE", "Delay"], 1..=3)
                .prop_shuffle(),
        ) {
            let n = Notify::parse(&words.join(",")).expect("a valid NOTIFY");
            let has = |w: &str| words.iter().any(|x| x.eq_ignore_ascii_case(w));
            prop_assert_eq!((n.success, n.failure, n.delay), (has("success"), has("failure"), has("delay")));
            prop_assert_eq!(Notify::parse(&n.as_param()), Some(n));
        }
    }
}
