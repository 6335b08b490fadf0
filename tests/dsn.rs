//! Delivery status notifications, checked by parsing them with an
//! independent MIME parser (mail-parser).

use std::time::{Duration, UNIX_EPOCH};

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use relaygate::delivery::dsn::{
    BounceInput, DsnAction, ReportedRecipient, build_bounce, count_received, is_bounce,
};
use relaygate::smtp::dsn_params::OriginalRecipient;

const BODY_MARKER: &str = "SECRET BODY LINE";

fn original() -> Vec<u8> {
    format!(
        "Received: from client.example ([192.0.2.7])\r\n\tby gw.example.com (relaygate) with ESMTP id 0000ABC; Thu, 1 Jan 1970 00:00:00 +0000\r\n\
         From: Alice <alice@example.com>\r\n\
         To: bob@far.test, carol@far.test\r\n\
         Subject: quarterly figures\r\n\
         Message-ID: <orig-1@example.com>\r\n\
         \r\n\
         {BODY_MARKER}\r\n\
         Received: not a header, this is the body\r\n"
    )
    .into_bytes()
}

fn failed(
    address: &str,
    status: &str,
    diagnostic: Option<&str>,
    mta: Option<&str>,
) -> ReportedRecipient {
    ReportedRecipient {
        address: address.into(),
        status: status.into(),
        diagnostic: diagnostic.map(Into::into),
        remote_mta: mta.map(Into::into),
        action: DsnAction::Failed,
        original_recipient: None,
    }
}

fn bounce(original: &[u8], recipients: &[ReportedRecipient]) -> Vec<u8> {
    notice(original, recipients, None, false)
}

fn notice(
    original: &[u8],
    recipients: &[ReportedRecipient],
    envid: Option<&str>,
    return_full: bool,
) -> Vec<u8> {
    notice_to(
        "alice@example.com",
        original,
        recipients,
        envid,
        return_full,
    )
}

fn notice_to(
    sender: &str,
    original: &[u8],
    recipients: &[ReportedRecipient],
    envid: Option<&str>,
    return_full: bool,
) -> Vec<u8> {
    build_bounce(&BounceInput {
        reporting_mta: "gw.example.com",
        original_id: "0000ABC",
        original_sender: sender,
        arrival: UNIX_EPOCH + Duration::from_secs(1_795_468_058),
        now: UNIX_EPOCH + Duration::from_secs(1_795_471_658),
        original,
        recipients,
        message_id_domain: "example.com",
        envid,
        return_full,
        retry_until: Some(UNIX_EPOCH + Duration::from_secs(1_795_900_000)),
        global: !sender.is_ascii(),
    })
}

fn parse(raw: &[u8]) -> Message<'_> {
    MessageParser::default()
        .parse(raw)
        .expect("a parsable message")
}

/// The three parts of a multipart/report, checked for their types.
fn report_parts<'a>(m: &'a Message<'a>) -> [&'a MessagePart<'a>; 3] {
    report_parts_returning(m, ("text", "rfc822-headers"))
}

/// The same, with the third part of the given type.
fn report_parts_returning<'a>(m: &'a Message<'a>, third: (&str, &str)) -> [&'a MessagePart<'a>; 3] {
    let ct = m.content_type().expect("a Content-Type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let PartType::Multipart(ids) = &m.root_part().body else {
        panic!("root part is not multipart");
    };
    assert_eq!(ids.len(), 3, "three parts");
    let parts: Vec<&MessagePart<'_>> = ids.iter().map(|&id| m.part(id).expect("part")).collect();
    let types: Vec<(String, String)> = parts
        .iter()
        .map(|p| {
            let ct = p.content_type().expect("part Content-Type");
            (
                ct.ctype().to_string(),
                ct.subtype().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("text".to_string(), "plain".to_string()),
            ("message".to_string(), "delivery-status".to_string()),
            (third.0.to_string(), third.1.to_string()),
        ]
    );
    [parts[0], parts[1], parts[2]]
}

