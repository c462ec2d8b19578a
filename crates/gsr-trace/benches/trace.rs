//! Throughput of `Trace::write` in 64 KiB chunks of realistic log text.
//!
//! `cargo bench -p gsr-trace` prints `thrpt:` in MiB/s or GiB/s for:
//! - `trace_write/64KiB_chunks/50_values`: 50 masked values (some occurring), default token
//!   prefixes, no output limit — the number that must stay above 200 MB/s;
//! - `trace_write/64KiB_chunks/no_values`: the same without masked values (the rest of the
//!   pipeline: token prefixes, UTF-8, CRC32, temp file).
//!
//! `cargo run --release -p gsr-trace --example throughput` prints plain MB/s.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gsr_trace::{Trace, TraceConfig};

#[path = "support/workload.rs"]
mod workload;

fn run(values: &[String], chunks: &[Vec<u8>]) -> u64 {
    let mut cfg = TraceConfig::new(values.to_vec());
    cfg.output_limit = u64::MAX;
    let trace = Trace::new(cfg).expect("trace");
    for c in chunks {
        trace.write(c);
    }
    trace.flush();
    trace.len()
}

fn bench(c: &mut Criterion) {
    let w = workload::workload(16 * 1024 * 1024);
    assert_eq!(w.values.len(), workload::VALUES);
    assert!(w.chunks.iter().all(|c| c.len() <= workload::CHUNK));
    assert!(w.occurrences > 0);

    let mut group = c.benchmark_group("trace_write/64KiB_chunks");
    group.throughput(Throughput::Bytes(w.total as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("50_values", |b| {
        b.iter(|| black_box(run(black_box(&w.values), &w.chunks)))
    });
    group.bench_function("no_values", |b| b.iter(|| black_box(run(&[], &w.chunks))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
