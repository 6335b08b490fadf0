//! Table tests of the relay decision: every class, every switch,
//! authentication overriding IPs, routing tricks, rules, and the documented
//! setups of both products relaygate replaces.

use relaygate::policy::address::{parse_forward_path, parse_reverse_path};
use relaygate::policy::decision::{Decision, Reason, RelayClass, Verdict};
use relaygate::policy::rules::Rule;
use relaygate::policy::settings::Switches;
use relaygate::policy::{Envelope, Login, Policy, PolicyConfig};
use relaygate::store::{DEFAULT_ALLOW, DEFAULT_DENY};

/// The defaults of a new database, with example.com local and two users.
fn base() -> PolicyConfig {
    PolicyConfig {
        allow: DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect(),
        deny: DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
        local_domains: vec!["example.com".into(), "Example.NET.".into()],
        users: vec![
            Login {
                name: "alice".into(),
                password_hash: "x".into(),
            },
            Login {
                name: "bob".into(),
                password_hash: "x".into(),
            },
        ],
        sender_addresses: vec![
            ("alice".into(), "alice@example.com".into()),
            ("bob".into(), "@example.net".into()),
        ],
        switches: Switches::default(),
        ..PolicyConfig::default()
    }
}

struct Case {
    ip: &'static str,
    login: Option<&'static str>,
    from: &'static str,
    to: &'static str,
    verdict: Verdict,
    class: RelayClass,
    reply: &'static str,
    reason: &'static str,
}

fn run(config: &PolicyConfig, cases: &[Case]) {
    let policy = Policy::compile(config).expect("policy compiles");
    for c in cases {
        let sender = parse_reverse_path(c.from).expect("sender parses");
        let rcpt = parse_forward_path(c.to).expect("recipient parses");
        let env = Envelope {
            peer: c.ip.parse().expect("ip"),
            login: c.login,
            sender: sender.as_ref(),
        };
        let d = policy.decide(&env, &rcpt);
        let what = format!(
            "{} {:?} {} -> {}: {d} / {}",
            c.ip, c.login, c.from, c.to, d.reply
        );
        assert_eq!(d.verdict, c.verdict, "verdict of {what}");
        assert_eq!(d.class, c.class, "class of {what}");
        assert!(d.reply.to_string().starts_with(c.reply), "reply of {what}");
        assert!(d.to_string().contains(c.reason), "reason of {what}");
        typed_reason(c, &d, &what);
    }
}