/// The field groups of a message/delivery-status body, each field
/// unfolded: the per-message group first, then one per recipient.
fn status_groups(part: &MessagePart<'_>) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8(part.contents().to_vec()).expect("ASCII report");
    text.split("\r\n\r\n")
        .filter(|g| !g.trim().is_empty())
        .map(|group| {
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in group.split("\r\n").filter(|l| !l.is_empty()) {
                if line.starts_with([' ', '\t']) {
                    fields
                        .last_mut()
                        .expect("continuation after a field")
                        .1
                        .push_str(line);
                } else {
                    let (name, value) = line.split_once(':').expect("a field");
                    fields.push((name.to_string(), value.trim().to_string()));
                }
            }
            fields
        })
        .collect()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every line CRLF-terminated, 7-bit, at most 998 octets.
fn assert_wire_safe(raw: &[u8]) {
    assert!(raw.is_ascii(), "7-bit");
    assert!(raw.ends_with(b"\r\n"));
    let text = std::str::from_utf8(raw).expect("ASCII");
    for line in text.split("\r\n") {
        assert!(!line.contains(['\r', '\n']), "bare CR or LF in {line:?}");
        assert!(line.len() <= 998, "line of {} octets", line.len());
    }
}

fn two_recipients() -> Vec<ReportedRecipient> {
    vec![
        failed(
            "bob@far.test",
            "5.1.1",
            Some("550 5.1.1 <bob@far.test>: no such user"),
            Some("mx1.far.test"),
        ),
        failed("carol@far.test", "5.4.4", None, None),
    ]
}

#[test]
fn bounce_is_a_delivery_status_report() {
    let raw = bounce(&original(), &two_recipients());
    assert_wire_safe(&raw);
    let m = parse(&raw);

    let from = m.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.address(), Some("MAILER-DAEMON@gw.example.com"));
    assert_eq!(from.name(), Some("Mail Delivery System"));
    let to = m.to().and_then(|a| a.first()).expect("To");
    assert_eq!(to.address(), Some("alice@example.com"));
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    assert!(m.date().is_some());
    let id = m.message_id().expect("Message-ID");
    assert!(id.ends_with("@example.com"), "{id}");
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(m.header_raw("MIME-Version").map(str::trim), Some("1.0"));

    let [text, report, headers] = report_parts(&m);

    let text = text.text_contents().expect("text part");
    assert!(text.contains("gw.example.com"));
    assert!(text.contains("<bob@far.test>: host mx1.far.test said: 550 5.1.1"));
    assert!(text.contains("<carol@far.test>: status 5.4.4"));

    let groups = status_groups(report);
    assert_eq!(groups.len(), 3, "per-message fields and two recipients");
    let msg = &groups[0];
    assert_eq!(field(msg, "Reporting-MTA"), Some("dns; gw.example.com"));
    assert_eq!(field(msg, "X-Relaygate-Queue-ID"), Some("0000ABC"));
    assert_eq!(
        field(msg, "Arrival-Date"),
        Some("Mon, 23 Nov 2026 21:07:38 +0000")
    );
    let bob = &groups[1];
    assert_eq!(field(bob, "Final-Recipient"), Some("rfc822; bob@far.test"));
    assert_eq!(field(bob, "Action"), Some("failed"));
    assert_eq!(field(bob, "Status"), Some("5.1.1"));
    assert_eq!(field(bob, "Remote-MTA"), Some("dns; mx1.far.test"));
    assert_eq!(
        field(bob, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <bob@far.test>: no such user")
    );
    assert_eq!(
        field(bob, "Last-Attempt-Date"),
        Some("Mon, 23 Nov 2026 22:07:38 +0000")
    );
    let carol = &groups[2];
    assert_eq!(
        field(carol, "Final-Recipient"),
        Some("rfc822; carol@far.test")
    );
    assert_eq!(field(carol, "Action"), Some("failed"));
    assert_eq!(field(carol, "Status"), Some("5.4.4"));
    assert_eq!(field(carol, "Remote-MTA"), None);
    assert_eq!(field(carol, "Diagnostic-Code"), None);
    assert!(field(carol, "Last-Attempt-Date").is_some());

    let headers = headers.text_contents().expect("headers part");
    assert!(
        headers.starts_with("Received: from client.example ([192.0.2.7])\r\n\tby gw.example.com")
    );
    assert!(headers.contains("Subject: quarterly figures\r\n"));
    assert!(headers.contains("Message-ID: <orig-1@example.com>\r\n"));
    assert!(!headers.contains(BODY_MARKER));
    assert!(
        !String::from_utf8_lossy(&raw).contains(BODY_MARKER),
        "no body anywhere"
    );
}

#[test]
fn delay_warning() {
    let mut r = failed(
        "bob@far.test",
        "4.4.1",
        Some("421 try later"),
        Some("mx1.far.test"),
    );
    r.action = DsnAction::Delayed;
    let raw = bounce(&original(), &[r]);
    assert_wire_safe(&raw);
    let m = parse(&raw);
    assert_eq!(m.subject(), Some("Delayed Mail (still being retried)"));
    let [text, report, _] = report_parts(&m);
    assert!(
        text.text_contents()
            .expect("text")
            .contains("still being retried")
    );
    let groups = status_groups(report);
    assert_eq!(field(&groups[1], "Action"), Some("delayed"));
    assert_eq!(field(&groups[1], "Status"), Some("4.4.1"));
    assert_eq!(
        field(&groups[1], "Will-Retry-Until"),
        Some("Sat, 28 Nov 2026 21:06:40 +0000")
    );
}

#[test]
fn bounces_are_recognised() {
    assert!(is_bounce(&bounce(&original(), &two_recipients())));
    assert!(!is_bounce(&original()));
    assert!(is_bounce(
        b"Subject: x\r\nContent-Type: multipart/report;\r\n\treport-type=\"delivery-status\"; boundary=b\r\n\r\nbody\r\n"
    ));
    assert!(!is_bounce(
        b"Auto-Submitted: auto-generated\r\n\r\nbody\r\n"
    ));
    assert!(is_bounce(
        b"auto-submitted: Auto-Replied (vacation)\r\n\r\nbody\r\n"
    ));
    assert!(!is_bounce(b"Auto-Submitted: no\r\n\r\nbody\r\n"));
    assert!(!is_bounce(
        b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n"
    ));
    // Only the header section counts.
    assert!(!is_bounce(
        b"Subject: x\r\n\r\nContent-Type: multipart/report; report-type=delivery-status\r\nAuto-Submitted: auto-replied\r\n"
    ));
}

#[test]
fn received_headers_are_counted_in_the_header_section_only() {
    let m = b"Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\n\
              received: from c\r\n\tby d; Thu, 1 Jan 1970 00:00:00 +0000\r\n\
              X-Received: not a trace field\r\n\
              RECEIVED : from e by f; Thu, 1 Jan 1970 00:00:00 +0000\r\n\
              Subject: loops\r\n\
              \r\n\
              Received: in the body, does not count\r\n";
    assert_eq!(count_received(m), 3);
    assert_eq!(count_received(&original()), 1);
    assert_eq!(count_received(b""), 0);
    // No blank line: the header section still ends at the first non-field line.
    assert_eq!(
        count_received(b"Received: a\r\nplain text\r\nReceived: b\r\n"),
        1
    );
}

#[test]
fn remote_text_cannot_inject_lines() {
    let evil = failed(
        "bob@far.test",
        "5.1.1",
        Some("550 no such user\r\nX-Injected: yes\r\n\r\nContent-Type: text/html\nbare\rcr"),
        Some("mx1.far.test\r\nX-Evil: 1"),
    );
    let raw = build_bounce(&BounceInput {
        reporting_mta: "gw.example.com",
        original_id: "0000ABC\r\nX-Id: 1",
        original_sender: "alice@example.com\r\nBcc: victim@example.net",
        arrival: UNIX_EPOCH,
        now: UNIX_EPOCH,
        original: &original(),
        recipients: &[evil],
        message_id_domain: "example.com",
        envid: Some("id\r\nX-Injected: yes"),
        return_full: false,
        retry_until: None,
        global: false,
    });
    assert_wire_safe(&raw);
    let text = String::from_utf8(raw.clone()).expect("ASCII");
    for line in text.split("\r\n") {
        for injected in [
            "X-Injected",
            "X-Evil",
            "X-Id",
            "Bcc",
            "bare",
            "Content-Type: text/html",
        ] {
            assert!(!line.starts_with(injected), "injected line {line:?}");
        }
    }
    let m = parse(&raw);
    assert!(m.header("Bcc").is_none());
    let [_, report, _] = report_parts(&m);
    let groups = status_groups(report);
    assert_eq!(
        field(&groups[1], "Diagnostic-Code"),
        Some("smtp; 550 no such user X-Injected: yes Content-Type: text/html bare cr")
    );
    assert_eq!(field(&groups[1], "Remote-MTA"), Some("dns; mx1.far.test"));
    assert_eq!(
        field(&groups[0], "X-Relaygate-Queue-ID"),
        Some("0000ABCX-Id1")
    );
}

#[test]
fn long_diagnostic_is_folded_and_cut() {
    let long = format!(
        "550-5.7.1 {} {} caf\u{e9} \u{1F600}",
        "word ".repeat(400),
        "x".repeat(1500)
    );
    let raw = bounce(
        &original(),
        &[failed(
            "bob@far.test",
            "5.7.1",
            Some(&long),
            Some("mx1.far.test"),
        )],
    );
    assert_wire_safe(&raw);
    let text = String::from_utf8(raw.clone()).expect("ASCII");
    let start = text.find("Diagnostic-Code:").expect("the field");
    let folded: Vec<&str> = text[start..]
        .split("\r\n")
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| l)
        .collect();
    assert!(folded.len() > 2, "folded over several lines");
    assert!(
        folded[..folded.len() - 1]
            .iter()
            .all(|l| l.len() <= 78 || !l.trim().contains(' '))
    );

    let m = parse(&raw);
    let [text_part, report, _] = report_parts(&m);
    let diag = field(&status_groups(report)[1], "Diagnostic-Code")
        .expect("Diagnostic-Code")
        .to_string();
    assert!(diag.starts_with("smtp; 550-5.7.1 word word"));
    assert!(diag.ends_with("..."), "cut: {}", &diag[diag.len() - 20..]);
    assert!(diag.len() < 2100);
    let human = text_part.text_contents().expect("text");
    assert!(human.lines().all(|l| l.len() <= 998));
}

