//! The admin CLI, run as the built binary against a real SQLite file.

mod common;

use common::{CliOutput, run_cli};

use std::path::{Path, PathBuf};

fn relaygate(db: &Path, args: &[&str], stdin: &str) -> CliOutput {
    run_cli(db, args, stdin)
}

fn ok(db: &Path, args: &[&str]) -> String {
    let o = relaygate(db, args, "");
    assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

/// Runs a command that must fail with exit 2, a message, and no change.
fn refused(db: &Path, args: &[&str], stdin: &str, message: &str) {
    let before = std::fs::read(db).unwrap_or_default();
    let o = relaygate(db, args, stdin);
    assert_eq!(
        o.code, 2,
        "{args:?} should exit 2: {}{}",
        o.stdout, o.stderr
    );
    assert!(
        o.stderr.contains(message),
        "{args:?}: stderr {:?} lacks {message:?}",
        o.stderr
    );
    assert_eq!(
        std::fs::read(db).unwrap_or_default(),
        before,
        "{args:?} changed the database"
    );
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("sub").join("relaygate.db");
    (dir, db)
}

#[test]
fn fresh_database_has_safe_defaults_and_private_mode() {
    let (_dir, db) = temp_db();
    let shown = ok(&db, &["list", "show"]);
    for e in [
        "127.0.0.0/8",
        "::1",
        "10.*.*.*",
        "172.16-31.*.*",
        "192.168.*.*",
        "*.*.*.*",
        "::/0",
    ] {
        assert!(shown.contains(e), "{e} missing from {shown}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let policy = ok(&db, &["policy", "show"]);
    // One column for all keys (the longest, delivery-connect-timeout,
    // included): compare with the spacing squeezed.
    let squeezed: String = policy
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    for line in [
        "auth mode any-user",
        "relay.listed-ip on",
        "outbound.listed-ip on",
        "internal.listed-ip off",
        "domain-restrict-send on",
    ] {
        assert!(squeezed.contains(line), "{line}: {policy}");
    }
    // Values in one column, whatever the key's length.
    let value_at = |key: &str, value: &str| {
        let line = policy.lines().find(|l| l.starts_with(key)).expect(key);
        line.find(&format!(" {value}")).map(|i| i + 1)
    };
    let column = value_at("auth mode", "any-user");
    assert!(column.is_some(), "{policy}");
    assert_eq!(value_at("relay.listed-ip", "on"), column, "{policy}");
    assert_eq!(
        value_at("delivery-connect-timeout", "30"),
        column,
        "{policy}"
    );
    assert_eq!(value_at("engine", "not running"), column, "{policy}");
    assert!(ok(&db, &["bind", "show"]).contains("127.0.0.1:2525"));
    // Not an open relay: the world may not relay, even with a local sender.
    let o = relaygate(
        &db,
        &[
            "check",
            "--ip",
            "198.51.100.7",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
        ],
        "",
    );
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stdout.contains("554 5.7.1"), "{}", o.stdout);
}

#[test]
fn list_add_remove_and_bad_entries() {
    let (_dir, db) = temp_db();
    let out = ok(
        &db,
        &["list", "add", "deny", "192.168.1.1", "2001:db8::/32"],
    );
    assert!(out.contains("added 192.168.1.1 to the deny list"), "{out}");
    let dup = ok(&db, &["list", "add", "allow", "192.168.0.0/16"]);
    assert!(dup.contains("already listed as 192.168.*.*"), "{dup}");
    for (entry, why) in [
        ("300.1.1.1", "out of range"),
        ("10.5-2.*.*", "backwards"),
        ("10.*", "four octets"),
        ("1.2.3.4/33", "prefix length"),
        ("garbage", "four octets"),
        ("", "empty"),
    ] {
        // A good entry before the bad one is not added either.
        refused(&db, &["list", "add", "allow", "10.9.9.9", entry], "", why);
    }
    refused(
        &db,
        &["list", "remove", "allow", "10.9.9.9"],
        "",
        "not on the allow list",
    );
    let removed = ok(&db, &["list", "remove", "allow", "192.168.0.0/16"]);
    assert!(removed.contains("removed 192.168.*.*"), "{removed}");
    let allow = ok(&db, &["list", "show", "allow"]);
    assert!(!allow.contains("192.168"), "{allow}");
    refused(
        &db,
        &["list", "add", "maybe", "1.2.3.4"],
        "",
        "invalid value",
    );
}

#[test]
fn import_reports_skips_and_export_round_trips() {
    let (dir, db) = temp_db();
    let file = dir.path().join("import.csv");
    std::fs::write(
        &file,
        "ip,comment\n203.0.113.0/24,\"office\"\n198.51.100.7\t10.1.2.1-100\n300.1.1.1\n192.168.0.0/16\n203.0.113.*\n",
    )
    .unwrap();
    let out = ok(&db, &["list", "import", "allow", file.to_str().unwrap()]);
    assert!(
        out.contains(
            "imported 3 entries into the allow list; 2 duplicates and 4 invalid entries skipped"
        ),
        "{out}"
    );
    assert!(
        out.contains("line 4: invalid IP entry \"300.1.1.1\""),
        "{out}"
    );
    assert!(
        out.contains("203.0.113.* (same as 203.0.113.0/24)"),
        "{out}"
    );
    assert!(
        out.contains("duplicate, line 5: 192.168.0.0/16 (already listed as 192.168.*.*)"),
        "{out}"
    );
    let exported = dir.path().join("allow.txt");
    ok(
        &db,
        &["list", "export", "allow", exported.to_str().unwrap()],
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(
        text,
        "127.0.0.0/8\n::1\n10.*.*.*\n172.16-31.*.*\n192.168.*.*\n203.0.113.0/24\n198.51.100.7\n10.1.2.1-100\n"
    );
    assert_eq!(ok(&db, &["list", "export", "allow"]), text);
    // Importing the export again adds nothing.
    let again = ok(
        &db,
        &["list", "import", "allow", exported.to_str().unwrap()],
    );
    assert!(again.contains("imported 0 entries"), "{again}");
    refused(
        &db,
        &["list", "import", "allow", "/nonexistent/file"],
        "",
        "reading /nonexistent/file",
    );
}

#[test]
fn domains_users_and_auth() {
    let (_dir, db) = temp_db();
    assert!(ok(&db, &["domain", "add", "Example.COM."]).contains("example.com"));
    refused(
        &db,
        &["domain", "add", "example.com"],
        "",
        "already a local domain",
    );
    refused(&db, &["domain", "add", "bad..name"], "", "empty label");
    refused(
        &db,
        &["domain", "remove", "nope.test"],
        "",
        "not a local domain",
    );
    assert_eq!(
        ok(&db, &["domain", "show"]),
        "example.com  (no route: mail held until `relaygate route add example.com HOST:PORT`)\n"
    );
    let routed = ok(&db, &["route", "add", "example.com", "10.0.0.5:25"]);
    assert!(
        routed.contains("route example.com -> 10.0.0.5:25 (tls opportunistic)"),
        "{routed}"
    );
    assert_eq!(ok(&db, &["domain", "show"]), "example.com\n");
    route_changes_keep_what_they_do_not_name(&db);

    let o = relaygate(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "wonderland\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    refused(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "x\n",
        "already exists",
    );
    refused(
        &db,
        &["user", "add", "bob", "--password-stdin"],
        "",
        "no password",
    );
    refused(&db, &["user", "add", "bob"], "pw\n", "--password-stdin");
    refused(
        &db,
        &["user", "add", "has space", "--password-stdin"],
        "pw\n",
        "invalid user name",
    );
    ok(
        &db,
        &[
            "user",
            "addresses",
            "alice",
            "Alice@Example.com",
            "@example.com",
        ],
    );
    refused(
        &db,
        &["user", "addresses", "alice", "not an address"],
        "",
        "invalid address",
    );
    refused(
        &db,
        &["user", "addresses", "nobody", "a@example.com"],
        "",
        "no user nobody",
    );
    let users = ok(&db, &["user", "show"]);
    assert!(
        users.contains("alice  @example.com, alice@example.com"),
        "{users}"
    );
    // Without addresses it shows them (it used to wipe them); --clear
    // takes them away, and takes no addresses with it.
    let shown = ok(&db, &["user", "addresses", "alice"]);
    assert!(
        shown.contains("alice may send as: @example.com, alice@example.com"),
        "{shown}"
    );
    refused(&db, &["user", "addresses", "nobody"], "", "no user nobody");
    refused(
        &db,
        &["user", "addresses", "alice", "--clear", "a@example.com"],
        "",
        "cannot be used with",
    );
    let users = ok(&db, &["user", "show"]);
    assert!(users.contains("alice  @example.com"), "{users}");
    let cleared = ok(&db, &["user", "addresses", "alice", "--clear"]);
    assert!(
        cleared.contains("alice has no sender addresses"),
        "{cleared}"
    );
    ok(
        &db,
        &[
            "user",
            "addresses",
            "alice",
            "Alice@Example.com",
            "@example.com",
        ],
    );

    // The hash, never the password, is stored.
    let raw = std::fs::read(&db).unwrap();
    assert!(!raw.windows(10).any(|w| w == b"wonderland"));

    // check verifies the password when asked to.
    let args = [
        "check",
        "--ip",
        "203.0.113.9",
        "--user",
        "alice",
        "--password-stdin",
        "--from",
        "alice@example.com",
        "--to",
        "x@far.test",
    ];
    let good = relaygate(&db, &args, "wonderland\n");
    assert_eq!(good.code, 0, "{}{}", good.stdout, good.stderr);
    assert!(
        good.stdout
            .contains("authenticated as alice (authentication overrides IP restrictions)"),
        "{}",
        good.stdout
    );
    let bad = relaygate(&db, &args, "wrong\n");
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert!(bad.stdout.contains("535 5.7.8"), "{}", bad.stdout);

    refused(&db, &["auth", "mode", "specified"], "", "needs --user");
    refused(&db, &["auth", "mode", "sometimes"], "", "invalid value");
    let o = relaygate(
        &db,
        &[
            "auth",
            "mode",
            "specified",
            "--user",
            "gateway",
            "--password-stdin",
        ],
        "s3cret\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(ok(&db, &["auth", "show"]).contains("specified (login gateway)"));
    // Under `specified`, alice can no longer authenticate; the gateway login can.
    let o = relaygate(&db, &args, "wonderland\n");
    assert_eq!(o.code, 1, "{}", o.stdout);
    let gw = [
        "check",
        "--ip",
        "203.0.113.9",
        "--user",
        "gateway",
        "--password-stdin",
        "--from",
        "a@example.com",
        "--to",
        "x@far.test",
    ];
    assert_eq!(relaygate(&db, &gw, "s3cret\n").code, 0);
    ok(&db, &["auth", "mode", "none"]);
    refused(
        &db,
        &[
            "check", "--ip", "1.2.3.4", "--user", "gateway", "--from", "", "--to", "a@b.test",
        ],
        "",
        "auth mode is none",
    );
    ok(&db, &["user", "remove", "alice"]);
    refused(&db, &["user", "remove", "alice"], "", "no user alice");
}

/// `route add` to a route's own next hop changes only the options it
/// names; to another next hop it starts afresh (no login carried over).
fn route_changes_keep_what_they_do_not_name(db: &Path) {
    let smarthost = [
        "route",
        "add",
        "*",
        "smtp.isp.example:587",
        "--tls",
        "required",
        "--user",
        "gw",
        "--password-stdin",
    ];
    let o = relaygate(db, &smarthost, "pw\n");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("route * -> smtp.isp.example:587 (tls required, login gw)"),
        "{}",
        o.stdout
    );
    let rated = ok(
        db,
        &[
            "route",
            "add",
            "*",
            "SMTP.isp.example:587",
            "--rate",
            "300/hour",
            "--concurrency",
            "2",
        ],
    );
    assert!(
        rated.contains("(tls required, login gw, at most 300 messages per")
            && rated.contains("2 connections at once")
            && rated.contains("kept from the route it changes: tls required, login gw\n"),
        "{rated}"
    );
    let shown = ok(db, &["route", "show"]);
    assert!(
        shown.contains("tls required auth gw rate 300/hour concurrency 2"),
        "{shown}"
    );
    // Dropped by name.
    let dropped = ok(
        db,
        &[
            "route",
            "add",
            "*",
            "smtp.isp.example:587",
            "--no-login",
            "--no-rate",
        ],
    );
    assert!(
        dropped.contains("(tls required, 2 connections at once)")
            && dropped.contains("kept from the route it changes: tls required, concurrency 2"),
        "{dropped}"
    );
    refused(
        db,
        &[
            "route",
            "add",
            "*",
            "smtp.isp.example:587",
            "--rate",
            "1/hour",
            "--no-rate",
        ],
        "",
        "cannot be used with",
    );
    // Another next hop: nothing carried over, and said so.
    let o = relaygate(db, &smarthost, "pw\n");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let moved = ok(db, &["route", "add", "*", "smtp2.isp.example:587"]);
    assert!(
        moved.contains("route * -> smtp2.isp.example:587 (tls opportunistic)\n")
            && moved.contains(
                "replaces * -> smtp.isp.example:587 (tls required, login gw, 2 connections at once)"
            )
            && moved.contains("nothing of the old route is carried over"),
        "{moved}"
    );
    ok(db, &["route", "remove", "*"]);
}

#[test]
fn policy_switches_rules_and_bindings() {
    let (_dir, db) = temp_db();
    ok(&db, &["domain", "add", "example.com"]);
    let check = |ip: &str, from: &str, to: &str| {
        relaygate(&db, &["check", "--ip", ip, "--from", from, "--to", to], "")
    };
    assert_eq!(check("192.168.1.5", "x@far.test", "y@far.test").code, 1);
    assert!(
        ok(&db, &["policy", "set", "domain-restrict-send", "off"])
            .contains("domain-restrict-send = off")
    );
    assert_eq!(check("192.168.1.5", "x@far.test", "y@far.test").code, 0);
    refused(
        &db,
        &["policy", "set", "relay.everything", "on"],
        "",
        "unknown policy key",
    );
    refused(
        &db,
        &["policy", "set", "relay.auth", "maybe"],
        "",
        "must be on or off",
    );
    // A misspelt engine setting is named as an unknown key (with the
    // settings listed), not taken for a switch with a bad value.
    refused(
        &db,
        &["policy", "set", "hostnme", "mx.example"],
        "",
        "unknown policy key \"hostnme\"; switches: ",
    );
    // The event log's bounds are settings like the others.
    assert!(
        ok(&db, &["policy", "set", "log-retention-days", "7"]).contains("log-retention-days = 7")
    );
    assert!(ok(&db, &["policy", "set", "log-max-rows", "5000"]).contains("log-max-rows = 5000"));
    let show = ok(&db, &["policy", "show"]);
    let squeezed: Vec<String> = show
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        squeezed
            .iter()
            .any(|l| l.starts_with("log-retention-days 7 "))
            && squeezed.iter().any(|l| l.starts_with("log-max-rows 5000 ")),
        "{show}"
    );
    ok(&db, &["policy", "set", "relay.auth", "on"]);
    let o = check("192.168.1.5", "x@far.test", "y@far.test");
    assert!(o.stdout.contains("530 5.7.0"), "{}", o.stdout);
    assert!(
        ok(&db, &["policy", "show"]).contains("note: relay.auth and relay.listed-ip are both on")
    );

    ok(
        &db,
        &[
            "rule",
            "add",
            "--sender",
            "!*@example.com",
            "--destination",
            "external",
            "--reject",
            "Use your example.com address",
        ],
    );
    ok(
        &db,
        &[
            "rule",
            "add",
            "--sender",
            "boss@example.com",
            "--accept",
            "--at",
            "1",
        ],
    );
    let rules = ok(&db, &["rule", "show"]);
    assert!(rules.starts_with("#1  sender boss@example.com recipient * destination any -> accept-and-stop\n#2  sender !*@example.com"), "{rules}");
    ok(&db, &["policy", "set", "outbound.listed-ip", "off"]);
    ok(&db, &["policy", "set", "relay.auth", "off"]);
    let o = check("192.168.1.5", "x@far.test", "y@far.test");
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("550 5.7.1 Use your example.com address"),
        "{}",
        o.stdout
    );
    refused(
        &db,
        &["rule", "add", "--sender", "*", "--reject", "x", "--accept"],
        "",
        "cannot be used with",
    );
    refused(
        &db,
        &[
            "rule",
            "add",
            "--sender",
            "*",
            "--destination",
            "mars",
            "--accept",
        ],
        "",
        "must be internal, external or any",
    );
    refused(&db, &["rule", "remove", "9"], "", "no rule #9");
    ok(&db, &["rule", "remove", "2"]);
    assert_eq!(check("192.168.1.5", "x@far.test", "y@far.test").code, 0);

    ok(&db, &["bind", "add", "[::1]:2526", "--kind", "submission"]);
    ok(&db, &["bind", "add", "127.0.0.1:2465", "--kind", "smtps"]);
    let binds = ok(&db, &["bind", "show"]);
    assert!(
        binds.contains("[::1]:2526") && binds.contains("submission") && binds.contains("smtps"),
        "{binds}"
    );
    refused(&db, &["bind", "add", "localhost"], "", "expected ADDR:PORT");
    refused(
        &db,
        &["bind", "add", "127.0.0.1:99999"],
        "",
        "expected ADDR:PORT",
    );
    refused(&db, &["bind", "remove", "127.0.0.1:1"], "", "not a binding");
    ok(&db, &["bind", "remove", "[::1]:2526"]);
    assert!(!ok(&db, &["bind", "show"]).contains("2526"));
}

#[test]
fn check_exit_codes_and_bad_input() {
    let (_dir, db) = temp_db();
    ok(&db, &["domain", "add", "example.com"]);
    let o = relaygate(
        &db,
        &[
            "check",
            "--ip",
            "10.1.1.1",
            "--from",
            "<>",
            "--to",
            "a@example.com",
            "--to",
            "<b@example.com>",
        ],
        "",
    );
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert_eq!(o.stdout.matches("verdict  allowed").count(), 2);
    let o = relaygate(
        &db,
        &[
            "check",
            "--ip",
            "203.0.113.9",
            "--from",
            "",
            "--to",
            "a@example.com",
            "--to",
            "x@far.test",
        ],
        "",
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("class    relay")
            && o.stdout.contains(
                "relay from 203.0.113.9, not on the allow list; deny entry *.*.*.* applies"
            ),
        "{}",
        o.stdout
    );
    ok(
        &db,
        &[
            "check",
            "--ip",
            "203.0.113.9",
            "--from",
            "x@far.test",
            "--to",
            "<@relay.test:a@example.com>",
        ],
    );
    refused(
        &db,
        &[
            "check",
            "--ip",
            "999.1.1.1",
            "--from",
            "",
            "--to",
            "a@b.test",
        ],
        "",
        "invalid value",
    );
    refused(
        &db,
        &[
            "check", "--ip", "1.2.3.4", "--from", "a@", "--to", "a@b.test",
        ],
        "",
        "invalid address",
    );
    refused(
        &db,
        &["check", "--ip", "1.2.3.4", "--from", "", "--to", "<>"],
        "",
        "null path",
    );
    refused(&db, &["check", "--ip", "1.2.3.4", "--from", ""], "", "--to");
    refused(
        &db,
        &[
            "check", "--ip", "1.2.3.4", "--user", "ghost", "--from", "", "--to", "a@b.test",
        ],
        "",
        "cannot authenticate",
    );
}

#[test]
fn foreign_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, it is a shopping list\n".repeat(20),
    )
    .unwrap();
    refused(&text, &["list", "show"], "", "not a relaygate database");

    let other = dir.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    refused(
        &other,
        &["domain", "add", "x.test"],
        "",
        "not a relaygate database",
    );

    let (_d, newer) = temp_db();
    ok(&newer, &["list", "show"]);
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    refused(
        &newer,
        &["list", "show"],
        "",
        "schema version 99 was written by a newer relaygate",
    );
}

