//! One quota check and one ban check with 100,000 active keys, as the
//! engine makes them (through the shared guard, its lock included).
//!
//!     cargo bench --bench abuse

use criterion::{Criterion, criterion_group, criterion_main};
use relaygate::abuse::AbuseGuard;
use relaygate::abuse::bans::{Ban, BanReason};
use relaygate::abuse::quota::{Quota, QuotaHolds, QuotaScope, QuotaUnit, Sender};
use relaygate::abuse::rate::Rate;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const KEYS: u32 = 100_000;

fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn bench(c: &mut Criterion) {
    let now = relaygate::abuse::now_ms();
    // Quotas: per login, per address and per sender domain, each with
    // 100,000 keys counting.
    let guard = AbuseGuard::default();
    let quota = |id, scope: &str| Quota {
        id,
        scope: QuotaScope::parse(scope).unwrap(),
        unit: QuotaUnit::Messages,
        rate: Rate::parse("1000000/hour").unwrap(),
        suspend: false,
    };
    guard.set_quotas(vec![
        quota(1, "login"),
        quota(2, "ip"),
        quota(3, "sender-domain"),
    ]);
    let logins: Vec<String> = (0..KEYS).map(|n| format!("user{n}")).collect();
    let domains: Vec<String> = (0..KEYS).map(|n| format!("d{n}.example")).collect();
    for n in 0..KEYS {
        let s = Sender {
            login: Some(&logins[n as usize]),
            ip: client(n),
            domain: Some(&domains[n as usize]),
        };
        guard.reserve(&s, &mut QuotaHolds::default(), now).unwrap();
    }
    let keys = guard.with_quotas(|q| q.keys()).unwrap();
    assert_eq!(keys, 3 * KEYS as usize);
    let mut n = 0u32;
    c.bench_function("quota check: 3 quotas x 100,000 keys, one recipient", |b| {
        b.iter(|| {
            n = (n + 7919) % KEYS;
            let s = Sender {
                login: Some(&logins[n as usize]),
                ip: client(n),
                domain: Some(&domains[n as usize]),
            };
            let mut holds = QuotaHolds::default();
            black_box(guard.reserve(&s, &mut holds, now).is_ok());
            guard.release(holds);
        })
    });

    let single = AbuseGuard::default();
    single.set_quotas(vec![quota(1, "login")]);
    for name in &logins {
        let s = Sender {
            login: Some(name),
            ip: client(0),
            domain: None,
        };
        single.reserve(&s, &mut QuotaHolds::default(), now).unwrap();
    }
    c.bench_function("quota check: 1 login quota x 100,000 logins", |b| {
        b.iter(|| {
            n = (n + 7919) % KEYS;
            let s = Sender {
                login: Some(&logins[n as usize]),
                ip: client(n),
                domain: None,
            };
            let mut holds = QuotaHolds::default();
            black_box(single.reserve(&s, &mut holds, now).is_ok());
            single.release(holds);
        })
    });

    // Bans: 100,000 addresses banned; the check every connection makes,
    // for a banned and for a clean address.
    let bans = AbuseGuard::default();
    let stored: Vec<Ban> = (0..KEYS)
        .map(|n| Ban {
            net: ipnet::IpNet::from(client(n)),
            since: now,
            until: now + 3_600_000,
            strikes: 1,
            reason: BanReason::Admin {
                note: String::new(),
            },
        })
        .collect();
    bans.replace_bans(stored);
    let mut n = 0u32;
    c.bench_function("ban check: 100,000 bans, a banned address", |b| {
        b.iter(|| {
            n = (n + 7919) % KEYS;
            black_box(bans.banned(client(n), now).is_some())
        })
    });
    c.bench_function("ban check: 100,000 bans, a clean address", |b| {
        b.iter(|| {
            n = (n + 7919) % KEYS;
            black_box(bans.banned(client(KEYS + n), now).is_some())
        })
    });
    let none = AbuseGuard::default();
    c.bench_function("ban check: no ban in force", |b| {
        b.iter(|| black_box(none.banned(client(1), now).is_some()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
