//! The one conformance suite every [`Store`] implementation runs (feature `testkit`).
//!
//! [`run_all`] takes an *opener*: a function that opens the same database with a given
//! [`SecretBox`]. Opening twice with different keys is how the wrong-key rule is tested.
//! Every case uses fresh random GitLab ids and URLs, so cases do not interfere.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret as _, SecretString};

use crate::{
    AccessLevel, GitlabIdentity, JobStatus, NewClaim, NewRunner, OAuthTokens, Recovery,
    RunnerPatch, SecretBox, Store, StoreError, User,
};

/// Opens the database under test with the given key.
pub type Opener =
    Arc<dyn Fn(SecretBox) -> BoxFuture<'static, crate::Result<Arc<dyn Store>>> + Send + Sync>;

/// Run every case against the database `open` opens. Panics on the first failure.
pub async fn run_all(open: Opener) {
    let key = SecretBox::generate();
    let store = open(key.clone()).await.expect("open store");
    // A second, independent connection pool on the same database: another "replica".
    let replica_b = open(key.clone()).await.expect("open second store");
    users_and_oauth(&*store).await;
    runner_crud(&*store).await;
    cross_user_is_not_found(&*store).await;
    quota_under_parallel_creates(store.clone(), replica_b.clone()).await;
    claim_race_has_one_winner(store.clone(), replica_b.clone()).await;
    job_lifecycle_and_recovery(&*store).await;
    job_token_kept_until_final(&*store).await;
    encryption_at_rest(&*store).await;
    wrong_key_is_refused(&open, &key).await;
}

fn rand_i64() -> i64 {
    i64::from(rand::random::<u32>() >> 1) + 1
}

fn unique_url() -> String {
    format!(
        "https://gitlab-{}.example.test",
        uuid::Uuid::new_v4().simple()
    )
}

async fn user(store: &dyn Store, name: &str) -> User {
    store
        .upsert_user_from_gitlab(GitlabIdentity {
            gitlab_user_id: rand_i64(),
            username: name.into(),
            name: format!("{name} Example"),
        })
        .await
        .expect("upsert user")
}

/// A runner input with a recognisable token.
pub fn new_runner(gitlab_url: &str, token: &str) -> NewRunner {
    NewRunner {
        gitlab_url: gitlab_url.into(),
        gitlab_runner_id: rand_i64(),
        token: SecretString::from(token.to_owned()),
        description: "test runner".into(),
        tags: vec!["docker".into(), "linux".into()],
        run_untagged: false,
        locked: true,
        access_level: AccessLevel::NotProtected,
        maximum_timeout: Some(3600),
        paused: false,
        backend: "local".into(),
        backend_settings: serde_json::json!({"image": "debian"}),
        concurrency: 2,
    }
}

async fn users_and_oauth(store: &dyn Store) {
    let gid = rand_i64();
    let a = store
        .upsert_user_from_gitlab(GitlabIdentity {
            gitlab_user_id: gid,
            username: "alice".into(),
            name: "Alice".into(),
        })
        .await
        .unwrap();
    let again = store
        .upsert_user_from_gitlab(GitlabIdentity {
            gitlab_user_id: gid,
            username: "alice2".into(),
            name: "Alice B".into(),
        })
        .await
        .unwrap();
    assert_eq!(a.id, again.id, "upsert keeps the id");
    assert_eq!(again.username, "alice2");
    assert_eq!(store.get_user(a.id).await.unwrap(), again);
    assert!(matches!(
        store.get_user(crate::UserId::new()).await,
        Err(StoreError::NotFound)
    ));

    assert!(store.oauth_tokens(a.id).await.unwrap().is_none());
    let expires = chrono::DateTime::from_timestamp_millis(1_900_000_000_000).unwrap();
    store
        .set_oauth_tokens(
            a.id,
            &OAuthTokens {
                access_token: SecretString::from("oauth-access-XYZ".to_owned()),
                refresh_token: Some(SecretString::from("oauth-refresh-XYZ".to_owned())),
                expires_at: Some(expires),
            },
        )
        .await
        .unwrap();
    let t = store.oauth_tokens(a.id).await.unwrap().unwrap();
    assert_eq!(t.access_token.expose_secret(), "oauth-access-XYZ");
    assert_eq!(
        t.refresh_token.as_ref().unwrap().expose_secret(),
        "oauth-refresh-XYZ"
    );
    assert_eq!(t.expires_at, Some(expires));
    assert!(
        !format!("{t:?}").contains("oauth-access-XYZ"),
        "Debug redacts"
    );
    for raw in store.raw_oauth_columns(a.id).await.unwrap() {
        assert!(!contains(&raw, b"oauth-access-XYZ") && !contains(&raw, b"oauth-refresh-XYZ"));
    }
}

