//! Delivery status notifications: the bounce, the "relayed" notice a
//! sender asked for with `NOTIFY=SUCCESS` (RFC 3461), and the optional
//! delay warning, sent to the original sender as RFC 3464
//! `multipart/report; report-type=delivery-status` (RFC 6522).
//!
//! Pure: the stored message and what happened to its recipients in, the
//! whole notification out (CRLF lines, ready to spool with the null sender
//! `<>`). Everything a remote server said passes through `clean_text`
//! before it is written, so a reply can neither add a header (CR/LF), nor
//! break the 998-octet line limit, nor make the message 8-bit.
//!
//! The original message is returned as its header section only
//! (`text/rfc822-headers`): a bounce must not mail a message's content to
//! whoever forged its sender, and must stay small. Only a sender that
//! asked with `RET=FULL` gets a failed message back whole, and only when
//! it is small 7-bit text ([`RETURN_FULL_MAX`], as Postfix's
//! `bounce_size_limit`); otherwise its headers, as for everyone.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::smtp::dsn_params::OriginalRecipient;
use crate::smtp::trace_header::rfc5322_date;

/// What happened to a recipient, as a DSN's `Action:` field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsnAction {
    /// Given up: the message will not reach this recipient.
    Failed,
    /// Not delivered yet and still being retried (a delay warning).
    Delayed,
    /// Handed to a next hop that does not offer DSN, for a recipient
    /// whose NOTIFY asked for success (RFC 3461 4.2, RFC 3464 2.3.3).
    Relayed,
}

impl DsnAction {
    /// The `Action:` value (RFC 3464 2.3.3).
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// One recipient a notification reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// The recipient address, without angle brackets.
    pub address: String,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1`; an invalid one is
    /// reported as `5.0.0` (failed) or `4.0.0` (delayed).
    pub status: String,
    /// The remote reply, e.g. `550 5.1.1 no such user`; anything at all
    /// (it is sanitised).
    pub diagnostic: Option<String>,
    /// Host name of the MTA that answered.
    pub remote_mta: Option<String>,
    pub action: DsnAction,
    /// The client's ORCPT, returned as `Original-Recipient`.
    pub original_recipient: Option<OriginalRecipient>,
}

/// A report on one recipient as the spool keeps it in the recipient's
/// row, from the attempt that records its outcome until the notice that
/// folds every next hop's reports is stored (`SpoolOp::Report`). The
/// recipient's ORCPT is in its row already.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredReport {
    pub action: DsnAction,
    pub status: String,
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
}

impl StoredReport {
    pub fn of(r: &ReportedRecipient) -> StoredReport {
        StoredReport {
            action: r.action,
            status: r.status.clone(),
            diagnostic: r.diagnostic.clone(),
            remote_mta: r.remote_mta.clone(),
        }
    }

    /// The row's text (JSON).
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read back from a row; `None` if the text is not a report (a
    /// damaged row is then reported as a failure with no details).
    pub fn parse(text: &str) -> Option<StoredReport> {
        serde_json::from_str(text).ok()
    }

    pub fn recipient(
        self,
        address: String,
        original_recipient: Option<OriginalRecipient>,
    ) -> ReportedRecipient {
        ReportedRecipient {
            address,
            status: self.status,
            diagnostic: self.diagnostic,
            remote_mta: self.remote_mta,
            action: self.action,
            original_recipient,
        }
    }
}

/// Everything a notification is built from.
#[derive(Debug, Clone, Copy)]
pub struct BounceInput<'a> {
    /// Our host name (`Reporting-MTA`, the `MAILER-DAEMON@` domain).
    pub reporting_mta: &'a str,
    /// The original message's queue id.
    pub original_id: &'a str,
    /// Who gets the notification; never empty (the caller does not bounce
    /// the null sender).
    pub original_sender: &'a str,
    pub arrival: SystemTime,
    pub now: SystemTime,
    /// The stored message (headers and body).
    pub original: &'a [u8],
    /// At least one; the actions may be mixed.
    pub recipients: &'a [ReportedRecipient],
    /// Domain of the notification's own Message-ID.
    pub message_id_domain: &'a str,
    /// The client's ENVID, returned as `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// The client asked for the whole message back (`RET=FULL`).
    pub return_full: bool,
    /// When a delayed recipient stops being retried (and bounces), for
    /// its `Will-Retry-Until` (RFC 3464 2.3.9).
    pub retry_until: Option<SystemTime>,
    /// The sender's address is UTF-8, so the notice goes with SMTPUTF8 and
    /// is RFC 6533's: `global-delivery-status`, addresses and the
    /// original's headers in UTF-8 as they are.
    pub global: bool,
}

