//! DKIM signing end to end: the real binary signs what its users send and
//! a sink on loopback receives it; the signature is checked by an
//! independent verifier, dkimpy (Debian's python3-dkim), given the TXT
//! record `relaygate dkim show` prints, with no DNS involved. The key is
//! made by openssl. Skips, saying so, when either is missing (`.ci/run`
//! installs python3-dkim).

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Server, cli, send_queued, test_db};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// dkimpy's verdict on a message, given the record to find in the DNS.
const VERIFY: &str = r#"
import sys
import dkim
msg = open(sys.argv[1], 'rb').read()
rec = sys.argv[2].encode()
asked = []
def dnsfunc(name, timeout=5):
    asked.append(name.decode())
    return rec
ok = dkim.verify(msg, dnsfunc=dnsfunc)
print("verified" if ok else "failed", ",".join(asked))
"#;

fn tools_missing() -> Option<&'static str> {
    let python = Command::new("/usr/bin/python3")
        .args(["-c", "import dkim"])
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        return Some("python3-dkim (Debian) is not installed");
    }
    if Command::new("openssl").arg("version").output().is_err() {
        return Some("openssl is not installed");
    }
    None
}

fn verify(dir: &Path, message: &[u8], record: &str) -> String {
    let file = dir.join("message.eml");
    std::fs::write(&file, message).unwrap();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", VERIFY])
        .arg(&file)
        .arg(record)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The message the sink got that holds `text`.
fn message_with<'a>(
    got: &'a [common::sink::SinkMessage],
    text: &str,
) -> &'a common::sink::SinkMessage {
    got.iter()
        .find(|m| m.body_str().contains(text))
        .unwrap_or_else(|| panic!("no message with {text:?}"))
}

fn assert_signed_for(m: &common::sink::SinkMessage, domain: &str) {
    let tag = format!("d={domain}; s=s1;");
    assert!(m.body_str().contains(&tag), "{}", m.body_str());
}

fn assert_unsigned(m: &common::sink::SinkMessage) {
    assert!(!m.body_str().contains("DKIM-Signature"), "{}", m.body_str());
}

/// The TXT record from `dkim show`'s zone line, its strings joined.
fn record(show: &str) -> String {
    let line = show
        .lines()
        .find(|l| l.contains("._domainkey."))
        .expect("a zone line");
    line.split('"').skip(1).step_by(2).collect()
}

/// A new RSA-2048 key in `dir`, by openssl.
fn new_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("dkim.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    key
}

