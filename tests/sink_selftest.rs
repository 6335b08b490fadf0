//! The SMTP sink (tests/common/sink.rs) checked against a real client
//! (lettre) and the raw line client: plain, STARTTLS, AUTH, per-recipient
//! failures, pipelining, connection reuse and the server modes.

mod common;

use common::Client;
use common::sink::{Sink, SinkMode, SinkOptions};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn email(from: &str, to: &str, subject: &str) -> Message {
    Message::builder()
        .from(from.parse().expect("from"))
        .to(to.parse().expect("to"))
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(format!(
            "Hello from the {subject} test.\n.leading dot line\n"
        ))
        .expect("message")
}

fn mailer(
    addr: SocketAddr,
    tls: Option<Tls>,
    creds: Option<(&str, &str, Mechanism)>,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .hello_name(ClientId::Domain("client.test".into()))
        .timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        b = b.tls(tls);
    }
    if let Some((user, pass, mech)) = creds {
        b = b
            .credentials(Credentials::new(user.into(), pass.into()))
            .authentication(vec![mech]);
    }
    b.build()
}

fn tls_params() -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .expect("tls parameters")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_send() {
    let sink = Sink::start(SinkOptions::default());
    mailer(sink.addr(), None, None)
        .send(email("a@origin.test", "b@dest.test", "plain"))
        .await
        .expect("send");
    let msgs = sink.wait_for_async(1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.mail_from, "a@origin.test");
    assert_eq!(m.rcpts, ["b@dest.test"]);
    assert!(!m.tls);
    assert_eq!(m.auth_user, None);
    assert_eq!(m.connection, 1);
    assert_eq!(m.helo, "client.test");
    let body = m.body_str();
    assert!(body.contains("Subject: plain\r\n"), "{body}");
    assert!(
        body.contains("\r\n.leading dot line\r\n"),
        "unstuffed: {body}"
    );
    assert!(!body.contains("\r\n..leading"), "{body}");
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.rcpt_attempts("b@dest.test"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_auth() {
    let sink = Sink::start(SinkOptions {
        tls: true,
        auth: Some(("alice".into(), "wonderland".into())),
        ..SinkOptions::default()
    });
    assert!(
        sink.cert_pem()
            .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
    );
    let addr = sink.addr();

    // No credentials: MAIL is refused with 530.
    let err = mailer(addr, Some(Tls::Required(tls_params())), None)
        .send(email("a@origin.test", "b@dest.test", "noauth"))
        .await
        .expect_err("auth required");
    assert!(err.to_string().contains("5.7.0"), "{err}");

    mailer(
        addr,
        Some(Tls::Required(tls_params())),
        Some(("alice", "wonderland", Mechanism::Plain)),
    )
    .send(email("a@origin.test", "b@dest.test", "plain-auth"))
    .await
    .expect("AUTH PLAIN over STARTTLS");

    mailer(addr, None, Some(("alice", "wonderland", Mechanism::Login)))
        .send(email("a@origin.test", "c@dest.test", "login-auth"))
        .await
        .expect("AUTH LOGIN in plaintext");

    let err = mailer(
        addr,
        Some(Tls::Required(tls_params())),
        Some(("alice", "wrong", Mechanism::Plain)),
    )
    .send(email("a@origin.test", "b@dest.test", "badpass"))
    .await
    .expect_err("wrong password");
    assert!(err.to_string().contains("5.7.8"), "{err}");

    let msgs = sink.wait_for_async(2, WAIT).await;
    assert_eq!(msgs.len(), 2);
    assert!(msgs[0].tls);
    assert_eq!(msgs[0].auth_user.as_deref(), Some("alice"));
    assert!(msgs[0].body_str().contains("Subject: plain-auth"));
    assert!(!msgs[1].tls);
    assert_eq!(msgs[1].auth_user.as_deref(), Some("alice"));
    assert_eq!(sink.connections(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perm_temp_and_flaky_recipients() {
    let sink = Sink::start(SinkOptions::default());
    let m = mailer(sink.addr(), None, None);

    let err = m
        .send(email("a@origin.test", "perm-user@dest.test", "perm"))
        .await
        .expect_err("perm");
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("5.1.1"), "{err}");

    for _ in 0..2 {
        let err = m
            .send(email("a@origin.test", "temp1@dest.test", "temp"))
            .await
            .expect_err("temp every time");
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("4.3.0"), "{err}");
    }

    let err = m
        .send(email("a@origin.test", "flaky@dest.test", "flaky"))
        .await
        .expect_err("flaky first");
    assert!(err.is_transient(), "{err}");
    m.send(email("a@origin.test", "flaky@dest.test", "flaky"))
        .await
        .expect("flaky second");

    let msgs = sink.wait_for_async(1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["flaky@dest.test"]);
    assert_eq!(sink.rcpt_attempts("perm-user@dest.test"), 1);
    assert_eq!(sink.rcpt_attempts("temp1@dest.test"), 2);
    assert_eq!(sink.rcpt_attempts("flaky@dest.test"), 2);
    // Per exact address: another flaky address starts over.
    assert_eq!(sink.rcpt_attempts("flaky2@dest.test"), 0);
}

fn greet(c: &mut Client) -> String {
    let g = c.reply();
    assert!(g.starts_with("220 "), "{g}");
    c.expect("EHLO client.test", "250")
}

#[test]
fn pipelining_rset_and_reuse() {
    let sink = Sink::start(SinkOptions {
        max_size: 1000,
        ..SinkOptions::default()
    });
    let mut c = Client::connect(sink.addr());
    let ehlo = greet(&mut c);
    for ext in ["PIPELINING", "8BITMIME", "SIZE 1000", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(ext), "{ext} missing: {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );

    // One pipelined group; a refused recipient does not spoil the others.
    c.send(
        b"MAIL FROM:<a@origin.test> BODY=8BITMIME SIZE=100\r\n\
          RCPT TO:<one@dest.test>\r\n\
          RCPT TO:<perm@dest.test>\r\n\
          RCPT TO:<two@dest.test>\r\n\
          DATA\r\n",
    );
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    assert!(replies[0].starts_with("250 2.1.0"), "{replies:?}");
    assert!(replies[1].starts_with("250 2.1.5"), "{replies:?}");
    assert!(
        replies[2].starts_with("550 5.1.1 no such user"),
        "{replies:?}"
    );
    assert!(replies[3].starts_with("250 2.1.5"), "{replies:?}");
    assert!(replies[4].starts_with("354"), "{replies:?}");
    c.send("Subject: one\r\n\r\n..dot\r\n8bit: caf\u{e9}\r\n.\r\n".as_bytes());
    assert!(c.reply().starts_with("250 2.0.0"));

    // RSET mid-transaction, then a second message on the same connection.
    c.expect("MAIL FROM:<b@origin.test>", "250");
    c.expect("RCPT TO:<dropped@dest.test>", "250");
    c.expect("RSET", "250");
    c.expect("RCPT TO:<x@dest.test>", "503");
    c.expect("MAIL FROM:<>", "250");
    c.expect("RCPT TO:<three@dest.test>", "250");
    c.expect("DATA", "354");
    c.send(b"Subject: two\r\n\r\nbounce\r\n.\r\n");
    assert!(c.reply().starts_with("250"));

    // Limits and strictness.
    c.expect("MAIL FROM:<a@origin.test> SIZE=5000", "552 5.3.4");
    c.expect("MAIL FROM:<a@origin.test> SMTPUTF8", "555");
    c.expect("MAIL FROM:<a@origin.test>", "250");
    c.expect("RCPT TO:<temp@dest.test>", "451 4.3.0");
    c.expect("DATA", "554");
    c.expect("RCPT TO:<four@dest.test> NOTIFY=NEVER", "555");
    c.expect("RCPT TO:<four@dest.test>", "250");
    c.expect("DATA", "354");
    c.send(&vec![b'x'; 1200]);
    c.send(b"\r\n.\r\n");
    assert!(c.reply().starts_with("552 5.3.4"));
    c.expect("NOOP", "250");
    c.expect("QUIT", "221");

    let msgs = sink.wait_for(2, WAIT);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].rcpts, ["one@dest.test", "two@dest.test"]);
    assert_eq!(
        msgs[0].body,
        "Subject: one\r\n\r\n.dot\r\n8bit: caf\u{e9}\r\n".as_bytes()
    );
    assert_eq!(msgs[1].mail_from, "");
    assert_eq!(msgs[1].rcpts, ["three@dest.test"]);
    assert_eq!(msgs[0].connection, msgs[1].connection);
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.rcpt_attempts("dropped@dest.test"), 1);
}

#[test]
fn tempfail_down_and_up() {
    let sink = Sink::start(SinkOptions::default());
    let addr = sink.addr();

    sink.set_mode(SinkMode::TempFailAll);
    let mut c = Client::connect(addr);
    let g = c.reply();
    assert!(g.starts_with("421 4.3.2"), "{g}");
    assert!(c.closed());

    sink.set_mode(SinkMode::Normal);
    let mut open = Client::connect(addr);
    greet(&mut open);

    sink.set_mode(SinkMode::Down);
    let refused = TcpStream::connect(addr).expect_err("down: refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(open.closed(), "open connections are cut on Down");

    sink.set_mode(SinkMode::Normal);
    let mut c = Client::connect(addr);
    greet(&mut c);
    c.expect("MAIL FROM:<a@origin.test>", "250");
    c.expect("RCPT TO:<back@dest.test>", "250");
    c.expect("DATA", "354");
    c.send(b"Subject: back\r\n\r\nup again\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let msgs = sink.wait_for(1, WAIT);
    assert_eq!(msgs[0].rcpts, ["back@dest.test"]);
    assert_eq!(sink.connections(), 3);
}

#[test]
#[should_panic(expected = "sink: wanted 1 message(s)")]
fn wait_for_times_out_clearly() {
    let sink = Sink::start(SinkOptions::default());
    sink.wait_for(1, Duration::from_millis(100));
}
