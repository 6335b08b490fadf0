//! The SMTP engine's own settings (limits, TLS files, plaintext AUTH), as
//! the CLI and the store spell them, with safe defaults.

/// Every engine setting, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Name in the greeting, EHLO reply and Received: headers.
    pub hostname: String,
    /// Offer AUTH on plaintext sessions from non-loopback peers.
    pub plaintext_auth: bool,
    pub max_message_size: u64,
    /// Bytes the spool's disk must keep free to take mail (MAIL gets
    /// 452 4.3.1 below it); at least 1.5 × `max_message_size` in any case.
    pub spool_min_free: u64,
    pub max_recipients: usize,
    pub max_command_line: usize,
    pub max_text_line: usize,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// Clients on the allow list are exempt from `max-sessions-per-ip`.
    pub listed_ip_exempt: bool,
    pub command_timeout_secs: u64,
    pub data_timeout_secs: u64,
    /// Bytes per second a DATA transfer must average (0: no minimum).
    pub min_data_rate: u64,
    pub max_bad_commands: usize,
    pub auth_max_failures: usize,
    pub auth_failure_window_secs: u64,
    pub auth_lockout_secs: u64,
    /// Failed AUTHs from one address in `ban-window` that ban it (0: off).
    pub ban_auth_failures: u32,
    /// Refused relay recipients from one address in `ban-window` that ban
    /// it (0: off).
    pub ban_relay_denials: u32,
    pub ban_window_secs: u64,
    /// The first ban's length; each next ban of the address doubles it.
    pub ban_time_secs: u64,
    pub ban_max_time_secs: u64,
    /// Clients on the allow list can be banned too.
    pub ban_listed_clients: bool,
    /// Where `/metrics` is served (Prometheus); none: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds sessions in DATA get to finish at shutdown.
    pub shutdown_grace_secs: u64,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// Seconds before the first retry of a temporary failure; doubles after.
    pub retry_first_secs: u64,
    pub retry_max_interval_secs: u64,
    /// A message still undelivered after this long bounces.
    pub max_queue_age_secs: u64,
    /// A message still queued after this long gets its sender one delay
    /// warning (Postfix's `delay_warning_time`); 0: none.
    pub delay_warning_secs: u64,
    pub delivery_concurrency: usize,
    pub destination_concurrency: usize,
    pub delivery_connect_timeout_secs: u64,
    pub delivery_command_timeout_secs: u64,
    /// More Received: headers than this: a loop; bounce.
    pub max_hops: usize,
    /// DNS servers for MX lookups (`ip:port`); empty: /etc/resolv.conf.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// The port MX hosts are reached on (25; tests use another).
    pub mx_port: u16,
    /// Deliver queued mail (off: accept and keep it, like Postfix's hold).
    pub delivery: bool,
    /// Extra trusted CA certificates (PEM) for routes with `--tls required`.
    pub delivery_ca_file: Option<String>,
    /// How long the persisted event log keeps its history.
    pub log_retention_days: u64,
    pub log_max_rows: u64,
    /// Where mail to the bare `<postmaster>` goes; none: postmaster of the
    /// first local domain.
    pub postmaster_address: Option<String>,
    /// A Unix group whose members may attach a console to watch (the
    /// control socket is then 0660 for it); none: owner only.
    pub console_group: Option<String>,
    /// Ask a local domain's route whether it knows a recipient before
    /// taking mail for it (recipient verification).
    pub verify_recipients: bool,
    /// Take the recipient when its route cannot be asked (else 450).
    pub verify_accept_unreachable: bool,
    /// How long a known recipient is remembered.
    pub verify_known_ttl_secs: u64,
    /// How long an unknown recipient is remembered.
    pub verify_unknown_ttl_secs: u64,
    /// DNS blocklist zones (RFC 5782) unauthenticated clients off the
    /// allow list are looked up on; empty: none.
    pub dnsbl: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            hostname: system_hostname(),
            plaintext_auth: false,
            max_message_size: 25 * 1024 * 1024,
            spool_min_free: 0,
            max_recipients: 100,
            max_command_line: 2048,
            max_text_line: 8192,
            max_sessions: 1000,
            max_sessions_per_ip: 50,
            listed_ip_exempt: true,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            min_data_rate: 500,
            max_bad_commands: 20,
            auth_max_failures: 5,
            auth_failure_window_secs: 600,
            auth_lockout_secs: 900,
            ban_auth_failures: 0,
            ban_relay_denials: 0,
            ban_window_secs: 600,
            ban_time_secs: 3600,
            ban_max_time_secs: 7 * 86_400,
            ban_listed_clients: false,
            metrics_listen: None,
            shutdown_grace_secs: 30,
            tls_cert_file: None,
            tls_key_file: None,
            retry_first_secs: 300,
            retry_max_interval_secs: 4000,
            max_queue_age_secs: 5 * 86_400,
            delay_warning_secs: 0,
            delivery_concurrency: 100,
            destination_concurrency: 20,
            delivery_connect_timeout_secs: 30,
            delivery_command_timeout_secs: 300,
            max_hops: 100,
            dns_servers: Vec::new(),
            mx_port: 25,
            delivery: true,
            delivery_ca_file: None,
            log_retention_days: 30,
            log_max_rows: 1_000_000,
            console_group: None,
            postmaster_address: None,
            verify_recipients: false,
            verify_accept_unreachable: false,
            verify_known_ttl_secs: 86_400,
            verify_unknown_ttl_secs: 3600,
            dnsbl: Vec::new(),
        }
    }
}

