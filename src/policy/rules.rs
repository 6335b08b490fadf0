//! Sender/recipient rules in the style of the old Mail Manager: a sender
//! pattern, a recipient pattern, a destination and an action, evaluated in
//! order. A rule can refuse mail or stop the rule list early; it can never
//! let through mail the relay controls refused (rules are evaluated after
//! them), so no rule can make the gateway an open relay.

use std::fmt;

/// A `*`-wildcard pattern over a lowercased address, negated by a leading `!`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressGlob {
    pub negate: bool,
    /// As written (lower case): what is shown and stored.
    pub pattern: String,
    /// The pattern with its domain's A-labels as U-labels, when that
    /// differs: what an address's Unicode form is matched by.
    unicode_pattern: Option<String>,
}

/// An address as rules match it: its key as written, with its domain's
/// A-labels as U-labels (`MailAddress::unicode_key`) and with its
/// U-labels as A-labels (`MailAddress::dns_key`), each when it differs.
/// `<>` for the null sender.
#[derive(Debug, Clone, Default)]
pub struct AddressText {
    pub written: String,
    pub unicode: Option<String>,
    pub dns: Option<String>,
}

impl From<&str> for AddressText {
    fn from(written: &str) -> AddressText {
        AddressText {
            written: written.to_string(),
            unicode: None,
            dns: None,
        }
    }
}

/// The pattern with the A-labels of its domain as U-labels
/// (`*@*.xn--bcher-kva.example` -> `*@*.bücher.example`); `None` when
/// nothing changes.
fn unicode_pattern(pattern: &str) -> Option<String> {
    let (local, domain) = pattern.rsplit_once('@')?;
    match crate::policy::address::unicode_form(domain) {
        std::borrow::Cow::Owned(unicode) => Some(format!("{local}@{unicode}")),
        std::borrow::Cow::Borrowed(_) => None,
    }
}

/// Why a pattern's domain can never match an address, if it cannot: a
/// label without `*` that is neither ASCII nor an IDNA form (full-width
/// letters, a decomposed accent, an `xn--` label that is no A-label) is
/// refused at MAIL and RCPT, so a rule naming it would never apply. Asked
/// when a rule is added (stored rules keep compiling).
pub fn unmatchable_domain(pattern: &str) -> Option<String> {
    let domain = pattern.trim().trim_start_matches('!').rsplit_once('@')?.1;
    domain
        .split('.')
        .filter(|l| !l.contains('*') && !l.is_empty())
        .find(|l| (!l.is_ascii() || l.starts_with("xn--")) && !crate::policy::address::valid_label(l))
        .map(|l| {
            format!(
                "pattern {pattern:?}: the label {l:?} is not in its IDNA form (RFC 5890): no address can have it"
            )
        })
}

impl AddressGlob {
    pub fn parse(text: &str) -> Result<AddressGlob, RuleError> {
        let t = text.trim();
        let (negate, pattern) = match t.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, t),
        };
        if pattern.is_empty() {
            return Err(RuleError(format!("pattern {text:?} is empty")));
        }
        if pattern.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(RuleError(format!(
                "pattern {text:?} contains a space or control character"
            )));
        }
        let pattern = pattern.to_lowercase();
        Ok(AddressGlob {
            negate,
            unicode_pattern: unicode_pattern(&pattern),
            pattern,
        })
    }

    /// Matches an already lowercased address in any of its spellings: a
    /// pattern written with `bücher.example` (or `bü*.example`) takes
    /// `u@xn--bcher-kva.example`, one written with `xn--` (`*@xn--*`)
    /// takes `u@bücher.example`. The pattern, and its U-label form, are
    /// tried against the address as written, with U-labels and with
    /// A-labels: one spelling that matches is a match.
    pub fn matches(&self, address: &AddressText) -> bool {
        let patterns = std::iter::once(&self.pattern).chain(&self.unicode_pattern);
        let hit = patterns.into_iter().any(|p| {
            std::iter::once(&address.written)
                .chain(&address.unicode)
                .chain(&address.dns)
                .any(|a| glob(p, a))
        });
        hit != self.negate
    }
}

