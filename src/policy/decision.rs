//! The answer to "may this client send this mail to this recipient", as
//! data: verdict, class, the SMTP reply and the exact thing that decided.
//! The CLI, the log and the console all render this one type.

use super::address::RoutingTrick;
use super::ip_lists::ListEntry;
use crate::net_text::AddrText;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The class of a recipient, from (sender local?, recipient local?).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayClass {
    /// External sender to a local recipient.
    Inbound,
    /// Local sender to a local recipient.
    Internal,
    /// Local sender to an external recipient.
    Outbound,
    /// External sender to an external recipient.
    Relay,
}

impl RelayClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayClass::Inbound => "inbound",
            RelayClass::Internal => "internal",
            RelayClass::Outbound => "outbound",
            RelayClass::Relay => "relay",
        }
    }
}

impl fmt::Display for RelayClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An SMTP reply with its RFC 3463 enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub status: Cow<'static, str>,
    pub text: Cow<'static, str>,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// What decided. Each variant names the entry, switch or rule involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Reason {
    InboundToLocal {
        domain: String,
    },
    Unrestricted {
        class: RelayClass,
    },
    Authenticated {
        login: String,
    },
    IpAllowed {
        #[serde(serialize_with = "crate::net_text::serialize_ip")]
        ip: IpAddr,
        entry: ListEntry,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        over: Option<ListEntry>,
    },
    IpDenied {
        class: RelayClass,
        #[serde(serialize_with = "crate::net_text::serialize_ip")]
        ip: IpAddr,
        entry: ListEntry,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        over: Option<ListEntry>,
    },
    IpUnlisted {
        class: RelayClass,
        ip: IpAddr,
    },
    AuthRequired {
        class: RelayClass,
    },
    DomainRestrictSend {
        sender: String,
    },
    /// Relay mail from the null sender (a notice), allowed because the
    /// client passed the relay controls (`by`): `domain-restrict-send`
    /// checks a sender's domain, and `<>` has none.
    NullSenderRelayed {
        by: Box<Reason>,
    },
    UserRestrictSend {
        sender: String,
    },
    SenderLoginMismatch {
        login: String,
        sender: String,
    },
    RuleRejected {
        number: usize,
        rule: String,
    },
    /// Allowed by the policy, but the server that holds the local
    /// domain's mailboxes refuses the recipient (recipient verification).
    RecipientUnknown {
        #[serde(flatten)]
        check: HopCheck,
    },
    /// Allowed by the policy, but the server that holds the local
    /// domain's mailboxes could not be asked, and `verify-unreachable` is
    /// `defer`.
    RecipientUnverified {
        #[serde(flatten)]
        check: HopCheck,
    },
    /// Allowed by the policy, but the client, neither authenticated nor
    /// on the allow list, is on a DNS blocklist (`dnsbl`).
    Blocklisted {
        #[serde(serialize_with = "crate::net_text::serialize_ip")]
        ip: IpAddr,
        zone: String,
        /// The zone's answer, `127.0.0.2`: what kind of listing.
        answer: String,
    },
    /// Allowed by the policy, but a sending quota is used up for now.
    QuotaReached {
        /// The quota, as `quota show` prints it.
        quota: String,
        /// Who it counted: `login alice`, `address 192.0.2.0`...
        key: String,
        /// The quota also suspended the login.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        suspended: bool,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // No domain: the bare <postmaster> (RFC 5321 4.5.1).
            Reason::InboundToLocal { domain } if domain.is_empty() => f.write_str(
                "mail for the bare <postmaster> is accepted from any address (RFC 5321 4.5.1)",
            ),
            Reason::InboundToLocal { domain } => write!(
                f,
                "inbound mail for local domain {domain} is accepted from any address"
            ),
            Reason::Unrestricted { class } => write!(
                f,
                "{class} mail is unrestricted ({class}.listed-ip and {class}.auth are off)"
            ),
            Reason::Authenticated { login } => write!(
                f,
                "authenticated as {login} (authentication overrides IP restrictions)"
            ),
            Reason::IpAllowed { ip, entry, over } => {
                write!(f, "{} matches {entry}", AddrText::ip(*ip))?;
                match over {
                    Some(o) => write!(f, " (more specific than {o})"),
                    None => Ok(()),
                }
            }
            Reason::IpDenied {
                class,
                ip,
                entry,
                over,
            } => match (over, AddrText::ip(*ip)) {
                // "from unlisted 1.2.3.4; deny entry *.*.*.*" read as a
                // contradiction: the address is on no allow entry, and a
                // deny entry covers it.
                (None, ip) => write!(
                    f,
                    "{class} from {ip}, not on the allow list; {entry} applies"
                ),
                (Some(o), ip) if o.pattern.span() == entry.pattern.span() => write!(
                    f,
                    "{class} from {ip}; {entry} is as specific as {o} and deny wins ties"
                ),
                (Some(o), ip) => write!(f, "{class} from {ip}; {entry} (more specific than {o})"),
            },
            Reason::IpUnlisted { class, ip } => write!(
                f,
                "{class} from unlisted {ip}; no allow or deny entry matches ({class}.listed-ip is on)"
            ),
            Reason::AuthRequired { class } => write!(
                f,
                "{class} mail requires an authenticated client ({class}.auth is on)"
            ),
            Reason::DomainRestrictSend { sender } => write!(
                f,
                "sender {sender} is not in a local domain and the recipient is external (domain-restrict-send is on)"
            ),
            Reason::NullSenderRelayed { by } => write!(
                f,
                "a notice (null sender) from a client the relay controls allow: {by}; domain-restrict-send checks a sender's domain and <> has none"
            ),
            Reason::UserRestrictSend { sender } => write!(
                f,
                "outbound sender {sender} is not assigned to any user (user-restrict-send is on)"
            ),
            Reason::SenderLoginMismatch { login, sender } => write!(
                f,
                "sender {sender} is not owned by login {login} (sender-login-match is on)"
            ),
            Reason::RuleRejected { number, rule } => write!(f, "rule #{number}: {rule}"),
            Reason::Blocklisted { ip, zone, answer } => write!(
                f,
                "client {} is on the DNS blocklist {zone} ({answer}); it did not authenticate and is not on the allow list (dnsbl)",
                AddrText::ip(*ip)
            ),
            Reason::RecipientUnknown { check } => write!(
                f,
                "{} refuses the recipient ({}){} (recipient verification)",
                check.hop,
                check.said,
                if check.remembered {
                    ", as it said when asked earlier"
                } else {
                    ""
                }
            ),
            Reason::RecipientUnverified { check } => write!(
                f,
                "the recipient could not be verified at {}{} (verify-unreachable is defer)",
                check.hop,
                check.unreachable_detail()
            ),
            Reason::QuotaReached {
                quota,
                key,
                suspended,
            } => {
                write!(f, "quota {quota} is used up for {key}")?;
                if *suspended {
                    write!(f, "; the login is now suspended")?;
                }
                Ok(())
            }
        }
    }
}