/// `check` answers as the engine would: a suspended login counts as not
/// logged in (525 5.7.13), and a banned address is refused at connect.
#[test]
fn check_knows_suspensions_and_bans() {
    let (_dir, db) = temp_db();
    ok(&db, &["domain", "add", "example.com"]);
    let added = relaygate(&db, &["user", "add", "bob", "--password-stdin"], "bob-pw\n");
    assert_eq!(added.code, 0, "{}{}", added.stdout, added.stderr);
    let check = |ip: &str| {
        relaygate(
            &db,
            &[
                "check",
                "--ip",
                ip,
                "--user",
                "bob",
                "--password-stdin",
                "--from",
                "bob@example.com",
                "--to",
                "x@far.test",
            ],
            "bob-pw\n",
        )
    };
    let before = check("203.0.113.9");
    assert_eq!(before.code, 0, "{}", before.stdout);
    assert!(
        before.stdout.contains("authenticated as bob"),
        "{}",
        before.stdout
    );

    ok(&db, &["user", "suspend", "bob"]);
    let suspended = check("203.0.113.9");
    assert_eq!(suspended.code, 1, "{}", suspended.stdout);
    assert!(
        suspended.stdout.contains("525 5.7.13 bob is suspended")
            && suspended.stdout.contains("not authenticated"),
        "{}",
        suspended.stdout
    );
    ok(&db, &["user", "unsuspend", "bob"]);
    // A login with capitals is found suspended as the engine finds it.
    let added = relaygate(
        &db,
        &["user", "add", "Dave", "--password-stdin"],
        "dave-pw\n",
    );
    assert_eq!(added.code, 0, "{}{}", added.stdout, added.stderr);
    ok(&db, &["user", "suspend", "Dave"]);
    let dave = relaygate(
        &db,
        &[
            "check",
            "--ip",
            "203.0.113.9",
            "--user",
            "Dave",
            "--from",
            "a@far.test",
            "--to",
            "x@far.test",
        ],
        "",
    );
    assert!(
        dave.stdout.contains("525 5.7.13 Dave is suspended"),
        "{}",
        dave.stdout
    );

    let said = ok(&db, &["ban", "add", "203.0.113.0/24"]);
    assert!(!said.contains("warning"), "{said}");
    // A ban as wide as everything, or over the LAN the allow list lets
    // relay, is said to be that.
    let said = ok(&db, &["ban", "add", "0.0.0.0/0", "--for", "1m"]);
    assert!(
        said.contains("warning: 0.0.0.0/0 covers allow-listed clients (127.0.0.0/8, 10.*.*.*"),
        "{said}"
    );
    ok(&db, &["ban", "remove", "0.0.0.0/0"]);
    let said = ok(&db, &["ban", "add", "10.1.2.3", "--for", "1m"]);
    assert!(
        said.contains("covers allow-listed clients (10.*.*.*)"),
        "{said}"
    );
    ok(&db, &["ban", "remove", "10.1.2.3"]);
    let said = ok(&db, &["ban", "add", "2001:db8::/16", "--for", "1m"]);
    assert!(said.contains("covers 2^112 addresses"), "{said}");
    ok(&db, &["ban", "remove", "2001:db8::/16"]);
    let banned = check("203.0.113.9");
    assert_eq!(banned.code, 1, "{}", banned.stdout);
    assert!(
        banned
            .stdout
            .contains("connect: 554 5.7.1 Your address is banned until"),
        "{}",
        banned.stdout
    );
    // Another address is not.
    assert_eq!(check("198.51.100.7").code, 0);
}