/// The decision's typed reason agrees with what the case expects: the
/// variant, the list entry, the login, the rule, the class. (The text
/// check above is for the wording; this one for the data the CLI, the log
/// and the console render from.)
fn typed_reason(c: &Case, d: &Decision, what: &str) {
    let allowing = matches!(
        d.reason,
        Reason::InboundToLocal { .. }
            | Reason::Unrestricted { .. }
            | Reason::Authenticated { .. }
            | Reason::IpAllowed { .. }
            | Reason::NullSenderRelayed { .. }
    );
    assert_eq!(
        allowing,
        d.verdict == Allow,
        "variant of {what}: {:?}",
        d.reason
    );
    let expect = c.reason;
    let entry_after = |marker: &str| {
        expect.split(marker).nth(1).map(|rest| {
            rest.split([' ', ')', ';', ','])
                .next()
                .unwrap_or_default()
                .to_string()
        })
    };
    // A notice relayed is allowed by what let its client relay.
    let allowed_by = match &d.reason {
        Reason::NullSenderRelayed { by } => by.as_ref(),
        other => other,
    };
    if let Some(entry) = entry_after("allow entry ") {
        let found = match allowed_by {
            Reason::IpAllowed { entry: e, .. } => *e.text == entry,
            Reason::IpDenied { over: Some(e), .. } => *e.text == entry,
            _ => false,
        };
        assert!(
            found,
            "allow entry {entry} in the typed reason of {what}: {:?}",
            d.reason
        );
    }
    if let Some(entry) = entry_after("deny entry ") {
        let found = match &d.reason {
            Reason::IpDenied { entry: e, .. } => *e.text == entry,
            Reason::IpAllowed { over: Some(e), .. } => *e.text == entry,
            _ => false,
        };
        assert!(
            found,
            "deny entry {entry} in the typed reason of {what}: {:?}",
            d.reason
        );
    }
    if expect.contains("inbound") {
        let domain =
            c.to.trim_matches(['<', '>'])
                .rsplit('@')
                .next()
                .unwrap_or_default();
        match &d.reason {
            Reason::InboundToLocal { domain: got } => {
                if c.to.contains('@') {
                    assert_eq!(got, &domain.trim_end_matches('.').to_lowercase(), "{what}");
                }
            }
            other => panic!("InboundToLocal expected for {what}: {other:?}"),
        }
    }
    if expect.contains("unlisted") || expect.contains("not on the allow list") {
        assert!(
            matches!(
                d.reason,
                Reason::IpUnlisted { .. } | Reason::IpDenied { .. }
            ),
            "{what}: {:?}",
            d.reason
        );
    }
    if expect.contains("unrestricted") {
        assert!(
            matches!(d.reason, Reason::Unrestricted { class } if class == c.class),
            "{what}: {:?}",
            d.reason
        );
    }
    if let Some(login) = expect.split("authenticated as ").nth(1) {
        let login = login.split_whitespace().next().unwrap_or_default();
        assert!(
            matches!(allowed_by, Reason::Authenticated { login: l } if l == login),
            "{what}: {:?}",
            d.reason
        );
    }
    if expect.contains("domain-restrict-send") && c.verdict == Deny {
        assert!(
            matches!(d.reason, Reason::DomainRestrictSend { .. }),
            "{what}: {:?}",
            d.reason
        );
    }
    if expect.contains("user-restrict-send") {
        assert!(
            matches!(d.reason, Reason::UserRestrictSend { .. }),
            "{what}: {:?}",
            d.reason
        );
    }
    if expect.contains("sender-login-match") {
        assert!(
            matches!(d.reason, Reason::SenderLoginMismatch { .. }),
            "{what}: {:?}",
            d.reason
        );
    }
    if expect.contains("routing trick") {
        assert!(d.routing_trick.is_some(), "{what}");
    }
    if let Some(n) = expect.split("rule #").nth(1) {
        let n: usize = n
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0);
        let found = matches!(&d.reason, Reason::RuleRejected { number, .. } if *number == n)
            || d.accepted_by_rule == Some(n);
        assert!(found, "rule #{n} in the typed decision of {what}: {d:?}");
    }
}

use RelayClass::*;
use Verdict::*;

#[allow(clippy::too_many_arguments)]
fn case(
    ip: &'static str,
    login: Option<&'static str>,
    from: &'static str,
    to: &'static str,
    verdict: Verdict,
    class: RelayClass,
    reply: &'static str,
    reason: &'static str,
) -> Case {
    Case {
        ip,
        login,
        from,
        to,
        verdict,
        class,
        reply,
        reason,
    }
}

