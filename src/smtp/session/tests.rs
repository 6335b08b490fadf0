//! The session driven in memory: lines in, replies out, with a real
//! argon2 hash behind AUTH and a real compiled policy behind RCPT.

use super::*;
use crate::credentials::{hash_password, verify_password};
use crate::policy::{Login, PolicyConfig};
use proptest::prelude::*;
use std::sync::OnceLock;

const HOST: &str = "mx.test";
const PASSWORD: &str = "s3cret";

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// A documentation address (TEST-NET-3): no socket is ever opened.
fn remote() -> IpAddr {
    IpAddr::from([203, 0, 113, 7])
}

fn alice_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(PASSWORD).unwrap_or_default())
}

fn config(auth_mode: AuthMode) -> PolicyConfig {
    PolicyConfig {
        local_domains: vec!["example.test".into()],
        users: vec![Login {
            name: "alice".into(),
            password_hash: alice_hash().to_string(),
        }],
        auth_mode,
        ..PolicyConfig::default()
    }
}

fn policy(auth_mode: AuthMode) -> Arc<Policy> {
    Arc::new(Policy::compile(&config(auth_mode)).expect("test policy compiles"))
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A session plus what a test needs around it: the policy to pass, and
/// the last message handed over for storage.
struct Client {
    session: Session,
    policy: Arc<Policy>,
    message: Option<Message>,
    decisions: Vec<RecipientDecision>,
    closed: bool,
    /// Recipients the session asked to verify. The stand-in route knows
    /// every local part but `nobody...` (550) and cannot be asked about
    /// `later...` (450).
    verified: Vec<String>,
    /// Blocklist lookups asked for, and whether the client is listed.
    looked_up: usize,
    listed: bool,
}

impl Client {
    fn new(kind: BindKind, peer: IpAddr, limits: Limits) -> Client {
        Client::with(kind, peer, false, true, limits, policy(AuthMode::AnyUser))
    }

    fn with(
        kind: BindKind,
        peer: IpAddr,
        tls_active: bool,
        tls_available: bool,
        limits: Limits,
        policy: Arc<Policy>,
    ) -> Client {
        Client {
            session: Session::new(SessionParams {
                hostname: HOST.into(),
                kind,
                peer,
                tls_active,
                tls_available,
                limits,
                spool_space: Default::default(),
            }),
            policy,
            message: None,
            decisions: Vec::new(),
            closed: false,
            verified: Vec::new(),
            looked_up: 0,
            listed: false,
        }
    }

    /// Runs the actions as the I/O layer would (argon2 for real, storage
    /// always succeeding) and returns the replies as the client sees them.
    fn run(&mut self, actions: Vec<Action>) -> String {
        let mut wire = String::new();
        for action in actions {
            match action {
                Action::Reply(r) => wire.push_str(&r.to_string()),
                Action::VerifyAuth(req) => {
                    let ok = verify_password(req.password_hash.as_deref(), &req.password);
                    let more = self.session.auth_result(ok.into());
                    wire.push_str(&self.run(more));
                }
                Action::RecipientDecided(d) => self.decisions.push(d),
                Action::ReserveQuota(d) => {
                    let more = self.session.recipient_checked(d);
                    wire.push_str(&self.run(more));
                }
                Action::CheckRecipient {
                    decided: mut d,
                    checks,
                } => {
                    use crate::policy::decision::{HopCheck, Reason, Verification};
                    if checks.dnsbl {
                        self.looked_up += 1;
                        if self.listed {
                            d.decision = d.decision.blocklisted(
                                self.session.params().peer,
                                "bl.test".into(),
                                "127.0.0.2".into(),
                            );
                        }
                    }
                    if !checks.verify || !d.decision.is_allowed() {
                        let more = self.session.recipient_network_checked(d);
                        wire.push_str(&self.run(more));
                        continue;
                    }
                    self.verified.push(d.recipient.to_string());
                    let check = HopCheck {
                        hop: "10.0.0.5:25".into(),
                        said: "250 2.1.5 Ok".into(),
                        remembered: false,
                    };
                    let finding = if d.recipient.local.starts_with("nobody") {
                        Err(Reason::RecipientUnknown { check })
                    } else if d.recipient.local.starts_with("later") {
                        Err(Reason::RecipientUnverified { check })
                    } else {
                        Ok(Verification::Known { check })
                    };
                    d.decision = d.decision.verified(finding);
                    let more = self.session.recipient_network_checked(d);
                    wire.push_str(&self.run(more));
                }
                Action::Message(m) => {
                    self.message = Some(*m);
                    let r = self.session.message_stored(Ok("Q1".into()));
                    wire.push_str(&r.to_string());
                }
                Action::StartTls | Action::StartData => {}
                Action::Close(_) => self.closed = true,
            }
        }
        wire
    }

    fn send(&mut self, line: &[u8]) -> String {
        let policy = Arc::clone(&self.policy);
        let actions = self.session.handle_line(line, &policy);
        self.run(actions)
    }

    /// `cmd("RCPT TO:<a@b>", "550")`: sends a line, asserts the reply
    /// starts with `expect`, returns the whole reply.
    fn cmd(&mut self, line: &str, expect: &str) -> String {
        let wire = self.send(line.as_bytes());
        assert!(
            wire.starts_with(expect),
            "{line:?}: expected {expect:?}, got {wire:?}"
        );
        wire
    }

    /// Feeds DATA bytes in one chunk; returns the replies and how many
    /// bytes were consumed when the message ended.
    fn data(&mut self, bytes: &[u8]) -> (String, Option<usize>) {
        match self.session.handle_data(bytes) {
            DataProgress::Continue => (String::new(), None),
            DataProgress::Finished { consumed, actions } => (self.run(actions), Some(consumed)),
        }
    }

    fn ehlo_and_mail(&mut self) {
        self.cmd("EHLO client.test", "250");
        self.cmd("MAIL FROM:<sender@outside.test>", "250 2.1.0");
        self.cmd("RCPT TO:<bob@example.test>", "250 2.1.5");
    }
}

fn client() -> Client {
    Client::new(BindKind::Smtp, remote(), Limits::default())
}

#[test]
fn greeting_and_timeout() {
    let c = client();
    assert_eq!(
        c.session.greeting().to_string(),
        "220 mx.test ESMTP relaygate\r\n"
    );
    assert!(
        c.session
            .timeout_reply()
            .to_string()
            .starts_with("421 4.4.2 ")
    );
}

#[test]
fn ehlo_advertises_extensions() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    let wire = c.cmd("EHLO client.test", "250-mx.test\r\n");
    for ext in [
        "250-PIPELINING\r\n",
        "250-SIZE 26214400\r\n",
        "250-8BITMIME\r\n",
        "250-ENHANCEDSTATUSCODES\r\n",
        "250-DSN\r\n",
        "250-STARTTLS\r\n",
        "250 AUTH PLAIN LOGIN\r\n",
    ] {
        assert!(wire.contains(ext), "{ext:?} missing from {wire:?}");
    }
}