/// The largest message `RET=FULL` returns whole in a failure notice (as
/// Postfix's `bounce_size_limit`); a larger one is returned as headers.
pub const RETURN_FULL_MAX: usize = 50_000;

/// Lines are kept to this length where a space allows it.
const SOFT_LINE: usize = 78;
/// RFC 5322 2.1.1: never longer than this, without the CRLF.
const HARD_LINE: usize = 998;
/// A longer remote reply is cut (with `...`) before it is folded.
const MAX_DIAGNOSTIC: usize = 2000;
/// A longer address (far beyond RFC 5321's 254) is cut.
const MAX_ADDRESS: usize = 512;
/// RFC 1035: a host name is at most 255 octets.
const MAX_HOST: usize = 255;
/// Longest ENVID or ORCPT written back (RFC 3461 allows 100 and 500
/// octets; a UTF-8 ORCPT grows when escaped).
const MAX_EXACT: usize = 900;
/// Longest queue id written (in headers, the Message-ID and the boundary).
const MAX_ID: usize = 24;

/// The whole notification message (headers and body), CRLF line endings,
/// to be spooled with the null sender `<>` to `original_sender`.
///
/// The subject says "Undelivered Mail Returned to Sender" when any
/// recipient failed, "Delayed Mail (still being retried)" when all are
/// only delayed. Every line is 7-bit and at most 998 octets, except that a
/// non-ASCII `original_sender` (SMTPUTF8) is written as it is in `To:`.
pub fn build_bounce(input: &BounceInput<'_>) -> Vec<u8> {
    let mta = host_token(input.reporting_mta).unwrap_or_else(|| "localhost".into());
    let id = queue_id_token(input.original_id);
    let recipients: Vec<Recipient> = input
        .recipients
        .iter()
        .map(|r| Recipient::new(r, input.global))
        .collect();
    let any_failed =
        recipients.is_empty() || recipients.iter().any(|r| r.action == DsnAction::Failed);
    let any_delayed = recipients.iter().any(|r| r.action == DsnAction::Delayed);
    let subject = if any_failed {
        "Undelivered Mail Returned to Sender"
    } else if any_delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };

    let mut notification = notification_text(&mta, &id, input.arrival, &recipients);
    let report = delivery_status(&mta, &id, input, &recipients);
    let whole = any_failed && input.return_full && returnable_whole(input.original);
    let (lines, cut) = capped(header_lines(input.original));
    if let Some(total) = cut.filter(|_| !whole) {
        let kept: usize = lines.iter().map(|l| l.len() + 2).sum();
        notification.push_str(&format!(
            "\r\nThe original message's header section ({total} bytes) is cut to\r\nits first {kept} bytes (whole fields) below.\r\n"
        ));
    }
    let global_headers = (input.global && !whole)
        .then(|| global_headers(&lines))
        .flatten();
    let (headers_part, transfer_encoding) = if whole {
        (String::from_utf8_lossy(input.original).into_owned(), "7bit")
    } else if let Some(h) = global_headers.clone() {
        (h, "8bit")
    } else {
        rfc822_headers(&lines)
    };
    let (report_type, status_type) = if input.global {
        ("global-delivery-status", "message/global-delivery-status")
    } else {
        ("delivery-status", "message/delivery-status")
    };
    // Only what goes into the bounce needs checking: the original's header
    // section (never its body, which may be 25 MB and crafted to hold
    // candidate boundaries) and our own two parts (which carry remote text).
    let boundary = choose_boundary(
        &id,
        input.now,
        &[
            headers_part.as_bytes(),
            notification.as_bytes(),
            report.as_bytes(),
        ],
    );

    let mut m =
        String::with_capacity(notification.len() + report.len() + headers_part.len() + 1024);
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n"
    ));
    m.push_str(&format!(
        "To: <{}>\r\n",
        envelope_address(input.original_sender)
    ));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(input.now)));
    m.push_str(&format!(
        "Message-ID: {}\r\n",
        message_id(&id, input, &mta, &recipients)
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    if input.global {
        m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Description: Notification\r\n");
    m.push_str(if input.global {
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    } else {
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    });
    m.push_str(&notification);

    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str("Content-Description: Delivery report\r\n");
    m.push_str(&format!("Content-Type: {status_type}\r\n"));
    if input.global {
        m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    m.push_str("\r\n");
    m.push_str(&report);

    m.push_str(&format!("\r\n--{boundary}\r\n"));
    let headers_type = if global_headers.is_some() {
        "message/global-headers"
    } else {
        "text/rfc822-headers"
    };
    m.push_str(&match (whole, any_failed) {
        (true, _) => {
            "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n".into()
        }
        (false, true) => format!(
            "Content-Description: Undelivered Message Headers\r\nContent-Type: {headers_type}\r\n"
        ),
        (false, false) => {
            format!("Content-Description: Message Headers\r\nContent-Type: {headers_type}\r\n")
        }
    });
    m.push_str(&format!(
        "Content-Transfer-Encoding: {transfer_encoding}\r\n\r\n"
    ));
    m.push_str(&headers_part);

    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    m.into_bytes()
}

/// The header section as RFC 6533's `message/global-headers` (UTF-8 as it
/// is), if it is UTF-8 with no control characters and no line over 998
/// octets; else `None`, and it goes quoted-printable as for anyone.
fn global_headers(lines: &[&[u8]]) -> Option<String> {
    let mut s = String::new();
    for line in lines {
        let text = std::str::from_utf8(line).ok()?;
        if line.len() > HARD_LINE || text.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        s.push_str(text);
        s.push_str("\r\n");
    }
    Some(s)
}

/// Whether a message can go back whole inside a notice: small, 7-bit,
/// no line over 998 octets, CRLF line ends only, and ending in CRLF.
fn returnable_whole(message: &[u8]) -> bool {
    message.len() <= RETURN_FULL_MAX
        && message.ends_with(b"\r\n")
        && message.is_ascii()
        && message.split(|&b| b == b'\n').all(|line| {
            let text = line.strip_suffix(b"\r").unwrap_or(line);
            text.len() <= HARD_LINE && !text.contains(&b'\r') && !text.contains(&0)
        })
}

/// Whether a message is itself a notification or otherwise automatic
/// (`Content-Type: multipart/report; report-type=delivery-status`, or
/// `Auto-Submitted: auto-replied`), so that it is never
/// bounced. The null sender is the caller's to check.
pub fn is_bounce(message: &[u8]) -> bool {
    header_fields(message)
        .iter()
        .any(|(name, value)| match name.to_ascii_lowercase().as_str() {
            "content-type" => is_delivery_report(value),
            "auto-submitted" => {
                let token: String = value
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                // Only replies: an `auto-generated` message (a cron report)
                // with a real return path still deserves its bounce.
                token.eq_ignore_ascii_case("auto-replied")
            }
            _ => false,
        })
}

/// Number of `Received:` fields in the header section (loop protection).
/// A "Received:" line in the body does not count.
pub fn count_received(message: &[u8]) -> usize {
    header_lines(message)
        .iter()
        .filter_map(|line| field_name(line))
        .filter(|name| name.eq_ignore_ascii_case(b"received"))
        .count()
}

/// One recipient, sanitised for writing.
struct Recipient {
    /// `rfc822` or, for a non-ASCII address, `utf-8` (RFC 6533).
    address_type: &'static str,
    /// 7-bit: non-ASCII and specials escaped as `\x{HEX}` for `utf-8`.
    address: String,
    status: String,
    diagnostic: Option<String>,
    remote_mta: Option<String>,
    action: DsnAction,
    /// `type;address`, cleaned.
    original: Option<String>,
}

impl Recipient {
    /// With `global`, a UTF-8 address stays as it is (RFC 6533 3).
    fn new(r: &ReportedRecipient, global: bool) -> Recipient {
        let (address_type, address) = if global && !r.address.is_ascii() {
            ("utf-8", printable_utf8(&envelope_address(&r.address)))
        } else {
            dsn_address(&r.address)
        };
        Recipient {
            address_type,
            address,
            status: status_code(&r.status, r.action),
            diagnostic: r
                .diagnostic
                .as_deref()
                .map(|d| clean_text(d, MAX_DIAGNOSTIC))
                .filter(|d| !d.is_empty()),
            remote_mta: r.remote_mta.as_deref().and_then(host_token),
            action: r.action,
            original: r.original_recipient.as_ref().map(|o| {
                if global {
                    printable_utf8(&o.reported())
                } else {
                    exact_text(&o.reported())
                }
            }),
        }
    }

    /// `<addr>: host mx said: 550 ...` for the human-readable part.
    fn explanation(&self) -> String {
        let mut s = format!("<{}>: ", self.address);
        match (&self.remote_mta, &self.diagnostic) {
            (Some(host), Some(diag)) => write!(s, "host {host} said: {diag}"),
            (None, Some(diag)) => write!(s, "{diag}"),
            (Some(host), None) => write!(s, "status {} from host {host}", self.status),
            (None, None) => write!(s, "status {}", self.status),
        }
        .expect("writing to a String cannot fail");
        s
    }
}

/// Part 1: what happened, for a person.
fn notification_text(mta: &str, id: &str, arrival: SystemTime, rcpts: &[Recipient]) -> String {
    fn para(t: &mut String, text: &str) {
        t.push_str(&wrap(text, 0, 0).join("\r\n"));
        t.push_str("\r\n\r\n");
    }
    let mut t = String::new();
    para(
        &mut t,
        &format!("This is the mail delivery system at {mta}."),
    );
    // What happened, a paragraph and its recipients per action.
    for (action, what) in [
        (
            DsnAction::Failed,
            "Your message could not be delivered to one or more recipients, \
             and no further attempts will be made. The details follow.",
        ),
        (
            DsnAction::Relayed,
            "Your message was handed on to the next mail server for the \
             following recipients, as you asked to be told. That server does \
             not offer delivery notifications, so this is the last notice \
             from the mail system unless another system reports an error.",
        ),
        (
            DsnAction::Delayed,
            "Delivery of your message to the following recipients has been \
             delayed. It is still being retried: you do not need to send it \
             again, and you will be told if it finally fails.",
        ),
    ] {
        let mut these = rcpts.iter().filter(|r| r.action == action).peekable();
        if these.peek().is_none() {
            continue;
        }
        para(&mut t, what);
        for r in these {
            t.push_str(&wrap(&r.explanation(), 0, 4).join("\r\n    "));
            t.push_str("\r\n");
        }
        t.push_str("\r\n");
    }
    para(
        &mut t,
        &format!(
            "The delivery report and the headers of your message are attached \
             (queue id {id}, received {}).",
            rfc5322_date(arrival)
        ),
    );
    t.truncate(t.trim_end().len());
    t.push_str("\r\n");
    t
}

/// Part 2: the machine-readable report (RFC 3464 2.2 and 2.3).
fn delivery_status(mta: &str, id: &str, input: &BounceInput<'_>, rcpts: &[Recipient]) -> String {
    let mut r = String::new();
    if let Some(envid) = input.envid {
        r.push_str(&format!("Original-Envelope-Id: {}\r\n", exact_text(envid)));
    }
    r.push_str(&format!("Reporting-MTA: dns; {mta}\r\n"));
    r.push_str(&format!("X-Relaygate-Queue-ID: {id}\r\n"));
    r.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(input.arrival)
    ));
    let last_attempt = rfc5322_date(input.now);
    for rc in rcpts {
        r.push_str("\r\n");
        if let Some(original) = &rc.original {
            r.push_str(&format!("Original-Recipient: {original}\r\n"));
        }
        r.push_str(&format!(
            "Final-Recipient: {}; {}\r\n",
            rc.address_type, rc.address
        ));
        r.push_str(&format!("Action: {}\r\n", rc.action.as_str()));
        r.push_str(&format!("Status: {}\r\n", rc.status));
        if let Some(host) = &rc.remote_mta {
            r.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        if let Some(diag) = &rc.diagnostic {
            r.push_str(&fold_field("Diagnostic-Code: smtp; ", diag));
        }
        r.push_str(&format!("Last-Attempt-Date: {last_attempt}\r\n"));
        if let (DsnAction::Delayed, Some(until)) = (rc.action, input.retry_until) {
            r.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
        }
    }
    r
}

/// Part 3: the original header section, as it is when it is 7-bit with
/// short lines, quoted-printable otherwise. Returns the text and its
/// Content-Transfer-Encoding.
fn rfc822_headers(lines: &[&[u8]]) -> (String, &'static str) {
    let plain = lines.iter().all(|line| {
        line.len() <= HARD_LINE && line.iter().all(|&b| b == b'\t' || (32..=126).contains(&b))
    });
    if plain {
        let mut s = String::new();
        for line in lines {
            s.push_str(&String::from_utf8_lossy(line));
            s.push_str("\r\n");
        }
        (s, "7bit")
    } else {
        (quoted_printable(lines), "quoted-printable")
    }
}

/// RFC 2045 6.7 quoted-printable, each input line a hard line break,
/// encoded lines at most 76 octets.
fn quoted_printable(lines: &[&[u8]]) -> String {
    let mut out = String::new();
    for line in lines {
        let mut len = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal =
                ((b == b' ' || b == b'\t') && !at_end) || ((33..=126).contains(&b) && b != b'=');
            let width = if literal { 1 } else { 3 };
            if len + width > 75 {
                out.push_str("=\r\n");
                len = 0;
            }
            if literal {
                out.push(char::from(b));
            } else {
                write!(out, "={b:02X}").expect("writing to a String cannot fail");
            }
            len += width;
        }
        out.push_str("\r\n");
    }
    out
}

/// A boundary found in none of `texts`: `=_relaygate-dsn-<id>-<time>`, with
/// a counter appended until it is unique.
fn choose_boundary(id: &str, now: SystemTime, texts: &[&[u8]]) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let base = format!("=_relaygate-dsn-{id}-{secs:X}");
    (0u32..)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|b| !texts.iter().any(|t| contains(t, b.as_bytes())))
        .expect("a text holds finitely many candidates")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `<dsn.ID.SECS.NANOS.HASH@domain>`: unique per notification (the time,
/// and a hash of what it reports, tell apart several for one message).
fn message_id(id: &str, input: &BounceInput<'_>, mta: &str, rcpts: &[Recipient]) -> String {
    let domain: String = input
        .message_id_domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(MAX_HOST)
        .collect();
    let domain = if domain.trim_matches('.').is_empty() {
        mta.trim_matches(|c| c == '[' || c == ']').replace(':', "-")
    } else {
        domain.trim_matches('.').to_string()
    };
    let t = input.now.duration_since(UNIX_EPOCH).unwrap_or_default();
    // FNV-1a over the recipients and their actions.
    let mut hash: u32 = 0x811c_9dc5;
    for r in rcpts {
        for b in r.address.bytes().chain([0, r.action as u8]) {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    format!(
        "<dsn.{id}.{}.{:09}.{hash:08x}@{domain}>",
        t.as_secs(),
        t.subsec_nanos()
    )
}

/// A header field `prefix` + `text`, folded at spaces (RFC 5322 2.2.3) to
/// 78 octets where it can and 998 always; ends with CRLF.
fn fold_field(prefix: &str, text: &str) -> String {
    let mut s = String::from(prefix);
    s.push_str(&wrap(text, prefix.len(), 1).join("\r\n "));
    s.push_str("\r\n");
    s
}

/// Splits `text` (ASCII, words separated by single spaces) into lines of at
/// most [`SOFT_LINE`] octets where a space allows it, counting `first`
/// octets already used on the first line and `rest` on the others (a prefix
/// or an indent). A word that does not fit alone in [`HARD_LINE`] is cut.
fn wrap(text: &str, first: usize, rest: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        loop {
            let used = if lines.len() == 1 { first } else { rest };
            let soft = SOFT_LINE.saturating_sub(used);
            let hard = HARD_LINE.saturating_sub(used).max(1);
            let n = lines.len();
            let line = &mut lines[n - 1];
            if line.is_empty() {
                if word.len() <= hard {
                    line.push_str(word);
                    break;
                }
                // At a character boundary (a global notice's text is UTF-8).
                let mut cut = hard.min(word.len());
                while !word.is_char_boundary(cut) {
                    cut -= 1;
                }
                let cut = if cut == 0 {
                    word.chars().next().map_or(word.len(), char::len_utf8)
                } else {
                    cut
                };
                let (head, tail) = word.split_at(cut);
                line.push_str(head);
                word = tail;
                lines.push(String::new());
            } else if line.len() + 1 + word.len() <= soft {
                line.push(' ');
                line.push_str(word);
                break;
            } else {
                lines.push(String::new());
            }
        }
    }
    lines
}

/// Remote text made safe to write: printable ASCII only (controls, CR and
/// LF become spaces, other non-ASCII `?`), whitespace collapsed, at most
/// `max` octets (cut with `...`).
fn clean_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_graphic() {
            c
        } else if c.is_whitespace() || c.is_control() {
            ' '
        } else {
            '?'
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() >= max {
            out.truncate(max.saturating_sub(3));
            out.push_str("...");
            return out;
        }
        out.push(c);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// A value the sender must get back as it gave it (ENVID, ORCPT; RFC 3464
/// 2.2.1): spaces kept as they are, never folded (it fits a line), UTF-8
/// characters written as RFC 6533 `\x{HEX}`; a control character (which
/// the parser never lets in) as `?`.
fn exact_text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= MAX_EXACT {
            break;
        }
        match c {
            ' '..='~' => out.push(c),
            c if c.is_control() => out.push('?'),
            c => write!(out, "\\x{{{:X}}}", u32::from(c)).expect("writing to a String cannot fail"),
        }
    }
    out
}

/// UTF-8 text for a global report: as it is but for control characters
/// (`?`), at most [`MAX_EXACT`] octets.
fn printable_utf8(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_EXACT {
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// A host name or address literal: the characters they may hold, or `None`.
/// A host name for the report: the first word of what delivery names a
/// host by ("mx.example.net (192.0.2.1:25)" gives "mx.example.net"),
/// only the characters a host name or address literal has.
fn host_token(s: &str) -> Option<String> {
    let h: String = s
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(*c))
        .take(MAX_HOST)
        .collect();
    (!h.is_empty()).then_some(h)
}

fn queue_id_token(s: &str) -> String {
    let id: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(MAX_ID)
        .collect();
    if id.is_empty() { "unknown".into() } else { id }
}

/// The `To:` address: as given but without angle brackets or controls.
fn envelope_address(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_suffix('>').unwrap_or(s);
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ADDRESS)
        .collect()
}

/// The address type and 7-bit address for `Final-Recipient`: `rfc822`
/// when it is ASCII, else `utf-8` with RFC 6533 `\x{HEX}` escapes.
fn dsn_address(s: &str) -> (&'static str, String) {
    let a = envelope_address(s);
    if a.is_ascii() {
        return ("rfc822", a);
    }
    let mut out = String::new();
    for c in a.chars() {
        // Escaped, a long UTF-8 address could pass the line limit.
        if out.len() >= MAX_EXACT {
            break;
        }
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            write!(out, "\\x{{{:02X}}}", u32::from(c)).expect("writing to a String cannot fail");
        }
    }
    ("utf-8", out)
}