#[test]
fn safe_defaults_are_not_an_open_relay() {
    run(
        &base(),
        &[
            case(
                "203.0.113.9",
                None,
                "spam@elsewhere.test",
                "victim@far.test",
                Deny,
                Relay,
                "554 5.7.1",
                "denied: relay from 203.0.113.9, not on the allow list; deny entry *.*.*.* applies",
            ),
            case(
                "2001:db8::9",
                None,
                "spam@elsewhere.test",
                "victim@far.test",
                Deny,
                Relay,
                "554 5.7.1",
                "deny entry ::/0",
            ),
            case(
                "203.0.113.9",
                None,
                "a@example.com",
                "victim@far.test",
                Deny,
                Outbound,
                "554 5.7.1",
                "outbound from 203.0.113.9, not on the allow list; deny entry *.*.*.* applies",
            ),
            case(
                "192.168.7.20",
                None,
                "a@example.com",
                "friend@far.test",
                Allow,
                Outbound,
                "250 2.1.5",
                "allowed: 192.168.7.20 matches allow entry 192.168.*.* (more specific than deny entry *.*.*.*)",
            ),
            case(
                "192.168.7.20",
                None,
                "someone@gmail.test",
                "friend@far.test",
                Deny,
                Relay,
                "550 5.7.1",
                "domain-restrict-send is on",
            ),
            case(
                "203.0.113.9",
                None,
                "sender@far.test",
                "a@example.com",
                Allow,
                Inbound,
                "250",
                "inbound mail for local domain example.com is accepted from any address",
            ),
            case(
                "203.0.113.9",
                None,
                "<>",
                "a@EXAMPLE.com.",
                Allow,
                Inbound,
                "250",
                "inbound",
            ),
            case(
                "203.0.113.9",
                None,
                "<>",
                "<Postmaster>",
                Allow,
                Inbound,
                "250",
                "mail for the bare <postmaster> is accepted",
            ),
            case(
                "203.0.113.9",
                None,
                "a@example.com",
                "b@example.net",
                Allow,
                Internal,
                "250",
                "internal mail is unrestricted",
            ),
            case(
                "::ffff:10.1.2.3",
                None,
                "a@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "10.1.2.3 matches allow entry 10.*.*.*",
            ),
            case(
                "::1",
                None,
                "a@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "allow entry ::1",
            ),
            case(
                "172.31.0.1",
                None,
                "a@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "172.16-31.*.*",
            ),
            case(
                "172.32.0.1",
                None,
                "a@example.com",
                "x@far.test",
                Deny,
                Outbound,
                "554",
                "deny entry *.*.*.*",
            ),
            // The null sender is external, so <> to an external recipient
            // is relay: a notice (bounce, auto-reply) from the LAN goes
            // out, since domain-restrict-send checks a domain <> has not;
            // from an address the lists do not allow it is refused.
            case(
                "192.168.1.5",
                None,
                "<>",
                "x@far.test",
                Allow,
                Relay,
                "250",
                "a notice (null sender) from a client the relay controls allow: 192.168.1.5 matches allow entry 192.168.*.*",
            ),
            case(
                "203.0.113.9",
                None,
                "<>",
                "x@far.test",
                Deny,
                Relay,
                "554 5.7.1",
                "not on the allow list",
            ),
            // An IP-literal recipient domain is never local.
            case(
                "203.0.113.9",
                None,
                "a@far.test",
                "x@[192.0.2.1]",
                Deny,
                Relay,
                "554",
                "not on the allow list",
            ),
        ],
    );
}

#[test]
fn routing_tricks_never_count_as_local_for_outsiders() {
    let cases = [
        "user%elsewhere.invalid@example.com",
        "elsewhere.invalid!user@example.com",
        "\"user@elsewhere.invalid\"@example.com",
    ];
    for to in cases {
        let to: &'static str = Box::leak(format!("<{to}>").into_boxed_str());
        run(
            &base(),
            &[
                case(
                    "203.0.113.9",
                    None,
                    "x@far.test",
                    to,
                    Deny,
                    Relay,
                    "554 5.7.1",
                    "routing trick",
                ),
                // A client that may relay anyway is allowed: the trick gains it nothing.
                case(
                    "192.168.1.9",
                    None,
                    "a@example.com",
                    to,
                    Allow,
                    Outbound,
                    "250",
                    "routing trick",
                ),
                case(
                    "203.0.113.9",
                    Some("alice"),
                    "alice@example.com",
                    to,
                    Allow,
                    Outbound,
                    "250",
                    "authenticated as alice",
                ),
            ],
        );
    }
}

#[test]
fn mailgate_router_example() {
    // Allow the LAN, deny its router.
    let mut c = base();
    c.allow = vec!["192.168.0.0/16".into()];
    c.deny = vec!["192.168.1.1".into()];
    run(
        &c,
        &[
            case(
                "192.168.1.1",
                None,
                "a@example.com",
                "x@far.test",
                Deny,
                Outbound,
                "554 5.7.1",
                "outbound from 192.168.1.1; deny entry 192.168.1.1 (more specific than allow entry 192.168.0.0/16)",
            ),
            case(
                "192.168.1.2",
                None,
                "a@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "allow entry 192.168.0.0/16",
            ),
            case(
                "10.0.0.1",
                None,
                "a@example.com",
                "x@far.test",
                Deny,
                Outbound,
                "554",
                "unlisted 10.0.0.1; no allow or deny entry",
            ),
        ],
    );
}

#[test]
fn hexamail_deny_world_allow_ten_example() {
    let mut c = base();
    c.allow = vec!["10.*.*.*".into()];
    c.deny = vec!["*.*.*.*".into()];
    c.switches.domain_restrict_send = false;
    run(
        &c,
        &[
            case(
                "10.20.30.40",
                None,
                "x@far.test",
                "y@far2.test",
                Allow,
                Relay,
                "250",
                "10.20.30.40 matches allow entry 10.*.*.* (more specific than deny entry *.*.*.*)",
            ),
            case(
                "11.0.0.1",
                None,
                "x@far.test",
                "y@far2.test",
                Deny,
                Relay,
                "554 5.7.1",
                "relay from 11.0.0.1, not on the allow list; deny entry *.*.*.* applies",
            ),
        ],
    );
}

