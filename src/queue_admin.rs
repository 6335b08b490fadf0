//! Queue actions, one implementation for the CLI (`relaygate queue ...`)
//! and the console's Queue panel: which messages a filter takes, and
//! retry, hold, release or delete (with a bounce or silently) applied to a
//! set of messages in one spool transaction.

use crate::delivery::scheduler::bounce_for_deleted;
use crate::server_settings::ServerSettings;
use crate::spool::{QueueEntry, Spool, SpoolOp, SpoolReader};

/// Which queued messages a bulk action takes; all that are given must
/// match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    /// Lowercased text in the sender, a recipient or a recipient's last
    /// error.
    pub text: Option<String>,
    /// Lowercased domain of a recipient, without `@`.
    pub domain: Option<String>,
    /// Received at least this many seconds ago.
    pub older_than: Option<i64>,
}

impl QueueFilter {
    /// From what a user typed; an age like `90m`, `12h`, `2d`.
    pub fn parse(
        text: Option<&str>,
        domain: Option<&str>,
        older_than: Option<&str>,
    ) -> Result<QueueFilter, String> {
        let clean = |s: Option<&str>| s.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        Ok(QueueFilter {
            text: clean(text),
            // In its DNS form, once: either spelling of an international
            // domain takes both.
            domain: clean(domain)
                .map(|d| crate::policy::address::dns_form(d.trim_start_matches('@')).into_owned()),
            older_than: older_than.map(age_secs).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_none() && self.domain.is_none() && self.older_than.is_none()
    }

    /// Whether `e` is taken, at `now` (seconds since the epoch).
    pub fn takes(&self, e: &QueueEntry, now: i64) -> bool {
        if self.older_than.is_some_and(|age| now - e.received_at < age) {
            return false;
        }
        if let Some(want) = &self.domain {
            let in_domain = e.recipients.iter().any(|r| {
                r.address.rsplit_once('@').is_some_and(|(_, rd)| {
                    crate::policy::address::dns_form(&rd.to_lowercase()) == *want
                })
            });
            if !in_domain {
                return false;
            }
        }
        if let Some(t) = &self.text {
            let hit = contains_lower(&e.sender, t)
                || e.recipients.iter().any(|r| {
                    contains_lower(&r.address, t)
                        || r.last_error
                            .as_deref()
                            .is_some_and(|x| contains_lower(x, t))
                });
            if !hit {
                return false;
            }
        }
        true
    }
}

/// Whether `haystack` contains `needle` (already lowercase), in any case.
fn contains_lower(haystack: &str, needle: &str) -> bool {
    if haystack.is_ascii() && needle.is_ascii() {
        haystack
            .as_bytes()
            .windows(needle.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
            || needle.is_empty()
    } else {
        haystack.to_lowercase().contains(needle)
    }
}

/// `90m`, `12h`, `2d`, `45s` as seconds.
pub fn age_secs(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not an age: give one like 90m, 12h or 2d");
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if n < 0 {
        return Err(bad());
    }
    Ok(n.saturating_mul(mult))
}

/// A recipient's last error as the queue views show it: a route's send
/// rate is a wait, not an error.
pub fn last_error_text(error: &str) -> String {
    if error.starts_with("waiting for the rate limit") {
        error.to_string()
    } else {
        format!("last error: {error}")
    }
}

/// What is done to the chosen messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAction {
    /// Every queued recipient due now.
    Retry,
    /// Not delivered until released.
    Hold,
    Release,
    /// Removed; with `bounce`, the sender is told.
    Delete {
        bounce: bool,
    },
}

impl QueueAction {
    /// "retry", "hold", ...: what a question or a message calls it.
    pub fn verb(self) -> &'static str {
        match self {
            QueueAction::Retry => "retry",
            QueueAction::Hold => "hold",
            QueueAction::Release => "release",
            QueueAction::Delete { bounce: true } => "delete with a bounce",
            QueueAction::Delete { bounce: false } => "delete silently",
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The messages it was applied to.
    pub messages: Vec<String>,
    /// Chosen, but gone from the queue before the action (delivered,
    /// deleted by someone else).
    pub missing: Vec<String>,
    /// Retry: the recipients made due.
    pub due: usize,
    /// Delete with a bounce: (message, bounce id, the sender told).
    pub bounces: Vec<(String, String, String)>,
    /// Delete with a bounce: left alone, their delivery under way (its
    /// outcome is not known yet, and a bounce would say it failed).
    pub in_flight: Vec<String>,
    /// Hold or release: chosen messages that were so already.
    pub unchanged: usize,
}

impl Applied {
    /// One line for the user: "3 messages held", "Q1 deleted; bounce B2
    /// queued to <a@b>" (`named`: the user named that one message, rather
    /// than a filter or marks choosing it).
    pub fn summary(&self, action: QueueAction, named: bool) -> String {
        let one = match self.messages.as_slice() {
            [id] if named => Some(id.as_str()),
            _ => None,
        };
        let what = match one {
            Some(id) => id.to_string(),
            None => messages(self.messages.len()),
        };
        let mut s = match action {
            QueueAction::Retry if one.is_some() => {
                format!("{what}: every queued recipient is due now")
            }
            QueueAction::Retry => format!(
                "{what}: {} due now",
                plural(self.due, "recipient", "recipients")
            ),
            QueueAction::Hold | QueueAction::Release => {
                let hold = action == QueueAction::Hold;
                let (done, already) = if hold {
                    ("held", "held already")
                } else {
                    ("released", "not held")
                };
                match (one, self.unchanged) {
                    (Some(id), 1) => format!("{id} was {already}"),
                    (Some(id), _) => format!("{id} {done}"),
                    (None, 0) => format!("{what} {done}"),
                    (None, n) => format!(
                        "{} {done}; {n} {} {already}",
                        messages(self.messages.len().saturating_sub(n)),
                        if n == 1 { "was" } else { "were" }
                    ),
                }
            }
            QueueAction::Delete { bounce: false } => format!("{what} deleted silently"),
            QueueAction::Delete { bounce: true } => match (one, self.bounces.as_slice()) {
                (Some(_), [(_, b, to)]) => format!("{what} deleted; bounce {b} queued to <{to}>"),
                _ => format!(
                    "{what} deleted, {} queued",
                    plural(self.bounces.len(), "bounce", "bounces")
                ),
            },
        };
        if !self.missing.is_empty() {
            s.push_str(&format!(
                "; {} no longer queued",
                plural(self.missing.len(), "message was", "messages were")
            ));
        }
        if !self.in_flight.is_empty() && action == (QueueAction::Delete { bounce: true }) {
            s.push_str(&format!(
                "; {} being delivered now, not deleted ({IN_FLIGHT_ADVICE})",
                plural(self.in_flight.len(), "message", "messages")
            ));
        }
        s
    }
}

/// `1 message`, `2 messages`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// "1 message" / "3 messages".
pub fn messages(n: usize) -> String {
    plural(n, "message", "messages")
}

/// What to do about a message whose delivery is under way.
const IN_FLIGHT_ADVICE: &str =
    "hold it and delete it once the attempt is over, or delete it without a bounce";

/// Why an action was not done (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum QueueAdminError {
    /// The id as typed, control characters escaped.
    #[error("no message {0} in the queue")]
    NotQueued(String),
    /// Delete with a bounce, of a message being delivered now.
    #[error("{0} is being delivered now: {IN_FLIGHT_ADVICE}")]
    InFlight(String),
    #[error("reading the spool: {0}")]
    Read(rusqlite::Error),
    #[error("changing the spool: {0}")]
    Write(String),
    /// The disk is full (see [`crate::spool_space::RESERVE`]).
    #[error("changing the spool: {0}")]
    Full(String),
}

/// Applies `action` to the messages `ids`, all in one transaction. A
/// single message that is not queued is an error; of several, those gone
/// are counted in [`Applied::missing`]. A delete with a bounce leaves the
/// messages in `busy` (their delivery under way) alone, as
/// [`Applied::in_flight`], or as an error for the one message the user
/// `named`: the bounce would tell the sender it failed while a next hop
/// may be taking it.
pub fn apply(
    spool: &Spool,
    reader: &SpoolReader,
    settings: &ServerSettings,
    action: QueueAction,
    ids: &[String],
    busy: &std::collections::HashSet<String>,
    named: bool,
) -> Result<Applied, QueueAdminError> {
    let mut applied = Applied::default();
    let mut ops = Vec::with_capacity(ids.len());
    for id in ids {
        let op = match action {
            QueueAction::Delete { bounce: true } if busy.contains(id) => {
                if named && ids.len() == 1 {
                    return Err(QueueAdminError::InFlight(crate::events::printable(id)));
                }
                applied.in_flight.push(id.clone());
                continue;
            }
            QueueAction::Delete { bounce } => {
                let Some(message) = reader.message(id).map_err(QueueAdminError::Read)? else {
                    applied.missing.push(id.clone());
                    continue;
                };
                let b = if bounce {
                    bounce_for_deleted(settings, reader, &message).map_err(QueueAdminError::Read)?
                } else {
                    None
                };
                if let Some(b) = &b {
                    applied.bounces.push((
                        id.clone(),
                        b.id.clone(),
                        message.message.sender.clone(),
                    ));
                }
                SpoolOp::Delete {
                    message_id: id.clone(),
                    bounce: b,
                }
            }
            _ if !reader.contains(id).map_err(QueueAdminError::Read)? => {
                applied.missing.push(id.clone());
                continue;
            }
            QueueAction::Retry => SpoolOp::RetryNow {
                message_id: Some(id.clone()),
            },
            QueueAction::Hold | QueueAction::Release => SpoolOp::Hold {
                message_id: id.clone(),
                held: action == QueueAction::Hold,
            },
        };
        applied.messages.push(id.clone());
        ops.push(op);
    }
    if let ([id], [_]) = (ids, applied.missing.as_slice()) {
        return Err(QueueAdminError::NotQueued(crate::events::printable(id)));
    }
    let n = spool
        .apply_blocking(SpoolOp::All(ops))
        .map_err(|e| match e {
            crate::spool::SpoolError::Full(_) => QueueAdminError::Full(e.to_string()),
            e => QueueAdminError::Write(e.to_string()),
        })?;
    match action {
        QueueAction::Retry => applied.due = n,
        QueueAction::Hold | QueueAction::Release => {
            applied.unchanged = applied.messages.len().saturating_sub(n);
        }
        QueueAction::Delete { .. } => {}
    }
    Ok(applied)
}

/// The queue's shape, as Postfix's qshape shows it: queued recipients by
/// domain and by the age of their message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueShape {
    /// The busiest domains first: (domain, total, a count per bucket).
    pub domains: Vec<(String, usize, [usize; AGE_BUCKETS.len()])>,
    /// Every domain together.
    pub total: (usize, [usize; AGE_BUCKETS.len()]),
}

/// Upper bounds of the age buckets, in seconds, and their labels; the last
/// takes everything older.
pub const AGE_BUCKETS: [(i64, &str); 6] = [
    (300, "5m"),
    (1800, "30m"),
    (7200, "2h"),
    (28_800, "8h"),
    (86_400, "1d"),
    (i64::MAX, "older"),
];

impl QueueShape {
    /// Of the recipients still queued in `entries`, at `now` (seconds).
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a QueueEntry>, now: i64) -> QueueShape {
        use std::collections::HashMap;
        let mut by_domain: HashMap<String, (usize, [usize; AGE_BUCKETS.len()])> = HashMap::new();
        let mut total = (0, [0; AGE_BUCKETS.len()]);
        for e in entries {
            let age = now - e.received_at;
            let bucket = AGE_BUCKETS
                .iter()
                .position(|(limit, _)| age < *limit)
                .unwrap_or(AGE_BUCKETS.len() - 1);
            for r in e.recipients.iter().filter(|r| r.state == "queued") {
                let domain = r
                    .address
                    .rsplit_once('@')
                    .map_or("(no domain)", |(_, d)| d)
                    .to_lowercase();
                let slot = by_domain.entry(domain).or_default();
                slot.0 += 1;
                slot.1[bucket] += 1;
                total.0 += 1;
                total.1[bucket] += 1;
            }
        }
        let mut domains: Vec<_> = by_domain.into_iter().map(|(d, (n, b))| (d, n, b)).collect();
        domains.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        QueueShape { domains, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RecipientState;

    fn entry(id: &str, received_at: i64, sender: &str, to: &[(&str, &str)]) -> QueueEntry {
        QueueEntry {
            id: id.into(),
            received_at,
            sender: sender.into(),
            size: 10,
            held: false,
            recipients: to
                .iter()
                .map(|(a, state)| RecipientState {
                    address: (*a).into(),
                    state: (*state).into(),
                    attempts: 1,
                    next_attempt: 0,
                    last_error: Some("451 4.4.1 Mailbox Busy".into()),
                    notify: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_filter_takes_what_all_its_parts_match() {
        let e = entry("Q1", 1000, "Ann@Example.com", &[("bob@Far.test", "queued")]);
        let f = |t: Option<&str>, d: Option<&str>, o: Option<&str>| {
            QueueFilter::parse(t, d, o).unwrap().takes(&e, 5000)
        };
        assert!(f(Some("ANN@"), None, None));
        assert!(f(Some("mailbox busy"), None, None));
        assert!(f(None, Some("@far.TEST"), None));
        assert!(!f(None, Some("test"), None));
        assert!(f(None, None, Some("1h")));
        assert!(!f(None, None, Some("2h")));
        assert!(!f(Some("ann"), Some("other.test"), None));
        let idn = entry("Q2", 1000, "a@x.test", &[("b@bücher.example", "queued")]);
        for spelling in ["xn--bcher-kva.example", "Bücher.example"] {
            let filter = QueueFilter::parse(None, Some(spelling), None).unwrap();
            assert!(filter.takes(&idn, 5000), "{spelling}");
        }
        assert!(QueueFilter::parse(None, None, Some("3 weeks")).is_err());
        assert!(QueueFilter::parse(None, None, Some("-1d")).is_err());
        assert!(
            QueueFilter::parse(Some("  "), None, None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_shape_counts_queued_recipients_by_domain_and_age() {
        let now = 100_000;
        let entries = [
            entry(
                "A",
                now - 10,
                "s@x",
                &[("a@b.test", "queued"), ("c@d.test", "queued")],
            ),
            entry(
                "B",
                now - 4000,
                "s@x",
                &[("e@B.test", "queued"), ("f@b.test", "delivered")],
            ),
            entry("C", now - 200_000, "s@x", &[("g@b.test", "queued")]),
        ];
        let shape = QueueShape::of(&entries, now);
        assert_eq!(shape.total, (4, [2, 0, 1, 0, 0, 1]));
        assert_eq!(
            shape.domains,
            [
                ("b.test".to_string(), 3, [1, 0, 1, 0, 0, 1]),
                ("d.test".to_string(), 1, [1, 0, 0, 0, 0, 0]),
            ]
        );
    }

    #[test]
    fn summaries_say_what_was_done() {
        let one = Applied {
            messages: vec!["Q1".into()],
            ..Default::default()
        };
        assert_eq!(one.summary(QueueAction::Hold, true), "Q1 held");
        assert_eq!(one.summary(QueueAction::Hold, false), "1 message held");
        let many = Applied {
            messages: vec!["Q1".into(), "Q2".into()],
            missing: vec!["Q3".into()],
            due: 5,
            bounces: vec![("Q1".into(), "B1".into(), "a@b".into())],
            in_flight: vec!["Q4".into()],
            unchanged: 1,
        };
        assert_eq!(
            many.summary(QueueAction::Hold, false),
            "1 message held; 1 was held already; 1 message was no longer queued"
        );
        assert_eq!(
            many.summary(QueueAction::Release, false),
            "1 message released; 1 was not held; 1 message was no longer queued"
        );
        assert_eq!(
            many.summary(QueueAction::Retry, false),
            "2 messages: 5 recipients due now; 1 message was no longer queued"
        );
        assert_eq!(
            many.summary(QueueAction::Delete { bounce: true }, false),
            "2 messages deleted, 1 bounce queued; 1 message was no longer queued; \
             1 message being delivered now, not deleted (hold it and delete it once the \
             attempt is over, or delete it without a bounce)"
        );
    }

    /// A delete with a bounce leaves a message whose delivery is under way
    /// alone (refused, for one named message); a silent delete takes it.
    #[test]
    fn a_bounce_is_never_made_for_a_message_being_delivered() {
        use crate::spool::{NewMessage, SpoolRecipient};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let reader = SpoolReader::open(&path).unwrap();
        let settings = ServerSettings::default();
        let mut ids = Vec::new();
        for n in 0..2 {
            let id = spool.next_id();
            spool
                .apply_blocking(SpoolOp::Insert(NewMessage {
                    id: id.clone(),
                    sender: "a@example.com".into(),
                    recipients: vec![SpoolRecipient {
                        address: format!("r{n}@far.test"),
                        class: "outbound".into(),
                        reason: "test".into(),
                        dsn: Default::default(),
                    }],
                    login: None,
                    peer: "127.0.0.1".into(),
                    client_listed: Some(true),
                    helo: "client".into(),
                    body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
                    spilled: None,
                    smtputf8: false,
                    dsn: Default::default(),
                }))
                .unwrap();
            ids.push(id);
        }
        let busy: std::collections::HashSet<String> = [ids[0].clone()].into();
        let bounce = QueueAction::Delete { bounce: true };
        let one = apply(&spool, &reader, &settings, bounce, &ids[..1], &busy, true);
        assert!(matches!(one, Err(QueueAdminError::InFlight(_))), "{one:?}");
        // Chosen by a filter, not named: left alone, said in the summary.
        let chosen = apply(&spool, &reader, &settings, bounce, &ids[..1], &busy, false).unwrap();
        assert_eq!(chosen.in_flight, [ids[0].clone()]);
        assert!(chosen.messages.is_empty());
        let both = apply(&spool, &reader, &settings, bounce, &ids, &busy, false).unwrap();
        assert_eq!(both.messages, [ids[1].clone()]);
        assert_eq!(both.in_flight, [ids[0].clone()]);
        assert_eq!(both.bounces.len(), 1);
        assert!(reader.contains(&ids[0]).unwrap(), "left alone");
        assert!(!reader.contains(&ids[1]).unwrap());
        let silent = QueueAction::Delete { bounce: false };
        apply(&spool, &reader, &settings, silent, &ids[..1], &busy, true).unwrap();
        assert!(!reader.contains(&ids[0]).unwrap());
    }
}