#[test]
fn auth_is_offered_only_over_tls_loopback_or_when_allowed() {
    let offered = |peer: IpAddr, tls: bool, plaintext: bool, mode: AuthMode| {
        let limits = Limits {
            allow_plaintext_auth: plaintext,
            ..Limits::default()
        };
        let mut c = Client::with(BindKind::Smtp, peer, tls, true, limits, policy(mode));
        c.cmd("EHLO c", "250").contains("AUTH PLAIN LOGIN")
    };
    assert!(!offered(remote(), false, false, AuthMode::AnyUser));
    assert!(offered(remote(), true, false, AuthMode::AnyUser));
    assert!(offered(loopback(), false, false, AuthMode::AnyUser));
    assert!(offered(
        "::ffff:127.0.0.1".parse().unwrap_or(loopback()),
        false,
        false,
        AuthMode::AnyUser
    ));
    assert!(offered(remote(), false, true, AuthMode::AnyUser));
    assert!(!offered(loopback(), true, true, AuthMode::None));
}

#[test]
fn starttls_is_not_offered_when_active_or_unavailable() {
    let mut active = Client::with(
        BindKind::Smtps,
        remote(),
        true,
        true,
        Limits::default(),
        policy(AuthMode::AnyUser),
    );
    assert!(!active.cmd("EHLO c", "250").contains("STARTTLS"));
    active.cmd("STARTTLS", "503 5.5.1");
    let mut none = Client::with(
        BindKind::Smtp,
        remote(),
        false,
        false,
        Limits::default(),
        policy(AuthMode::AnyUser),
    );
    assert!(!none.cmd("EHLO c", "250").contains("STARTTLS"));
    none.cmd("STARTTLS", "502 5.5.1");
}

#[test]
fn dsn_parameters_are_checked_and_kept_with_the_transaction() {
    let mut c = client();
    c.cmd("EHLO client.test", "250");
    c.cmd(
        "MAIL FROM:<a@outside.test> RET=FULL RET=HDRS",
        "501 5.5.4 Duplicate RET",
    );
    c.cmd("MAIL FROM:<a@outside.test> RET=BODY", "501 5.5.4 Bad RET");
    c.cmd("MAIL FROM:<a@outside.test> ENVID", "501 5.5.4 Bad ENVID");
    c.cmd(
        "MAIL FROM:<a@outside.test> ENVID=a+0D+0Ab",
        "501 5.5.4 Bad ENVID",
    );
    let long = "x".repeat(101);
    c.cmd(
        &format!("MAIL FROM:<a@outside.test> ENVID={long}"),
        "501 5.5.4 Bad ENVID",
    );
    c.cmd(
        "MAIL FROM:<a@outside.test> ret=hdrs ENVID=QQ+20314",
        "250 2.1.0",
    );
    let t = c.session.transaction().expect("transaction open");
    assert_eq!(t.dsn.ret, Some(dsn_params::Ret::Headers));
    assert_eq!(t.dsn.envid.as_deref(), Some("QQ+20314"));
    assert_eq!(t.dsn.envid_text().as_deref(), Some("QQ 314"));

    c.cmd(
        "RCPT TO:<bob@example.test> NOTIFY=NEVER,SUCCESS",
        "501 5.5.4 Bad NOTIFY",
    );
    c.cmd(
        "RCPT TO:<bob@example.test> NOTIFY=SUCCESS NOTIFY=FAILURE",
        "501 5.5.4 Duplicate NOTIFY",
    );
    c.cmd(
        "RCPT TO:<bob@example.test> ORCPT=bob@example.test",
        "501 5.5.4 Bad ORCPT",
    );
    c.cmd(
        "RCPT TO:<bob@example.test> ORCPT=rfc822;bob+0Ax@example.test",
        "501 5.5.4 Bad ORCPT",
    );
    c.cmd("RCPT TO:<bob@example.test> FOO=BAR", "555 5.5.4");
    c.cmd(
        "RCPT TO:<bob@example.test> notify=failure,delay ORCPT=rfc822;Bob+2Bin@example.test",
        "250 2.1.5",
    );
    c.cmd("RCPT TO:<carol@example.test>", "250 2.1.5");
    let t = c.session.transaction().expect("transaction open");
    let bob = &t.recipients[0].dsn;
    assert_eq!(
        bob.notify.map(dsn_params::Notify::as_param).as_deref(),
        Some("FAILURE,DELAY")
    );
    let orcpt = bob.orcpt.as_ref().expect("ORCPT kept");
    assert_eq!(
        (orcpt.addr_type.as_str(), orcpt.address.as_str()),
        ("rfc822", "Bob+in@example.test")
    );
    assert_eq!(t.recipients[1].dsn, dsn_params::RecipientDsn::default());

    // DSN is an ESMTP extension: not after HELO.
    let mut old = client();
    old.cmd("HELO client.test", "250");
    old.cmd("MAIL FROM:<a@outside.test> RET=HDRS", "555 5.5.4");
    old.cmd("MAIL FROM:<a@outside.test> RET", "555 5.5.4");
    old.cmd("MAIL FROM:<a@outside.test>", "250 2.1.0");
    old.cmd("RCPT TO:<bob@example.test> NOTIFY=SUCCESS", "555 5.5.4");
    old.cmd(
        "RCPT TO:<bob@example.test> ORCPT=rfc822;bob@example.test",
        "555 5.5.4",
    );
    old.cmd("RCPT TO:<bob@example.test>", "250 2.1.5");
}

