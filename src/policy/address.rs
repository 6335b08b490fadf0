//! RFC 5321 mail paths: `<user@domain>`, `<>`, quoted local parts, source
//! routes (parsed and dropped, as RFC 5321 section 3.3 allows) and address
//! literals.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The domain part of an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A DNS name, lowercased, without a trailing dot.
    Name(String),
    /// An address literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]`. Never local.
    Literal(IpAddr),
    /// The bare `<Postmaster>` recipient (RFC 5321 4.5.1): ours, by definition.
    Postmaster,
}

/// A mailbox from a reverse or forward path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailAddress {
    /// The local part, with quoting removed.
    pub local: String,
    /// Whether the local part was written as a quoted string.
    pub quoted: bool,
    pub domain: Domain,
}

/// A local-part trick that asks a relay to forward elsewhere
/// (`user%other@ours`, `other!user@ours`, `"user@other"@ours`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingTrick {
    Percent,
    Bang,
    QuotedAt,
}

impl fmt::Display for RoutingTrick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoutingTrick::Percent => "'%'",
            RoutingTrick::Bang => "'!'",
            RoutingTrick::QuotedAt => "a quoted '@'",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {problem}")]
pub struct AddressError {
    pub input: String,
    pub problem: &'static str,
}

impl MailAddress {
    /// The routing trick in the local part, if any.
    pub fn routing_trick(&self) -> Option<RoutingTrick> {
        if self.local.contains('%') {
            Some(RoutingTrick::Percent)
        } else if self.local.contains('!') {
            Some(RoutingTrick::Bang)
        } else if self.local.contains('@') {
            Some(RoutingTrick::QuotedAt)
        } else {
            None
        }
    }

    /// The domain name, if the address has one.
    pub fn domain_name(&self) -> Option<&str> {
        match &self.domain {
            Domain::Name(n) => Some(n),
            _ => None,
        }
    }

    /// Lowercased `local@domain`, the form used to compare addresses
    /// (ownership, rules). Unicode lower case, as owned addresses and rule
    /// patterns are lowered: `CEÖ@` is `ceö@` to both.
    pub fn key(&self) -> String {
        self.to_string().to_lowercase()
    }

    /// The key with its domain's A-labels as U-labels
    /// (`u@xn--bcher-kva.example` -> `u@bücher.example`), when that
    /// differs: the form rules match in, where a `*` may stand inside an
    /// international label (`*@bü*.example`), which no A-label shows.
    pub fn unicode_key(&self) -> Option<String> {
        self.key_spelt(unicode_form)
    }

    /// The key with an international domain in its DNS form
    /// (`u@bücher.example` -> `u@xn--bcher-kva.example`), when that
    /// differs from [`key`](Self::key): both spellings name one mailbox,
    /// and ownership and rules must not tell them apart.
    pub fn dns_key(&self) -> Option<String> {
        self.key_spelt(dns_form)
    }

    /// The key with its domain as `spell` writes it, if that changes it.
    fn key_spelt(&self, spell: fn(&str) -> Cow<'_, str>) -> Option<String> {
        let Domain::Name(name) = &self.domain else {
            return None;
        };
        let Cow::Owned(spelt) = spell(name) else {
            return None;
        };
        let key = self.key();
        let local = key.strip_suffix(name.as_str())?;
        Some(format!("{local}{spelt}"))
    }
}

impl fmt::Display for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        match &self.domain {
            Domain::Name(n) => write!(f, "@{n}"),
            Domain::Literal(IpAddr::V4(v4)) => write!(f, "@[{v4}]"),
            Domain::Literal(IpAddr::V6(v6)) => write!(f, "@[IPv6:{v6}]"),
            Domain::Postmaster => Ok(()),
        }
    }
}

/// Parses a reverse path (MAIL FROM). `Ok(None)` is the null sender `<>`.
/// Angle brackets may be omitted, as many clients and the CLI do.
pub fn parse_reverse_path(input: &str) -> Result<Option<MailAddress>, AddressError> {
    let inner = strip_brackets(input)?;
    if inner.is_empty() {
        return Ok(None);
    }
    parse_path_body(input, inner, false).map(Some)
}

/// Parses a forward path (RCPT TO). The null path is refused; the bare
/// `<Postmaster>` is accepted.
pub fn parse_forward_path(input: &str) -> Result<MailAddress, AddressError> {
    let inner = strip_brackets(input)?;
    if inner.is_empty() {
        return Err(err(input, "a recipient cannot be the null path <>"));
    }
    parse_path_body(input, inner, true)
}

/// Parses a plain mailbox `local@domain` (no brackets, no source route),
/// as used in the configuration.
pub fn parse_mailbox(input: &str) -> Result<MailAddress, AddressError> {
    let trimmed = input.trim();
    if trimmed.starts_with('<') || trimmed.starts_with('@') {
        return Err(err(input, "expected local@domain"));
    }
    parse_path_body(input, trimmed, false)
}

