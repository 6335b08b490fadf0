//! Which hosts to try for a recipient domain (RFC 5321 5.1): its MX records
//! by preference, each exchange resolved to its addresses; no MX, the
//! domain itself as an implicit MX; a null MX (RFC 7505) refuses mail.
//!
//! Decisions:
//! - Equal preferences are shuffled on every call (RFC 5321 5.1 SHOULD, to
//!   spread load); [`MxConfig::shuffle_equal_preference`] turns that off,
//!   keeping the order of the DNS answer.
//! - An exchange with no address (NXDOMAIN or no A/AAAA) is skipped, as is
//!   one whose address lookup failed temporarily while another exchange
//!   resolved. If no exchange resolves: a temporary failure if any lookup
//!   failed temporarily, else [`MxError::NoMailHost`] (permanent, like
//!   Exim's "all relevant MX records point to non-existent hosts").
//! - A domain without MX and without A/AAAA is [`MxError::NoMailHost`].
//! - A null MX among other MX records is ignored; only null MX is
//!   [`MxError::NullMx`].
//! - Addresses of a host: IPv4 first, then IPv6, duplicates removed. At
//!   most [`MAX_MX_HOSTS`] hosts are resolved.
//! - DNS only: the hosts file is not consulted (Postfix's default too).

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// More MX hosts than this are not resolved (nor tried).
pub const MAX_MX_HOSTS: usize = 10;

/// A host to deliver to, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange (or the domain itself for an implicit MX), lower case,
    /// without the trailing dot.
    pub name: String,
    /// The MX preference; 0 for an implicit MX.
    pub preference: u16,
    /// Never empty: IPv4 addresses first, then IPv6.
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no host to deliver to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MxError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("the domain accepts no mail (null MX)")]
    NullMx,
    /// NXDOMAIN (or a name that cannot exist).
    #[error("the domain does not exist")]
    NoSuchDomain,
    /// The domain exists but no host for it has an address: no MX and no
    /// A/AAAA, or every MX exchange without an address.
    #[error("no mail host with an address: {0}")]
    NoMailHost(String),
    /// Timeouts, SERVFAIL, REFUSED, no usable resolver: try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

impl MxError {
    /// True when retrying cannot help: the message should bounce.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, MxError::Temporary(_))
    }

    /// The enhanced status code (RFC 3463) for a DSN or a log line.
    pub fn enhanced_status(&self) -> &'static str {
        match self {
            MxError::NullMx => "5.1.10",
            MxError::NoSuchDomain => "5.1.2",
            MxError::NoMailHost(_) => "5.4.4",
            MxError::Temporary(_) => "4.4.3",
        }
    }
}

/// How the resolver is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxConfig {
    /// Empty: the system's resolvers (/etc/resolv.conf); else these, each
    /// asked over UDP then TCP.
    pub servers: Vec<SocketAddr>,
    /// Per query and server.
    pub timeout: Duration,
    /// How many times a failed query is retried.
    pub attempts: usize,
    /// Shuffle MX records of equal preference (RFC 5321 5.1).
    pub shuffle_equal_preference: bool,
}

impl Default for MxConfig {
    fn default() -> Self {
        MxConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            shuffle_equal_preference: true,
        }
    }
}

/// Resolves recipient domains to the hosts to deliver to. Cheap to clone;
/// keeps a cache of answers (by their TTLs).
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
    shuffle: bool,
}

impl std::fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxResolver")
            .field("shuffle", &self.shuffle)
            .finish_non_exhaustive()
    }
}

impl MxResolver {
    /// `servers` empty: the system's resolvers (/etc/resolv.conf); else
    /// these (tests use the test DNS server). Default timeouts.
    pub fn new(servers: &[SocketAddr]) -> Result<MxResolver, MxError> {
        MxResolver::with_config(&MxConfig {
            servers: servers.to_vec(),
            ..MxConfig::default()
        })
    }

