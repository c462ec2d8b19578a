//! `GET /metrics` of `gsr serve`: the Prometheus text format.
//!
//! The libraries (`gsr-dispatch`, `gsr-webhook`) only *emit* through the `metrics` facade
//! and know nothing of Prometheus; the binary chooses the exporter. Why it is built this way:
//!
//! - **One global recorder, installed by `gsr serve` only.** The facade's recorder is
//!   process-wide and can be set once; other commands (`run-single`, `webhook`, …) install
//!   none, so their emission costs a no-op call. Serving the text from our own axum router
//!   (instead of the exporter's HTTP listener) keeps one port, one graceful shutdown, and
//!   needs none of the exporter's HTTP features.
//! - **Latencies are histograms, not summaries.** Buckets are configured for
//!   [`CLAIM_LATENCY`] and [`PICKUP_LATENCY`] so replicas can be aggregated
//!   (`histogram_quantile` over the sum of several replicas' buckets); a summary's
//!   quantiles cannot be added up.
//! - **Upkeep runs in the background** (every few seconds) so histogram samples are folded
//!   in even when nobody scrapes: memory stays flat on an unscraped server.
//! - **No secrets in labels.** Labels are closed sets (`status`, `result`, `version`);
//!   runner ids, tokens and URLs never become labels (also: unbounded cardinality).

use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// The emitters' names (one source of truth: the crates that emit them).
use gsr_dispatch::metric::{
    JOBS_CLAIMED, JOBS_FINISHED, JOBS_RUNNING, PICKUP_LATENCY, RUNNERS_ACTIVE, WEBHOOK_DELIVERIES,
};
use gsr_webhook::metric::{BACKEND_ERRORS, CLAIM_LATENCY};

/// Always 1, labelled with the version (join target for dashboards).
pub const BUILD_INFO: &str = "gsr_build_info";
/// Unix time this process started serving, seconds.
pub const START_TIME: &str = "gsr_start_time_seconds";
/// 1 from the first stop signal on (the replica is draining).
pub const SHUTTING_DOWN: &str = "gsr_shutting_down";

/// Claims should take milliseconds (goal: ≤ 5 ms median), but a claim inside a long poll
/// can take as long as the poll: buckets from 1 ms to a minute.
const CLAIM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Pickup is the job's time in GitLab's queue: from a second (a webhook claim) to the
/// better part of an hour (no capacity anywhere).
const PICKUP_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The exporter's configuration (without installing anything; tests build a local
/// recorder from it).
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CLAIM_LATENCY.into()), CLAIM_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(PICKUP_LATENCY.into()), PICKUP_BUCKETS)
        })
        // Only fails for an empty bucket list; ours are constants.
        .expect("bucket lists are not empty")
}

/// Install the process-wide recorder, describe the metrics and set the binary's own; call
/// once, inside the runtime (it spawns the upkeep task).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = builder()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    describe();
    record_start();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `# HELP` lines (the emitters are the libraries; the descriptions live with the exporter).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(JOBS_CLAIMED, "Jobs claimed from GitLab.");
    describe_counter!(JOBS_FINISHED, "Jobs ended, by final status.");
    describe_gauge!(JOBS_RUNNING, "Jobs running now on this replica.");
    describe_histogram!(
        CLAIM_LATENCY,
        Unit::Seconds,
        "Pending hook arrived (or job request started) to job assigned by GitLab."
    );
    describe_histogram!(
        PICKUP_LATENCY,
        Unit::Seconds,
        "Time a job waited in GitLab's queue before this replica claimed it (when GitLab says)."
    );
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook deliveries, by result.");
    describe_counter!(
        BACKEND_ERRORS,
        "Jobs failed through the system's fault (runner_system_failure), not the user's."
    );
    describe_gauge!(RUNNERS_ACTIVE, "Runners with a receiver on this replica.");
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Unix time this process started serving."
    );
    describe_gauge!(SHUTTING_DOWN, "1 once a stop signal arrived (draining).");
}

/// The binary's own gauges (through whatever recorder is current).
fn record_start() {
    metrics::gauge!(BUILD_INFO, "version" => gsr_gitlab::VERSION).set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(START_TIME).set(now.as_secs_f64());
    metrics::gauge!(SHUTTING_DOWN).set(0.0);
}

/// Mark the replica as draining.
pub fn shutting_down() {
    metrics::gauge!(SHUTTING_DOWN).set(1.0);
}

/// `GET /metrics`.
pub fn routes(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_render_as_histograms_and_build_info_is_set() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            record_start();
            metrics::histogram!(CLAIM_LATENCY).record(0.003);
            metrics::histogram!(PICKUP_LATENCY).record(0.2);
            metrics::counter!(JOBS_FINISHED, "status" => "success").increment(1);
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE gsr_claim_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("gsr_claim_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gsr_claim_latency_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gsr_pickup_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("gsr_pickup_latency_seconds_bucket{le=\"0.25\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gsr_jobs_finished_total{status=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gsr_build_info{{version=\"{}\"}} 1",
                gsr_gitlab::VERSION
            )),
            "{text}"
        );
        assert!(text.contains("gsr_shutting_down 0"), "{text}");
    }
}