fn err(input: &str, problem: &'static str) -> AddressError {
    AddressError {
        input: input.to_string(),
        problem,
    }
}

fn strip_brackets(input: &str) -> Result<&str, AddressError> {
    let t = input.trim();
    match (t.starts_with('<'), t.ends_with('>') && t.len() >= 2) {
        (true, true) => Ok(&t[1..t.len() - 1]),
        (false, false) => Ok(t),
        _ => Err(err(input, "unbalanced angle brackets")),
    }
}

fn parse_path_body(
    input: &str,
    body: &str,
    postmaster_ok: bool,
) -> Result<MailAddress, AddressError> {
    if body.len() > 256 {
        return Err(err(input, "the path is longer than 256 characters"));
    }
    let mailbox = skip_source_route(input, body)?;
    if postmaster_ok && mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok(MailAddress {
            local: "postmaster".into(),
            quoted: false,
            domain: Domain::Postmaster,
        });
    }
    let (local, quoted, rest) = if let Some(q) = mailbox.strip_prefix('"') {
        let (text, rest) = parse_quoted(input, q)?;
        (text, true, rest)
    } else {
        let at = mailbox
            .rfind('@')
            .ok_or_else(|| err(input, "missing '@' and domain"))?;
        let local = &mailbox[..at];
        check_dot_string(input, local)?;
        (local.to_string(), false, &mailbox[at..])
    };
    if local.len() > 64 {
        return Err(err(input, "the local part is longer than 64 characters"));
    }
    let domain = rest
        .strip_prefix('@')
        .ok_or_else(|| err(input, "missing '@' and domain"))?;
    Ok(MailAddress {
        local,
        quoted,
        domain: parse_domain(input, domain)?,
    })
}

/// Drops an RFC 5321 source route `@a,@b:` after checking its form.
fn skip_source_route<'a>(input: &str, body: &'a str) -> Result<&'a str, AddressError> {
    if !body.starts_with('@') {
        return Ok(body);
    }
    let colon = body
        .find(':')
        .ok_or_else(|| err(input, "a source route must end with ':'"))?;
    for hop in body[..colon].split(',') {
        let name = hop
            .strip_prefix('@')
            .ok_or_else(|| err(input, "each source route hop must start with '@'"))?;
        parse_domain(input, name)?;
    }
    Ok(&body[colon + 1..])
}

fn parse_quoted<'a>(input: &str, after_quote: &'a str) -> Result<(String, &'a str), AddressError> {
    let mut text = String::new();
    let mut chars = after_quote.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((text, &after_quote[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) if (' '..='~').contains(&e) => text.push(e),
                _ => return Err(err(input, "bad escape in quoted local part")),
            },
            ' '..='~' => text.push(c),
            c if !c.is_ascii() => text.push(c),
            _ => return Err(err(input, "control character in quoted local part")),
        }
    }
    Err(err(input, "unterminated quoted local part"))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_dot_string(input: &str, local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(err(input, "the local part is empty"));
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(err(input, "the local part has an empty dot-separated atom"));
        }
        if !atom.chars().all(is_atext) {
            return Err(err(
                input,
                "the local part has a character that needs quoting",
            ));
        }
    }
    Ok(())
}

fn parse_domain(input: &str, domain: &str) -> Result<Domain, AddressError> {
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or_else(|| err(input, "unterminated address literal"))?;
        if let Some(v6) = lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
        {
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| err(input, "bad IPv6 address literal"))?;
            return Ok(Domain::Literal(IpAddr::V6(ip)));
        }
        let ip: Ipv4Addr = lit.parse().map_err(|_| {
            err(
                input,
                "bad address literal (expected [a.b.c.d] or [IPv6:...])",
            )
        })?;
        return Ok(Domain::Literal(IpAddr::V4(ip)));
    }
    normalize_domain(domain)
        .map(Domain::Name)
        .map_err(|problem| err(input, problem))
}

/// Lowercases a domain name and drops one trailing dot, after checking its
/// form. Used for addresses and for the configured local domains alike.
/// Zero-width and bidirectional formatting characters: invisible, and
/// able to make a log line read other than it is.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