async fn runner_crud(store: &dyn Store) {
    let u = user(store, "crud").await;
    let url = unique_url();
    let created = store
        .create_runner(u.id, new_runner(&url, "glrt-crud-token"), 10)
        .await
        .unwrap();
    let r = created.runner.clone();
    assert!(!format!("{created:?}").contains(created.webhook_secret.expose_secret()));
    assert_eq!(store.get_runner(u.id, r.id).await.unwrap(), r);
    assert_eq!(store.list_runners(u.id).await.unwrap(), vec![r.clone()]);
    assert_eq!(
        store.runner_token(r.id).await.unwrap().expose_secret(),
        "glrt-crud-token"
    );
    assert!(store
        .verify_webhook_secret(r.id, created.webhook_secret.expose_secret())
        .await
        .unwrap());
    assert!(!store.verify_webhook_secret(r.id, "nope").await.unwrap());
    assert!(!store
        .verify_webhook_secret(crate::RunnerId::new(), "nope")
        .await
        .unwrap());

    // The same GitLab runner cannot be registered twice.
    let mut dup = new_runner(&url, "glrt-other");
    dup.gitlab_runner_id = r.gitlab_runner_id;
    assert!(matches!(
        store.create_runner(u.id, dup, 10).await,
        Err(StoreError::Conflict(_))
    ));
    // Validation.
    let mut bad = new_runner(&url, "glrt-x");
    bad.concurrency = 0;
    assert!(matches!(
        store.create_runner(u.id, bad, 10).await,
        Err(StoreError::Invalid(_))
    ));

    let updated = store
        .update_runner(
            u.id,
            r.id,
            RunnerPatch {
                tags: Some(vec!["gpu".into()]),
                description: Some("renamed <b>".into()),
                maximum_timeout: Some(None),
                access_level: Some(AccessLevel::RefProtected),
                backend_settings: Some(serde_json::json!({"memory": 512})),
                concurrency: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.tags, vec!["gpu".to_string()]);
    assert_eq!(updated.maximum_timeout, None);
    assert_eq!(store.get_runner(u.id, r.id).await.unwrap(), updated);
    assert!(matches!(
        store
            .update_runner(
                u.id,
                r.id,
                RunnerPatch {
                    concurrency: Some(0),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::Invalid(_))
    ));

    let rotated = store.rotate_webhook_secret(u.id, r.id).await.unwrap();
    assert!(!store
        .verify_webhook_secret(r.id, created.webhook_secret.expose_secret())
        .await
        .unwrap());
    assert!(store
        .verify_webhook_secret(r.id, rotated.expose_secret())
        .await
        .unwrap());

    assert!(store
        .active_runners()
        .await
        .unwrap()
        .iter()
        .any(|a| a.id == r.id));
    let paused = store.set_paused(u.id, r.id, true).await.unwrap();
    assert!(paused.paused);
    assert!(!store
        .active_runners()
        .await
        .unwrap()
        .iter()
        .any(|a| a.id == r.id));
    store.set_paused(u.id, r.id, false).await.unwrap();

    let job = store
        .record_claim(NewClaim {
            runner_id: r.id,
            gitlab_job_id: 1,
            replica: "a".into(),
            queued_duration: None,
        })
        .await
        .unwrap();
    store.delete_runner(u.id, r.id).await.unwrap();
    assert!(matches!(
        store.get_runner(u.id, r.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_runner(u.id, r.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        matches!(
            store
                .update_job_status(job.id, JobStatus::Running, None)
                .await,
            Err(StoreError::NotFound)
        ),
        "jobs go with their runner"
    );
}

async fn cross_user_is_not_found(store: &dyn Store) {
    let alice = user(store, "alice").await;
    let mallory = user(store, "mallory").await;
    let r = store
        .create_runner(alice.id, new_runner(&unique_url(), "glrt-alice"), 5)
        .await
        .unwrap()
        .runner;
    let missing = crate::RunnerId::new();
    for id in [r.id, missing] {
        assert!(matches!(
            store.get_runner(mallory.id, id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .update_runner(mallory.id, id, RunnerPatch::default())
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.set_paused(mallory.id, id, true).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.rotate_webhook_secret(mallory.id, id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.jobs_for_runner(mallory.id, id, 10).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete_runner(mallory.id, id).await,
            Err(StoreError::NotFound)
        ));
    }
    assert!(store.list_runners(mallory.id).await.unwrap().is_empty());
    // Untouched by the attempts.
    assert_eq!(store.get_runner(alice.id, r.id).await.unwrap(), r);
}

async fn quota_under_parallel_creates(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let u = user(&*store, "quota").await;
    let url = unique_url();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            // Half of the creates go through the other replica's pool.
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            let url = url.clone();
            tokio::spawn(async move {
                store
                    .create_runner(u.id, new_runner(&url, &format!("glrt-q{i}")), 5)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut exceeded = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::QuotaExceeded { max: 5 }) => exceeded += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((ok, exceeded), (5, 15));
    assert_eq!(store.list_runners(u.id).await.unwrap().len(), 5);
    // Deleting one frees one slot.
    let first = store.list_runners(u.id).await.unwrap()[0].id;
    store.delete_runner(u.id, first).await.unwrap();
    store
        .create_runner(u.id, new_runner(&url, "glrt-again"), 5)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_runner(u.id, new_runner(&url, "glrt-over"), 5)
            .await,
        Err(StoreError::QuotaExceeded { .. })
    ));
}

async fn claim_race_has_one_winner(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let u = user(&*store, "claims").await;
    let url = unique_url();
    // Two runners on the same GitLab: a job can go to either, but be recorded once.
    let r1 = store
        .create_runner(u.id, new_runner(&url, "glrt-c1"), 5)
        .await
        .unwrap()
        .runner;
    let r2 = store
        .create_runner(u.id, new_runner(&url, "glrt-c2"), 5)
        .await
        .unwrap()
        .runner;
    for gitlab_job_id in 1..=10 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (store, runner_id, replica) = if i % 2 == 0 {
                    (store.clone(), r1.id, "replica-a")
                } else {
                    (other.clone(), r2.id, "replica-b")
                };
                tokio::spawn(async move {
                    store
                        .record_claim(NewClaim {
                            runner_id,
                            gitlab_job_id,
                            replica: replica.into(),
                            queued_duration: Some(Duration::from_millis(1500)),
                        })
                        .await
                })
            })
            .collect();
        let mut winners = HashSet::new();
        let mut already = 0;
        for t in tasks {
            match t.await.unwrap() {
                // Same replica repeating its own claim gets the same record (idempotent).
                Ok(job) => {
                    winners.insert((job.id, job.replica));
                }
                Err(StoreError::AlreadyClaimed { .. }) => already += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one replica records job {gitlab_job_id}"
        );
        assert_eq!(already, 4, "the other replica's four attempts are refused");
    }
    // Same job id on another GitLab is a different job.
    let other = store
        .create_runner(u.id, new_runner(&unique_url(), "glrt-c3"), 5)
        .await
        .unwrap()
        .runner;
    store
        .record_claim(NewClaim {
            runner_id: other.id,
            gitlab_job_id: 1,
            replica: "replica-a".into(),
            queued_duration: None,
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .record_claim(NewClaim {
                runner_id: crate::RunnerId::new(),
                gitlab_job_id: 1,
                replica: "replica-a".into(),
                queued_duration: None,
            })
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn job_lifecycle_and_recovery(store: &dyn Store) {
    let u = user(store, "jobs").await;
    let r = store
        .create_runner(u.id, new_runner(&unique_url(), "glrt-jobs"), 5)
        .await
        .unwrap()
        .runner;
    let replica = format!("replica-{}", uuid::Uuid::new_v4().simple());
    let mut jobs = Vec::new();
    for gitlab_job_id in 100..104 {
        jobs.push(
            store
                .record_claim(NewClaim {
                    runner_id: r.id,
                    gitlab_job_id,
                    replica: replica.clone(),
                    queued_duration: Some(Duration::from_millis(250)),
                })
                .await
                .unwrap(),
        );
    }
    assert_eq!(jobs[0].status, JobStatus::Claimed);
    assert_eq!(store.count_unfinished_jobs(r.id).await.unwrap(), 4);
    assert_eq!(store.runner_by_id(r.id).await.unwrap(), r);
    assert!(matches!(
        store.runner_by_id(crate::RunnerId::new()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(jobs[0].queued_duration, Some(Duration::from_millis(250)));

    let running = store
        .update_job_status(jobs[0].id, JobStatus::Running, None)
        .await
        .unwrap();
    assert!(running.started_at.is_some() && running.finished_at.is_none());
    let done = store
        .update_job_status(jobs[0].id, JobStatus::Success, None)
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Success);
    assert!(done.finished_at.is_some());
    assert_eq!(done.started_at, running.started_at);
    assert!(matches!(
        store
            .update_job_status(jobs[0].id, JobStatus::Running, None)
            .await,
        Err(StoreError::InvalidTransition {
            from: JobStatus::Success,
            to: JobStatus::Running
        })
    ));
    let failed = store
        .update_job_status(jobs[1].id, JobStatus::Failed, Some("script_failure".into()))
        .await
        .unwrap();
    assert_eq!(failed.failure_reason.as_deref(), Some("script_failure"));
    store
        .update_job_status(jobs[2].id, JobStatus::Running, None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .update_job_status(jobs[2].id, JobStatus::Claimed, None)
            .await,
        Err(StoreError::InvalidTransition { .. })
    ));

    // After a "restart": this replica's unfinished jobs, oldest first.
    let recovered = store.recover_jobs(&replica).await.unwrap();
    // Claim times have millisecond resolution, so compare as a set.
    let ids: HashSet<_> = recovered.iter().map(|j| j.id).collect();
    assert_eq!(ids, HashSet::from([jobs[2].id, jobs[3].id]));
    assert!(recovered
        .windows(2)
        .all(|w| w[0].claimed_at <= w[1].claimed_at));
    let running = recovered.iter().find(|j| j.id == jobs[2].id).unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert!(store
        .recover_jobs("some-other-replica-x")
        .await
        .unwrap()
        .iter()
        .all(|j| j.replica != replica));
    store
        .update_job_status(
            jobs[3].id,
            JobStatus::Lost,
            Some("replica restarted".into()),
        )
        .await
        .unwrap();
    assert_eq!(store.recover_jobs(&replica).await.unwrap().len(), 1);
    assert_eq!(store.count_unfinished_jobs(r.id).await.unwrap(), 1);

    let history = store.jobs_for_runner(u.id, r.id, 3).await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(history
        .windows(2)
        .all(|w| w[0].claimed_at >= w[1].claimed_at));
}

async fn job_token_kept_until_final(store: &dyn Store) {
    let u = user(store, "jobtokens").await;
    let r = store
        .create_runner(u.id, new_runner(&unique_url(), "glrt-jt"), 5)
        .await
        .unwrap()
        .runner;
    let claim = |gitlab_job_id: i64| NewClaim {
        runner_id: r.id,
        gitlab_job_id,
        replica: "replica-jt".into(),
        queued_duration: None,
    };
    let token = |t: &str| Some(SecretString::from(t.to_owned()));
    let plain = "glcbt-JOBTOKEN-MARKER-0001";

    let job = store
        .record_claim_with_token(claim(1), token(plain))
        .await
        .unwrap();
    assert_eq!(job.recovery, None);
    assert_eq!(
        store
            .job_token(job.id)
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        plain
    );
    let raw = store.raw_job_token_column(job.id).await.unwrap().unwrap();
    assert!(!raw.is_empty());
    assert!(
        !contains(&raw, plain.as_bytes()),
        "job token stored in clear"
    );
    assert!(!contains(&raw, b"JOBTOKEN-MARKER"));
    // A repeated claim of the same job keeps the first token.
    let again = store
        .record_claim_with_token(claim(1), token("glcbt-other"))
        .await
        .unwrap();
    assert_eq!(again.id, job.id);
    assert_eq!(
        store
            .job_token(job.id)
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        plain
    );
    // Running keeps it; a final status drops it, in the same write.
    store
        .update_job_status(job.id, JobStatus::Running, None)
        .await
        .unwrap();
    assert!(store.job_token(job.id).await.unwrap().is_some());
    store
        .update_job_status(job.id, JobStatus::Success, None)
        .await
        .unwrap();
    assert!(store.job_token(job.id).await.unwrap().is_none());
    assert_eq!(store.raw_job_token_column(job.id).await.unwrap(), None);

    for (gitlab_job_id, status) in [(2, JobStatus::Failed), (3, JobStatus::Canceled)] {
        let j = store
            .record_claim_with_token(claim(gitlab_job_id), token("glcbt-x"))
            .await
            .unwrap();
        assert!(store.raw_job_token_column(j.id).await.unwrap().is_some());
        store.update_job_status(j.id, status, None).await.unwrap();
        assert_eq!(
            store.raw_job_token_column(j.id).await.unwrap(),
            None,
            "{status}"
        );
    }

    // Without a token (plain record_claim): nothing kept.
    let bare = store.record_claim(claim(4)).await.unwrap();
    assert!(store.job_token(bare.id).await.unwrap().is_none());
    assert!(matches!(
        store.job_token(crate::JobId::new()).await,
        Err(StoreError::NotFound)
    ));

    // Recovery's verdict: lost, with what GitLab was told, and the token gone.
    let dead = store
        .record_claim_with_token(claim(5), token("glcbt-dead"))
        .await
        .unwrap();
    let lost = store
        .mark_lost(dead.id, "replica_restarted", Recovery::Reported)
        .await
        .unwrap();
    assert_eq!(lost.status, JobStatus::Lost);
    assert_eq!(lost.failure_reason.as_deref(), Some("replica_restarted"));
    assert_eq!(lost.recovery, Some(Recovery::Reported));
    assert!(lost.finished_at.is_some());
    assert_eq!(store.raw_job_token_column(dead.id).await.unwrap(), None);
    // Idempotent on a lost job; refused on another finished state.
    let repeat = store
        .mark_lost(dead.id, "replica_restarted", Recovery::Unreachable)
        .await
        .unwrap();
    assert_eq!(repeat, lost);
    assert!(matches!(
        store
            .mark_lost(job.id, "replica_restarted", Recovery::NoToken)
            .await,
        Err(StoreError::InvalidTransition {
            from: JobStatus::Success,
            to: JobStatus::Lost
        })
    ));
    let history = store.jobs_for_runner(u.id, r.id, 10).await.unwrap();
    let shown = history.iter().find(|j| j.id == dead.id).unwrap();
    assert_eq!(shown.recovery, Some(Recovery::Reported));
    for r in [
        Recovery::Reported,
        Recovery::AlreadyOver,
        Recovery::Unreachable,
        Recovery::NoToken,
    ] {
        assert_eq!(Recovery::parse(r.as_str()), Some(r));
    }
}

async fn encryption_at_rest(store: &dyn Store) {
    let u = user(store, "crypto").await;
    let token = "glrt-PLAINTEXT-MARKER-0123456789";
    let created = store
        .create_runner(u.id, new_runner(&unique_url(), token), 5)
        .await
        .unwrap();
    let raw = store
        .raw_runner_secret_columns(created.runner.id)
        .await
        .unwrap();
    assert_eq!(raw.len(), 2);
    for col in &raw {
        assert!(!col.is_empty());
        assert!(!contains(col, token.as_bytes()), "token stored in clear");
        assert!(!contains(col, b"PLAINTEXT-MARKER"));
        assert!(!contains(
            col,
            created.webhook_secret.expose_secret().as_bytes()
        ));
    }
    assert_eq!(
        store
            .runner_token(created.runner.id)
            .await
            .unwrap()
            .expose_secret(),
        token
    );
}

async fn wrong_key_is_refused(open: &Opener, key: &SecretBox) {
    match open(SecretBox::generate()).await {
        Err(e @ StoreError::WrongKey) => {
            assert!(e.to_string().contains("GSR_SECRET_KEY"), "{e}");
        }
        Err(e) => panic!("expected WrongKey, got {e}"),
        Ok(_) => panic!("a store opened with the wrong key"),
    }
    // The right key still works.
    open(key.clone()).await.expect("reopen with the right key");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