#[test]
fn helo_gets_a_plain_250() {
    let mut c = client();
    assert_eq!(c.cmd("HELO client.test", "250"), "250 mx.test\r\n");
    c.cmd("MAIL FROM:<a@outside.test>", "250 2.1.0");
    let t = c.session.transaction().expect("transaction open");
    assert!(!t.esmtp);
    assert_eq!(
        t.sender.as_ref().map(|s| s.to_string()).as_deref(),
        Some("a@outside.test")
    );
}

#[test]
fn syntax_and_unknown_errors() {
    let mut c = client();
    c.cmd("EHLO", "501 5.5.4");
    c.cmd("HELO", "501 5.5.4");
    c.cmd("BOGUS", "500 5.5.2");
    c.cmd("MAIL FROM <a@b.test>", "501 5.5.4");
    c.cmd("DATA please", "501 5.5.4");
}

#[test]
fn garbage_in_commands_is_refused_without_panic() {
    let mut c = client();
    for line in [
        &b"EHLO a\0b"[..],
        b"EHLO a\rb",
        b"EHLO a\nb",
        b"\xff\xfe\xfd",
        b"EHLO \xc3\x28",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let wire = c.send(line);
        assert!(wire.starts_with("500 5.5.2"), "{line:?} -> {wire:?}");
    }
    c.cmd("NOOP", "250 2.0.0");
}

#[test]
fn out_of_sequence_commands() {
    let mut c = client();
    c.cmd("MAIL FROM:<a@outside.test>", "503 5.5.1");
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    c.cmd("DATA", "503 5.5.1");
    c.cmd("EHLO c", "250");
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    c.cmd("DATA", "503 5.5.1");
    c.cmd("MAIL FROM:<a@outside.test>", "250 2.1.0");
    c.cmd("MAIL FROM:<a@outside.test>", "503 5.5.1");
    c.cmd("DATA", "503 5.5.1");
    // A refused recipient is not enough for DATA either.
    c.cmd("RCPT TO:<x@elsewhere.test>", "554 5.7.1");
    c.cmd("DATA", "503 5.5.1");
}

#[test]
fn rset_and_new_ehlo_reset_the_transaction() {
    let mut c = client();
    c.ehlo_and_mail();
    c.cmd("RSET", "250 2.0.0");
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    c.cmd("MAIL FROM:<a@outside.test>", "250");
    c.cmd("EHLO again", "250");
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    c.cmd("MAIL FROM:<a@outside.test>", "250");
    c.cmd("HELO again", "250");
    c.cmd("DATA", "503 5.5.1");
    c.cmd("RSET extra", "501 5.5.4");
}

#[test]
fn mail_parameters() {
    let mut c = client();
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@outside.test> SIZE=26214401", "552 5.3.4");
    c.cmd("MAIL FROM:<a@outside.test> SIZE=lots", "501 5.5.4");
    c.cmd("MAIL FROM:<a@outside.test> SIZE", "501 5.5.4");
    c.cmd("MAIL FROM:<a@outside.test> BODY=BINARYMIME", "501 5.5.4");
    c.cmd("MAIL FROM:<a@outside.test> XFORWARD=1", "555 5.5.4");
    c.cmd("MAIL FROM:<a@outside.test> AUTH=<>", "555 5.5.4");
    c.cmd("MAIL FROM:<not an address>", "501 5.1.7");
    c.cmd(
        "MAIL FROM:<a@outside.test> SIZE=1000 BODY=8BITMIME",
        "250 2.1.0",
    );
    c.cmd("RCPT TO:<bob@example.test> XRCPT=1", "555 5.5.4");
    c.cmd("RCPT TO:<bob@>", "501 5.1.3");
    c.cmd("RCPT TO:<bob@example.test>", "250 2.1.5");
    c.cmd("DATA", "354");
    c.data(b"hi\r\n.\r\n");
    let m = c.message.take().expect("message stored");
    assert_eq!(m.transaction.body_type, BodyType::EightBitMime);
    assert_eq!(m.transaction.declared_size, Some(1000));
    assert_eq!(m.transaction.helo, "c");
    assert!(m.transaction.esmtp);

    // Null sender, bare path, and AUTH= where AUTH is offered.
    let mut l = Client::new(BindKind::Smtp, loopback(), Limits::default());
    l.cmd("EHLO c", "250");
    l.cmd("MAIL FROM:<> AUTH=<>", "250 2.1.0");
    l.cmd("RSET", "250");
    l.cmd("MAIL FROM: a@outside.test BODY=7BIT", "250 2.1.0");
}

