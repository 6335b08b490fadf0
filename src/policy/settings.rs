//! The policy switches, their keys as the CLI and the store spell them, and
//! their safe defaults.

use crate::policy::decision::RelayClass;
use std::fmt;

/// How clients may authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// AUTH is not offered.
    None,
    /// Any user in the users table.
    #[default]
    AnyUser,
    /// Only the one configured login.
    Specified,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::AnyUser => "any-user",
            AuthMode::Specified => "specified",
        }
    }

    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "none" => Some(AuthMode::None),
            "any-user" => Some(AuthMode::AnyUser),
            "specified" => Some(AuthMode::Specified),
            _ => None,
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two restrictions each of the internal, outbound and relay classes has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassSwitches {
    /// Only clients whose address the allow/deny lists allow.
    pub listed_ip: bool,
    /// Only authenticated clients.
    pub auth: bool,
}

/// Every on/off switch of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub internal: ClassSwitches,
    pub outbound: ClassSwitches,
    pub relay: ClassSwitches,
    /// External sender to external recipient is refused.
    pub domain_restrict_send: bool,
    /// Outbound mail only from addresses assigned to some user.
    pub user_restrict_send: bool,
    /// An authenticated client may only use its own sender addresses.
    pub sender_login_match: bool,
}

impl Switches {
    /// Notes on switches that interact, as `policy show` and the console's
    /// Auth panel both say them.
    pub fn notes(&self) -> Vec<String> {
        [
            ("internal", self.internal),
            ("outbound", self.outbound),
            ("relay", self.relay),
        ]
        .into_iter()
        .filter(|(_, s)| s.auth && s.listed_ip)
        .map(|(class, _)| {
            format!(
                "{class}.auth and {class}.listed-ip are both on: authentication is required and, as it overrides IP restrictions, the lists do not matter for {class} mail"
            )
        })
        .collect()
    }
}

impl Switches {
    /// The classes of mail anyone on the Internet may send through the
    /// gateway: relay with no control left (both its switches and
    /// domain-restrict-send off: an open relay), and outbound with
    /// neither switch (any client may send anywhere as a local sender).
    pub fn open_to_anyone(&self) -> Vec<RelayClass> {
        let open = |c: ClassSwitches| !c.listed_ip && !c.auth;
        let mut classes = Vec::new();
        if open(self.outbound) {
            classes.push(RelayClass::Outbound);
        }
        if open(self.relay) && !self.domain_restrict_send {
            classes.push(RelayClass::Relay);
        }
        classes
    }
}

/// The warning for a class [`Switches::open_to_anyone`] names, as the
/// CLI, the console and the engine's log say it.
pub fn open_warning(class: RelayClass) -> String {
    match class {
        RelayClass::Relay => "relaygate is an OPEN RELAY: relay.listed-ip, relay.auth and domain-restrict-send are off, so anyone may send mail from anywhere to anywhere through it (relaygate policy set relay.listed-ip on)".to_string(),
        _ => format!(
            "{class} mail is open to anyone: {class}.listed-ip and {class}.auth are off, so any client may send to anywhere with a sender in a local domain (relaygate policy set {class}.listed-ip on)"
        ),
    }
}

impl Default for Switches {
    /// The safe defaults of a new database: relay and outbound only from
    /// listed addresses, internal unrestricted, domain restrict send on.
    fn default() -> Self {
        let listed = ClassSwitches {
            listed_ip: true,
            auth: false,
        };
        Switches {
            internal: ClassSwitches::default(),
            outbound: listed,
            relay: listed,
            domain_restrict_send: true,
            user_restrict_send: false,
            sender_login_match: false,
        }
    }
}

/// Every switch key with what it does, in display order.
pub const SWITCH_KEYS: &[(&str, &str)] = &[
    (
        "internal.listed-ip",
        "internal mail (local -> local) only from listed IPs",
    ),
    (
        "internal.auth",
        "internal mail only from authenticated clients",
    ),
    (
        "outbound.listed-ip",
        "outbound mail (local -> external) only from listed IPs",
    ),
    (
        "outbound.auth",
        "outbound mail only from authenticated clients",
    ),
    (
        "relay.listed-ip",
        "relay (external -> external) only from listed IPs",
    ),
    ("relay.auth", "relay only from authenticated clients"),
    (
        "domain-restrict-send",
        "refuse external -> external mail altogether",
    ),
    (
        "user-restrict-send",
        "outbound mail only from senders assigned to a user",
    ),
    (
        "sender-login-match",
        "authenticated users may only use their own sender addresses",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error(
        "unknown policy key {0:?}; switches: {switches}; engine settings: {settings}",
        switches = SWITCH_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
        settings = crate::server_settings::SERVER_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
    )]
    UnknownKey(String),
    #[error("value {0:?} must be on or off (or yes/no, true/false, 1/0)")]
    BadValue(String),
}

/// Parses `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
pub fn parse_on_off(value: &str) -> Result<bool, SwitchError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(SwitchError::BadValue(value.to_string())),
    }
}

impl Switches {
    fn slot(&mut self, key: &str) -> Option<&mut bool> {
        Some(match key {
            "internal.listed-ip" => &mut self.internal.listed_ip,
            "internal.auth" => &mut self.internal.auth,
            "outbound.listed-ip" => &mut self.outbound.listed_ip,
            "outbound.auth" => &mut self.outbound.auth,
            "relay.listed-ip" => &mut self.relay.listed_ip,
            "relay.auth" => &mut self.relay.auth,
            "domain-restrict-send" => &mut self.domain_restrict_send,
            "user-restrict-send" => &mut self.user_restrict_send,
            "sender-login-match" => &mut self.sender_login_match,
            _ => return None,
        })
    }

    /// Sets one switch by key.
    pub fn set(&mut self, key: &str, on: bool) -> Result<(), SwitchError> {
        *self
            .slot(key)
            .ok_or_else(|| SwitchError::UnknownKey(key.to_string()))? = on;
        Ok(())
    }

    /// Reads one switch by key.
    pub fn get(&self, key: &str) -> Option<bool> {
        let mut copy = *self;
        copy.slot(key).map(|b| *b)
    }

    /// Every switch as (key, value, description), in display order.
    pub fn entries(&self) -> Vec<(&'static str, bool, &'static str)> {
        SWITCH_KEYS
            .iter()
            .map(|&(k, d)| (k, self.get(k).unwrap_or(false), d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips() {
        for (key, _) in SWITCH_KEYS {
            let mut s = Switches::default();
            s.set(key, true).unwrap();
            assert_eq!(s.get(key), Some(true));
            s.set(key, false).unwrap();
            assert_eq!(s.get(key), Some(false));
        }
        assert!(Switches::default().set("relay.nope", true).is_err());
    }
}