#[test]
fn non_ascii_is_made_seven_bit() {
    let raw = bounce(
        &original(),
        &[failed(
            "j\u{f6}rg@b\u{fc}cher.test",
            "5.1.1",
            Some("550 Benutzer unbekannt: j\u{f6}rg"),
            None,
        )],
    );
    assert_wire_safe(&raw);
    let m = parse(&raw);
    let [_, report, _] = report_parts(&m);
    let g = &status_groups(report)[1];
    assert_eq!(
        field(g, "Final-Recipient"),
        Some("utf-8; j\\x{F6}rg@b\\x{FC}cher.test")
    );
    assert_eq!(
        field(g, "Diagnostic-Code"),
        Some("smtp; 550 Benutzer unbekannt: j?rg")
    );

    // 8-bit original headers travel quoted-printable, intact.
    let orig = "Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\nSubject: caf\u{e9} = menu\r\n\r\nbody\r\n";
    let raw = bounce(orig.as_bytes(), &two_recipients());
    assert_wire_safe(&raw);
    let m = parse(&raw);
    let [_, _, headers] = report_parts(&m);
    assert_eq!(
        headers.content_transfer_encoding(),
        Some("quoted-printable")
    );
    let headers = headers.text_contents().expect("headers");
    assert!(headers.contains("Subject: caf\u{e9} = menu"), "{headers:?}");
}