/// `class.subject.detail` (RFC 3463), or the generic code for the action.
fn status_code(s: &str, action: DsnAction) -> String {
    let s = s.trim();
    let parts: Vec<&str> = s.split('.').collect();
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    let valid = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && digits(parts[1], 3)
        && digits(parts[2], 3);
    if valid {
        s.to_string()
    } else {
        match action {
            DsnAction::Failed => "5.0.0".into(),
            DsnAction::Delayed => "4.0.0".into(),
            DsnAction::Relayed => "2.0.0".into(),
        }
    }
}

/// The header section a notice carries at most, in bytes with line
/// endings (Postfix's `bounce_size_limit`): a message crafted with a huge
/// header section (which anyone may send in, asking `NOTIFY=SUCCESS` for a
/// forged sender) must not make the gateway mail its content outside.
const HEADERS_MAX: usize = RETURN_FULL_MAX;

/// `lines` cut to whole fields within [`HEADERS_MAX`]; with the whole
/// section's size when it was cut.
fn capped(lines: Vec<&[u8]>) -> (Vec<&[u8]>, Option<usize>) {
    let total: usize = lines.iter().map(|l| l.len() + 2).sum();
    if total <= HEADERS_MAX {
        return (lines, None);
    }
    let mut keep = 0;
    let mut size = 0;
    for (i, line) in lines.iter().enumerate() {
        size += line.len() + 2;
        if size > HEADERS_MAX {
            break;
        }
        // A field ends where the next line starts a new one.
        let next_starts_field = lines
            .get(i + 1)
            .is_none_or(|next| !matches!(next.first(), Some(b' ' | b'\t')));
        if next_starts_field {
            keep = i + 1;
        }
    }
    let mut lines = lines;
    lines.truncate(keep);
    (lines, Some(total))
}