/// A directory given for the database file is said to be one (SQLite's
/// own words were "disk I/O error").
#[test]
fn a_directory_for_the_database_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["list", "show"][..], &["domain", "add", "example.com"][..]] {
        refused(
            dir.path(),
            args,
            "",
            "is a directory: --db names the database file",
        );
    }
}

/// A misspelt domain filter is bad input, not "0 messages released".
#[test]
fn a_queue_filter_domain_must_be_a_domain() {
    let (_dir, db) = temp_db();
    ok(&db, &["list", "show"]);
    let o = relaygate(&db, &["queue", "release", "--domain", "bad dom"], "");
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("is not a domain"), "{}", o.stderr);
}

/// Notes on bans and suspensions are one line of plain text, at most 200
/// characters: a terminal escape or a line break is refused (exit 2), not
/// stored to be played by every console and `show` that prints it.
#[test]
fn notes_with_control_characters_or_too_long_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relaygate.db");
    let ok = run_cli(
        &db,
        &["user", "add", "bob", "--password-stdin"],
        "pw-of-bob\n",
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let long = "n".repeat(201);
    for args in [
        vec!["user", "suspend", "bob", "--note", "a\x1b[2Jb"],
        vec!["user", "suspend", "bob", "--note", "two\nlines"],
        vec!["user", "suspend", "bob", "--note", long.as_str()],
        vec!["ban", "add", "192.0.2.1", "--note", "\x1b]0;x\x07"],
        vec!["ban", "add", "192.0.2.1", "--note", long.as_str()],
    ] {
        let out = run_cli(&db, &args, "");
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("the note"), "{}", out.stderr);
    }
    // Nothing was stored; a plain note is.
    assert!(
        !run_cli(&db, &["user", "show"], "")
            .stdout
            .contains("SUSPENDED")
    );
    let out = run_cli(
        &db,
        &["user", "suspend", "bob", "--note", "laptop stolen"],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        run_cli(&db, &["user", "show"], "")
            .stdout
            .contains("laptop stolen")
    );
}