#[test]
fn too_many_recipients() {
    let limits = Limits {
        max_recipients: 2,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    c.ehlo_and_mail();
    c.cmd("RCPT TO:<carol@example.test>", "250");
    c.cmd("RCPT TO:<dave@example.test>", "452 4.5.3");
}

/// A client that sends more recipients than the limit keeps the ones
/// accepted (RFC 5321 4.5.3.1.10): the extra 452s are not errors that end
/// the session, until there are more than `RECIPIENT_OVERSHOOT` of them.
#[test]
fn recipients_over_the_limit_do_not_end_the_session() {
    let limits = Limits {
        max_recipients: 2,
        max_bad_commands: 3,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    c.ehlo_and_mail();
    c.cmd("RCPT TO:<carol@example.test>", "250");
    for i in 0..RECIPIENT_OVERSHOOT {
        c.cmd(&format!("RCPT TO:<u{i}@example.test>"), "452 4.5.3");
    }
    assert_eq!(c.session.bad_commands(), 0);
    c.cmd("DATA", "354");
    let (wire, _) = c.data(b"Subject: t\r\n\r\nbody\r\n.\r\n");
    assert!(wire.starts_with("250 2.0.0"), "{wire}");
    assert_eq!(
        c.message
            .take()
            .expect("message")
            .transaction
            .recipients
            .len(),
        2
    );
    // Past the overshoot they count, and the flood ends with 421.
    c.cmd("MAIL FROM:<alice@example.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("RCPT TO:<carol@example.test>", "250");
    for _ in 0..3 {
        c.cmd("RCPT TO:<x@example.test>", "452 4.5.3");
    }
    c.cmd("RCPT TO:<x@example.test>", "421 4.7.0");
}

#[test]
fn size_takes_digits_only() {
    let mut c = client();
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@example.test> SIZE=+5", "501 5.5.4");
    c.cmd("MAIL FROM:<a@example.test> SIZE=-5", "501 5.5.4");
    c.cmd("MAIL FROM:<a@example.test> SIZE=5", "250 2.1.0");
}

#[test]
fn denied_recipient_leaves_others_accepted() {
    let mut c = client();
    c.ehlo_and_mail();
    // Relay from an unlisted IP: the policy's own reply.
    c.cmd("RCPT TO:<someone@elsewhere.test>", "554 5.7.1 ");
    c.cmd("RCPT TO:<carol@example.test>", "250 2.1.5");
    c.cmd("DATA", "354");
    let (wire, _) = c.data(b"Subject: t\r\n\r\nbody\r\n.\r\n");
    assert!(wire.starts_with("250 2.0.0 Ok: queued as Q1"), "{wire}");
    let m = c.message.take().expect("message");
    let accepted: Vec<String> = m
        .transaction
        .recipients
        .iter()
        .map(|r| r.recipient.to_string())
        .collect();
    assert_eq!(accepted, ["bob@example.test", "carol@example.test"]);
    assert_eq!(c.decisions.len(), 3);
    assert_eq!(
        c.decisions
            .iter()
            .filter(|d| !d.decision.is_allowed())
            .count(),
        1
    );
    assert_eq!(m.body, b"Subject: t\r\n\r\nbody\r\n");
}

#[test]
fn policy_snapshot_is_taken_at_mail() {
    let open = Arc::new(
        Policy::compile(&PolicyConfig {
            allow: vec!["203.0.113.0/24".into()],
            switches: crate::policy::settings::Switches {
                domain_restrict_send: false,
                ..Default::default()
            },
            ..config(AuthMode::AnyUser)
        })
        .expect("compiles"),
    );
    let mut c = Client::with(
        BindKind::Smtp,
        remote(),
        false,
        false,
        Limits::default(),
        Arc::clone(&open),
    );
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@outside.test>", "250");
    // The policy is swapped mid-transaction: this transaction keeps the old.
    c.policy = policy(AuthMode::AnyUser);
    c.cmd("RCPT TO:<x@elsewhere.test>", "250 2.1.5");
    c.cmd("RSET", "250");
    c.cmd("MAIL FROM:<a@outside.test>", "250");
    c.cmd("RCPT TO:<x@elsewhere.test>", "554 5.7.1");
}

#[test]
fn submission_requires_auth_before_mail() {
    let mut c = Client::new(BindKind::Submission, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<alice@example.test>", "530 5.7.0");
    let plain = b64(format!("\0alice\0{PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {plain}"), "235 2.7.0");
    c.cmd("MAIL FROM:<alice@example.test>", "250 2.1.0");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    c.data(b"x\r\n.\r\n");
    let m = c.message.take().expect("message");
    assert_eq!(m.transaction.login.as_deref(), Some("alice"));
}

#[test]
fn starttls_resets_the_session() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    let plain = b64(format!("\0alice\0{PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {plain}"), "235");
    c.cmd("MAIL FROM:<a@outside.test>", "250");
    let actions = c.session.handle_line(b"STARTTLS", &c.policy);
    assert!(
        matches!(actions.first(), Some(Action::Reply(r)) if r.code == 220 && r.status == Some("2.0.0"))
    );
    assert!(matches!(actions.get(1), Some(Action::StartTls)));
    // Pipelined plaintext after STARTTLS is not taken as a command.
    c.cmd("NOOP", "503 5.5.1");
    c.session.tls_established();
    assert_eq!(c.session.login(), None);
    c.cmd("MAIL FROM:<a@outside.test>", "503 5.5.1");
    let wire = c.cmd("EHLO c", "250");
    assert!(!wire.contains("STARTTLS"));
    c.cmd("STARTTLS", "503 5.5.1");
}

#[test]
fn starttls_offered_then_gone_is_454() {
    let mut c = client();
    c.cmd("EHLO c", "250");
    c.session.set_tls_available(false);
    c.cmd("STARTTLS", "454 4.7.0");
    c.cmd("STARTTLS now", "501 5.5.4");
}

#[test]
fn vrfy_help_noop_quit() {
    let mut c = client();
    c.cmd("VRFY root", "252 2.5.2");
    c.cmd("HELP", "214 2.0.0");
    c.cmd("NOOP", "250 2.0.0");
    c.cmd("QUIT", "221 2.0.0");
    assert!(c.closed);
    assert!(c.session.is_closed());
    let after = c.session.handle_line(b"NOOP", &c.policy);
    assert!(matches!(after.as_slice(), [Action::Close(_)]));
}

#[test]
fn auth_plain_success_and_failure() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    let wrong = b64(b"\0alice\0wrong");
    c.cmd(&format!("AUTH PLAIN {wrong}"), "535 5.7.8");
    assert_eq!(c.session.auth_failures(), 1);
    let unknown = b64(format!("\0mallory\0{PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {unknown}"), "535 5.7.8");
    assert_eq!(c.session.auth_failures(), 2);
    // Without an initial response: an empty 334 prompt first.
    assert_eq!(c.cmd("AUTH PLAIN", "334"), "334 \r\n");
    c.cmd(
        &b64(format!("alice\0alice\0{PASSWORD}").as_bytes()),
        "235 2.7.0",
    );
    assert_eq!(c.session.login(), Some("alice"));
    c.cmd("AUTH PLAIN", "503 5.5.1");
}

#[test]
fn auth_plain_refuses_another_authorization_identity() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    let other = b64(format!("bob\0alice\0{PASSWORD}").as_bytes());
    // Well-formed, with the right password: refused as acting as another
    // user, no password checked (no guess spent).
    c.cmd(
        &format!("AUTH PLAIN {other}"),
        "535 5.7.8 Error: authentication failed: acting as another user",
    );
    assert_eq!(c.session.auth_failures(), 0);
    c.cmd(&format!("AUTH PLAIN {}", b64(b"no-nul")), "501 5.5.2");
    c.cmd("AUTH PLAIN =", "501 5.5.2");
    assert_eq!(c.session.login(), None);
}

#[test]
fn auth_login_success_and_failure() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    assert_eq!(c.cmd("AUTH LOGIN", "334"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd(&b64(b"alice"), "334"), "334 UGFzc3dvcmQ6\r\n");
    c.cmd(&b64(b"nope"), "535 5.7.8");
    assert_eq!(c.session.auth_failures(), 1);
    // With the username as initial response.
    c.cmd(&format!("AUTH LOGIN {}", b64(b"alice")), "334 UGFzc3dvcmQ6");
    c.cmd(&b64(PASSWORD.as_bytes()), "235 2.7.0");
    assert_eq!(c.session.login(), Some("alice"));
}

#[test]
fn auth_cancel_bad_base64_and_unknown_mechanism() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    c.cmd("AUTH LOGIN", "334");
    c.cmd("*", "501 5.0.0");
    c.cmd("AUTH PLAIN", "334");
    c.cmd("!!!not base64!!!", "501 5.5.2");
    c.cmd("AUTH LOGIN", "334");
    c.send(b"\xff\x00");
    c.cmd("AUTH CRAM-MD5", "504 5.5.4");
    c.cmd("AUTH PLAIN @@@", "501 5.5.2");
    // Back to commands after each.
    c.cmd("NOOP", "250 2.0.0");
}