/// Every key with what it sets, in display order.
pub const SERVER_KEYS: &[(&str, &str)] = &[
    (
        "postmaster-address",
        "where mail to the bare <postmaster> goes; empty: postmaster@ the first local domain",
    ),
    (
        "console-group",
        "Unix group whose members may attach a console to watch (socket 0660); empty: owner only",
    ),
    (
        "hostname",
        "name in the greeting, EHLO and Received: headers",
    ),
    (
        "dnsbl",
        "DNS blocklist zones, comma-separated (zen.spamhaus.org): a listed client that did not authenticate and is not on the allow list gets 554 5.7.1 at RCPT; empty: none",
    ),
    (
        "verify-recipients",
        "on: ask a local domain's route whether it knows a recipient before taking its mail (550 5.1.1 if not)",
    ),
    (
        "verify-unreachable",
        "defer: 450 4.4.1 while the route cannot be asked; accept: take the mail unverified",
    ),
    (
        "verify-known-ttl",
        "seconds a recipient the route knows is remembered",
    ),
    (
        "verify-unknown-ttl",
        "seconds a recipient the route refused is remembered",
    ),
    (
        "plaintext-auth",
        "offer AUTH without TLS to non-loopback clients (passwords in clear!)",
    ),
    (
        "max-message-size",
        "bytes; announced in EHLO SIZE, enforced while streaming (552 5.3.4)",
    ),
    (
        "spool-min-free",
        "bytes the spool's disk keeps free: below it (or below 1.5 x max-message-size, if more) MAIL gets 452 4.3.1",
    ),
    (
        "max-recipients",
        "recipients per message (452 4.5.3 beyond)",
    ),
    (
        "max-command-line",
        "bytes per command line incl. CRLF (500 5.5.2 beyond)",
    ),
    ("max-text-line", "bytes per message line incl. CRLF"),
    (
        "max-sessions",
        "concurrent sessions in total (421 4.7.0 beyond)",
    ),
    (
        "max-sessions-per-ip",
        "concurrent sessions per client IP (421 4.7.0 beyond)",
    ),
    (
        "per-ip-exempt-listed",
        "on: clients the allow list allows are exempt from max-sessions-per-ip (max-sessions still applies)",
    ),
    (
        "command-timeout",
        "seconds a client has to send a whole command line (421 4.4.2)",
    ),
    (
        "data-timeout",
        "seconds a client has to send each message line (421 4.4.2)",
    ),
    (
        "min-data-rate",
        "bytes/s a message transfer must average after data-timeout; 0: no minimum (421 4.4.2)",
    ),
    (
        "max-bad-commands",
        "bad commands before the session is closed (421 4.7.0)",
    ),
    (
        "auth-max-failures",
        "AUTH failures per client IP within the window before lockout",
    ),
    (
        "auth-failure-window",
        "seconds over which AUTH failures are counted",
    ),
    (
        "auth-lockout",
        "seconds AUTH is refused (454 4.7.0) after too many failures",
    ),
    (
        "ban-auth-failures",
        "failed AUTHs from one address within ban-window that ban it (0: off)",
    ),
    (
        "ban-relay-denials",
        "refused relay recipients from one address within ban-window that ban it (0: off)",
    ),
    ("ban-window", "seconds over which ban offences are counted"),
    (
        "ban-time",
        "seconds the first ban lasts; each next ban of the address doubles it",
    ),
    ("ban-max-time", "longest ban, seconds (7 days)"),
    (
        "ban-listed-clients",
        "clients on the allow list can be banned too (off: never)",
    ),
    (
        "metrics-listen",
        "ADDR:PORT where Prometheus scrapes /metrics (e.g. 127.0.0.1:9465); empty: off",
    ),
    (
        "shutdown-grace",
        "seconds a message in DATA gets to finish at shutdown",
    ),
    (
        "tls-cert-file",
        "PEM certificate chain (empty: a generated self-signed one)",
    ),
    ("tls-key-file", "PEM private key (empty: the generated one)"),
    (
        "retry-first",
        "seconds before the first retry of a temporary failure (then doubling)",
    ),
    (
        "retry-max-interval",
        "longest wait between two delivery attempts, seconds",
    ),
    (
        "max-queue-age",
        "seconds after which undelivered mail bounces (5 days)",
    ),
    (
        "delay-warning",
        "seconds a message waits in the queue before its sender is warned once (0: never)",
    ),
    (
        "delivery-concurrency",
        "deliveries in progress at once, in total",
    ),
    (
        "destination-concurrency",
        "deliveries in progress at once to one next hop",
    ),
    (
        "delivery-connect-timeout",
        "seconds to connect to a next hop",
    ),
    (
        "delivery-command-timeout",
        "seconds a next hop may take to answer a command",
    ),
    (
        "max-hops",
        "Received: headers beyond which a message is a loop and bounces",
    ),
    (
        "dns-servers",
        "MX lookups ask these (ip:port, comma-separated); empty: /etc/resolv.conf",
    ),
    ("mx-port", "port of MX hosts (25)"),
    (
        "delivery",
        "deliver queued mail (off: keep accepting, hold everything)",
    ),
    (
        "delivery-ca-file",
        "extra trusted CA certificates (PEM) for routes with --tls required",
    ),
    (
        "log-retention-days",
        "days of history kept in the event log (relaygate.log.db)",
    ),
    (
        "log-max-rows",
        "rows kept at most in the event log (older ones pruned once a minute)",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

fn number<T: std::str::FromStr>(
    key: &str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<T, SettingError> {
    let n: u64 = value
        .parse()
        .map_err(|_| SettingError(format!("{key} must be a whole number, not {value:?}")))?;
    if n < min || n > max {
        return Err(SettingError(format!(
            "{key} must be between {min} and {max}"
        )));
    }
    value
        .parse()
        .map_err(|_| SettingError(format!("{key}: {value} is out of range")))
}

/// A length of time in seconds: `300`, or with a unit, `300s`, `5m`,
/// `2h`, `5d` (as `ban --for` and `queue --older-than` take them).
fn seconds(key: &str, value: &str, min: u64, max: u64) -> Result<u64, SettingError> {
    let v = value.trim();
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 's'),
    };
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => {
            return Err(SettingError(format!(
                "{key}: {value:?} is not a time: give seconds, or a number with s, m, h or d (5m, 2h, 5d)"
            )));
        }
    };
    let n: u64 = if digits.bytes().all(|b| b.is_ascii_digit()) && !digits.is_empty() {
        digits
            .parse()
            .map_err(|_| SettingError(format!("{key}: {value} is out of range")))?
    } else {
        return Err(SettingError(format!(
            "{key}: {value:?} is not a time: give seconds, or a number with s, m, h or d (5m, 2h, 5d)"
        )));
    };
    let secs = n.saturating_mul(per);
    if secs < min || secs > max {
        return Err(SettingError(format!(
            "{key} must be between {min} and {max} seconds"
        )));
    }
    Ok(secs)
}

