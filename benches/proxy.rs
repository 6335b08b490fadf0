//! What the PROXY header costs a connection: parsing v1 and v2 headers as
//! the engine does (the I/O is one read() that usually brings the header
//! and nothing else).
//!
//!     cargo bench --bench proxy

use criterion::{Criterion, criterion_group, criterion_main};
use relaygate::smtp::proxy_header::parse;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 25\r\n".to_vec();
    let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n".to_vec();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 0, 25,
    ]);
    c.bench_function("PROXY v1 TCP4 header", |b| {
        b.iter(|| black_box(parse(black_box(&v1))))
    });
    c.bench_function("PROXY v1 TCP6 header", |b| {
        b.iter(|| black_box(parse(black_box(&v1_6))))
    });
    c.bench_function("PROXY v2 TCP4 header", |b| {
        b.iter(|| black_box(parse(black_box(&v2))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