#[test]
fn auth_out_of_sequence_and_unavailable() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("AUTH PLAIN", "503 5.5.1");
    c.cmd("HELO c", "250");
    c.cmd("AUTH PLAIN", "503 5.5.1");
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<a@outside.test>", "250");
    c.cmd("AUTH PLAIN", "503 5.5.1");

    let mut off = Client::with(
        BindKind::Smtp,
        loopback(),
        false,
        true,
        Limits::default(),
        policy(AuthMode::None),
    );
    off.cmd("EHLO c", "250");
    off.cmd("AUTH PLAIN", "503 5.5.1");

    let mut plaintext = client();
    plaintext.cmd("EHLO c", "250");
    plaintext.cmd("AUTH PLAIN", "538 5.7.11");
}

#[test]
fn auth_lockout_is_454() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    c.session.set_auth_locked_out(true);
    c.cmd("AUTH LOGIN", "454 4.7.0");
    c.session.set_auth_locked_out(false);
    c.cmd("AUTH LOGIN", "334");
}

#[test]
fn auth_lines_may_be_longer_than_commands() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.cmd("EHLO c", "250");
    assert_eq!(c.session.max_line_len(), 512);
    c.cmd("AUTH PLAIN", "334");
    assert_eq!(c.session.max_line_len(), AUTH_LINE_MAX);
    let long = b64(format!("\0alice\0{}", "p".repeat(700)).as_bytes());
    c.cmd(&long, "535 5.7.8");
    assert_eq!(c.session.max_line_len(), 512);
}