    pub fn with_config(config: &MxConfig) -> Result<MxResolver, MxError> {
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                MxError::Temporary(format!("reading the system resolver configuration: {e}"))
            })?
        } else {
            let servers = config
                .servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            let rc = ResolverConfig::from_name_servers(servers);
            TokioResolver::builder_with_config(rc, TokioRuntimeProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = config.timeout;
        opts.attempts = config.attempts;
        opts.use_hosts_file = ResolveHosts::Never;
        let resolver = builder
            .build()
            .map_err(|e| MxError::Temporary(format!("building the resolver: {e}")))?;
        Ok(MxResolver {
            resolver,
            shuffle: config.shuffle_equal_preference,
        })
    }

    /// The hosts to try for `domain`, in order: MX by preference (equal
    /// preferences shuffled unless configured otherwise), each exchange
    /// with its A and AAAA addresses; no MX, the domain itself; a null MX
    /// is [`MxError::NullMx`]. Never returns an empty list.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<MxHost>, MxError> {
        let name = fqdn(domain)?;
        let display = host_name(&name);
        let records: Vec<(u16, Name)> = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                    _ => None,
                })
                .collect(),
            Err(e) => match classify(&e) {
                Negative::NxDomain => return Err(MxError::NoSuchDomain),
                Negative::NoData => Vec::new(),
                Negative::Failed => {
                    return Err(MxError::Temporary(format!("MX lookup for {display}: {e}")));
                }
            },
        };

        if records.is_empty() {
            // RFC 5321 5.1: no MX, the domain is its own implicit MX.
            return match self.addresses(&name).await {
                Addresses::Found(addrs) => Ok(vec![MxHost {
                    name: display,
                    preference: 0,
                    addrs,
                }]),
                Addresses::NxDomain => Err(MxError::NoSuchDomain),
                Addresses::NoData => Err(MxError::NoMailHost(format!(
                    "{display} has no MX and no A/AAAA record"
                ))),
                Addresses::Failed(e) => Err(MxError::Temporary(format!(
                    "address lookup for {display}: {e}"
                ))),
            };
        }

        let ordered = self.order(records);
        if ordered.is_empty() {
            return Err(MxError::NullMx);
        }

        let mut lookups = tokio::task::JoinSet::new();
        for (i, (_, exchange)) in ordered.iter().enumerate() {
            let this = self.clone();
            let exchange = exchange.clone();
            lookups.spawn(async move { (i, this.addresses(&exchange).await) });
        }
        let mut results: Vec<Option<Addresses>> = vec![None; ordered.len()];
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((i, a)) => results[i] = Some(a),
                Err(e) => return Err(MxError::Temporary(format!("address lookup task: {e}"))),
            }
        }

        let mut hosts = Vec::new();
        let mut failures = Vec::new();
        let mut missing = Vec::new();
        for ((preference, exchange), result) in ordered.into_iter().zip(results) {
            let name = host_name(&exchange);
            match result {
                Some(Addresses::Found(addrs)) => hosts.push(MxHost {
                    name,
                    preference,
                    addrs,
                }),
                Some(Addresses::Failed(e)) => failures.push(format!("{name}: {e}")),
                Some(Addresses::NxDomain | Addresses::NoData) | None => missing.push(name),
            }
        }
        if !hosts.is_empty() {
            return Ok(hosts);
        }
        if !failures.is_empty() {
            return Err(MxError::Temporary(format!(
                "address lookup for the MX hosts of {display}: {}",
                failures.join("; ")
            )));
        }
        Err(MxError::NoMailHost(format!(
            "no MX host of {display} has an address ({})",
            missing.join(", ")
        )))
    }

    /// The A records of a name (a DNS blocklist query): empty when the
    /// name does not exist or has none; `Err` when the lookup failed.
    pub async fn ipv4_of(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
        let name = fqdn(name).map_err(|e| e.to_string())?;
        match self.resolver.ipv4_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()),
            Err(e) => match classify(&e) {
                Negative::NxDomain | Negative::NoData => Ok(Vec::new()),
                Negative::Failed => Err(e.to_string()),
            },
        }
    }

    /// MX records sorted by preference, null MX and duplicate exchanges
    /// dropped, equal preferences shuffled when configured, at most
    /// [`MAX_MX_HOSTS`].
    fn order(&self, records: Vec<(u16, Name)>) -> Vec<(u16, Name)> {
        let mut seen: Vec<(u16, Name)> = Vec::new();
        for (pref, exchange) in records {
            if exchange.is_root() {
                continue;
            }
            match seen.iter_mut().find(|(_, e)| *e == exchange) {
                Some(existing) => existing.0 = existing.0.min(pref),
                None => seen.push((pref, exchange)),
            }
        }
        if self.shuffle {
            // A fresh random key per call; sorting by (preference, key)
            // shuffles only within equal preferences.
            let keys = RandomState::new();
            seen.sort_by_cached_key(|(pref, exchange)| (*pref, keys.hash_one(exchange.to_ascii())));
        } else {
            seen.sort_by_key(|(pref, _)| *pref); // stable: answer order kept
        }
        seen.truncate(MAX_MX_HOSTS);
        seen
    }

    /// A and AAAA of one host, looked up together. Addresses from one
    /// family win over a failure of the other.
    async fn addresses(&self, name: &Name) -> Addresses {
        let (v4, v6) = tokio::join!(
            self.resolver.ipv4_lookup(name.clone()),
            self.resolver.ipv6_lookup(name.clone())
        );
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut nxdomain = 0;
        let mut failure = None;
        for result in [v4, v6] {
            match result {
                Ok(lookup) => {
                    for r in lookup.answers() {
                        let ip = match &r.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(a) => IpAddr::V6(a.0),
                            _ => continue,
                        };
                        if !addrs.contains(&ip) {
                            addrs.push(ip);
                        }
                    }
                }
                Err(e) => match classify(&e) {
                    Negative::NxDomain => nxdomain += 1,
                    Negative::NoData => {}
                    Negative::Failed => failure = Some(e.to_string()),
                },
            }
        }
        if !addrs.is_empty() {
            Addresses::Found(addrs)
        } else if let Some(e) = failure {
            Addresses::Failed(e)
        } else if nxdomain == 2 {
            Addresses::NxDomain
        } else {
            Addresses::NoData
        }
    }
}

/// What a lookup error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negative {
    /// The name does not exist.
    NxDomain,
    /// The name exists, without records of the asked type.
    NoData,
    /// Anything else: no answer, SERVFAIL, REFUSED...
    Failed,
}

fn classify(e: &NetError) -> Negative {
    if e.is_nx_domain() {
        Negative::NxDomain
    } else if e.is_no_records_found() {
        Negative::NoData
    } else {
        Negative::Failed
    }
}

#[derive(Debug, Clone)]
enum Addresses {
    Found(Vec<IpAddr>),
    NxDomain,
    NoData,
    Failed(String),
}

/// The domain as an absolute DNS name (no search list applies).
fn fqdn(domain: &str) -> Result<Name, MxError> {
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() {
        return Err(MxError::NoSuchDomain);
    }
    let mut name = Name::from_utf8(d).map_err(|_| MxError::NoSuchDomain)?;
    name.set_fqdn(true);
    Ok(name)
}

/// Lower case, without the trailing dot.
fn host_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}