#[test]
fn equal_specificity_goes_to_deny() {
    let mut c = base();
    c.allow = vec!["192.168.*.*".into()];
    c.deny = vec!["192.168.0.0/16".into()];
    run(
        &c,
        &[case(
            "192.168.4.4",
            None,
            "a@example.com",
            "x@far.test",
            Deny,
            Outbound,
            "554",
            "deny entry 192.168.0.0/16 is as specific as allow entry 192.168.*.* and deny wins ties",
        )],
    );
}

#[test]
fn authentication_overrides_ip_restrictions() {
    let mut c = base();
    c.switches.domain_restrict_send = false;
    run(
        &c,
        &[
            case(
                "203.0.113.9",
                Some("alice"),
                "alice@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated as alice (authentication overrides IP restrictions)",
            ),
            case(
                "203.0.113.9",
                Some("alice"),
                "alice@far.test",
                "x@far.test",
                Allow,
                Relay,
                "250",
                "authenticated as alice",
            ),
            // Even an explicitly denied address.
            case(
                "192.168.1.1",
                Some("alice"),
                "alice@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated",
            ),
        ],
    );
}

#[test]
fn per_class_auth_switches() {
    let mut c = base();
    c.switches.outbound.auth = true;
    c.switches.internal.listed_ip = true;
    c.switches.relay.auth = true;
    c.switches.relay.listed_ip = true;
    c.switches.domain_restrict_send = false;
    run(
        &c,
        &[
            case(
                "192.168.1.5",
                None,
                "a@example.com",
                "x@far.test",
                Deny,
                Outbound,
                "530 5.7.0",
                "outbound mail requires an authenticated client (outbound.auth is on)",
            ),
            case(
                "192.168.1.5",
                Some("bob"),
                "a@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated as bob",
            ),
            case(
                "203.0.113.9",
                None,
                "a@example.com",
                "b@example.com",
                Deny,
                Internal,
                "554 5.7.1",
                "internal from 203.0.113.9, not on the allow list",
            ),
            case(
                "192.168.1.5",
                None,
                "a@example.com",
                "b@example.com",
                Allow,
                Internal,
                "250",
                "allow entry 192.168.*.*",
            ),
            // Both switches on: a listed address is not enough, authentication is.
            case(
                "192.168.1.5",
                None,
                "a@far.test",
                "x@far.test",
                Deny,
                Relay,
                "530 5.7.0",
                "relay.auth is on",
            ),
            case(
                "203.0.113.9",
                Some("bob"),
                "a@far.test",
                "x@far.test",
                Allow,
                Relay,
                "250",
                "authenticated as bob",
            ),
            // Inbound is never restricted by the class switches.
            case(
                "203.0.113.9",
                None,
                "a@far.test",
                "b@example.com",
                Allow,
                Inbound,
                "250",
                "inbound",
            ),
            // The bare <Postmaster> from a local sender, unlisted and not
            // logged in: inbound (RFC 5321 4.5.1), not internal.
            case(
                "203.0.113.9",
                None,
                "a@example.com",
                "<Postmaster>",
                Allow,
                Inbound,
                "250",
                "bare <postmaster>",
            ),
        ],
    );
    let mut both = base();
    both.switches.internal.auth = true;
    both.switches.internal.listed_ip = true;
    run(
        &both,
        &[case(
            "203.0.113.9",
            None,
            "a@example.com",
            "<postmaster>",
            Allow,
            Inbound,
            "250",
            "bare <postmaster>",
        )],
    );
}