#[test]
fn overlong_lines_are_500_and_the_session_goes_on() {
    let mut c = client();
    let actions = c.session.handle_overlong_line();
    assert!(c.run(actions).starts_with("500 5.5.2"));
    c.cmd(&format!("EHLO {}", "a".repeat(600)), "500 5.5.2");
    c.cmd("EHLO c", "250");
    c.cmd("AUTH LOGIN", "538");
    // An overlong answer to an AUTH prompt ends the exchange.
    let mut l = Client::new(BindKind::Smtp, loopback(), Limits::default());
    l.cmd("EHLO c", "250");
    l.cmd("AUTH LOGIN", "334");
    let actions = l.session.handle_overlong_line();
    assert!(l.run(actions).starts_with("500 5.5.6"));
    l.cmd("NOOP", "250");
}

#[test]
fn too_many_bad_commands_close_with_421() {
    let limits = Limits {
        max_bad_commands: 3,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    for _ in 0..3 {
        c.cmd("BOGUS", "500 5.5.2");
    }
    c.cmd("MAIL FROM:<a@b.test>", "421 4.7.0");
    assert!(c.closed);
    assert!(c.session.is_closed());
    assert_eq!(c.session.bad_commands(), 4);
}

#[test]
fn pipelined_transaction_and_commands_after_the_final_dot() {
    let mut c = client();
    let mut wire = String::new();
    for line in [
        "EHLO client.test",
        "MAIL FROM:<sender@outside.test>",
        "RCPT TO:<bob@example.test>",
        "RCPT TO:<x@elsewhere.test>",
        "RCPT TO:<carol@example.test>",
        "DATA",
    ] {
        wire.push_str(&c.send(line.as_bytes()));
    }
    let codes: Vec<&str> = wire
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes().get(3) == Some(&b' '))
        .map(|l| l.get(..3).unwrap_or_default())
        .collect();
    assert_eq!(codes, ["250", "250", "250", "554", "250", "354"]);
    assert!(c.session.in_data());

    let stream = b"Subject: p\r\n\r\nline\r\n.\r\nQUIT\r\n";
    let (wire, consumed) = c.data(stream);
    assert!(wire.starts_with("250 2.0.0"), "{wire}");
    let rest = stream.get(consumed.unwrap_or(0)..).unwrap_or_default();
    assert_eq!(rest, b"QUIT\r\n");
    let quit = rest.strip_suffix(b"\r\n").unwrap_or(rest);
    assert!(c.send(quit).starts_with("221 2.0.0"));
}

#[test]
fn data_is_unstuffed_and_lines_wait_for_the_store() {
    let mut c = client();
    c.ehlo_and_mail();
    c.cmd("DATA", "354 End data with <CR><LF>.<CR><LF>");
    c.cmd("QUIT", "503 5.5.1"); // a line during DATA is the caller's bug
    let actions = match c.session.handle_data(b"..dot\r\n..\r\n.\r\n") {
        DataProgress::Finished { actions, .. } => actions,
        DataProgress::Continue => Vec::new(),
    };
    let Some(Action::Message(m)) = actions.into_iter().next() else {
        panic!("no message");
    };
    assert_eq!(m.body, b".dot\r\n.\r\n");
    c.cmd("NOOP", "503 5.5.1"); // not before message_stored
    assert!(
        c.session
            .message_stored(Err(NotStored::Failed))
            .to_string()
            .starts_with("451 4.3.0")
    );
    // A full disk says so (RFC 3463 4.3.1): the client is not at fault.
    assert!(
        c.session
            .message_stored(Err(NotStored::NoSpace))
            .to_string()
            .starts_with("452 4.3.1")
    );
    // The transaction is over either way.
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    assert!(matches!(
        c.session.handle_data(b"stray"),
        DataProgress::Finished { consumed: 0, .. }
    ));
}

#[test]
fn smuggled_end_of_data_is_not_the_end() {
    for evil in [&b"\n.\n"[..], b"\r.\r", b"\r\n.\n", b"\n.\r\n"] {
        let mut c = client();
        c.ehlo_and_mail();
        c.cmd("DATA", "354");
        let mut body = b"Subject: a\r\n\r\nfirst".to_vec();
        body.extend_from_slice(evil);
        body.extend_from_slice(
            b"MAIL FROM:<evil@outside.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n",
        );
        let (wire, consumed) = c.data(&body);
        assert_eq!((wire.as_str(), consumed), ("", None), "{evil:?}");
        let (wire, _) = c.data(b".\r\n");
        // Refused as a whole (bare line ending), and nothing was smuggled.
        assert!(wire.starts_with("550 5.6.11"), "{evil:?}: {wire}");
        assert!(c.message.is_none());
        assert!(c.decisions.iter().all(|d| d.recipient.local != "victim"));
    }
}