#[test]
fn boundary_never_occurs_in_the_original() {
    let first = bounce(&original(), &two_recipients());
    let boundary = parse(&first)
        .content_type()
        .and_then(|ct| ct.attribute("boundary"))
        .expect("a boundary")
        .to_string();
    assert!(boundary.len() <= 70);

    // An original that contains the boundary the first bounce used, as a
    // delimiter line in the body and inside a header.
    let colliding = format!(
        "Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\n\
         X-Trap: {boundary}\r\n\
         Subject: trap\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         {BODY_MARKER}\r\n\
         --{boundary}--\r\n"
    );
    let raw = bounce(colliding.as_bytes(), &two_recipients());
    assert_wire_safe(&raw);
    let m = parse(&raw);
    let second = m
        .content_type()
        .and_then(|ct| ct.attribute("boundary"))
        .expect("a boundary")
        .to_string();
    assert_ne!(second, boundary);
    assert!(!colliding.contains(&second));
    let [_, report, headers] = report_parts(&m);
    assert_eq!(status_groups(report).len(), 3);
    let headers = headers.text_contents().expect("headers");
    assert!(headers.contains(&format!("X-Trap: {boundary}\r\n")));
    assert!(!headers.contains(BODY_MARKER));

    // Remote text carrying the boundary is avoided too.
    let sneaky = failed(
        "bob@far.test",
        "5.0.0",
        Some(&format!("550 --{boundary}--")),
        None,
    );
    let raw = bounce(&original(), &[sneaky]);
    let m = parse(&raw);
    let third = m
        .content_type()
        .and_then(|ct| ct.attribute("boundary"))
        .expect("a boundary");
    assert_ne!(third, boundary);
    report_parts(&m);
}

