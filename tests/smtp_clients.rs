//! The engine as a real SMTP client crate (lettre) sees it: plain,
//! STARTTLS, implicit TLS, AUTH PLAIN and LOGIN, and relay refusals, all
//! against the built binary on an ephemeral loopback port.

mod common;

use common::{Server, cli, cli_stdin, test_db};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use relaygate::spool::{read_spool, spool_path_for};
use std::net::SocketAddr;
use std::time::Duration;

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
async fn plain_starttls_and_auth_sends() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "wonderland\n",
    );
    // Loopback is no longer a listed network: only authentication lets it send out.
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    let mut server = Server::start(&db);
    let addr = server.addr();

    // Unauthenticated outbound from an unlisted address: refused with 554 5.7.1.
    let err = mailer(addr, None, None)
        .send(email("bob@example.com", "someone@far.test", "refused"))
        .await
        .expect_err("relay must be refused");
    assert!(err.to_string().contains("5.7.1"), "{err}");

    // Inbound to a local domain: accepted from anywhere, plaintext.
    mailer(addr, None, None)
        .send(email("stranger@far.test", "bob@example.com", "inbound"))
        .await
        .expect("inbound accepted");

    // STARTTLS + AUTH PLAIN: outbound allowed, authentication overriding the IP.
    let r = mailer(
        addr,
        Some(Tls::Required(tls_params())),
        Some(("alice", "wonderland", Mechanism::Plain)),
    )
    .send(email(
        "alice@example.com",
        "friend@far.test",
        "starttls-plain",
    ))
    .await
    .expect("authenticated send");
    assert!(r.code().to_string().starts_with('2'));

    // STARTTLS + AUTH LOGIN.
    mailer(
        addr,
        Some(Tls::Required(tls_params())),
        Some(("alice", "wonderland", Mechanism::Login)),
    )
    .send(email(
        "alice@example.com",
        "friend@far.test",
        "starttls-login",
    ))
    .await
    .expect("AUTH LOGIN send");

    // A wrong password: 535 5.7.8.
    let err = mailer(
        addr,
        Some(Tls::Required(tls_params())),
        Some(("alice", "wrong", Mechanism::Plain)),
    )
    .send(email("alice@example.com", "friend@far.test", "badpass"))
    .await
    .expect_err("wrong password");
    assert!(
        err.to_string().contains("5.7.8") || err.to_string().contains("535"),
        "{err}"
    );

    server.wait_for("authenticated as alice", Duration::from_secs(5));
    server.wait_for("STARTTLS done", Duration::from_secs(5));
    server.wait_for("decision session=1 peer=127.0.0.1 login=- from=<bob@example.com> to=<someone@far.test> class=outbound reply=\"554 5.7.1 Relay access denied\" denied: outbound from 127.0.0.1, not on the allow list; deny entry *.*.*.* applies", Duration::from_secs(5));
    assert_eq!(server.terminate().code(), Some(0));

    let stored = read_spool(&spool_path_for(&db)).expect("spool");
    let subjects: Vec<String> = stored
        .iter()
        .map(|m| {
            let body = String::from_utf8_lossy(&m.message.body).to_string();
            body.lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        subjects,
        [
            "Subject: inbound",
            "Subject: starttls-plain",
            "Subject: starttls-login"
        ]
    );
    let tls_msg = String::from_utf8_lossy(&stored[1].message.body).to_string();
    assert!(tls_msg.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby gw.example.com (relaygate) with ESMTPSA id "), "{tls_msg}");
    assert!(
        tls_msg.contains("\r\n.leading dot line\r\n"),
        "dot-unstuffing: {tls_msg}"
    );
    assert_eq!(stored[1].message.login.as_deref(), Some("alice"));
    assert_eq!(stored[1].message.recipients[0].class, "outbound");
    assert!(
        stored[1].message.recipients[0]
            .reason
            .contains("authenticated as alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli(&db, &["bind", "remove", "127.0.0.1:0"]);
    cli(&db, &["bind", "add", "127.0.0.1:0", "--kind", "smtps"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    mailer(addr, Some(Tls::Wrapper(tls_params())), None)
        .send(email("a@example.com", "b@far.test", "smtps"))
        .await
        .expect("implicit TLS send");
    assert_eq!(server.terminate().code(), Some(0));
    let stored = read_spool(&spool_path_for(&db)).expect("spool");
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0].message.body).contains("with ESMTPS id"));
}
