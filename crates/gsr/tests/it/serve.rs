//! `gsr serve` end to end: the real binary (SQLite in a temp dir) with the simulator as
//! GitLab.

use crate::harness::{Env, Serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_health_unknown_hook_and_graceful_stop() {
    let env = Env::new().await;
    let server = Serve::new(&env, "client-id", "client-secret").start().await;
    let http = reqwest::Client::new();

    let r = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200, "{}", server.stderr());
    assert_eq!(r.text().await.unwrap(), "ok");

    let r = http
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200, "{}", server.stderr());

    // An unknown runner, and an id that is not one at all.
    for id in [gsr_store::RunnerId::new().to_string(), "nope".to_string()] {
        let r = http
            .post(format!("{}/hooks/{id}", server.base))
            .header("X-Gitlab-Event", "Job Hook")
            .header("X-Gitlab-Token", "whatever")
            .body("{}")
            .send()
            .await
            .expect("hook");
        assert_eq!(r.status(), 404, "{id}: {}", server.stderr());
    }

    // GET on a hook path is not routed as a hook.
    let r = http
        .get(format!(
            "{}/hooks/{}",
            server.base,
            gsr_store::RunnerId::new()
        ))
        .send()
        .await
        .expect("get hook");
    assert_eq!(r.status(), 405);

    // The key files were created in the data dir, private.
    let data = env.dir.path().join("gsr-data");
    assert!(data.join("gsr.db").exists());
    assert!(data.join("secret.key").exists());
    assert!(data.join("cookie").join("secret.key").exists());

    let log = server.log.clone();
    let status = server.stop().await;
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
