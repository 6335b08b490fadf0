//! Abuse containment: sending quotas, automatic bans, suspended logins and
//! the send rate of routes. The logic is in [`quota`], [`bans`] and
//! [`rate`] (no I/O, no clock); [`AbuseGuard`] is the engine's shared,
//! locked copy of it, with a lock-free answer for the common case.

pub mod bans;
pub mod dnsbl;
pub mod quota;
pub mod rate;

use bans::{Ban, BanRules, BanTable};
use quota::{Quota, QuotaHolds, QuotaRefusal, QuotaTable, Sender};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Milliseconds since the epoch: the clock quotas and bans run on.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The engine's quotas, bans and suspensions, shared by every session.
#[derive(Debug, Default)]
pub struct AbuseGuard {
    quotas: Mutex<QuotaTable>,
    /// Some quota is in force (else RCPT skips the lock).
    quotas_on: AtomicBool,
    bans: Mutex<BanTable>,
    /// Until when some ban is in force (ms): a connection after that
    /// moment is not looked up at all.
    bans_until: AtomicU64,
    /// Logins suspended by a quota here, before the database says so:
    /// login -> (why, saved to the database yet).
    suspended_now: Mutex<HashMap<String, (String, bool)>>,
    /// Some login is in `suspended_now` (else the per-command check of a
    /// logged-in session skips the lock).
    any_suspended_now: AtomicBool,
}

impl AbuseGuard {
    // ----- bans -----

    /// The ban refusing this address now.
    pub fn banned(&self, ip: IpAddr, now: u64) -> Option<Ban> {
        if now >= self.bans_until.load(Ordering::Relaxed) {
            return None;
        }
        self.bans.lock().ok()?.banned(ip, now).cloned()
    }

    /// Whether any ban is in force (the per-command check's fast path).
    pub fn any_ban(&self, now: u64) -> bool {
        now < self.bans_until.load(Ordering::Relaxed)
    }

    /// Records a failed AUTH from `ip`; the ban it causes, if any.
    /// `listed`: the address is on the allow list (never banned unless
    /// the rules say so).
    pub fn auth_failed(&self, ip: IpAddr, listed: bool, rules: &BanRules, now: u64) -> Option<Ban> {
        if rules.auth_failures == 0 || (listed && !rules.listed_too) {
            return None;
        }
        let mut t = self.bans.lock().ok()?;
        let ban = t.auth_failed(ip, rules, now)?;
        self.bans_until.fetch_max(ban.until, Ordering::Relaxed);
        Some(ban)
    }

    /// Records a refused relay recipient from `ip`; the ban it causes.
    pub fn relay_denied(
        &self,
        ip: IpAddr,
        listed: bool,
        rules: &BanRules,
        now: u64,
    ) -> Option<Ban> {
        if rules.relay_denials == 0 || (listed && !rules.listed_too) {
            return None;
        }
        let mut t = self.bans.lock().ok()?;
        let ban = t.relay_denied(ip, rules, now)?;
        self.bans_until.fetch_max(ban.until, Ordering::Relaxed);
        Some(ban)
    }

    /// The stored bans, read again after the database changed.
    pub fn replace_bans(&self, stored: Vec<Ban>) {
        if let Ok(mut t) = self.bans.lock() {
            t.replace(stored);
            self.bans_until.store(t.last_until(), Ordering::Relaxed);
        }
    }

    /// Bans made here and not yet saved.
    pub fn take_unsaved_bans(&self) -> Vec<Ban> {
        self.bans
            .lock()
            .map(|mut t| t.take_unsaved())
            .unwrap_or_default()
    }

    /// A save failed: these bans and suspensions are saved again next
    /// time, and stay in force meanwhile.
    pub fn save_failed(&self, bans: Vec<Ban>, suspensions: &[(String, String)]) {
        if let Ok(mut t) = self.bans.lock() {
            t.unsaved_again(bans);
        }
        if let Ok(mut s) = self.suspended_now.lock() {
            for (login, _) in suspensions {
                if let Some(entry) = s.get_mut(login) {
                    entry.1 = false;
                }
            }
        }
    }

    pub fn bans_in_force(&self, now: u64) -> Vec<Ban> {
        self.bans
            .lock()
            .map(|t| t.in_force(now))
            .unwrap_or_default()
    }

    // ----- quotas -----

    pub fn set_quotas(&self, quotas: Vec<Quota>) {
        if let Ok(mut t) = self.quotas.lock() {
            self.quotas_on.store(!quotas.is_empty(), Ordering::Relaxed);
            t.set_quotas(quotas);
        }
    }

    /// Whether RCPT must ask [`reserve`](Self::reserve).
    pub fn quotas_on(&self) -> bool {
        self.quotas_on.load(Ordering::Relaxed)
    }

    /// See [`QuotaTable::reserve`]. A quota that suspends its login also
    /// marks the login suspended here at once.
    pub fn reserve(
        &self,
        sender: &Sender<'_>,
        holds: &mut QuotaHolds,
        now: u64,
    ) -> Result<(), QuotaRefusal> {
        let Ok(mut t) = self.quotas.lock() else {
            return Ok(());
        };
        let mut result = t.reserve(sender, holds, now);
        drop(t);
        if let Err(r) = &mut result
            && let Some(login) = &r.suspend
            && let Ok(mut s) = self.suspended_now.lock()
            && !s.contains_key(login)
        {
            s.insert(login.clone(), (format!("quota {} reached", r.quota), false));
            self.any_suspended_now.store(true, Ordering::Relaxed);
            r.newly_suspended = true;
        }
        result
    }

    pub fn release(&self, holds: QuotaHolds) {
        if holds.is_empty() {
            return;
        }
        if let Ok(mut t) = self.quotas.lock() {
            t.release(holds);
        }
    }

    pub fn with_quotas<R>(&self, f: impl FnOnce(&mut QuotaTable) -> R) -> Option<R> {
        self.quotas.lock().ok().map(|mut t| f(&mut t))
    }

    // ----- suspensions -----

    /// Suspended here since the last reload (the database may not say so
    /// yet).
    pub fn suspended_here(&self, login: &str) -> bool {
        self.any_suspended_now.load(Ordering::Relaxed)
            && self
                .suspended_now
                .lock()
                .is_ok_and(|s| s.contains_key(&login.to_ascii_lowercase()))
    }

    /// A configuration was read after the suspensions made here were
    /// saved: from now on the snapshot says who is suspended (so one the
    /// administrator lifted is lifted).
    pub fn suspensions_reloaded(&self) {
        if let Ok(mut s) = self.suspended_now.lock() {
            s.retain(|_, (_, saved)| !*saved);
            self.any_suspended_now
                .store(!s.is_empty(), Ordering::Relaxed);
        }
    }

    /// Suspensions made here and not yet saved (login, why); they count as
    /// saved from now on.
    pub fn take_unsaved_suspensions(&self) -> Vec<(String, String)> {
        self.suspended_now
            .lock()
            .map(|mut s| {
                s.iter_mut()
                    .filter(|(_, (_, saved))| !*saved)
                    .map(|(login, (why, saved))| {
                        *saved = true;
                        (login.clone(), why.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