/// A console group that does not exist is taken (it may be created
/// later) but said: until it exists, the socket stays owner-only.
#[test]
fn a_console_group_that_does_not_exist_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relaygate.db");
    let out = run_cli(
        &db,
        &["policy", "set", "console-group", "no-such-group-x"],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("warning: no group no-such-group-x"),
        "{}",
        out.stdout
    );
    let out = run_cli(&db, &["policy", "set", "console-group", "root"], "");
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
}

/// An id typed with control characters is echoed escaped, never played
/// on the terminal.
#[test]
fn a_queue_id_with_control_characters_is_echoed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relaygate.db");
    let out = run_cli(&db, &["queue", "retry", "a\nb\x1b[2J"], "");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no message a\\x0ab\\x1b[2J"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\x1b'), "{}", out.stderr);
}

/// A database that does not exist is made, and the CLI says so on stderr
/// (a mistyped --db would otherwise take edits no engine reads); a path
/// whose directories above the database's own are missing is refused,
/// and nothing is made.
#[test]
fn a_new_database_is_announced_and_a_missing_directory_chain_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("typo").join("relaygate.db");
    let first = common::run_cli(&db, &["list", "add", "allow", "192.0.2.7"], "");
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first
            .stderr
            .contains("did not exist: created a new database"),
        "{first:?}"
    );
    let again = common::run_cli(&db, &["list", "show", "allow"], "");
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stderr.is_empty(), "{again:?}");
    assert!(again.stdout.contains("192.0.2.7"), "{again:?}");
    let deep = dir.path().join("no").join("such").join("relaygate.db");
    let refused = common::run_cli(&deep, &["policy", "show"], "");
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("does not exist") && refused.stderr.contains("/no"),
        "{refused:?}"
    );
    assert!(!dir.path().join("no").exists());
}

#[test]
fn a_delay_warning_that_could_never_be_sent_is_said() {
    let (_dir, db) = temp_db();
    let out = ok(&db, &["policy", "set", "delay-warning", "4h"]);
    assert!(!out.contains("warning:"), "{out}");
    let out = ok(&db, &["policy", "set", "max-queue-age", "2h"]);
    assert!(
        out.contains("warning: delay-warning (14400 s) is not shorter than max-queue-age (7200 s)"),
        "{out}"
    );
    let out = ok(&db, &["policy", "set", "delay-warning", "0"]);
    assert!(!out.contains("warning:"), "{out}");
}