pub fn normalize_domain(name: &str) -> Result<String, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the domain is empty");
    }
    if name.len() > 253 {
        return Err("the domain is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the domain has an empty label");
        }
        if label.len() > 63 {
            return Err("a domain label is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a domain label starts or ends with '-'");
        }
        // Non-ASCII is a U-label (RFC 6531), but never a C1 control or
        // other invisible formatting: those are no letters of any script.
        if !label.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c == '-'
                || c == '_'
                || (!c.is_ascii() && !c.is_control() && !c.is_whitespace() && !is_invisible(c))
        }) {
            return Err("the domain has a character other than letters, digits, '-', '_' and '.'");
        }
    }
    let name = name.to_lowercase();
    // An international label must be in its IDNA2008 form (RFC 5890): a
    // U-label that IDNA would first have to map (full-width letters,
    // decomposed accents) or an `xn--` label that is no A-label is the
    // spelling of another name, or of none, and would let one domain
    // pass for another in the policy while DNS took it for the same.
    for label in name.split('.') {
        if (!label.is_ascii() || label.starts_with("xn--")) && label_dns_form(label).is_none() {
            return Err("an international label is not in its IDNA form (RFC 5890)");
        }
    }
    Ok(name)
}

/// A name with each valid A-label as its U-label (`xn--bcher-kva.example`
/// -> `bücher.example`); borrowed when it has none. The other way from
/// [`dns_form`]: what a rule's pattern, which may hold a `*` inside an
/// international label, is matched against.
pub fn unicode_form(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name.split('.').any(|l| l.starts_with("xn--")) {
        return Cow::Borrowed(name);
    }
    let labels: Vec<Cow<'_, str>> = name
        .split('.')
        .map(|label| {
            if !label.starts_with("xn--") || label.contains('*') {
                return Cow::Borrowed(label);
            }
            match idna::domain_to_unicode(label) {
                (unicode, Ok(())) if !unicode.contains('.') => Cow::Owned(unicode),
                _ => Cow::Borrowed(label),
            }
        })
        .collect();
    Cow::Owned(labels.join("."))
}

/// Whether a label is fit for a domain name: ASCII that is no `xn--`
/// label, a valid A-label, or a U-label in its IDNA form.
pub fn valid_label(label: &str) -> bool {
    label_dns_form(&label.to_lowercase()).is_some()
}

/// One lower-case label in its DNS form: ASCII as it is, a U-label as its
/// A-label; `None` for a label that is neither a U-label nor a valid
/// A-label.
fn label_dns_form(label: &str) -> Option<Cow<'_, str>> {
    if label.is_ascii() && !label.starts_with("xn--") {
        return Some(Cow::Borrowed(label));
    }
    let ascii = idna::domain_to_ascii(label).ok()?;
    if ascii.is_empty() || ascii.contains('.') {
        return None;
    }
    if label.is_ascii() {
        // An A-label: valid if IDNA leaves it as it is.
        return (ascii == label).then_some(Cow::Borrowed(label));
    }
    (idna::domain_to_unicode(&ascii).0 == label).then_some(Cow::Owned(ascii))
}

/// A domain as the DNS has it: international labels as A-labels
/// (`bücher.test` -> `xn--bcher-kva.test`, RFC 5890), lower case, without
/// a trailing dot. What a DKIM signature and its TXT record name (RFC
/// 6376 3.5), and what two spellings of one domain are compared by.
/// `None` if it cannot be one.
pub fn ascii_domain(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() {
        return None;
    }
    idna::domain_to_ascii(name).ok().filter(|d| !d.is_empty())
}

