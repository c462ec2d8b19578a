//! Prints the throughput of `Trace::write` in MB/s (10^6 bytes per second).
//!
//! ```text
//! cargo run --release -p gsr-trace --example throughput [MiB] [rounds] [write_bytes]
//! ```
//!
//! Same workload as `benches/trace.rs`: realistic log text in 64 KiB writes (or
//! `write_bytes`), 50 masked values (some occurring), default token prefixes, no output limit.

use std::time::Instant;

use gsr_trace::{Trace, TraceConfig};

#[path = "../benches/support/workload.rs"]
mod workload;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let write_bytes: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(workload::CHUNK)
        .max(1);

    let mut w = workload::workload(mib * 1024 * 1024);
    if write_bytes != workload::CHUNK {
        w.chunks = w
            .chunks
            .concat()
            .chunks(write_bytes)
            .map(<[u8]>::to_vec)
            .collect();
    }
    println!(
        "workload: {:.1} MB in {} writes of <= {} bytes, {} masked values ({} occurrences)",
        w.total as f64 / 1e6,
        w.chunks.len(),
        write_bytes,
        w.values.len(),
        w.occurrences
    );

    for (name, values) in [("50_values", w.values.clone()), ("no_values", Vec::new())] {
        let mut best = f64::INFINITY;
        let mut stored = 0;
        for _ in 0..rounds {
            let mut cfg = TraceConfig::new(values.clone());
            cfg.output_limit = u64::MAX;
            let trace = Trace::new(cfg).expect("trace");
            let start = Instant::now();
            for c in &w.chunks {
                trace.write(c);
            }
            trace.flush();
            best = best.min(start.elapsed().as_secs_f64());
            stored = trace.len();
        }
        println!(
            "{name:>10}: {:8.1} MB/s (best of {rounds}; {:.1} MB stored)",
            w.total as f64 / best / 1e6,
            stored as f64 / 1e6
        );
    }
}
