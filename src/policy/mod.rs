//! The relay policy: pure data and logic, no I/O.
//!
//! [`PolicyConfig`] is the configuration as stored; [`Policy`] is its
//! compiled, immutable snapshot, the one thing a session asks
//! [`Policy::decide`] of, per recipient.

pub mod address;
pub mod decision;
pub mod ip_lists;
pub mod ip_pattern;
pub mod list_text;
pub mod rules;
pub mod settings;

use address::{Domain, MailAddress};
use decision::{Decision, Reason, RelayClass, Reply, Verdict};
use ip_lists::{IpLists, ListEntry, ListKind, ListVerdict};
use ip_pattern::{IpPattern, PatternError};
use rules::{AddressText, Rule, RuleAction};
use settings::{AuthMode, ClassSwitches, Switches};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// A login and its argon2id password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub name: String,
    pub password_hash: String,
}

/// The configuration as the store holds it, before compilation.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub local_domains: Vec<String>,
    pub users: Vec<Login>,
    /// (login, address or `@domain`) pairs: what each login may send as.
    pub sender_addresses: Vec<(String, String)>,
    pub auth_mode: AuthMode,
    /// The one login of auth mode `specified`.
    pub specified: Option<Login>,
    pub switches: Switches,
    pub rules: Vec<Rule>,
}

/// Who is asking: the client and its transaction, as seen at RCPT.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub peer: IpAddr,
    /// The authenticated login, if any.
    pub login: Option<&'a str>,
    /// `None` is the null sender `<>`.
    pub sender: Option<&'a MailAddress>,
}

/// The compiled policy snapshot. Cheap to share (`Arc<Policy>`), never
/// changed after it is built.
#[derive(Debug, Default)]
pub struct Policy {
    lists: IpLists,
    local_domains: HashSet<String>,
    auth_mode: AuthMode,
    logins: HashMap<String, String>,
    owned: HashMap<String, HashSet<String>>,
    all_owned: HashSet<String>,
    switches: Switches,
    rules: Vec<Rule>,
}