#[test]
fn relayed_notice_with_envid_and_original_recipient() {
    let mut relayed = failed(
        "bob@far.test",
        "2.0.0",
        Some("250 2.0.0 Ok: queued as 7"),
        Some("mx1.far.test"),
    );
    relayed.action = DsnAction::Relayed;
    relayed.original_recipient = OriginalRecipient::parse("rfc822;Bob+2Bsales@far.test", false);
    let mut utf8 = relayed.clone();
    utf8.address = "j\u{fc}rgen@far.test".into();
    utf8.original_recipient = OriginalRecipient::parse("utf-8;J\u{fc}rgen@far.test", true);
    let raw = notice(&original(), &[relayed, utf8], Some("QQ  314"), false);
    assert_wire_safe(&raw);
    let m = parse(&raw);
    assert_eq!(m.subject(), Some("Successful Mail Delivery Report"));
    let [text, report, headers] = report_parts(&m);
    assert!(
        text.text_contents()
            .expect("text")
            .contains("handed on to the next mail server")
    );
    let groups = status_groups(report);
    // Returned exactly: two spaces stay two.
    assert!(String::from_utf8_lossy(&raw).contains("\r\nOriginal-Envelope-Id: QQ  314\r\n"));
    assert_eq!(
        field(&groups[2], "Original-Recipient"),
        Some("utf-8;J\\x{FC}rgen@far.test")
    );
    assert_eq!(
        field(&groups[1], "Original-Recipient"),
        Some("rfc822;Bob+sales@far.test")
    );
    assert_eq!(
        field(&groups[1], "Final-Recipient"),
        Some("rfc822; bob@far.test")
    );
    assert_eq!(field(&groups[1], "Action"), Some("relayed"));
    assert_eq!(field(&groups[1], "Status"), Some("2.0.0"));
    // A notice of success returns headers, never the body.
    assert!(!String::from_utf8_lossy(headers.contents()).contains(BODY_MARKER));
}

/// A header section crafted to be huge (anyone may send one in and ask
/// for a notice to a forged sender) goes back cut to whole fields within
/// 50,000 bytes, and the notice says so; a bounce is cut alike.
#[test]
fn a_huge_header_section_goes_back_cut_to_fifty_thousand_bytes() {
    let mut crafted = Vec::new();
    for i in 0..5000 {
        crafted.extend(format!("X-Payload-{i}: {}\r\n", "SPAM".repeat(200)).bytes());
        crafted.extend(b"\tfolded continuation of the same field\r\n");
    }
    crafted.extend(b"Subject: last\r\n\r\nbody\r\n");
    assert!(crafted.len() > 4_000_000);
    let mut relayed = failed("bob@far.test", "2.0.0", None, None);
    relayed.action = DsnAction::Relayed;
    for recipients in [vec![relayed], two_recipients()] {
        let raw = notice(&crafted, &recipients, None, true);
        assert!(raw.len() < 60_000, "a notice of {} bytes", raw.len());
        assert_wire_safe(&raw);
        let m = parse(&raw);
        let [text, _, headers] = report_parts(&m);
        let said = text.text_contents().expect("text");
        assert!(
            said.contains("header section (") && said.contains("is cut to"),
            "{said}"
        );
        let returned = String::from_utf8_lossy(headers.contents()).into_owned();
        assert!(returned.len() <= 50_000 && returned.len() > 40_000);
        // Whole fields only: the last one kept ends with its continuation.
        assert!(
            returned
                .trim_end()
                .ends_with("folded continuation of the same field"),
            "{}",
            &returned[returned.len() - 200..]
        );
        assert!(!returned.contains("Subject: last"));
    }
    // A small header section is not cut, and nothing is said.
    let raw = notice(&original(), &two_recipients(), None, false);
    assert!(!String::from_utf8_lossy(&raw).contains("is cut to"));
}