/// What the server that holds a local domain's mailboxes (the domain's
/// route) said when asked about a recipient, or why it could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopCheck {
    /// The route's next hop, `host:port`.
    pub hop: String,
    /// Its reply to RCPT TO, on one line, or what went wrong.
    pub said: String,
    /// Answered from an earlier check, without asking again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remembered: bool,
}

impl HopCheck {
    /// What went wrong, after the hop's name: a connection error already
    /// names the address it tried (`127.0.0.1:25 (connect): refused`).
    fn unreachable_detail(&self) -> String {
        match self.said.strip_prefix(self.hop.as_str()) {
            Some(rest) if rest.starts_with(" (") => rest.to_string(),
            _ => format!(": {}", self.said),
        }
    }
}

/// Recipient verification of an allowed recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verified", rename_all = "snake_case")]
pub enum Verification {
    /// The next hop takes mail for the recipient.
    Known {
        #[serde(flatten)]
        check: HopCheck,
    },
    /// The next hop could not be asked; accepted all the same
    /// (`verify-unreachable accept`).
    Unreachable {
        #[serde(flatten)]
        check: HopCheck,
    },
}

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub class: RelayClass,
    pub reply: Reply,
    pub reason: Reason,
    /// A routing trick in the recipient's local part: it made the recipient
    /// count as external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_trick: Option<RoutingTrick>,
    /// The accept-and-stop rule that ended rule evaluation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by_rule: Option<usize>,
    /// What recipient verification found, for an allowed recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

