//! Start overhead and throughput of the docker backend, for BENCHMARKS.md.
//!
//! `cargo run --release -p gsr-backend-docker --example start_overhead [IMAGE] [N]`
//!
//! Needs a daemon and IMAGE (default `gsr-test/debian:bookworm`, see
//! `scripts/test-images.sh`). The job's "gsr" is a stand-in that exits as soon as it has
//! read the payload, so the numbers are the backend's own cost: images checked, network,
//! volume, container created, stdin attached, started, payload sent (`start`), the
//! container's exit observed (`wait`), everything removed (`cleanup`). Then N (default 50)
//! such jobs at once.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gsr_backend::{Backend, BackendError, CancellationToken, JobExit, Launch};
use gsr_backend_docker::{DockerBackend, DockerSettings, PullPolicy};
use secrecy::SecretSlice;

fn launch(job_id: u64, image: &str) -> Launch {
    let payload = serde_json::json!({
        "id": job_id, "token": "glcbt-bench",
        "image": {"name": image},
        "steps": [{"name": "script", "script": ["true"]}],
    });
    Launch {
        job_id,
        payload: SecretSlice::from(serde_json::to_vec(&payload).expect("json")),
        gitlab_url: "http://gitlab.invalid".into(),
        timeout: Duration::from_secs(600),
        labels: BTreeMap::from([("gsr.claimer".to_string(), "bench".to_string())]),
        abort: CancellationToken::new(),
    }
}

async fn one(
    b: &DockerBackend,
    job_id: u64,
    image: &str,
) -> Result<(Duration, Duration, Duration), BackendError> {
    let t0 = Instant::now();
    let running = b.start(launch(job_id, image)).await?;
    let started = t0.elapsed();
    assert_eq!(running.wait().await.expect("wait"), JobExit::Exec(0));
    let ended = t0.elapsed();
    let t1 = Instant::now();
    running.cleanup().await.expect("cleanup");
    Ok((started, ended, t1.elapsed()))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let image = args
        .next()
        .unwrap_or_else(|| "gsr-test/debian:bookworm".into());
    // 50 by default: the benchmark's "50 concurrent trivial jobs".
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("gsr");
    std::fs::write(&fake, "#!/bin/sh\ncat >/dev/null\nexit 0\n").expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let backend = Arc::new(
        DockerBackend::connect(DockerSettings {
            gsr_binary: Some(fake),
            default_image: image.clone(),
            pull_policy: PullPolicy::Never,
            ..DockerSettings::default()
        })
        .await
        .expect("docker"),
    );
    backend.validate().await.expect("validate");
    // What an earlier, interrupted run left.
    println!("reap: {:?}", backend.reap().await.expect("reap"));

    // Warm-up, then 10 sequential jobs.
    one(&backend, 1, &image).await.expect("warm-up job");
    let (mut s, mut e, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..10 {
        let (a, b, d) = one(&backend, 100 + i, &image).await.expect("job");
        s.push(a);
        e.push(b);
        c.push(d);
    }
    println!("sequential, median of 10 ({image}):");
    println!(
        "  start (placed, gsr exec running with its payload): {}",
        ms(median(s))
    );
    println!(
        "  start -> exit observed (trivial job):             {}",
        ms(median(e))
    );
    println!(
        "  cleanup (containers, network, volume removed):     {}",
        ms(median(c))
    );

    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let b = backend.clone();
        let image = image.clone();
        set.spawn(async move { one(&b, 1000 + i, &image).await });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.expect("job task") {
            failed += 1;
            if failed == 1 {
                eprintln!("first failure: {e}");
            }
        }
    }
    let wall = t0.elapsed();
    println!(
        "{n} trivial jobs at once: {} wall, {:.1} jobs/s (start + wait + cleanup each), {failed} failed to start",
        ms(wall),
        (n - failed) as f64 / wall.as_secs_f64()
    );
}