/// The form in which two spellings of one domain compare equal: each
/// international label (RFC 6531) as its A-label, so that
/// `bücher.example`, `xn--bcher-kva.example` and a mix of the two forms
/// are one domain; an ASCII name lower case, as it is. A name with a
/// label IDNA would first have to map (full-width letters, decomposed
/// accents) stays as written: [`normalize_domain`] refuses such a name in
/// an address or the configuration, so it matches nothing. One trailing
/// dot is dropped. Borrowed, so free, for an ASCII name.
pub fn dns_form(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_ascii() {
        return if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
    }
    let labels: Option<Vec<Cow<'_, str>>> = name.split('.').map(label_dns_form).collect();
    match labels {
        Some(labels) => Cow::Owned(labels.join(".")),
        None => Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_u_label_domain_compares_as_its_a_labels() {
        assert_eq!(dns_form("bücher.example"), "xn--bcher-kva.example");
        assert_eq!(dns_form("xn--bcher-kva.example."), "xn--bcher-kva.example");
        assert_eq!(dns_form("Example.COM"), "example.com");
        assert!(matches!(dns_form("example.com"), Cow::Borrowed(_)));
        // Names IDNA would have to map first are not U-labels: compared
        // as written, they match no configured ASCII domain.
        assert_eq!(dns_form("ｅｘａｍｐｌｅ.com"), "ｅｘａｍｐｌｅ.com");
        assert_eq!(dns_form("Bücher.example"), "Bücher.example");
        // Labels of both forms in one name: one domain all the same.
        assert_eq!(
            dns_form("bücher.xn--caf-dma.example"),
            "xn--bcher-kva.xn--caf-dma.example"
        );
        // No address or configured domain may be spelt so.
        for spoof in [
            "ｂücher.example",
            "bu\u{308}cher.example",
            "ｅｘａｍｐｌｅ.com",
            "xn--zz.example",
            "xn--bcher-kva-.example",
        ] {
            assert!(normalize_domain(spoof).is_err(), "{spoof}");
            assert!(
                parse_forward_path(&format!("<a@{spoof}>")).is_err(),
                "{spoof}"
            );
        }
        assert_eq!(
            normalize_domain("Bücher.XN--CAF-DMA.example").as_deref(),
            Ok("bücher.xn--caf-dma.example")
        );
        let a = parse_forward_path("<Jörg@Bücher.Example>").unwrap();
        assert_eq!(a.dns_key().as_deref(), Some("jörg@xn--bcher-kva.example"));
        let b = parse_forward_path("<jörg@xn--bcher-kva.example>").unwrap();
        assert_eq!(b.dns_key(), None);
        assert_eq!(a.dns_key(), Some(b.key()));
        assert_eq!(b.unicode_key().as_deref(), Some("jörg@bücher.example"));
        assert_eq!(a.unicode_key(), None);
        assert_eq!(
            unicode_form("a.xn--caf-dma.xn--bcher-kva.test"),
            "a.café.bücher.test"
        );
        assert!(matches!(unicode_form("example.com"), Cow::Borrowed(_)));
    }

    #[test]
    fn international_domains_are_compared_as_a_labels() {
        assert_eq!(
            ascii_domain("Bücher.Test.").as_deref(),
            Some("xn--bcher-kva.test")
        );
        assert_eq!(
            ascii_domain("xn--bcher-kva.test"),
            ascii_domain("bücher.test")
        );
        assert_eq!(ascii_domain("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(ascii_domain(""), None);
    }

    #[test]
    fn a_domain_never_holds_a_control_character() {
        assert!(normalize_domain("x\u{9b}31m.test").is_err());
        assert!(normalize_domain("x\u{85}.test").is_err());
        assert!(normalize_domain("x\u{a0}.test").is_err());
        assert!(normalize_domain("x\u{202e}tset.com").is_err());
        assert!(normalize_domain("x\u{200b}.test").is_err());
        assert_eq!(
            normalize_domain("bücher.test").as_deref(),
            Ok("bücher.test")
        );
    }

    #[test]
    fn paths_parse() {
        let a = parse_forward_path("<User@Example.COM.>").unwrap();
        assert_eq!(a.local, "User");
        assert_eq!(a.domain, Domain::Name("example.com".into()));
        assert_eq!(parse_reverse_path("<>").unwrap(), None);
        assert_eq!(parse_reverse_path("  <> ").unwrap(), None);
        let routed = parse_forward_path("<@a.example,@b.example:joe@c.example>").unwrap();
        assert_eq!(routed.to_string(), "joe@c.example");
        let q = parse_forward_path("<\"john doe\"@example.test>").unwrap();
        assert!(q.quoted);
        assert_eq!(q.local, "john doe");
        assert_eq!(q.to_string(), "\"john doe\"@example.test");
        let lit = parse_forward_path("<x@[192.0.2.1]>").unwrap();
        assert_eq!(lit.domain, Domain::Literal("192.0.2.1".parse().unwrap()));
        let lit6 = parse_forward_path("<x@[IPv6:2001:db8::1]>").unwrap();
        assert_eq!(lit6.to_string(), "x@[IPv6:2001:db8::1]");
        assert_eq!(
            parse_forward_path("<Postmaster>").unwrap().domain,
            Domain::Postmaster
        );
        assert_eq!(
            parse_reverse_path("bare@example.test")
                .unwrap()
                .unwrap()
                .local,
            "bare"
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "<>",
            "<a@>",
            "<@b>",
            "<a>",
            "<a@b",
            "a@b>",
            "<a..b@c>",
            "<\"open@c>",
            "<a b@c>",
            "<a@[300.1.1.1]>",
            "<a@-x.com>",
            "<a@x..com>",
            "<@a:>",
            "<@a,b:c@d>",
        ] {
            assert!(parse_forward_path(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_reverse_path("<postmaster>").is_err());
    }

    #[test]
    fn routing_tricks_are_seen() {
        let t = |s: &str| parse_forward_path(s).unwrap().routing_trick();
        assert_eq!(
            t("<user%elsewhere.invalid@example.test>"),
            Some(RoutingTrick::Percent)
        );
        assert_eq!(
            t("<elsewhere.invalid!user@example.test>"),
            Some(RoutingTrick::Bang)
        );
        assert_eq!(
            t("<\"user@elsewhere.invalid\"@example.test>"),
            Some(RoutingTrick::QuotedAt)
        );
        assert_eq!(t("<user@example.test>"), None);
    }
}