impl Decision {
    /// Turns this decision into a denial with its reply and reason.
    pub(crate) fn denied(mut self, code: u16, text: Cow<'static, str>, reason: Reason) -> Decision {
        self.verdict = Verdict::Deny;
        self.reply = Reply {
            code,
            status: Cow::Borrowed(if code == 530 { "5.7.0" } else { "5.7.1" }),
            text,
        };
        self.reason = reason;
        self
    }

    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// Turns an allowed recipient into a temporary refusal: a sending
    /// quota is used up (452 4.7.1, "try again later").
    pub fn deferred(mut self, text: String, reason: Reason) -> Decision {
        self.verdict = Verdict::Deny;
        self.reply = Reply {
            code: 452,
            status: Cow::Borrowed("4.7.1"),
            text: Cow::Owned(text),
        };
        self.reason = reason;
        self
    }

    /// Recipient verification's finding: `Ok` keeps the recipient (with
    /// what was found), `Err` refuses it, 550 5.1.1 when the next hop
    /// does not know it, 450 4.4.1 when it could not be asked.
    pub fn verified(mut self, finding: Result<Verification, Reason>) -> Decision {
        match finding {
            Ok(v) => self.verification = Some(v),
            Err(reason) => {
                let (code, status, what) = match &reason {
                    Reason::RecipientUnknown { .. } => {
                        (550, "5.1.1", "Recipient address rejected: unknown here")
                    }
                    _ => (
                        450,
                        "4.4.1",
                        "Recipient address rejected: it cannot be verified now, try again later",
                    ),
                };
                self.verdict = Verdict::Deny;
                self.reply = Reply {
                    code,
                    status: Cow::Borrowed(status),
                    text: Cow::Borrowed(what),
                };
                self.reason = reason;
            }
        }
        self
    }

    /// Turns an allowed recipient into a refusal: the client is on a DNS
    /// blocklist (554 5.7.1, the wording of Postfix's reject_rbl_client).
    pub fn blocklisted(mut self, ip: IpAddr, zone: String, answer: String) -> Decision {
        self.verdict = Verdict::Deny;
        self.reply = Reply {
            code: 554,
            status: Cow::Borrowed("5.7.1"),
            text: Cow::Owned(format!(
                "Service unavailable; client [{}] blocked using {zone}",
                AddrText::ip(ip)
            )),
        };
        self.reason = Reason::Blocklisted { ip, zone, answer };
        self
    }

    /// A refusal the client may retry later (4xx), not a denial.
    pub fn is_deferral(&self) -> bool {
        self.reply.code / 100 == 4
    }
}

impl Decision {
    /// What decided, without the verdict word: the reason, and the rule or
    /// routing trick that played a part.
    pub fn explanation(&self) -> String {
        let mut text = String::new();
        let _ = self.write_explanation(&mut text);
        text
    }

    /// [`explanation`](Self::explanation), written where it goes.
    fn write_explanation(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "{}", self.reason)?;
        if let Some(n) = self.accepted_by_rule {
            write!(out, "; rule #{n} accept-and-stop ended the rules")?;
        }
        match &self.verification {
            Some(Verification::Known { check }) => {
                write!(out, "; {} knows the recipient ({})", check.hop, check.said)?;
                if check.remembered {
                    out.write_str(", as it said when asked earlier")?;
                }
            }
            Some(Verification::Unreachable { check }) => write!(
                out,
                "; not verified at {}{}, accepted all the same (verify-unreachable is accept)",
                check.hop,
                check.unreachable_detail()
            )?,
            None => {}
        }
        if let Some(trick) = self.routing_trick {
            write!(
                out,
                "; the recipient's local part contains {trick} (a routing trick), so it is not treated as local"
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Allow => "allowed",
            Verdict::Deny if self.is_deferral() => "deferred",
            Verdict::Deny => "denied",
        };
        f.write_str(verdict)?;
        f.write_str(": ")?;
        self.write_explanation(f)
    }
}