/// The header section's lines, without line endings: the lines up to the
/// first empty one, stopping early at a line that is neither a field nor
/// a continuation (so a message without a blank line never yields its body).
fn header_lines(message: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(&first) = line.first() else { break };
        let continuation = first == b' ' || first == b'\t';
        if (continuation && out.is_empty()) || (!continuation && field_name(line).is_none()) {
            break;
        }
        out.push(line);
    }
    out
}

/// The field name of a header line (`Name:` or the obsolete `Name :`).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|b| (33..=126).contains(b))).then_some(name)
}

/// The header fields as (name, unfolded value).
fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in header_lines(message) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(&String::from_utf8_lossy(line));
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            fields.push((
                String::from_utf8_lossy(line[..colon].trim_ascii_end()).into_owned(),
                String::from_utf8_lossy(&line[colon + 1..]).into_owned(),
            ));
        }
    }
    fields
}

/// `multipart/report` with `report-type=delivery-status` (or RFC 6533's
/// `global-delivery-status`).
fn is_delivery_report(value: &str) -> bool {
    let mut parts = split_unquoted(value, ';').into_iter();
    let media = parts.next().unwrap_or_default();
    let media: String = media.chars().filter(|c| !c.is_whitespace()).collect();
    media.eq_ignore_ascii_case("multipart/report")
        && parts.any(|p| {
            p.split_once('=').is_some_and(|(name, v)| {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                name.trim().eq_ignore_ascii_case("report-type")
                    && (v.trim().eq_ignore_ascii_case("delivery-status")
                        || v.trim().eq_ignore_ascii_case("global-delivery-status"))
            })
        })
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_and_limits() {
        let text = "a ".repeat(100);
        for line in wrap(text.trim(), 10, 1) {
            assert!(line.len() <= SOFT_LINE);
        }
        let long = "x".repeat(2500);
        let lines = wrap(&long, 23, 1);
        assert_eq!(lines[0].len(), HARD_LINE - 23);
        assert!(lines.iter().all(|l| l.len() < HARD_LINE));
        assert_eq!(lines.concat(), long);
        assert_eq!(wrap("", 0, 0), vec![String::new()]);
    }

    #[test]
    fn the_remote_mta_is_the_host_name_alone() {
        assert_eq!(
            host_token("mx.far.test (192.0.2.1:25)").as_deref(),
            Some("mx.far.test")
        );
        assert_eq!(host_token("[::1]:25").as_deref(), Some("[::1]:25"));
        assert_eq!(host_token("  "), None);
    }

    #[test]
    fn clean_text_is_printable_ascii() {
        assert_eq!(clean_text("550 a\r\n\tb\u{0}c é", 100), "550 a b c ?");
        assert_eq!(clean_text("  x  ", 100), "x");
        assert_eq!(clean_text(&"y".repeat(50), 10), "yyyyyyy...");
    }

    #[test]
    fn status_and_addresses() {
        assert_eq!(status_code("5.1.1", DsnAction::Failed), "5.1.1");
        assert_eq!(status_code("4.4.1", DsnAction::Failed), "4.4.1");
        assert_eq!(status_code("550", DsnAction::Failed), "5.0.0");
        assert_eq!(status_code("9.1.1", DsnAction::Delayed), "4.0.0");
        assert_eq!(
            dsn_address("<a+b@x.test>"),
            ("rfc822", "a+b@x.test".to_string())
        );
        assert_eq!(
            dsn_address("jos\u{e9}+x@b\u{fc}cher.test"),
            ("utf-8", "jos\\x{E9}\\x{2B}x@b\\x{FC}cher.test".to_string())
        );
    }

    #[test]
    fn quoted_printable_lines() {
        let qp = quoted_printable(&[b"Subject: caf\xc3\xa9 = ok ", &[b'z'; 200]]);
        assert!(qp.starts_with("Subject: caf=C3=A9 =3D ok=20\r\n"));
        assert!(qp.split("\r\n").all(|l| l.len() <= 76));
        assert!(qp.is_ascii());
    }

    #[test]
    fn content_type_forms() {
        assert!(is_delivery_report(
            "multipart/report; report-type=delivery-status; boundary=x"
        ));
        assert!(is_delivery_report(
            "Multipart/Report;\tboundary=\"a;b\"; Report-Type=\"Delivery-Status\""
        ));
        assert!(is_delivery_report(
            "multipart/report; report-type=global-delivery-status; boundary=x"
        ));
        assert!(!is_delivery_report(
            "multipart/report; report-type=disposition-notification"
        ));
        assert!(!is_delivery_report(
            "multipart/mixed; boundary=\"report-type=delivery-status\""
        ));
    }
}
