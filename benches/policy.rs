//! The decision for one recipient with 100,000 allow and 100,000 deny
//! entries loaded, and the build of that snapshot from the database.
//!
//!     cargo bench --bench policy

use criterion::{Criterion, criterion_group, criterion_main};
use relaygate::policy::address::{parse_forward_path, parse_reverse_path};
use relaygate::policy::ip_lists::ListKind;
use relaygate::policy::ip_pattern::IpPattern;
use relaygate::policy::list_text::ParsedEntry;
use relaygate::policy::{Envelope, Policy};
use relaygate::store::Store;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A realistic mix: 60% single IPv4, 15% IPv4 CIDR, 15% wildcard or
/// octet-range patterns, 10% IPv6 (singles and /48../64 networks).
fn entry(rng: &mut Rng) -> String {
    let o = |rng: &mut Rng| rng.below(256);
    match rng.below(100) {
        0..60 => format!("{}.{}.{}.{}", 1 + rng.below(223), o(rng), o(rng), o(rng)),
        60..75 => {
            let prefix = 16 + rng.below(15) as u32;
            let addr = (rng.next() as u32) & (u32::MAX << (32 - prefix));
            format!("{}/{prefix}", std::net::Ipv4Addr::from(addr))
        }
        75..90 => {
            let (a, b, c) = (1 + rng.below(223), o(rng), o(rng));
            match rng.below(3) {
                0 => format!("{a}.{b}.{c}.*"),
                1 => {
                    let lo = rng.below(200);
                    format!("{a}.{b}.{lo}-{}.*", lo + rng.below(50))
                }
                _ => {
                    let lo = 1 + rng.below(150);
                    format!("{a}.{b}.{c}.{lo}-{}", lo + rng.below(100))
                }
            }
        }
        _ => {
            let net =
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | (u128::from(rng.next()) << 32);
            if rng.below(2) == 0 {
                std::net::Ipv6Addr::from(net | u128::from(rng.next() as u32)).to_string()
            } else {
                let prefix = 48 + rng.below(17) as u32;
                let masked = net & (u128::MAX << (128 - prefix));
                format!("{}/{prefix}", std::net::Ipv6Addr::from(masked))
            }
        }
    }
}

fn parsed(texts: Vec<String>) -> Vec<ParsedEntry> {
    texts
        .into_iter()
        .filter_map(|text| {
            let pattern = IpPattern::parse(&text).ok()?;
            Some(ParsedEntry {
                line: 0,
                text,
                pattern,
            })
        })
        .collect()
}

fn loaded_store(dir: &std::path::Path) -> Store {
    let mut store = Store::open(&dir.join("bench.db")).expect("open store");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for list in [ListKind::Allow, ListKind::Deny] {
        let entries = parsed((0..100_000).map(|_| entry(&mut rng)).collect());
        store.add_entries(list, &entries).expect("add entries");
    }
    store.add_domain("example.com").expect("domain");
    store
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = loaded_store(dir.path());
    let policy: Policy = store.load_policy().expect("policy");
    eprintln!(
        "loaded {} entries ({} allow + {} deny requested, duplicates merged)",
        policy.lists().len(),
        100_000,
        100_000
    );

    let mut rng = Rng(42);
    let peers: Vec<IpAddr> = (0..4096)
        .map(|i| {
            if i % 10 == 0 {
                IpAddr::V6(std::net::Ipv6Addr::from(
                    0x2001_0db8u128 << 96 | u128::from(rng.next()),
                ))
            } else {
                IpAddr::V4(std::net::Ipv4Addr::from(rng.next() as u32))
            }
        })
        .collect();
    let sender = parse_reverse_path("<alice@example.com>").expect("sender");
    let rcpt = parse_forward_path("<bob@far.example.net>").expect("rcpt");

    // Peers the allow list lets through: its single IPv4 addresses.
    let allowed: Vec<IpAddr> = store
        .list_entries(ListKind::Allow)
        .expect("allow list")
        .iter()
        .filter_map(|t| t.parse().ok())
        .take(4096)
        .collect();
    assert_eq!(allowed.len(), 4096);

    for (name, peers) in [
        ("decide one recipient, listed peer (200k entries)", &allowed),
        ("decide one recipient, unlisted peer (200k entries)", &peers),
    ] {
        let mut i = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                let env = Envelope {
                    peer: peers[i],
                    login: None,
                    sender: sender.as_ref(),
                };
                black_box(policy.decide(black_box(&env), black_box(&rcpt)))
            })
        });
    }

    let mut j = 0usize;
    c.bench_function("allow/deny lookup only (200k entries)", |b| {
        b.iter(|| {
            j = (j + 1) & 4095;
            black_box(policy.lists().check(black_box(peers[j])))
        })
    });

    let mut group = c.benchmark_group("snapshot");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("load + compile 200k entries from SQLite", |b| {
        b.iter(|| black_box(store.load_policy().expect("policy")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