impl Policy {
    /// Validates and compiles a configuration. Any invalid entry fails the
    /// whole compilation, so a half-valid policy is never in force.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PatternError> {
        let mut entries = Vec::with_capacity(config.allow.len() + config.deny.len());
        for (list, texts) in [
            (ListKind::Allow, &config.allow),
            (ListKind::Deny, &config.deny),
        ] {
            for text in texts {
                entries.push(ListEntry {
                    list,
                    pattern: IpPattern::parse(text)?,
                    text: Arc::from(text.trim()),
                });
            }
        }
        let logins: HashMap<String, String> = match config.auth_mode {
            AuthMode::None => HashMap::new(),
            AuthMode::AnyUser => config
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            AuthMode::Specified => config
                .specified
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
        };
        let mut owned: HashMap<String, HashSet<String>> = HashMap::new();
        for (login, addr) in &config.sender_addresses {
            owned
                .entry(login.clone())
                .or_default()
                .insert(owned_key(&addr.to_lowercase()));
        }
        let all_owned = owned.values().flatten().cloned().collect();
        Ok(Policy {
            lists: IpLists::build(entries),
            local_domains: config
                .local_domains
                .iter()
                .map(|d| address::dns_form(&d.to_lowercase()).into_owned())
                .collect(),
            auth_mode: config.auth_mode,
            logins,
            owned,
            all_owned,
            switches: config.switches,
            rules: config.rules.clone(),
        })
    }

    pub fn lists(&self) -> &IpLists {
        &self.lists
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.auth_mode
    }

    pub fn switches(&self) -> &Switches {
        &self.switches
    }

    /// The password hash of a login that may authenticate under the
    /// current auth mode.
    pub fn login_hash(&self, login: &str) -> Option<&str> {
        self.logins.get(login).map(String::as_str)
    }

    /// Who the bare `<postmaster>` recipient is, without a
    /// `postmaster-address` setting: postmaster of the first local domain
    /// (alphabetically), or nobody if there is no local domain.
    pub fn default_postmaster(&self) -> Option<String> {
        self.local_domains
            .iter()
            .min()
            .map(|d| format!("postmaster@{d}"))
    }

    /// The local domains, lower case, in their DNS form
    /// ([`address::dns_form`]).
    pub fn local_domains(&self) -> &HashSet<String> {
        &self.local_domains
    }

    /// Whether a domain is one of ours (case-insensitive, one trailing dot
    /// ignored, a U-label domain one with its A-labels).
    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Name(n) => self.local_domains.contains(address::dns_form(n).as_ref()),
            Domain::Literal(_) => false,
            Domain::Postmaster => true,
        }
    }

    /// Classifies a recipient. A recipient with a routing trick in its local
    /// part is never local.
    pub fn classify(&self, sender: Option<&MailAddress>, recipient: &MailAddress) -> RelayClass {
        // The bare <postmaster> takes mail from anyone (RFC 5321 4.5.1),
        // whatever the sender: inbound, never internal.
        if recipient.domain == Domain::Postmaster {
            return RelayClass::Inbound;
        }
        let sender_local = sender.is_some_and(|s| self.is_local_domain(&s.domain));
        let recipient_local =
            recipient.routing_trick().is_none() && self.is_local_domain(&recipient.domain);
        match (sender_local, recipient_local) {
            (false, true) => RelayClass::Inbound,
            (true, true) => RelayClass::Internal,
            (true, false) => RelayClass::Outbound,
            (false, false) => RelayClass::Relay,
        }
    }

    /// Decides one recipient. The order is the precedence table of the
    /// README: sender ownership, then the class's relay controls, then the
    /// rules, which may only refuse.
    pub fn decide(&self, env: &Envelope<'_>, recipient: &MailAddress) -> Decision {
        let class = self.classify(env.sender, recipient);
        let sender_text = || {
            env.sender
                .map_or_else(|| "<>".to_string(), MailAddress::key)
        };
        let mut decision = Decision {
            verdict: Verdict::Allow,
            class,
            reply: Reply {
                code: 250,
                status: "2.1.5".into(),
                text: Cow::Borrowed("Ok"),
            },
            reason: Reason::Unrestricted { class },
            routing_trick: recipient.routing_trick(),
            accepted_by_rule: None,
            verification: None,
        };

        if let (Some(login), Some(sender), true) =
            (env.login, env.sender, self.switches.sender_login_match)
            && !self.owns(login, sender)
        {
            let text = format!("Sender address rejected: not owned by user {login}");
            return decision.denied(
                553,
                text.into(),
                Reason::SenderLoginMismatch {
                    login: login.to_string(),
                    sender: sender_text(),
                },
            );
        }

        let access = match class {
            RelayClass::Inbound => Access::Allow(Reason::InboundToLocal {
                domain: recipient.domain_name().unwrap_or_default().to_string(),
            }),
            RelayClass::Internal => self.class_access(class, self.switches.internal, env),
            RelayClass::Outbound => match self.class_access(class, self.switches.outbound, env) {
                Access::Allow(_)
                    if self.switches.user_restrict_send
                        && env.sender.is_some_and(|s| !self.owned_by_anyone(s)) =>
                {
                    Access::Deny(
                        553,
                        "Sender address rejected: not a user's address",
                        Reason::UserRestrictSend {
                            sender: sender_text(),
                        },
                    )
                }
                other => other,
            },
            RelayClass::Relay => match self.class_access(class, self.switches.relay, env) {
                // A notice (the null sender: a bounce, an auto-reply, a
                // read receipt) from the internal server or a logged-in
                // client names no domain to check; it is the client the
                // relay controls allowed. Never when no control applied:
                // `<>` would then open the relay.
                Access::Allow(by @ (Reason::Authenticated { .. } | Reason::IpAllowed { .. }))
                    if env.sender.is_none() && self.switches.domain_restrict_send =>
                {
                    Access::Allow(Reason::NullSenderRelayed { by: Box::new(by) })
                }
                Access::Allow(_) if self.switches.domain_restrict_send => Access::Deny(
                    550,
                    "Relay access denied: sender domain is not local",
                    Reason::DomainRestrictSend {
                        sender: sender_text(),
                    },
                ),
                other => other,
            },
        };
        match access {
            Access::Allow(reason) => decision.reason = reason,
            Access::Deny(code, text, reason) => return decision.denied(code, text.into(), reason),
        }

        if self.rules.is_empty() {
            return decision;
        }
        let rcpt_local = matches!(class, RelayClass::Inbound | RelayClass::Internal);
        let sender = AddressText {
            written: sender_text(),
            unicode: env.sender.and_then(MailAddress::unicode_key),
            dns: env.sender.and_then(MailAddress::dns_key),
        };
        let rcpt = AddressText {
            written: recipient.key(),
            unicode: recipient.unicode_key(),
            dns: recipient.dns_key(),
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(&sender, &rcpt, rcpt_local) {
                continue;
            }
            match &rule.action {
                RuleAction::Reject(text) => {
                    let reason = Reason::RuleRejected {
                        number: i + 1,
                        rule: rule.to_string(),
                    };
                    return decision.denied(550, text.clone().into(), reason);
                }
                RuleAction::Accept => {
                    decision.accepted_by_rule = Some(i + 1);
                    break;
                }
            }
        }
        decision
    }

    /// The relay controls of one class: unrestricted, authenticated (which
    /// overrides every IP restriction), or the allow/deny lists.
    fn class_access(
        &self,
        class: RelayClass,
        switches: ClassSwitches,
        env: &Envelope<'_>,
    ) -> Access {
        if !switches.listed_ip && !switches.auth {
            return Access::Allow(Reason::Unrestricted { class });
        }
        if let Some(login) = env.login {
            return Access::Allow(Reason::Authenticated {
                login: login.to_string(),
            });
        }
        if switches.auth {
            return Access::Deny(
                530,
                "Authentication required",
                Reason::AuthRequired { class },
            );
        }
        let ip = ip_pattern::effective_ip(env.peer);
        match self.lists.check(ip) {
            ListVerdict::Allowed { entry, over } => {
                Access::Allow(Reason::IpAllowed { ip, entry, over })
            }
            ListVerdict::Denied { entry, over } => Access::Deny(
                554,
                "Relay access denied",
                Reason::IpDenied {
                    class,
                    ip,
                    entry,
                    over,
                },
            ),
            ListVerdict::Unlisted => {
                Access::Deny(554, "Relay access denied", Reason::IpUnlisted { class, ip })
            }
        }
    }

    fn owns(&self, login: &str, sender: &MailAddress) -> bool {
        self.owned
            .get(login)
            .is_some_and(|set| address_in(set, sender))
    }

    fn owned_by_anyone(&self, sender: &MailAddress) -> bool {
        address_in(&self.all_owned, sender)
    }
}

/// The outcome of a class's relay controls.
enum Access {
    Allow(Reason),
    Deny(u16, &'static str, Reason),
}

/// Whether a set of owned addresses holds the sender, exactly or as a
/// whole domain (`@example.com`).
fn address_in(set: &HashSet<String>, sender: &MailAddress) -> bool {
    set.contains(&sender.dns_key().unwrap_or_else(|| sender.key()))
        || sender
            .domain_name()
            .is_some_and(|d| set.contains(&format!("@{}", address::dns_form(d))))
}

/// An owned `local@domain` or `@domain`, lower case, with its domain in
/// the DNS form senders are compared in.
fn owned_key(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", address::dns_form(domain)),
        None => addr.to_string(),
    }
}

/// Whether an allowed recipient is asked about at its route: one in a
/// local domain, except postmaster, which RFC 5321 4.5.1 says every
/// domain accepts.
pub fn worth_verifying(class: decision::RelayClass, recipient: &address::MailAddress) -> bool {
    matches!(
        class,
        decision::RelayClass::Inbound | decision::RelayClass::Internal
    ) && matches!(recipient.domain, address::Domain::Name(_))
        && !recipient.local.eq_ignore_ascii_case("postmaster")
}
