//! Which next hop a recipient domain goes to. Pure: the configured routes
//! and local domains in, a decision out.

use super::Route;
use crate::policy::address::dns_form;

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop<'a> {
    /// A configured route: the internal server, a smarthost.
    Route(&'a Route),
    /// The domain's MX hosts (or its A/AAAA, RFC 5321 5.1).
    Mx(String),
    /// Not deliverable now; the reason says what the administrator must do.
    Hold(String),
}

/// Normalises a route's domain pattern: `*`, `*.example.com` or a domain.
pub fn normalize_route_domain(pattern: &str) -> Result<String, String> {
    let p = pattern.trim();
    if p == "*" {
        return Ok("*".into());
    }
    let (wild, name) = match p.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    let name = crate::policy::address::normalize_domain(name)
        .map_err(|e| format!("invalid route domain {p:?}: {e}"))?;
    Ok(if wild { format!("*.{name}") } else { name })
}

/// A route pattern in the form two spellings of it compare equal in
/// (`*.bücher.example` and `*.xn--bcher-kva.example` are one pattern).
pub fn route_dns_form(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(parent) => format!("*.{}", dns_form(parent)),
        None => dns_form(pattern).into_owned(),
    }
}

/// Picks the next hop: an exact route, then the longest matching `*.parent`
/// route, then (for non-local domains only) the `*` default route, then
/// MX. A local domain never goes to the default route or to DNS: that
/// would send its mail back here.
pub fn next_hop<'a>(domain: &str, routes: &'a [Route], is_local: bool) -> NextHop<'a> {
    let written = domain.trim_end_matches('.').to_ascii_lowercase();
    // A route written `bücher.example` takes `xn--bcher-kva.example`, and
    // the other way round: both are compared in their DNS form.
    let domain = dns_form(&written);
    if let Some(r) = routes.iter().find(|r| dns_form(&r.domain) == domain) {
        return NextHop::Route(r);
    }
    let mut best: Option<(&Route, usize)> = None;
    for r in routes {
        if let Some(parent) = r.domain.strip_prefix("*.")
            && let parent = dns_form(parent)
            && domain.len() > parent.len()
            && domain.ends_with(&*parent)
            && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
            && best.is_none_or(|(_, len)| len < parent.len())
        {
            best = Some((r, parent.len()));
        }
    }
    if let Some((r, _)) = best {
        return NextHop::Route(r);
    }
    if is_local {
        return NextHop::Hold(format!(
            "no route for local domain {written}: add one to the server that holds its mailboxes (relaygate route add {written} HOST:PORT)"
        ));
    }
    match routes.iter().find(|r| r.domain == "*") {
        Some(r) => NextHop::Route(r),
        None => NextHop::Mx(written),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::TlsMode;

    fn route(domain: &str, host: &str) -> Route {
        Route {
            domain: domain.into(),
            host: host.into(),
            port: 25,
            tls: TlsMode::Opportunistic,
            auth: None,
            rate: None,
            concurrency: None,
        }
    }

    #[test]
    fn precedence() {
        let routes = vec![
            route("*", "smarthost"),
            route("example.com", "internal"),
            route("*.example.com", "sub"),
            route("*.deep.example.com", "deeper"),
        ];
        let host = |d: &str, local: bool| match next_hop(d, &routes, local) {
            NextHop::Route(r) => r.host.clone(),
            NextHop::Mx(d) => format!("mx:{d}"),
            NextHop::Hold(_) => "hold".into(),
        };
        assert_eq!(host("Example.COM.", true), "internal");
        assert_eq!(host("a.example.com", false), "sub");
        assert_eq!(host("x.deep.example.com", false), "deeper");
        assert_eq!(host("badexample.com", false), "smarthost");
        assert_eq!(host("far.test", false), "smarthost");
        assert_eq!(host("local.test", true), "hold");
        let no_default = vec![route("example.com", "internal")];
        assert_eq!(
            next_hop("far.test", &no_default, false),
            NextHop::Mx("far.test".into())
        );
    }

    #[test]
    fn a_route_takes_both_spellings_of_an_international_domain() {
        let routes = vec![
            route("bücher.example", "books"),
            route("*.xn--caf-dma.example", "cafe"),
            route("*.bücher.example", "sub"),
            route("*.mail.xn--bcher-kva.example", "deeper"),
        ];
        let host = |d: &str| match next_hop(d, &routes, true) {
            NextHop::Route(r) => r.host.clone(),
            _ => "hold".into(),
        };
        assert_eq!(host("xn--bcher-kva.example"), "books");
        assert_eq!(host("bücher.example."), "books");
        assert_eq!(host("a.café.example"), "cafe");
        assert_eq!(host("a.xn--bcher-kva.example"), "sub");
        // The longest parent wins whatever the spelling's length.
        assert_eq!(host("x.mail.bücher.example"), "deeper");
        let spelt = vec![
            route("*.xn--bcher-kva.example", "parent"),
            route("*.b.bücher.example", "child"),
        ];
        assert_eq!(
            next_hop("c.b.bücher.example", &spelt, false),
            NextHop::Route(&spelt[1])
        );
        assert_eq!(host("bucher.example"), "hold");
    }

    #[test]
    fn patterns_normalize() {
        assert_eq!(normalize_route_domain("*").unwrap(), "*");
        assert_eq!(
            normalize_route_domain("*.Example.COM").unwrap(),
            "*.example.com"
        );
        assert!(normalize_route_domain("*.").is_err());
        assert!(normalize_route_domain("a b").is_err());
    }
}
