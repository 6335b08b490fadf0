//! "What would the policy decide?": a client address, perhaps a login,
//! a sender and recipients, parsed as SMTP would and decided by the
//! policy. One function for `relaygate check` and the console's test box,
//! so the two never disagree about what an admin's question means.

use crate::policy::address::{AddressError, MailAddress, parse_forward_path, parse_reverse_path};
use crate::policy::decision::Decision;
use crate::policy::settings::AuthMode;
use crate::policy::{Envelope, Policy};
use std::fmt;
use std::net::IpAddr;

/// The question, as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckQuery<'a> {
    pub ip: IpAddr,
    /// The login the client would have authenticated as (a password,
    /// if one was given, is the caller's to verify first).
    pub user: Option<&'a str>,
    /// The sender (MAIL FROM); `""` or `<>` is the null sender.
    pub sender: &'a str,
    /// The recipients (RCPT TO), in order.
    pub recipients: Vec<&'a str>,
}

/// The answer: who the client counts as, and a decision per recipient.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The login decided as; `None` is a client that did not authenticate.
    pub login: Option<String>,
    /// Why the user asked for cannot log in (decided as not
    /// authenticated then).
    pub login_refused: Option<String>,
    /// `None` is the null sender.
    pub sender: Option<MailAddress>,
    pub decisions: Vec<(MailAddress, Decision)>,
}

impl Checked {
    pub fn all_allowed(&self) -> bool {
        self.decisions.iter().all(|(_, d)| d.is_allowed())
    }
}

/// A question that cannot be decided: an address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    Sender(AddressError),
    Recipient(AddressError),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Sender(e) => write!(f, "sender: {e}"),
            CheckError::Recipient(e) => write!(f, "recipient: {e}"),
        }
    }
}

impl std::error::Error for CheckError {}

/// Why `user` cannot log in under `policy`, if it cannot.
pub fn login_refused(policy: &Policy, user: &str) -> Option<String> {
    if policy.auth_mode() == AuthMode::None {
        return Some("auth mode is none: no client can authenticate".to_string());
    }
    policy.login_hash(user).is_none().then(|| {
        format!(
            "{user} cannot authenticate under auth mode {}",
            policy.auth_mode()
        )
    })
}

/// Parses the addresses as SMTP would and asks `policy` for each
/// recipient. A user who cannot log in is decided as not authenticated,
/// with the reason in [`Checked::login_refused`].
pub fn check(policy: &Policy, query: &CheckQuery) -> Result<Checked, CheckError> {
    let sender = parse_reverse_path(query.sender).map_err(CheckError::Sender)?;
    let recipients = query
        .recipients
        .iter()
        .map(|r| parse_forward_path(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CheckError::Recipient)?;
    let login_refused = query.user.and_then(|u| login_refused(policy, u));
    let login = query.user.filter(|_| login_refused.is_none());
    let env = Envelope {
        peer: query.ip,
        login,
        sender: sender.as_ref(),
    };
    let decisions = recipients
        .into_iter()
        .map(|r| {
            let d = policy.decide(&env, &r);
            (r, d)
        })
        .collect();
    Ok(Checked {
        login: login.map(str::to_string),
        login_refused,
        sender,
        decisions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use crate::policy::decision::Verdict;

    fn policy(config: PolicyConfig) -> Policy {
        Policy::compile(&config).expect("policy")
    }

    fn query<'a>(ip: &str, user: Option<&'a str>, sender: &'a str, to: &'a str) -> CheckQuery<'a> {
        CheckQuery {
            ip: ip.parse().expect("ip"),
            user,
            sender,
            recipients: vec![to],
        }
    }

    #[test]
    fn decides_each_recipient_and_says_why_a_login_does_not_count() {
        let config = PolicyConfig {
            allow: vec!["10.0.0.0/8".into()],
            local_domains: vec!["example.com".into()],
            ..Default::default()
        };
        let p = policy(config);
        let allowed =
            check(&p, &query("10.1.2.3", None, "a@example.com", "x@far.test")).expect("decided");
        assert!(allowed.all_allowed(), "{:?}", allowed.decisions);
        let denied =
            check(&p, &query("192.0.2.9", None, "a@example.com", "x@far.test")).expect("decided");
        assert_eq!(denied.decisions.len(), 1);
        assert_eq!(denied.decisions[0].1.verdict, Verdict::Deny);
        assert!(!denied.all_allowed());
        // The same decision as the policy's own for the same envelope.
        let sender = parse_reverse_path("a@example.com").expect("sender");
        let direct = p.decide(
            &Envelope {
                peer: "192.0.2.9".parse().expect("ip"),
                login: None,
                sender: sender.as_ref(),
            },
            &parse_forward_path("x@far.test").expect("rcpt"),
        );
        assert_eq!(denied.decisions[0].1, direct);

        // A login the policy does not know: decided as not authenticated.
        let ghost =
            check(&p, &query("192.0.2.9", Some("ghost"), "", "x@far.test")).expect("decided");
        assert_eq!(ghost.login, None);
        assert!(
            ghost
                .login_refused
                .as_deref()
                .is_some_and(|w| w.contains("cannot authenticate")),
            "{:?}",
            ghost.login_refused
        );
        assert_eq!(ghost.sender, None);

        // Addresses that do not parse say which one.
        let bad = check(&p, &query("10.1.2.3", None, "a@", "x@far.test")).expect_err("bad");
        assert!(bad.to_string().starts_with("sender: "), "{bad}");
        let bad = check(&p, &query("10.1.2.3", None, "", "<>")).expect_err("bad");
        assert!(bad.to_string().starts_with("recipient: "), "{bad}");
    }
}
