//! `config export` and `config apply` with the real binary: a rich
//! configuration goes through a file into an empty database and comes back
//! out the same; applying twice changes nothing; --dry-run changes
//! nothing; bad files are refused, naming the line, with nothing changed.

mod common;

use common::{cli, cli_stdin, run_cli, test_db};
use std::os::unix::fs::PermissionsExt;

fn rich(db: &std::path::Path) {
    cli(db, &["domain", "add", "example.com"]);
    cli(db, &["domain", "add", "example.org"]);
    cli(
        db,
        &["list", "add", "allow", "192.0.2.0/24", "10.1.2.1-100"],
    );
    cli(db, &["list", "add", "deny", "198.51.100.7"]);
    cli_stdin(
        db,
        &["user", "add", "alice", "--password-stdin"],
        "alice-pw\n",
    );
    cli_stdin(db, &["user", "add", "bob", "--password-stdin"], "bob-pw\n");
    cli(
        db,
        &[
            "user",
            "addresses",
            "alice",
            "alice@example.com",
            "@example.org",
        ],
    );
    cli(db, &["policy", "set", "relay.auth", "on"]);
    cli(db, &["policy", "set", "hostname", "gw.example.com"]);
    cli(db, &["policy", "set", "max-recipients", "50"]);
    cli(
        db,
        &[
            "rule",
            "add",
            "--sender",
            "*@spam.test",
            "--reject",
            "no thanks",
        ],
    );
    cli_stdin(
        db,
        &[
            "route",
            "add",
            "*",
            "smtp.isp.test:587",
            "--tls",
            "required",
            "--user",
            "relay",
            "--password-stdin",
            "--rate",
            "300/hour",
        ],
        "isp-secret\n",
    );
    cli(
        db,
        &[
            "route",
            "add",
            "example.org",
            "10.0.0.5:25",
            "--concurrency",
            "4",
        ],
    );
    cli(
        db,
        &["bind", "add", "127.0.0.1:2587", "--kind", "submission"],
    );
    cli(
        db,
        &[
            "bind",
            "add",
            "127.0.0.1:2626",
            "--proxy-protocol",
            "--trusted-proxy",
            "10.0.0.2,10.0.0.3",
        ],
    );
    cli(db, &["quota", "add", "login", "200/hour"]);
    cli(db, &["quota", "add", "login", "1000/day", "--suspend"]);
    cli(db, &["quota", "add", "ip/24", "500/hour", "--recipients"]);
}

#[test]
fn export_apply_export_gives_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    rich(&a);
    let file = dir.path().join("relaygate.toml");
    run_cli(&a, &["config", "export", file.to_str().unwrap()], "");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "it holds hashes and credentials");
    let text = std::fs::read_to_string(&file).unwrap();
    for needle in [
        "version = 1",
        "isp-secret",
        "$argon2id$",
        "rate = \"300/hour\"",
        "10.0.0.2/32",
        "1000/day",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Into an empty database (its defaults differ everywhere).
    let b = dir.path().join("b.db");
    let out = cli(&b, &["config", "apply", file.to_str().unwrap()]);
    for needle in [
        "users:\n  + alice\n  + bob",
        "routes:",
        "quotas:",
        "lists.allow:",
        "applied",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    let again = dir.path().join("again.toml");
    run_cli(&b, &["config", "export", again.to_str().unwrap()], "");
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);
    // Twice: nothing to do.
    let out = cli(&b, &["config", "apply", file.to_str().unwrap()]);
    assert!(out.starts_with("no changes"), "{out}");
    // What was applied works: bob's password, the rule, the proxy binding.
    assert!(cli(&b, &["bind", "show"]).contains("PROXY protocol from 10.0.0.2/32, 10.0.0.3/32"));
    assert!(
        cli(&b, &["quota", "show"]).contains(
            "#2: at most 1000 messages per day per login; reaching it suspends the login"
        )
    );
    let check = run_cli(
        &b,
        &[
            "check",
            "--ip",
            "203.0.113.9",
            "--from",
            "x@spam.test",
            "--to",
            "bob@example.com",
        ],
        "",
    );
    assert!(check.stdout.contains("no thanks"), "{check:?}");
}

