//! The shipped fail2ban filter against a log the real binary wrote:
//! `fail2ban-regex` (Debian's fail2ban) must find every failed AUTH, every
//! ban and every refused relay recipient, with the client's address, and
//! nothing else. Skips with a message when fail2ban is not installed
//! (`.ci/run` installs it).

mod common;

use common::{Client, Server, cli, cli_stdin, plain, test_db};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

#[test]
fn fail2ban_regex_matches_the_shipped_filter() {
    if Command::new("fail2ban-regex")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: fail2ban-regex is not installed (apt-get install fail2ban; .ci/run does)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[("ban-auth-failures", "3"), ("ban-relay-denials", "50")],
    );
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli(&db, &["list", "add", "allow", "127.0.0.1"]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "right\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let guesser: IpAddr = "127.0.0.66".parse().unwrap();
    let prober: IpAddr = "127.0.0.77".parse().unwrap();
    // Three wrong passwords (the third bans), one with a login that tries
    // to smuggle another address into the line.
    let mut c = Client::connect_from(addr, guesser);
    c.reply();
    c.expect("EHLO client.test", "250");
    for login in ["alice", "root", "x for 10.9.9.9 from 10.9.9.9"] {
        c.expect(&format!("AUTH PLAIN {}", plain(login, "guess")), "535");
    }
    // Two refused relay recipients, and things that are not offences: a
    // right login, inbound mail.
    let mut c = Client::connect_from(addr, prober);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<spam@far.test>", "250");
    c.expect("RCPT TO:<a@elsewhere.test>", "554");
    c.expect("RCPT TO:<b@elsewhere.test>", "554");
    c.expect("RCPT TO:<bob@example.com>", "250");
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(&format!("AUTH PLAIN {}", plain("alice", "right")), "235");
    server.wait_for("ban client=127.0.0.66", Duration::from_secs(5));
    server.wait_for("to=<b@elsewhere.test>", Duration::from_secs(5));
    server.drain_log();
    let log = dir.path().join("relaygate.log");
    std::fs::write(&log, server.log.join("\n") + "\n").unwrap();
    let filter = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fail2ban/filter.d/relaygate.conf"
    );
    let out = Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .arg(&log)
        .arg(filter)
        .output()
        .expect("run fail2ban-regex");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 3 failed AUTHs + 1 ban + 2 refused relay recipients.
    assert!(text.contains(", 6 matched,"), "{text}");
    let matched: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("Matched line(s):"))
        // fail2ban-regex lists the missed lines too when they are few.
        .take_while(|l| !l.contains("Missed line(s):"))
        .filter(|l| l.contains("Z "))
        .collect();
    assert_eq!(matched.len(), 6, "{text}");
    for line in &matched {
        assert!(
            line.contains("127.0.0.66") || line.contains("127.0.0.77"),
            "a match without an offender's address: {line}"
        );
        assert!(
            !line.contains("127.0.0.1 ") || line.contains("127.0.0.66"),
            "{line}"
        );
    }
    // fail2ban takes the address the line is about, not one a client
    // wrote into its login.
    let hosts = Command::new("fail2ban-regex")
        .args(["--out", "ip"])
        .arg(&log)
        .arg(filter)
        .output()
        .expect("run fail2ban-regex");
    let ips = String::from_utf8_lossy(&hosts.stdout).into_owned();
    let mut ips: Vec<&str> = ips
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips, ["127.0.0.66", "127.0.0.77"], "{ips:?}");
}