#[test]
fn a_notice_goes_out_from_whoever_may_relay_and_never_opens_the_relay() {
    let notice = |ip, login, verdict, reply, reason| {
        case(ip, login, "<>", "x@far.test", verdict, Relay, reply, reason)
    };
    // The defaults: the lists decide, then domain-restrict-send, which a
    // notice (no domain) passes.
    run(
        &base(),
        &[
            notice(
                "10.0.0.7",
                None,
                Allow,
                "250",
                "a notice (null sender) from a client the relay controls allow: 10.0.0.7 matches allow entry 10.*.*.*",
            ),
            notice(
                "203.0.113.9",
                Some("alice"),
                Allow,
                "250",
                "a notice (null sender) from a client the relay controls allow: authenticated as alice",
            ),
            notice(
                "203.0.113.9",
                None,
                Deny,
                "554 5.7.1",
                "not on the allow list",
            ),
        ],
    );
    // No relay control on: domain-restrict-send is all that closes the
    // relay, and it stays closed to <> too.
    let mut open = base();
    open.switches.relay.listed_ip = false;
    run(
        &open,
        &[notice(
            "203.0.113.9",
            None,
            Deny,
            "550 5.7.1",
            "domain-restrict-send",
        )],
    );
    // domain-restrict-send off: the lists' own reason.
    let mut off = base();
    off.switches.domain_restrict_send = false;
    run(
        &off,
        &[notice(
            "10.0.0.7",
            None,
            Allow,
            "250",
            "allowed: 10.0.0.7 matches allow entry 10.*.*.*",
        )],
    );
}

#[test]
fn unrestricted_classes() {
    let mut c = base();
    c.switches.outbound.listed_ip = false;
    c.switches.relay.listed_ip = false;
    c.switches.domain_restrict_send = false;
    run(
        &c,
        &[
            case(
                "203.0.113.9",
                None,
                "a@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "outbound mail is unrestricted (outbound.listed-ip and outbound.auth are off)",
            ),
            case(
                "203.0.113.9",
                None,
                "a@far.test",
                "x@far.test",
                Allow,
                Relay,
                "250",
                "relay mail is unrestricted",
            ),
        ],
    );
}

#[test]
fn user_restrict_send_and_sender_login_match() {
    let mut c = base();
    c.switches.user_restrict_send = true;
    c.switches.sender_login_match = true;
    run(
        &c,
        &[
            case(
                "192.168.1.5",
                None,
                "nobody@example.com",
                "x@far.test",
                Deny,
                Outbound,
                "553 5.7.1",
                "outbound sender nobody@example.com is not assigned to any user (user-restrict-send is on)",
            ),
            case(
                "192.168.1.5",
                None,
                "alice@example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "allow entry",
            ),
            case(
                "192.168.1.5",
                None,
                "anyone@example.net",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "allow entry",
            ),
            // Internal mail is not subject to user-restrict-send.
            case(
                "192.168.1.5",
                None,
                "nobody@example.com",
                "a@example.com",
                Allow,
                Internal,
                "250",
                "unrestricted",
            ),
            case(
                "203.0.113.9",
                Some("alice"),
                "bob@example.net",
                "x@far.test",
                Deny,
                Outbound,
                "553 5.7.1",
                "sender bob@example.net is not owned by login alice (sender-login-match is on)",
            ),
            case(
                "203.0.113.9",
                Some("alice"),
                "ALICE@Example.com",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated as alice",
            ),
            case(
                "203.0.113.9",
                Some("bob"),
                "whoever@example.net",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated as bob",
            ),
            // The login check applies to inbound mail too: a login cannot spoof.
            case(
                "203.0.113.9",
                Some("bob"),
                "alice@example.com",
                "a@example.com",
                Deny,
                Internal,
                "553",
                "not owned by login bob",
            ),
        ],
    );
}

#[test]
fn mail_manager_rules() {
    let mut c = base();
    c.switches.domain_restrict_send = false;
    c.rules = vec![
        Rule::new("ceo@example.com", "*", "external", None).unwrap(),
        Rule::new(
            "!*@example.com",
            "*",
            "external",
            Some("Only example.com senders may send out"),
        )
        .unwrap(),
        Rule::new(
            "*",
            "*@blocked.test",
            "any",
            Some("No mail to blocked.test"),
        )
        .unwrap(),
        Rule::new("<>", "*", "internal", Some("No bounces in")).unwrap(),
    ];
    run(
        &c,
        &[
            case(
                "192.168.1.5",
                None,
                "x@far.test",
                "y@far.test",
                Deny,
                Relay,
                "550 5.7.1 Only example.com senders may send out",
                "rule #2: sender !*@example.com recipient * destination external",
            ),
            case(
                "192.168.1.5",
                None,
                "a@example.com",
                "y@blocked.test",
                Deny,
                Outbound,
                "550 5.7.1 No mail to blocked.test",
                "rule #3",
            ),
            // Accept-and-stop ends the rules before #3.
            case(
                "192.168.1.5",
                None,
                "ceo@example.com",
                "y@blocked.test",
                Allow,
                Outbound,
                "250",
                "rule #1 accept-and-stop",
            ),
            // ...but never overrides the relay controls.
            case(
                "203.0.113.9",
                None,
                "ceo@example.com",
                "y@far.test",
                Deny,
                Outbound,
                "554 5.7.1",
                "203.0.113.9, not on the allow list",
            ),
            case(
                "203.0.113.9",
                None,
                "<>",
                "a@example.com",
                Deny,
                Inbound,
                "550 5.7.1 No bounces in",
                "rule #4",
            ),
            case(
                "203.0.113.9",
                None,
                "x@far.test",
                "a@example.com",
                Allow,
                Inbound,
                "250",
                "inbound",
            ),
        ],
    );
}