impl ServerSettings {
    /// Whether `key` is an engine setting.
    pub fn is_key(key: &str) -> bool {
        SERVER_KEYS.iter().any(|(k, _)| *k == key)
    }

    /// Sets one setting from its text, validating it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let v = value.trim();
        match key {
            "hostname" => {
                self.hostname = crate::policy::address::normalize_domain(v)
                    .map_err(|p| SettingError(format!("hostname {v:?}: {p}")))?
            }
            "plaintext-auth" => {
                self.plaintext_auth = crate::policy::settings::parse_on_off(v)
                    .map_err(|e| SettingError(e.to_string()))?
            }
            "dnsbl" => {
                let mut zones = Vec::new();
                for z in v.split(',').map(str::trim).filter(|z| !z.is_empty()) {
                    let zone = crate::policy::address::normalize_domain(z).map_err(|p| {
                        SettingError(format!("dnsbl: {z:?} is not a DNS zone: {p}"))
                    })?;
                    if !zone.contains('.') {
                        return Err(SettingError(format!(
                            "dnsbl: {z:?} is not a DNS zone (zen.spamhaus.org, say)"
                        )));
                    }
                    if !zones.contains(&zone) {
                        zones.push(zone);
                    }
                }
                if zones.len() > crate::abuse::dnsbl::MAX_ZONES {
                    return Err(SettingError(format!(
                        "dnsbl: at most {} zones",
                        crate::abuse::dnsbl::MAX_ZONES
                    )));
                }
                self.dnsbl = zones;
            }
            "verify-recipients" => {
                self.verify_recipients = crate::policy::settings::parse_on_off(v)
                    .map_err(|e| SettingError(e.to_string()))?
            }
            "verify-unreachable" => {
                self.verify_accept_unreachable = match v.to_ascii_lowercase().as_str() {
                    "defer" => false,
                    "accept" => true,
                    _ => {
                        return Err(SettingError(format!(
                            "verify-unreachable must be defer or accept, not {v:?}"
                        )));
                    }
                }
            }
            "verify-known-ttl" => self.verify_known_ttl_secs = seconds(key, v, 0, 30 * 86_400)?,
            "verify-unknown-ttl" => self.verify_unknown_ttl_secs = seconds(key, v, 0, 30 * 86_400)?,
            "per-ip-exempt-listed" => {
                self.listed_ip_exempt = crate::policy::settings::parse_on_off(v)
                    .map_err(|e| SettingError(e.to_string()))?
            }
            "max-message-size" => self.max_message_size = number(key, v, 1024, 1 << 36)?,
            "spool-min-free" => self.spool_min_free = number(key, v, 0, 1 << 50)?,
            "max-recipients" => self.max_recipients = number(key, v, 1, 100_000)?,
            "max-command-line" => self.max_command_line = number(key, v, 512, 65_536)?,
            "max-text-line" => self.max_text_line = number(key, v, 1000, 1 << 20)?,
            "max-sessions" => self.max_sessions = number(key, v, 1, 1_000_000)?,
            "max-sessions-per-ip" => self.max_sessions_per_ip = number(key, v, 1, 1_000_000)?,
            "command-timeout" => self.command_timeout_secs = seconds(key, v, 1, 86_400)?,
            "data-timeout" => self.data_timeout_secs = seconds(key, v, 1, 86_400)?,
            "min-data-rate" => self.min_data_rate = number(key, v, 0, 1_000_000_000)?,
            "max-bad-commands" => self.max_bad_commands = number(key, v, 1, 10_000)?,
            "auth-max-failures" => self.auth_max_failures = number(key, v, 1, 10_000)?,
            "auth-failure-window" => self.auth_failure_window_secs = seconds(key, v, 1, 86_400)?,
            "auth-lockout" => self.auth_lockout_secs = seconds(key, v, 1, 86_400 * 7)?,
            "ban-auth-failures" => self.ban_auth_failures = number(key, v, 0, 1_000_000)?,
            "ban-relay-denials" => self.ban_relay_denials = number(key, v, 0, 1_000_000)?,
            "ban-window" => self.ban_window_secs = seconds(key, v, 1, 7 * 86_400)?,
            "ban-time" => self.ban_time_secs = seconds(key, v, 1, 365 * 86_400)?,
            "ban-max-time" => self.ban_max_time_secs = seconds(key, v, 1, 365 * 86_400)?,
            "ban-listed-clients" => {
                self.ban_listed_clients = crate::policy::settings::parse_on_off(v)
                    .map_err(|e| SettingError(e.to_string()))?
            }
            "metrics-listen" => {
                self.metrics_listen = if v.is_empty() {
                    None
                } else {
                    Some(crate::bindings::parse_listen_addr(v).map_err(SettingError)?)
                }
            }
            "shutdown-grace" => self.shutdown_grace_secs = seconds(key, v, 0, 3600)?,
            "tls-cert-file" => self.tls_cert_file = (!v.is_empty()).then(|| v.to_string()),
            "postmaster-address" => {
                self.postmaster_address = if v.is_empty() {
                    None
                } else {
                    match crate::policy::address::parse_forward_path(&format!("<{v}>")) {
                        Ok(a) if matches!(a.domain, crate::policy::address::Domain::Name(_)) => {
                            Some(a.to_string())
                        }
                        _ => {
                            return Err(SettingError(format!(
                                "postmaster-address {v:?}: expected a mailbox like postmaster@example.com"
                            )));
                        }
                    }
                }
            }
            "console-group" => {
                let valid = v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                    && !v.starts_with('-')
                    && v.len() <= 32;
                if !valid {
                    return Err(SettingError(format!(
                        "console-group {v:?}: not a Unix group name (letters, digits, _ - .)"
                    )));
                }
                self.console_group = (!v.is_empty()).then(|| v.to_string());
            }
            "tls-key-file" => self.tls_key_file = (!v.is_empty()).then(|| v.to_string()),
            "retry-first" => self.retry_first_secs = seconds(key, v, 1, 86_400)?,
            "retry-max-interval" => self.retry_max_interval_secs = seconds(key, v, 1, 7 * 86_400)?,
            "max-queue-age" => self.max_queue_age_secs = seconds(key, v, 1, 60 * 86_400)?,
            "delay-warning" => self.delay_warning_secs = seconds(key, v, 0, 60 * 86_400)?,
            "delivery-concurrency" => self.delivery_concurrency = number(key, v, 1, 10_000)?,
            "destination-concurrency" => self.destination_concurrency = number(key, v, 1, 10_000)?,
            "delivery-connect-timeout" => {
                self.delivery_connect_timeout_secs = seconds(key, v, 1, 3600)?
            }
            "delivery-command-timeout" => {
                self.delivery_command_timeout_secs = seconds(key, v, 1, 3600)?
            }
            "max-hops" => self.max_hops = number(key, v, 1, 1000)?,
            "dns-servers" => {
                self.dns_servers = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<std::net::SocketAddr>()
                            .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                            .map_err(|_| {
                                SettingError(format!("dns-servers: {s:?} is not ip or ip:port"))
                            })
                    })
                    .collect::<Result<_, _>>()?
            }
            "mx-port" => self.mx_port = number(key, v, 1, 65_535)?,
            "delivery" => {
                self.delivery = crate::policy::settings::parse_on_off(v)
                    .map_err(|e| SettingError(e.to_string()))?
            }
            "delivery-ca-file" => self.delivery_ca_file = (!v.is_empty()).then(|| v.to_string()),
            "log-retention-days" => self.log_retention_days = number(key, v, 1, 3650)?,
            "log-max-rows" => self.log_max_rows = number(key, v, 1000, 1_000_000_000)?,
            _ => return Err(SettingError(format!("unknown setting {key:?}"))),
        }
        Ok(())
    }

    /// One setting as text.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "hostname" => self.hostname.clone(),
            "plaintext-auth" => if self.plaintext_auth { "on" } else { "off" }.to_string(),
            "verify-recipients" => if self.verify_recipients { "on" } else { "off" }.to_string(),
            "verify-unreachable" => if self.verify_accept_unreachable {
                "accept"
            } else {
                "defer"
            }
            .to_string(),
            "verify-known-ttl" => self.verify_known_ttl_secs.to_string(),
            "dnsbl" => self.dnsbl.join(","),
            "verify-unknown-ttl" => self.verify_unknown_ttl_secs.to_string(),
            "per-ip-exempt-listed" => if self.listed_ip_exempt { "on" } else { "off" }.to_string(),
            "max-message-size" => self.max_message_size.to_string(),
            "spool-min-free" => self.spool_min_free.to_string(),
            "max-recipients" => self.max_recipients.to_string(),
            "max-command-line" => self.max_command_line.to_string(),
            "max-text-line" => self.max_text_line.to_string(),
            "max-sessions" => self.max_sessions.to_string(),
            "max-sessions-per-ip" => self.max_sessions_per_ip.to_string(),
            "command-timeout" => self.command_timeout_secs.to_string(),
            "data-timeout" => self.data_timeout_secs.to_string(),
            "min-data-rate" => self.min_data_rate.to_string(),
            "max-bad-commands" => self.max_bad_commands.to_string(),
            "auth-max-failures" => self.auth_max_failures.to_string(),
            "auth-failure-window" => self.auth_failure_window_secs.to_string(),
            "auth-lockout" => self.auth_lockout_secs.to_string(),
            "ban-auth-failures" => self.ban_auth_failures.to_string(),
            "ban-relay-denials" => self.ban_relay_denials.to_string(),
            "ban-window" => self.ban_window_secs.to_string(),
            "ban-time" => self.ban_time_secs.to_string(),
            "ban-max-time" => self.ban_max_time_secs.to_string(),
            "ban-listed-clients" => if self.ban_listed_clients { "on" } else { "off" }.to_string(),
            "metrics-listen" => self
                .metrics_listen
                .map(|a| a.to_string())
                .unwrap_or_default(),
            "shutdown-grace" => self.shutdown_grace_secs.to_string(),
            "tls-cert-file" => self.tls_cert_file.clone().unwrap_or_default(),
            "console-group" => self.console_group.clone().unwrap_or_default(),
            "postmaster-address" => self.postmaster_address.clone().unwrap_or_default(),
            "tls-key-file" => self.tls_key_file.clone().unwrap_or_default(),
            "retry-first" => self.retry_first_secs.to_string(),
            "retry-max-interval" => self.retry_max_interval_secs.to_string(),
            "max-queue-age" => self.max_queue_age_secs.to_string(),
            "delay-warning" => self.delay_warning_secs.to_string(),
            "delivery-concurrency" => self.delivery_concurrency.to_string(),
            "destination-concurrency" => self.destination_concurrency.to_string(),
            "delivery-connect-timeout" => self.delivery_connect_timeout_secs.to_string(),
            "delivery-command-timeout" => self.delivery_command_timeout_secs.to_string(),
            "max-hops" => self.max_hops.to_string(),
            "dns-servers" => self
                .dns_servers
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            "mx-port" => self.mx_port.to_string(),
            "delivery" => if self.delivery { "on" } else { "off" }.to_string(),
            "delivery-ca-file" => self.delivery_ca_file.clone().unwrap_or_default(),
            "log-retention-days" => self.log_retention_days.to_string(),
            "log-max-rows" => self.log_max_rows.to_string(),
            _ => return None,
        })
    }
}