#[test]
fn what_users_send_is_signed_and_verifies() {
    if let Some(why) = tools_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path());
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::smarthost(&db, sink.addr());
    common::route(&db, "example.com", sink.addr());
    let added = cli(
        &db,
        &[
            "dkim",
            "add",
            "Example.COM",
            "--selector",
            "s1",
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        added.contains("s1._domainkey.example.com. IN TXT"),
        "{added}"
    );
    let txt = record(&cli(&db, &["dkim", "show"]));
    assert!(txt.starts_with("v=DKIM1; k=rsa; p=MII"), "{txt}");

    let mut server = Server::start(&db);
    let addr = server.addr();
    // From a client the allow list allows (loopback, on a fresh install).
    let body = "From: Alice <alice@example.com>\r\nTo: bob@far.test\r\nSubject:  quarterly\r\n  figures\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello   world \r\n.leading dot\r\n\r\n\r\n";
    send_queued(addr, "alice@example.com", &["bob@far.test"], body);
    let other = "From: carol@other.test\r\nSubject: not ours\r\n\r\nx\r\n";
    send_queued(addr, "alice@example.com", &["bob@far.test"], other);
    // Quotes and comments may hold <, > and @; and a message may have no
    // body at all (RFC 5322 2.1).
    let tricky =
        "From: \"Bob <bob@evil.test>\" (x@evil.test) <alice@example.com>\r\nSubject: header only";
    send_queued(addr, "alice@example.com", &["bob@far.test"], tricky);
    // From: in a domain with a key, but the envelope sender elsewhere: a
    // user cannot have mail signed for a domain by writing it in From:.
    let borrowed = "From: Alice <alice@example.com>\r\nSubject: borrowed\r\n\r\nx\r\n";
    send_queued(addr, "carol@other.test", &["dave@example.com"], borrowed);
    let got = sink.wait_for(4, WAIT);
    let unsigned = message_with(&got, "borrowed");
    assert_unsigned(unsigned);
    let header_only = message_with(&got, "header only");
    assert_signed_for(header_only, "example.com");
    let verdict = verify(dir.path(), &header_only.body, &txt);
    assert!(verdict.starts_with("verified"), "{verdict}");
    let signed = message_with(&got, "quarterly");
    assert!(
        signed.body_str().starts_with(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1;"
        )
    );
    let verdict = verify(dir.path(), &signed.body, &txt);
    assert_eq!(verdict, "verified s1._domainkey.example.com.", "{verdict}");
    // The verifier does check: one byte changed, and it fails.
    let mut tampered = signed.body.clone();
    let at = tampered.len() - 10;
    tampered[at] = b'X';
    assert!(verify(dir.path(), &tampered, &txt).starts_with("failed"));
    let unsigned = message_with(&got, "not ours");
    assert_unsigned(unsigned);

    // A client the allow list does not allow, with a forged From: in our
    // domain, to a local recipient: delivered, never signed.
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    server.wait_for("configuration reloaded", WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let forged = "From: Alice <alice@example.com>\r\nSubject: forged\r\n\r\npay now\r\n";
    send_queued(addr, "someone@far.test", &["dave@example.com"], forged);
    let got = sink.wait_for(5, WAIT);
    let forged = message_with(&got, "pay now");
    assert_unsigned(forged);

    // Bad keys and selectors are refused, and nothing changes.
    let out = common::run_cli(
        &db,
        &[
            "dkim",
            "add",
            "example.com",
            "--selector",
            "bad_sel",
            "--key-file",
            key.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.code, 2, "{out:?}");
    let out = common::run_cli(
        &db,
        &[
            "dkim",
            "add",
            "example.com",
            "--selector",
            "s2",
            "--key-file",
            "-",
        ],
        "not a key",
    );
    assert_eq!(out.code, 2, "{out:?}");
    // A short RSA key and an Ed25519 key are refused in words, not in
    // the crypto library's names (`TooSmall`).
    for (algorithm, opts, says) in [
        (
            "RSA",
            &["-pkeyopt", "rsa_keygen_bits:1024"][..],
            "shorter than 2048 bits",
        ),
        ("ED25519", &[][..], "it is another kind of key"),
    ] {
        let pem = Command::new("openssl")
            .args(["genpkey", "-algorithm", algorithm])
            .args(opts)
            .output()
            .unwrap();
        assert!(pem.status.success(), "{pem:?}");
        let out = common::run_cli(
            &db,
            &[
                "dkim",
                "add",
                "example.com",
                "--selector",
                "s3",
                "--key-file",
                "-",
            ],
            &String::from_utf8_lossy(&pem.stdout),
        );
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains(says)
                && !out.stderr.contains("TooSmall")
                && !out.stderr.contains("WrongAlgorithm"),
            "{out:?}"
        );
    }
    let shown = cli(&db, &["dkim", "show"]);
    assert!(shown.contains("selector s1  (RSA, 2048 bits)"), "{shown}");
    assert_eq!(record(&shown), txt);
    // The key travels with `config export`/`apply` to another node.
    let export = dir.path().join("config.toml");
    cli(&db, &["config", "export", export.to_str().unwrap()]);
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.contains("[[dkim]]") && text.contains("selector = \"s1\""),
        "{text}"
    );
    let other = dir.path().join("other").join("relaygate.db");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    let applied = cli(&other, &["config", "apply", export.to_str().unwrap()]);
    assert!(applied.contains("dkim:\n  + example.com"), "{applied}");
    assert_eq!(record(&cli(&other, &["dkim", "show"])), txt);
    cli(&db, &["dkim", "remove", "example.com"]);
    assert!(cli(&db, &["dkim", "show"]).contains("no DKIM keys"));
}

/// What a signing test starts from: a temporary directory, a key made
/// by openssl, a sink, and a database whose smarthost is the sink (with
/// `settings`); `None` (said) when the tools are missing.
fn signing_setup(
    settings: &[(&str, &str)],
) -> Option<(
    tempfile::TempDir,
    std::path::PathBuf,
    Sink,
    std::path::PathBuf,
)> {
    if let Some(why) = tools_missing() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path());
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), settings);
    common::smarthost(&db, sink.addr());
    Some((dir, key, sink, db))
}