#[test]
fn invalid_stored_entry_fails_the_whole_compile() {
    let mut c = base();
    c.allow.push("10.5-2.*.*".into());
    let err = Policy::compile(&c).unwrap_err();
    assert!(err.to_string().contains("10.5-2.*.*"), "{err}");
}

/// An international domain is one domain in both its spellings (RFC 5890:
/// the U-label `bücher.example` and the A-label `xn--bcher-kva.example`),
/// whichever one the administrator wrote: a client without SMTPUTF8 can
/// only send the A-label, and a spoofer must not get past ownership or a
/// rule by switching spelling.
#[test]
fn an_international_domain_is_one_domain_in_both_spellings() {
    let mut c = base();
    c.local_domains = vec!["bücher.example".into(), "xn--caf-dma.example".into()];
    c.switches.user_restrict_send = true;
    c.switches.sender_login_match = true;
    c.switches.domain_restrict_send = false;
    c.sender_addresses = vec![
        ("alice".into(), "chef@bücher.example".into()),
        ("bob".into(), "@xn--caf-dma.example".into()),
    ];
    c.rules = vec![Rule::new("*", "*@verboten.bücher.example", "any", Some("Not here")).unwrap()];
    let cases = [
        ("<leser@xn--bcher-kva.example>", Inbound),
        ("<leser@bücher.example>", Inbound),
        ("<gast@café.example>", Inbound),
        ("<gast@xn--caf-dma.example>", Inbound),
        ("<leser@bucher.example>", Relay),
    ];
    // Full-width letters or a decomposed accent: no domain name at all,
    // refused before any decision (501 5.1.3 at RCPT).
    for spoof in ["<leser@ｂücher.example>", "<leser@bu\u{308}cher.example>"] {
        assert!(parse_forward_path(spoof).is_err(), "{spoof}");
        assert!(parse_reverse_path(spoof).is_err(), "{spoof}");
    }
    for (to, class) in cases {
        let verdict = if class == Inbound { Allow } else { Deny };
        let reply = if class == Inbound { "250" } else { "554 5.7.1" };
        run(
            &c,
            &[case(
                "203.0.113.9",
                None,
                "x@far.test",
                to,
                verdict,
                class,
                reply,
                "",
            )],
        );
    }
    run(
        &c,
        &[
            // Ownership: alice owns chef@ in either spelling, and a sender
            // in the other spelling is still owned (by her alone).
            case(
                "203.0.113.9",
                Some("alice"),
                "chef@xn--bcher-kva.example",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated as alice",
            ),
            case(
                "203.0.113.9",
                Some("bob"),
                "chef@xn--bcher-kva.example",
                "x@far.test",
                Deny,
                Outbound,
                "553",
                "not owned by login bob",
            ),
            case(
                "203.0.113.9",
                Some("bob"),
                "kellner@café.example",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "authenticated as bob",
            ),
            case(
                "192.168.1.5",
                None,
                "chef@xn--bcher-kva.example",
                "x@far.test",
                Allow,
                Outbound,
                "250",
                "allow entry",
            ),
            case(
                "192.168.1.5",
                None,
                "nobody@xn--bcher-kva.example",
                "x@far.test",
                Deny,
                Outbound,
                "553 5.7.1",
                "is not assigned to any user",
            ),
            // The rule written with the U-label refuses the A-label.
            case(
                "192.168.1.5",
                None,
                "chef@bücher.example",
                "a@verboten.xn--bcher-kva.example",
                Deny,
                Outbound,
                "550 5.7.1 Not here",
                "rule #1",
            ),
        ],
    );
}