#[test]
fn a_dry_run_changes_nothing_and_bad_files_are_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    rich(&a);
    let file = dir.path().join("relaygate.toml");
    run_cli(&a, &["config", "export", file.to_str().unwrap()], "");
    let text = std::fs::read_to_string(&file).unwrap();
    let b = dir.path().join("b.db");
    cli(&b, &["domain", "add", "keep.test"]);
    let before = cli(&b, &["config", "export"]);
    let out = cli(
        &b,
        &["config", "apply", "--dry-run", file.to_str().unwrap()],
    );
    assert!(
        out.contains("domains:\n  + example.com\n  + example.org\n  - keep.test"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert_eq!(cli(&b, &["config", "export"]), before);
    let cases = [
        (
            text.replace("version = 1", "version = 1\nflavour = \"x\""),
            "line 4",
            "flavour",
        ),
        (
            text.replace("version = 1", "version = 7"),
            "line 3: version 7: written by a newer relaygate",
            "",
        ),
        (
            text.replace("\"192.0.2.0/24\"", "\"192.0.2.0/33\""),
            "lists.allow",
            "192.0.2.0/33",
        ),
        (
            text.replace("rate = \"300/hour\"", "rate = \"300/fortnight\""),
            "routes",
            "is not a rate",
        ),
        (
            text.replace("max-recipients = \"50\"", "max-recipients = \"0\""),
            "settings",
            "max-recipients",
        ),
        // One domain's two spellings are one local domain.
        (
            text.replacen(
                "domains = [",
                "domains = [\"bücher.example\", \"xn--bcher-kva.example\", ",
                1,
            ),
            "domains",
            "listed already",
        ),
        // A rule no address could ever meet.
        (
            format!(
                "{text}\n[[rules]]\nsender = \"*@ｂücher.example\"\nrecipient = \"*\"\ndestination = \"any\"\nreject = \"no\"\n"
            ),
            "rules",
            "not in its IDNA form",
        ),
        // One domain's two spellings are one route, given twice.
        (
            format!(
                "{text}\n[[routes]]\ndomain = \"bücher.example\"\nhost = \"127.0.0.1\"\nport = 25\ntls = \"none\"\n\
                 \n[[routes]]\ndomain = \"xn--bcher-kva.example\"\nhost = \"127.0.0.1\"\nport = 26\ntls = \"none\"\n"
            ),
            "routes",
            "xn--bcher-kva.example: the domain has a route already",
        ),
    ];
    for (bad, where_, what) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        // Refused alike with or without --dry-run, and with no diff shown
        // (a diff before the error read as if it had applied).
        for dry in [true, false] {
            let mut args = vec!["config", "apply", path.to_str().unwrap()];
            if dry {
                args.push("--dry-run");
            }
            let out = run_cli(&b, &args, "");
            assert_eq!(out.code, 2, "{out:?}");
            assert!(
                out.stderr.contains(where_) && out.stderr.contains(what),
                "{where_} {what}: {out:?}"
            );
            assert_eq!(out.stdout, "", "{out:?}");
        }
        assert_eq!(
            cli(&b, &["config", "export"]),
            before,
            "a refused file changed something"
        );
    }
}

/// `config apply` and `list import` take files of at most 64 MiB: an
/// endless one (`/dev/zero`) is refused with exit 2, not read until
/// memory runs out. An export replaces whatever was at its path with an
/// owner-only file (a world-writable file left there is not written into).
#[test]
fn input_files_are_bounded_and_exports_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    for args in [
        &["config", "apply", "/dev/zero", "--dry-run"][..],
        &["list", "import", "allow", "/dev/zero"][..],
    ] {
        let out = run_cli(&db, args, "");
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("larger than 64 MiB"), "{}", out.stderr);
    }
    let file = dir.path().join("relaygate.toml");
    std::fs::write(&file, "someone else's").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run_cli(&db, &["config", "export", file.to_str().unwrap()], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "someone else's");
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("relaygate-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