impl ServerSettings {
    /// When bans happen.
    pub fn ban_rules(&self) -> crate::abuse::bans::BanRules {
        crate::abuse::bans::BanRules {
            auth_failures: self.ban_auth_failures,
            relay_denials: self.ban_relay_denials,
            window_secs: self.ban_window_secs,
            first_secs: self.ban_time_secs,
            max_secs: self.ban_max_time_secs,
            listed_too: self.ban_listed_clients,
        }
    }
}

/// This machine's host name, or `localhost`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| crate::policy::address::normalize_domain(h.trim()).ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_take_seconds_or_a_unit_and_are_kept_in_seconds() {
        let mut s = ServerSettings::default();
        for (text, secs) in [
            ("5d", 432_000),
            ("2h", 7200),
            ("90m", 5400),
            ("45s", 45),
            ("300", 300),
            (" 2H ", 7200),
        ] {
            s.set("max-queue-age", text).unwrap();
            assert_eq!(
                s.get("max-queue-age").as_deref(),
                Some(secs.to_string().as_str()),
                "{text}"
            );
        }
        s.set("command-timeout", "5m").unwrap();
        assert_eq!(s.command_timeout_secs, 300);
        for bad in ["5x", "-5", "", "d", "1.5h", "5 d"] {
            let e = s.set("max-queue-age", bad).unwrap_err();
            assert!(e.0.contains("is not a time"), "{bad}: {e:?}");
        }
        let e = s.set("max-queue-age", "99d").unwrap_err();
        assert!(e.0.contains("between 1 and 5184000 seconds"), "{e:?}");
        let e = s
            .set("command-timeout", "99999999999999999999")
            .unwrap_err();
        assert!(e.0.contains("out of range"), "{e:?}");
    }

    #[test]
    fn every_key_round_trips_and_bad_values_fail() {
        let defaults = ServerSettings::default();
        for (key, _) in SERVER_KEYS {
            let mut s = ServerSettings::default();
            let v = defaults.get(key).unwrap();
            s.set(key, &v).unwrap();
            assert_eq!(s, defaults, "{key}");
        }
        let mut s = ServerSettings::default();
        assert!(s.set("max-recipients", "0").is_err());
        assert!(s.set("max-recipients", "ten").is_err());
        assert!(s.set("max-command-line", "100").is_err());
        assert!(s.set("hostname", "bad host").is_err());
        assert!(s.set("nope", "1").is_err());
        assert_eq!(s, ServerSettings::default());
    }
}