/// Whether a message is the client's own (on the allow list) is decided
/// when it is accepted: an allow-list edit while it waits in the queue
/// neither takes the signature from a user's message nor gives one to a
/// stranger's.
#[test]
fn signing_is_decided_when_the_message_is_accepted() {
    let Some((_dir, key, sink, db)) = signing_setup(&[("delivery", "off")]) else {
        return;
    };
    common::route(&db, "example.com", sink.addr());
    let key = key.to_str().unwrap();
    cli(
        &db,
        &[
            "dkim",
            "add",
            "example.com",
            "--selector",
            "s1",
            "--key-file",
            key,
        ],
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    // Each change is live once the engine has reloaded that many times
    // (and the sessions' next snapshot is taken just after it says so).
    let mut reloads = 0;
    let mut change = |server: &mut Server, args: &[&str]| {
        cli(&db, args);
        reloads += 1;
        server.wait_for_count("configuration reloaded", reloads, WAIT);
        std::thread::sleep(Duration::from_millis(300));
    };
    // From a listed client (loopback, on a fresh install): a user's.
    let user = "From: Alice <alice@example.com>\r\nSubject: from a user\r\n\r\nx\r\n";
    send_queued(addr, "alice@example.com", &["bob@far.test"], user);
    // From the same address once it is no longer listed, to a local
    // recipient: a stranger's, with our domain in From:.
    change(&mut server, &["list", "remove", "allow", "127.0.0.0/8"]);
    let stranger = "From: Alice <alice@example.com>\r\nSubject: from a stranger\r\n\r\nx\r\n";
    send_queued(addr, "alice@example.com", &["dave@example.com"], stranger);
    // Listed again before either goes out.
    change(&mut server, &["list", "add", "allow", "127.0.0.0/8"]);
    change(&mut server, &["policy", "set", "delivery", "on"]);
    let got = sink.wait_for(2, WAIT);
    assert_signed_for(message_with(&got, "from a user"), "example.com");
    assert_unsigned(message_with(&got, "from a stranger"));
    // And a user's message that waits while the list loses its client.
    change(&mut server, &["policy", "set", "delivery", "off"]);
    let waited = "From: Alice <alice@example.com>\r\nSubject: waited\r\n\r\nx\r\n";
    send_queued(addr, "alice@example.com", &["bob@far.test"], waited);
    change(&mut server, &["list", "remove", "allow", "127.0.0.0/8"]);
    change(&mut server, &["policy", "set", "delivery", "on"]);
    let got = sink.wait_for(3, WAIT);
    assert_signed_for(message_with(&got, "Subject: waited"), "example.com");
}

/// An international domain is one domain in both its forms: a key added
/// for `Bücher.Example` is kept, published and signed for as
/// `xn--bcher-kva.example` (RFC 6376 3.5), and signs a message whose
/// `From:` has the U-label and whose envelope has the A-label.
#[test]
fn an_international_domain_is_signed_in_its_dns_form() {
    let Some((dir, key, sink, db)) = signing_setup(&[]) else {
        return;
    };
    // The senders' domain is local (the policy compares domains as
    // written: here as the envelope has it).
    cli(&db, &["domain", "add", "xn--bcher-kva.example"]);
    let key = key.to_str().unwrap();
    let added = cli(
        &db,
        &[
            "dkim",
            "add",
            "Bücher.Example",
            "--selector",
            "s1",
            "--key-file",
            key,
        ],
    );
    assert!(
        added.contains("s1._domainkey.xn--bcher-kva.example. IN TXT"),
        "{added}"
    );
    let shown = cli(&db, &["dkim", "show"]);
    assert!(
        shown.starts_with("xn--bcher-kva.example  selector s1"),
        "{shown}"
    );
    let txt = record(&shown);
    let mut server = Server::start(&db);
    let body = "From: Anna <anna@bücher.example>\r\nSubject: idn\r\n\r\nHallo\r\n";
    send_queued(
        server.addr(),
        "anna@xn--bcher-kva.example",
        &["bob@far.test"],
        body,
    );
    let got = sink.wait_for(1, WAIT);
    let signed = message_with(&got, "Subject: idn");
    assert_signed_for(signed, "xn--bcher-kva.example");
    let verdict = verify(dir.path(), &signed.body, &txt);
    assert_eq!(
        verdict, "verified s1._domainkey.xn--bcher-kva.example.",
        "{verdict}"
    );
    // Either spelling removes it.
    cli(&db, &["dkim", "remove", "bücher.example"]);
    assert!(cli(&db, &["dkim", "show"]).contains("no DKIM keys"));
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn a_stored_key_that_cannot_sign_is_said_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    // Written past `dkim add`, which refuses such a key.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO dkim_keys (domain, selector, private_key) VALUES ('bad.test', 's1', 'not a key')",
        [],
    )
    .unwrap();
    drop(conn);
    let mut server = Server::start(&db);
    let line = server.wait_for("DKIM key for bad.test cannot sign", WAIT);
    assert!(line.contains("its mail goes unsigned"), "{line}");
    assert!(cli(&db, &["dkim", "show"]).contains("bad.test  selector s1  UNUSABLE KEY"));
}