impl fmt::Display for AddressGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negate {
            f.write_str("!")?;
        }
        f.write_str(&self.pattern)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Which recipients a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Recipients in a local domain.
    Internal,
    /// Recipients anywhere else.
    External,
    Any,
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination, RuleError> {
        match s {
            "internal" => Ok(Destination::Internal),
            "external" => Ok(Destination::External),
            "any" => Ok(Destination::Any),
            _ => Err(RuleError(format!(
                "destination {s:?} must be internal, external or any"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Internal => "internal",
            Destination::External => "external",
            Destination::Any => "any",
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    /// Refuse the recipient with 550 5.7.1 and this text.
    Reject(String),
    /// Stop evaluating rules; the recipient is accepted if the relay
    /// controls accepted it.
    Accept,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// One sender/recipient rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub sender: AddressGlob,
    pub recipient: AddressGlob,
    pub destination: Destination,
    pub action: RuleAction,
}

impl Rule {
    /// Builds a rule from its stored or typed parts.
    pub fn new(
        sender: &str,
        recipient: &str,
        destination: &str,
        reject_text: Option<&str>,
    ) -> Result<Rule, RuleError> {
        let action = match reject_text {
            Some(text) => RuleAction::Reject(check_reply_text(text)?),
            None => RuleAction::Accept,
        };
        Ok(Rule {
            sender: AddressGlob::parse(sender)?,
            recipient: AddressGlob::parse(recipient)?,
            destination: Destination::parse(destination)?,
            action,
        })
    }

    /// Whether the rule applies: `sender` and `recipient` lowercased, the
    /// null sender as `<>`.
    pub fn matches(
        &self,
        sender: &AddressText,
        recipient: &AddressText,
        recipient_local: bool,
    ) -> bool {
        let dest = match self.destination {
            Destination::Internal => recipient_local,
            Destination::External => !recipient_local,
            Destination::Any => true,
        };
        dest && self.sender.matches(sender) && self.recipient.matches(recipient)
    }
}

/// A custom reject text must fit on one SMTP reply line.
fn check_reply_text(text: &str) -> Result<String, RuleError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(RuleError("the reject text is empty".into()));
    }
    if t.len() > 400 || !t.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(RuleError(
            "the reject text must be printable ASCII on one line, at most 400 characters".into(),
        ));
    }
    Ok(t.to_string())
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sender {} recipient {} destination {} -> ",
            self.sender,
            self.recipient,
            self.destination.as_str()
        )?;
        match &self.action {
            RuleAction::Reject(text) => write!(f, "reject {text:?}"),
            RuleAction::Accept => f.write_str("accept-and-stop"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*@yourdomain.com", "bob@yourdomain.com"));
        assert!(!glob("*@yourdomain.com", "bob@yourdomain.com.evil"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("*.*", "a.b"));
        let neg = AddressGlob::parse("!*@YourDomain.com").unwrap();
        assert!(neg.matches(&"eve@elsewhere.test".into()));
        assert!(!neg.matches(&"bob@yourdomain.com".into()));
    }

    #[test]
    fn a_pattern_takes_both_spellings_of_an_international_domain() {
        let text = |a: &str| {
            let addr = crate::policy::address::parse_forward_path(a).unwrap();
            AddressText {
                written: addr.key(),
                unicode: addr.unicode_key(),
                dns: addr.dns_key(),
            }
        };
        let written = text("<jo@bücher.example>");
        let dns = text("<jo@xn--bcher-kva.example>");
        for pattern in ["*@bücher.example", "*@xn--bcher-kva.example", "*@*.example"] {
            let g = AddressGlob::parse(pattern).unwrap();
            assert!(g.matches(&written), "{pattern} and the U-label");
            assert!(g.matches(&dns), "{pattern} and the A-label");
            let not = AddressGlob::parse(&format!("!{pattern}")).unwrap();
            assert!(!not.matches(&written) && !not.matches(&dns), "!{pattern}");
        }
        let sub = AddressGlob::parse("*@*.bücher.example").unwrap();
        assert!(sub.matches(&text("<jo@mail.xn--bcher-kva.example>")));
        // A wildcard inside an international label takes both spellings.
        let partial = AddressGlob::parse("*@bü*.example").unwrap();
        assert!(partial.matches(&written));
        assert!(partial.matches(&dns));
        let not_partial = AddressGlob::parse("!*@bü*.example").unwrap();
        assert!(!not_partial.matches(&dns));
        // A pattern only the A-labels meet takes the U-label spelling.
        for pattern in ["*@xn--*", "*kva.example", "*@x*.example"] {
            let g = AddressGlob::parse(pattern).unwrap();
            assert!(g.matches(&written), "{pattern}");
            assert!(g.matches(&dns), "{pattern}");
            let not = AddressGlob::parse(&format!("!{pattern}")).unwrap();
            assert!(!not.matches(&written), "!{pattern}");
        }
        assert!(unmatchable_domain("*@bü*.example").is_none());
        assert!(unmatchable_domain("*@xn--bcher-kva.example").is_none());
        assert!(unmatchable_domain("!*@ｂücher.example").is_some());
        assert!(unmatchable_domain("*@xn--zz.example").is_some());
        assert!(
            !AddressGlob::parse("*@bücher.example")
                .unwrap()
                .matches(&text("<jo@bucher.example>"))
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(Rule::new("", "*", "any", None).is_err());
        assert!(Rule::new("*", "*", "outside", None).is_err());
        assert!(Rule::new("*", "*", "any", Some("line\r\nbreak")).is_err());
        assert!(Rule::new("*", "*", "any", Some("  ")).is_err());
    }
}
