//! Drives a whole session with fuzzed lines and DATA chunks, carrying out
//! its actions as the I/O layer would (credentials decided without argon2,
//! storage always succeeding, TLS always established). Checks that nothing
//! panics, every reply is well-formed, and that chunking a DATA stream
//! never changes where the message ends or what its body is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaygate::bindings::BindKind;
use relaygate::policy::{Login, Policy, PolicyConfig};
use relaygate::smtp::data::DataReader;
use relaygate::smtp::session::{Action, DataProgress, Limits, Session, SessionParams};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

fn policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    Arc::clone(POLICY.get_or_init(|| {
        let config = PolicyConfig {
            local_domains: vec!["example.test".into()],
            allow: vec!["127.0.0.0/8".into()],
            users: vec![Login {
                name: "alice".into(),
                password_hash: "not-a-real-hash".into(),
            }],
            ..PolicyConfig::default()
        };
        Arc::new(Policy::compile(&config).unwrap_or_default())
    }))
}

/// Carries out actions; returns whether the session asked to close.
fn run(session: &mut Session, actions: Vec<Action>) -> bool {
    let mut closed = false;
    for action in actions {
        match action {
            Action::Reply(reply) => {
                let wire = reply.to_wire();
                assert!(wire.ends_with(b"\r\n"));
                assert!(wire.len() >= 5);
            }
            Action::VerifyAuth(request) => {
                let ok = request.login == "alice" && request.password.len() % 2 == 0;
                let more = session.auth_result(ok.into());
                closed |= run(session, more);
            }
            Action::Message(message) => {
                assert!(message.body.len() as u64 <= session.params().limits.max_message_size);
                let _ = session.message_stored(Ok("FUZZ".into()));
            }
            Action::StartTls => session.tls_established(),
            Action::Close => closed = true,
            Action::StartData | Action::RecipientDecided(_) => {}
        }
    }
    closed
}

/// Feeds the lines of `bytes` (split at LF, CR before it stripped) as
/// commands, or as DATA while the session is in DATA.
fn feed(session: &mut Session, policy: &Arc<Policy>, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if session.in_data() {
            match session.handle_data(bytes) {
                DataProgress::Continue => return false,
                DataProgress::Finished { consumed, actions } => {
                    if run(session, actions) {
                        return true;
                    }
                    bytes = bytes.get(consumed..).unwrap_or_default();
                }
            }
            continue;
        }
        let (line, rest) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (bytes.get(..i).unwrap_or_default(), bytes.get(i + 1..).unwrap_or_default()),
            None => (bytes, &[][..]),
        };
        bytes = rest;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let actions = if line.len() + 2 > session.max_line_len() {
            session.handle_overlong_line()
        } else {
            session.handle_line(line, policy)
        };
        if run(session, actions) {
            return true;
        }
    }
    false
}

/// The same DATA stream whole and in two pieces must end at the same
/// byte with the same body.
fn chunking_is_invisible(stream: &[u8], cut: usize) {
    let mut whole = DataReader::new(4096, 1000);
    let end_whole = whole.feed(stream);
    let mut split = DataReader::new(4096, 1000);
    let cut = cut % (stream.len() + 1);
    let (a, b) = (stream.get(..cut).unwrap_or_default(), stream.get(cut..).unwrap_or_default());
    let end_split = match split.feed(a) {
        Some(n) => Some(n),
        None => split.feed(b).map(|n| n + cut),
    };
    assert_eq!(end_whole, end_split);
    if end_whole.is_some() {
        assert_eq!(whole.finish(), split.finish());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, script)) = data.split_first() else {
        return;
    };
    let kind = match setup % 3 {
        0 => BindKind::Smtp,
        1 => BindKind::Submission,
        _ => BindKind::Smtps,
    };
    let peer = if setup & 4 == 0 {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([203, 0, 113, 9])
    };
    let limits = Limits {
        max_message_size: 1024,
        max_recipients: 3,
        max_bad_commands: 50,
        ..Limits::default()
    };
    let mut session = Session::new(SessionParams {
        hostname: "fuzz.test".into(),
        kind,
        peer,
        tls_active: kind == BindKind::Smtps,
        tls_available: setup & 8 != 0,
        limits,
    });
    session.set_auth_locked_out(setup & 16 != 0);
    let policy = policy();
    // The script is chunks separated by 0xFF (never valid in a command
    // line), so the fuzzer controls how a stream is cut.
    for chunk in script.split(|&b| b == 0xFF) {
        chunking_is_invisible(chunk, usize::from(setup));
        if feed(&mut session, &policy, chunk) {
            return;
        }
    }
});
