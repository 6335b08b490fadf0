//! `relaygate route show|add|remove DOMAIN|* HOST:PORT`

use super::read_password_stdin;
use crate::delivery::router::normalize_route_domain;
use crate::delivery::{Route, RouteAuth, TlsMode};
use crate::store::Store;
use clap::{Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// List the routes, and local domains that still need one.
    Show,
    /// Route a domain (`example.com`), its subdomains (`*.example.com`) or
    /// everything else (`*`, a smarthost) to HOST[:PORT] (port 25 if left out).
    Add {
        #[arg(value_name = "DOMAIN|*")]
        domain: String,
        #[arg(value_name = "HOST[:PORT]")]
        next_hop: String,
        /// STARTTLS: none, opportunistic (when offered, unverified) or
        /// required (verified). A new route: opportunistic.
        #[arg(long, value_enum)]
        tls: Option<TlsArg>,
        /// Authenticate at the next hop as this user.
        #[arg(long, requires = "password_stdin", conflicts_with = "no_login")]
        user: Option<String>,
        /// Read that user's password from standard input.
        #[arg(long, requires = "user")]
        password_stdin: bool,
        /// Log in no more (drop the route's login).
        #[arg(long)]
        no_login: bool,
        /// At most N messages per PERIOD to this next hop (the smarthost's
        /// cap, e.g. 30/minute or 1000/day); the rest wait in the queue.
        #[arg(long, value_name = "N/PERIOD", conflicts_with = "no_rate")]
        rate: Option<String>,
        /// Drop the route's rate.
        #[arg(long)]
        no_rate: bool,
        /// Connections at once to this next hop (default: destination-concurrency).
        #[arg(long, value_name = "C", conflicts_with = "no_concurrency")]
        concurrency: Option<usize>,
        /// Drop the route's own concurrency (destination-concurrency applies).
        #[arg(long)]
        no_concurrency: bool,
    },
    /// Remove the route of a domain pattern.
    Remove {
        #[arg(value_name = "DOMAIN|*")]
        domain: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TlsArg {
    None,
    Opportunistic,
    Required,
}

impl From<TlsArg> for TlsMode {
    fn from(t: TlsArg) -> TlsMode {
        match t {
            TlsArg::None => TlsMode::None,
            TlsArg::Opportunistic => TlsMode::Opportunistic,
            TlsArg::Required => TlsMode::Required,
        }
    }
}

/// Parses `host:port`, `[v6]:port`, or a host alone (port 25).
pub fn parse_next_hop(text: &str) -> Result<(String, u16), String> {
    let t = text.trim();
    let bad = || {
        format!(
            "invalid next hop {t:?}: expected HOST:PORT, like mail.example.com:25, 10.0.0.5:25 or [2001:db8::5]:25"
        )
    };
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), p),
            None if after.is_empty() => (h.to_string(), "25"),
            None => return Err(bad()),
        }
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), p),
            Some(_) => return Err(bad()),
            None => (t.to_string(), "25"),
        }
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    if host.parse::<std::net::IpAddr>().is_err() {
        crate::policy::address::normalize_domain(&host).map_err(|e| format!("{}: {e}", bad()))?;
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// A next hop as it is typed: an IPv6 address in brackets.
fn hop_text(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub fn run(store: &mut Store, cmd: RouteCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RouteCommand::Show => {
            let routes = store.routes()?;
            if routes.is_empty() {
                println!("no routes: mail for other domains goes to their MX hosts");
            }
            for r in &routes {
                let host = hop_text(&r.host, r.port);
                let auth = r
                    .auth
                    .as_ref()
                    .map(|a| format!(" auth {}", a.user))
                    .unwrap_or_default();
                let rate = r
                    .rate
                    .map(|rate| format!(" rate {rate}"))
                    .unwrap_or_default();
                let conc = r
                    .concurrency
                    .map(|c| format!(" concurrency {c}"))
                    .unwrap_or_default();
                println!(
                    "{:<30} {host:<30} tls {}{auth}{rate}{conc}",
                    r.domain, r.tls
                );
            }
            warn_unrouted(store)?;
        }
        RouteCommand::Add {
            domain,
            next_hop,
            tls,
            user,
            no_login,
            rate,
            no_rate,
            concurrency,
            no_concurrency,
            ..
        } => {
            let domain = normalize_route_domain(&domain).map_err(anyhow::Error::msg)?;
            let (host, port) = parse_next_hop(&next_hop).map_err(anyhow::Error::msg)?;
            let rate = rate
                .as_deref()
                .map(crate::abuse::rate::Rate::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            if concurrency == Some(0) {
                anyhow::bail!("--concurrency must be at least 1");
            }
            let auth = match user {
                Some(user) => Some(RouteAuth {
                    password: read_password_stdin()?,
                    user,
                }),
                None => None,
            };
            let given = RouteOptions {
                tls: tls.map(TlsMode::from),
                auth: if no_login { Some(None) } else { auth.map(Some) },
                rate: if no_rate { Some(None) } else { rate.map(Some) },
                concurrency: if no_concurrency {
                    Some(None)
                } else {
                    concurrency.map(Some)
                },
            };
            let want = crate::delivery::router::route_dns_form(&domain);
            let before = store
                .routes()?
                .into_iter()
                .find(|r| crate::delivery::router::route_dns_form(&r.domain) == want);
            let (route, kept) = given.apply(domain, host, port, before.as_ref());
            if route.auth.is_some() && route.tls == TlsMode::None {
                println!("warning: the password will be sent without TLS");
            }
            store.set_route(&route)?;
            println!(
                "route {} -> {} ({})",
                route.domain,
                hop_text(&route.host, route.port),
                options_text(&route)
            );
            match (before, kept) {
                (Some(_), Some(kept)) if !kept.is_empty() => {
                    println!("kept from the route it changes: {}", kept.join(", "));
                }
                (Some(b), None) => println!(
                    "replaces {} -> {} ({}): a new next hop starts afresh, nothing of the old route is carried over to it",
                    b.domain,
                    hop_text(&b.host, b.port),
                    options_text(&b)
                ),
                _ => {}
            }
        }
        RouteCommand::Remove { domain } => {
            let domain = normalize_route_domain(&domain).map_err(anyhow::Error::msg)?;
            store.remove_route(&domain)?;
            println!("removed the route for {domain}");
            warn_unrouted(store)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `route add` was told, option by option: `None` not given,
/// `Some(None)` dropped (`--no-login`...), `Some(Some(v))` set.
struct RouteOptions {
    tls: Option<TlsMode>,
    auth: Option<Option<RouteAuth>>,
    rate: Option<Option<crate::abuse::rate::Rate>>,
    concurrency: Option<Option<usize>>,
}

impl RouteOptions {
    /// The route to store, and the options it kept (as text), `None`
    /// when `before` goes to another next hop. Added to a
    /// route of the same next hop, the options not given keep their
    /// values: adding `--rate` keeps the smarthost's TLS and login. To
    /// another next hop nothing is kept: credentials are never sent to a
    /// host they were not given for.
    fn apply(
        self,
        domain: String,
        host: String,
        port: u16,
        before: Option<&Route>,
    ) -> (Route, Option<Vec<String>>) {
        let same = before.filter(|b| b.host.eq_ignore_ascii_case(&host) && b.port == port);
        let mut kept = Vec::new();
        let tls = match (self.tls, same) {
            (Some(t), _) => t,
            (None, Some(b)) => {
                kept.push(format!("tls {}", b.tls));
                b.tls
            }
            (None, None) => TlsMode::Opportunistic,
        };
        let auth = kept_or_given(self.auth, same.map(|b| &b.auth), &mut kept, |a| {
            format!("login {}", a.user)
        });
        let rate = kept_or_given(self.rate, same.map(|b| &b.rate), &mut kept, |r| {
            format!("rate {r}")
        });
        let concurrency = kept_or_given(
            self.concurrency,
            same.map(|b| &b.concurrency),
            &mut kept,
            |c| format!("concurrency {c}"),
        );
        let route = Route {
            domain,
            host,
            port,
            tls,
            auth,
            rate,
            concurrency,
        };
        (route, same.map(|_| kept))
    }
}

/// One optional option of a route: as given (`Some(None)`: dropped), else
/// the same next hop's, noted in `kept` as `say` puts it, else none.
fn kept_or_given<T: Clone>(
    given: Option<Option<T>>,
    before: Option<&Option<T>>,
    kept: &mut Vec<String>,
    say: impl Fn(&T) -> String,
) -> Option<T> {
    match (given, before) {
        (Some(value), _) => value,
        (None, Some(before)) => {
            if let Some(v) = before {
                kept.push(say(v));
            }
            before.clone()
        }
        (None, None) => None,
    }
}

/// A route's options as `route add` confirms them: `tls required, login
/// gw, at most 300 messages per 1h, 2 connections at once`.
fn options_text(route: &Route) -> String {
    let mut parts = vec![format!("tls {}", route.tls)];
    if let Some(a) = &route.auth {
        parts.push(format!("login {}", a.user));
    }
    if let Some(r) = route.rate {
        parts.push(format!(
            "at most {} messages per {}",
            r.count,
            crate::abuse::rate::period_text(r.period_secs)
        ));
    }
    if let Some(c) = route.concurrency {
        parts.push(format!("{c} connections at once"));
    }
    parts.join(", ")
}

/// Warns about local domains whose mail would be held for want of a route.
pub fn warn_unrouted(store: &Store) -> anyhow::Result<()> {
    for d in store.local_domains_without_route()? {
        println!(
            "warning: local domain {d} has no route: its mail is held in the queue until one is added (relaygate route add {d} HOST:PORT)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_next_hop;

    #[test]
    fn next_hops() {
        assert_eq!(
            parse_next_hop("mail.example.com:2525").unwrap(),
            ("mail.example.com".into(), 2525)
        );
        assert_eq!(parse_next_hop("10.0.0.5").unwrap(), ("10.0.0.5".into(), 25));
        assert_eq!(parse_next_hop("[::1]:2526").unwrap(), ("::1".into(), 2526));
        for bad in [
            "::1:25",
            "host:0",
            "host:99999",
            "[::1",
            "bad host:25",
            "[nope]:25",
            "",
        ] {
            assert!(parse_next_hop(bad).is_err(), "{bad}");
        }
    }
}