#[test]
fn bare_line_endings_normalised_when_configured() {
    let limits = Limits {
        bare_line_endings: BareLineEnding::Normalize,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    c.ehlo_and_mail();
    c.cmd("DATA", "354");
    let (wire, _) = c.data(b"a\nb\n.\nc\r\n.\r\n");
    assert!(wire.starts_with("250 2.0.0"), "{wire}");
    let m = c.message.take().expect("message");
    assert_eq!(m.body, b"a\r\nb\r\n.\r\nc\r\n");
    assert_eq!(m.normalized_line_endings, 3);
}

#[test]
fn size_limit_while_streaming() {
    let limits = Limits {
        max_message_size: 100,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    c.ehlo_and_mail();
    c.cmd("DATA", "354");
    for _ in 0..100 {
        assert_eq!(c.data(b"0123456789012345678\r\n").1, None);
    }
    let (wire, consumed) = c.data(b".\r\nNOOP\r\n");
    assert_eq!(consumed, Some(3));
    assert!(wire.starts_with("552 5.3.4"), "{wire}");
    assert!(c.message.is_none());
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    c.cmd("NOOP", "250");
}

#[test]
fn long_text_lines_are_tolerated_up_to_the_limit() {
    let mut c = client();
    c.ehlo_and_mail();
    c.cmd("DATA", "354");
    let mut body = vec![b'x'; 5000];
    body.extend_from_slice(b"\r\n.\r\n");
    let (wire, _) = c.data(&body);
    assert!(wire.starts_with("250"), "{wire}");
    assert_eq!(c.message.as_ref().map(|m| m.long_lines), Some(1));

    c.cmd("MAIL FROM:<a@outside.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("DATA", "354");
    let mut body = vec![b'x'; DEFAULT_MAX_TEXT_LINE - 1];
    body.extend_from_slice(b"\r\n.\r\n");
    let (wire, _) = c.data(&body);
    assert!(wire.starts_with("550 5.6.0"), "{wire}");
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
}

#[test]
fn auth_request_debug_hides_the_password() {
    let req = AuthRequest {
        login: "alice".into(),
        password: "hunter2".into(),
        password_hash: None,
    };
    assert!(!format!("{req:?}").contains("hunter2"));
}

/// The outcome of one whole DATA phase, for comparing chunkings.
fn feed_chunked(
    body: &[u8],
    cuts: &[usize],
    mode: BareLineEnding,
) -> (String, Option<Vec<u8>>, usize) {
    let limits = Limits {
        max_message_size: 64,
        bare_line_endings: mode,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    c.ehlo_and_mail();
    c.cmd("DATA", "354");
    let mut offset = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|&cut| cut % (body.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(body.len());
    for end in bounds {
        let Some(chunk) = body.get(offset..end) else {
            continue;
        };
        let (wire, consumed) = c.data(chunk);
        if let Some(n) = consumed {
            return (wire, c.message.take().map(|m| m.body), offset + n);
        }
        offset = end;
    }
    (String::new(), None, body.len())
}

proptest! {
    #[test]
    fn random_command_lines_never_panic(lines in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..80), 0..30)
    ) {
        let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
        for line in lines {
            let wire = c.send(&line);
            if c.session.in_data() {
                let _ = c.session.handle_data(&line);
            }
            prop_assert!(wire.is_empty() || wire.ends_with("\r\n"));
        }
    }

    #[test]
    fn smtp_like_lines_never_panic(lines in proptest::collection::vec(
        prop_oneof![
            Just("EHLO c".to_string()),
            Just("MAIL FROM:<a@outside.test>".to_string()),
            Just("RCPT TO:<bob@example.test>".to_string()),
            Just("DATA".to_string()),
            Just("RSET".to_string()),
            Just("AUTH PLAIN".to_string()),
            Just("AUTH LOGIN".to_string()),
            Just("*".to_string()),
            "[ -~]{0,40}",
        ], 0..40)
    ) {
        let mut c = Client::new(BindKind::Submission, loopback(), Limits::default());
        for line in lines {
            if c.session.in_data() {
                let _ = c.data(format!("{line}\r\n").as_bytes());
            } else {
                let _ = c.send(line.as_bytes());
            }
        }
    }

    #[test]
    fn chunking_does_not_change_the_body(
        body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..120),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        normalize in any::<bool>(),
    ) {
        let mode = if normalize { BareLineEnding::Normalize } else { BareLineEnding::Reject };
        let mut body = body;
        body.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let whole = feed_chunked(&body, &[], mode);
        let chunked = feed_chunked(&body, &cuts, mode);
        prop_assert_eq!(whole, chunked);
    }
}

/// A disk without room for a whole message (1.5 × the size limit, or
/// spool-min-free if more) refuses MAIL with 452 4.3.1, not counted as the
/// client's error; the next MAIL, once there is room, goes on.
#[test]
fn mail_waits_for_room_on_the_spool_disk() {
    let limits = Limits {
        max_message_size: 1000,
        spool_min_free: 0,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    let space = c.session.params().spool_space.clone();
    c.cmd("EHLO client.test", "250");
    // Not measured yet: mail is taken.
    c.cmd("MAIL FROM:<a@outside.test>", "250 2.1.0");
    c.cmd("RSET", "250");
    space.set(Some(1499));
    for _ in 0..30 {
        c.cmd("MAIL FROM:<a@outside.test>", "452 4.3.1");
    }
    assert_eq!(c.session.bad_commands(), 0);
    // A SIZE over the limit is still the message's fault, said first.
    c.cmd("MAIL FROM:<a@outside.test> SIZE=5000", "552 5.3.4");
    c.cmd("RCPT TO:<bob@example.test>", "503 5.5.1");
    space.set(Some(1500));
    c.cmd("MAIL FROM:<a@outside.test>", "250 2.1.0");
    c.cmd("RCPT TO:<bob@example.test>", "250 2.1.5");

    // spool-min-free above 1.5 × the limit is what counts.
    let limits = Limits {
        max_message_size: 1000,
        spool_min_free: 10_000,
        ..Limits::default()
    };
    let mut c = Client::new(BindKind::Smtp, remote(), limits);
    c.session.params().spool_space.set(Some(9_999));
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@outside.test>", "452 4.3.1");
    c.session.params().spool_space.set(Some(10_000));
    c.cmd("MAIL FROM:<a@outside.test>", "250 2.1.0");
}

#[test]
fn local_recipients_are_verified_when_asked_and_postmaster_never() {
    let mut c = Client::new(
        BindKind::Smtp,
        remote(),
        Limits {
            max_bad_commands: 2,
            ..Limits::default()
        },
    );
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<sender@outside.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250 2.1.5");
    assert!(c.verified.is_empty(), "off by default");
    c.session.set_network_checks(NetworkChecks {
        dnsbl: false,
        verify: true,
    });
    c.cmd("RCPT TO:<carol@example.test>", "250 2.1.5");
    c.cmd("RCPT TO:<postmaster@example.test>", "250 2.1.5");
    c.cmd("RCPT TO:<Postmaster>", "250 2.1.5");
    assert_eq!(c.verified, ["carol@example.test"]);
    // Put off: not an error, however often.
    for _ in 0..5 {
        c.cmd("RCPT TO:<later@example.test>", "450 4.4.1");
    }
    assert_eq!(c.session.bad_commands(), 0);
    // Unknown: an error like any refused recipient.
    c.cmd("RCPT TO:<nobody1@example.test>", "550 5.1.1");
    c.cmd("RCPT TO:<nobody2@example.test>", "550 5.1.1");
    c.cmd("RCPT TO:<nobody3@example.test>", "421 4.7.0");
    assert!(c.closed);
    let d = c.decisions.iter().find(|d| d.recipient.local == "carol");
    let explained = d.map(|d| d.decision.to_string()).unwrap_or_default();
    assert!(
        explained.contains("10.0.0.5:25 knows the recipient (250 2.1.5 Ok)"),
        "{explained}"
    );
    let taken = c
        .session
        .transaction()
        .map(|t| t.recipients.len())
        .unwrap_or_default();
    assert_eq!(taken, 4, "bob, carol and postmaster twice");
}

#[test]
fn verification_comes_before_quotas_and_outbound_mail_is_not_verified() {
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.session.set_network_checks(NetworkChecks {
        dnsbl: false,
        verify: true,
    });
    c.session.set_quotas_on(true);
    c.cmd("EHLO c", "250");
    let plain = b64(format!("\0alice\0{PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {plain}"), "235");
    c.cmd("MAIL FROM:<alice@example.test>", "250");
    c.cmd("RCPT TO:<bob@far.test>", "250");
    c.cmd("RCPT TO:<carol@example.test>", "250");
    c.cmd("RCPT TO:<nobody@example.test>", "550 5.1.1");
    assert_eq!(c.verified, ["carol@example.test", "nobody@example.test"]);
    let taken: Vec<String> = c
        .session
        .transaction()
        .map(|t| {
            t.recipients
                .iter()
                .map(|r| r.recipient.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(taken, ["bob@far.test", "carol@example.test"]);
}

#[test]
fn a_listed_client_is_refused_unless_authenticated_and_before_verification() {
    let checks = NetworkChecks {
        dnsbl: true,
        verify: true,
    };
    let mut c = Client::new(BindKind::Smtp, remote(), Limits::default());
    c.session.set_network_checks(checks);
    c.listed = true;
    c.cmd("EHLO c", "250");
    c.cmd("MAIL FROM:<sender@outside.test>", "250");
    let r = c.cmd("RCPT TO:<bob@example.test>", "554 5.7.1");
    assert!(
        r.contains("Service unavailable; client [203.0.113.7] blocked using bl.test"),
        "{r}"
    );
    assert!(
        c.verified.is_empty(),
        "a listed client's recipient is not asked about"
    );
    assert_eq!(c.session.bad_commands(), 1);
    // Postmaster is refused too: the blocklist is about the client.
    c.cmd("RCPT TO:<postmaster@example.test>", "554 5.7.1");
    let explained = c.decisions[0].decision.to_string();
    assert!(
        explained.contains("client 203.0.113.7 is on the DNS blocklist bl.test (127.0.0.2)"),
        "{explained}"
    );

    // Authenticated: never looked up.
    let mut c = Client::new(BindKind::Smtp, loopback(), Limits::default());
    c.session.set_network_checks(checks);
    c.listed = true;
    c.cmd("EHLO c", "250");
    let plain = b64(format!("\0alice\0{PASSWORD}").as_bytes());
    c.cmd(&format!("AUTH PLAIN {plain}"), "235");
    c.cmd("MAIL FROM:<alice@example.test>", "250");
    c.cmd("RCPT TO:<bob@far.test>", "250");
    assert_eq!(c.looked_up, 0);
}