#[test]
fn ret_full_returns_a_small_seven_bit_message_whole_and_others_as_headers() {
    let failures = two_recipients();
    let raw = notice(&original(), &failures, None, true);
    assert_wire_safe(&raw);
    let m = parse(&raw);
    let [_, _, returned] = report_parts_returning(&m, ("message", "rfc822"));
    let PartType::Message(inner) = &returned.body else {
        panic!("the original as a message/rfc822 part");
    };
    assert_eq!(inner.subject(), Some("quarterly figures"));
    assert!(String::from_utf8_lossy(&raw).contains(BODY_MARKER));

    // Too large, or 8-bit: its headers only, as without RET=FULL.
    let mut large = original();
    large.extend(b"x".repeat(998).iter().chain(b"\r\n").cycle().take(60_000));
    large.extend_from_slice(b"\r\n");
    let mut eight_bit = original();
    eight_bit.extend_from_slice("caf\u{e9}\r\n".as_bytes());
    for o in [large, eight_bit] {
        let raw = notice(&o, &failures, None, true);
        assert_wire_safe(&raw);
        let m = parse(&raw);
        let [_, _, headers] = report_parts(&m);
        assert!(!String::from_utf8_lossy(headers.contents()).contains(BODY_MARKER));
    }
    // Success alone never returns the body, whatever RET says.
    let mut relayed = failed("bob@far.test", "2.0.0", None, None);
    relayed.action = DsnAction::Relayed;
    let raw = notice(&original(), &[relayed], None, true);
    assert!(!String::from_utf8_lossy(&raw).contains(BODY_MARKER));
}

/// A notice to a UTF-8 sender is RFC 6533's: a global delivery status with
/// addresses as they are, the original's UTF-8 headers as they are, and it
/// is known for a notice (never bounced).
#[test]
fn a_notice_to_a_utf8_sender_is_a_global_delivery_status() {
    let mut original =
        "Subject: caf\u{e9}\r\nFrom: J\u{fc}rgen <j\u{fc}rgen@example.com>\r\n\r\nbody\r\n"
            .as_bytes()
            .to_vec();
    let mut r = failed("b\u{f8}b@far.test", "5.1.1", Some("550 5.1.1 no"), None);
    r.original_recipient = OriginalRecipient::parse("utf-8;B\u{f8}b@far.test", true);
    let raw = notice_to(
        "j\u{fc}rgen@example.com",
        &original,
        &[r.clone()],
        None,
        false,
    );
    let text = String::from_utf8(raw.clone()).expect("UTF-8");
    assert!(
        text.contains("report-type=global-delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("Content-Type: message/global-delivery-status\r\n"),
        "{text}"
    );
    assert!(text.contains("Original-Recipient: utf-8;B\u{f8}b@far.test\r\nFinal-Recipient: utf-8; b\u{f8}b@far.test\r\n"), "{text}");
    assert!(text.contains("Content-Type: message/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: caf\u{e9}\r\n"), "{text}");
    assert!(text.contains("charset=utf-8"), "{text}");
    assert!(!text.contains("\r\nbody\r\n"), "never the body");
    assert!(
        text.contains(
            "Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n"
        ),
        "{text}"
    );
    assert!(is_bounce(&raw));
    for line in text.split("\r\n") {
        assert!(line.len() <= 998 && !line.contains(['\r', '\n']));
    }
    let m = parse(&raw);
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    // Headers that are not UTF-8 go quoted-printable, as for anyone.
    original.splice(9..10, [0xff]);
    let raw = notice_to("j\u{fc}rgen@example.com", &original, &[r], None, false);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains(
            "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable"
        ),
        "{text}"
    );
}

/// A long UTF-8 address in a notice to an ASCII sender is escaped and
/// cut, never past the line limit.
#[test]
fn a_long_utf8_address_stays_within_the_line_limit() {
    let address = format!("{}@far.test", "\u{4e2d}".repeat(300));
    let r = failed(&address, "5.1.1", Some("550 5.1.1 no"), None);
    let raw = bounce(&original(), &[r]);
    assert_wire_safe(&raw);
    let text = String::from_utf8(raw).expect("ASCII");
    assert!(text.contains("Final-Recipient: utf-8; \\x{4E2D}"), "{text}");
}
