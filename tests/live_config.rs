//! Configuration changes made with the CLI, by another process, while the
//! engine runs: applied to the next transaction within a second, without a
//! restart and without dropping sessions in progress.

mod common;

use common::{Client, Server, cli, test_db};
use std::time::{Duration, Instant};

/// Retries `f` until it returns true or a second and a half has passed.
fn within_a_second(mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the change did not take effect within a second");
}

#[test]
fn list_and_switch_changes_apply_to_the_next_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();

    // A session that stays open across the change.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<x@far.test>", "250 2.1.5");

    server.drain_log();
    server.log.clear();
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    // Once the engine has the change in force (not before: that would
    // pass without any snapshot at all), the transaction in progress
    // still decides with the one it started with...
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    c.expect("RCPT TO:<y@far.test>", "250 2.1.5");
    c.expect("RSET", "250");
    // ...and a new one sees the change within a second.
    let took = within_a_second(|| {
        c.expect("MAIL FROM:<a@example.com>", "250");
        let r = c.cmd("RCPT TO:<x@far.test>");
        c.expect("RSET", "250");
        r.starts_with("554 5.7.1")
    });
    println!("list change applied after {took:?}");

    cli(&db, &["list", "add", "allow", "127.0.0.1"]);
    within_a_second(|| {
        c.expect("MAIL FROM:<a@example.com>", "250");
        let r = c.cmd("RCPT TO:<x@far.test>");
        c.expect("RSET", "250");
        r.starts_with("250")
    });

    cli(&db, &["policy", "set", "outbound.auth", "on"]);
    within_a_second(|| {
        c.expect("MAIL FROM:<a@example.com>", "250");
        let r = c.cmd("RCPT TO:<x@far.test>");
        c.expect("RSET", "250");
        r.starts_with("530 5.7.0")
    });
    // The session survived every change.
    c.expect("NOOP", "250");
    c.expect("QUIT", "221");
    server.wait_for("configuration reloaded", Duration::from_secs(2));
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn bindings_open_and_close_live() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let first = server.addr();

    // Add a second listener on a port we pick, then remove the first one.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = probe.local_addr().unwrap();
    drop(probe);
    cli(
        &db,
        &["bind", "add", &second.to_string(), "--kind", "submission"],
    );
    server.wait_for(
        &format!("listening on {second} (submission)"),
        Duration::from_secs(2),
    );
    let mut c = Client::connect(second);
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO client.test", "250");
    // Submission requires AUTH before MAIL.
    c.expect("MAIL FROM:<a@example.com>", "530 5.7.0");

    // Its kind changed: in place, the socket never closes (a client
    // connecting all along is never refused), the next session is smtp.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::net::TcpStream::connect(second).is_err() {
                    refused += 1;
                }
            }
            refused
        })
    };
    cli(&db, &["bind", "add", &second.to_string(), "--kind", "smtp"]);
    server.wait_for(
        &format!("listening on {second} (smtp)"),
        Duration::from_secs(2),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(prober.join().unwrap(), 0, "connections refused");
    let mut d = Client::connect(second);
    assert!(d.reply().starts_with("220"));
    d.expect("EHLO client.test", "250");
    d.expect("MAIL FROM:<a@example.com>", "250");
    d.expect("QUIT", "221");

    cli(&db, &["bind", "remove", "127.0.0.1:0"]);
    server.wait_for("stopped listening on 127.0.0.1:0", Duration::from_secs(2));
    assert!(
        std::net::TcpStream::connect(first).is_err(),
        "removed binding still accepts"
    );
    // The session on the other listener is untouched.
    c.expect("NOOP", "250");

    // A binding that cannot be opened is reported with the OS reason; the others keep running.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    cli(&db, &["bind", "add", &busy_addr.to_string()]);
    let line = server.wait_for(
        &format!("cannot listen on {busy_addr}"),
        Duration::from_secs(2),
    );
    assert!(line.to_lowercase().contains("in use"), "{line}");
    c.expect("NOOP", "250");
    drop(busy);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn a_user_added_while_running_can_authenticate() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    // Failed attempts while the change is on its way must not lock us out.
    let db = test_db(dir.path(), &[("auth-max-failures", "1000")]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0newuser\0fresh-password");
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(&format!("AUTH PLAIN {plain}"), "535 5.7.8");
    common::cli_stdin(
        &db,
        &["user", "add", "newuser", "--password-stdin"],
        "fresh-password\n",
    );
    within_a_second(|| {
        let mut c = Client::connect(addr);
        c.reply();
        c.cmd("EHLO client.test");
        c.cmd(&format!("AUTH PLAIN {plain}"))
            .starts_with("235 2.7.0")
    });
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn switching_the_relay_open_is_warned_about_everywhere_it_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    // One switch off leaves domain-restrict-send: no warning.
    let one = cli(&db, &["policy", "set", "relay.listed-ip", "off"]);
    assert!(!one.contains("warning:"), "{one}");
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    // The last control off: the CLI, policy show and the engine say it.
    let open = cli(&db, &["policy", "set", "domain-restrict-send", "off"]);
    assert!(
        open.contains("warning: relaygate is an OPEN RELAY: relay.listed-ip, relay.auth and domain-restrict-send are off"),
        "{open}"
    );
    assert!(
        cli(&db, &["policy", "show"]).contains("warning: relaygate is an OPEN RELAY"),
        "policy show"
    );
    let line = server.wait_for("OPEN RELAY", Duration::from_secs(5));
    assert!(line.contains("WARN"), "{line}");
    // And it is one: an outsider relays.
    let mut c = Client::connect_from(addr, "127.0.0.9".parse().unwrap());
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@far.test>", "250");
    c.expect("RCPT TO:<x@far.test>", "250");
    c.expect("QUIT", "221");
    // Outbound open to anyone is warned about too; closing both ends it.
    let out = cli(&db, &["policy", "set", "outbound.listed-ip", "off"]);
    assert!(
        out.contains("warning: outbound mail is open to anyone") && out.contains("OPEN RELAY"),
        "{out}"
    );
    cli(&db, &["policy", "set", "outbound.listed-ip", "on"]);
    let closed = cli(&db, &["policy", "set", "relay.listed-ip", "on"]);
    assert!(!closed.contains("warning:"), "{closed}");
    assert!(!cli(&db, &["policy", "show"]).contains("warning:"));
    assert_eq!(server.terminate().code(), Some(0));
}
