//! Several `gsr serve` replicas on one PostgreSQL must not double-run a job.
//!
//! Two real `gsr serve` processes share one fresh PostgreSQL database and the secret key,
//! under different replica names. Both get every Job Hook of the project (one simulator
//! hook per replica, each on that replica's `/hooks/{runner_id}`) and both long-poll, so
//! every job is raced for by both. Each job appends its `CI_JOB_ID` to one shared file: a
//! job that ran twice shows up twice there, a job nobody ran not at all.
//!
//! Why PostgreSQL and not SQLite: PostgreSQL is the store replicas share in production
//! (`DATABASE_URL`); the dispatcher's own tests already cover two dispatchers on one SQLite
//! file inside one process. The server comes from `GSR_TEST_DATABASE_URL`, which
//! `cargo xtask test` provides (it wraps the run in `crates/gsr-store/scripts/with-postgres.sh`);
//! as in the store's suite, an unset URL is a failure unless `GSR_TEST_SKIP_POSTGRES=1`
//! skips it explicitly. Each run creates its own database and drops it afterwards.
//!
//! Both replicas share one builds dir, as two replicas on one host would: the dispatcher
//! keeps each replica's checkouts under its own name there (the concurrency slot numbers
//! are per replica, so a shared `<runner>/<slot>` directory would be checked out by two
//! jobs at once). Each has its own data dir.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gsr_sim::VariableInput;
use gsr_store::{JobStatus, PgStore, SecretBox, Store};
use secrecy::ExposeSecret as _;

use crate::harness::{seed, Env, Serve, Server};

/// The secret key both replicas (and the test) seal tokens with.
const KEY: [u8; 32] = [0x5a; 32];
const JOBS: usize = 50;
const CONCURRENCY: u32 = 4;

/// A fresh database on the `GSR_TEST_DATABASE_URL` server, dropped by [`TestDb::drop_db`].
struct TestDb {
    admin: sqlx::PgConnection,
    name: String,
    /// `GSR_TEST_DATABASE_URL` with the database name replaced.
    url: String,
}

impl TestDb {
    /// `None` when PostgreSQL tests are explicitly skipped; a panic when they cannot run.
    async fn create() -> Option<TestDb> {
        let Ok(server) = std::env::var("GSR_TEST_DATABASE_URL") else {
            if std::env::var("GSR_TEST_SKIP_POSTGRES").as_deref() == Ok("1") {
                eprintln!("replicas on PostgreSQL SKIPPED (GSR_TEST_SKIP_POSTGRES=1)");
                return None;
            }
            panic!(
                "GSR_TEST_DATABASE_URL is not set, so the replicas-on-PostgreSQL test cannot \
                 run.\nRun the suite with `cargo xtask test` (it starts a throw-away server), \
                 or wrap the command in crates/gsr-store/scripts/with-postgres.sh, or set \
                 GSR_TEST_SKIP_POSTGRES=1 to skip it explicitly."
            );
        };
        let opts = sqlx::postgres::PgConnectOptions::from_str(&server)
            .expect("GSR_TEST_DATABASE_URL is a PostgreSQL URL");
        let mut admin = sqlx::ConnectOptions::connect(&opts)
            .await
            .expect("connect to GSR_TEST_DATABASE_URL");
        // The name is ours (hex), never input.
        let name = format!("gsr_replicas_{}", uuid::Uuid::new_v4().simple());
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        Some(TestDb {
            admin,
            url: with_database(&server, &name),
            name,
        })
    }

    async fn drop_db(mut self) {
        sqlx::Executor::execute(
            &mut self.admin,
            format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str(),
        )
        .await
        .expect("DROP DATABASE");
    }
}

/// `postgres://user@host:port/db?query` with `db` replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Start replica `name` with its own data dir under `root` and the shared builds dir.
async fn replica(env: &Env, root: &tempfile::TempDir, name: &str, db: &str) -> Server {
    Serve::new(env, "client-id", "client-secret")
        .env("GSR_DATA_DIR", root.path().join("gsr-data"))
        .env("DATABASE_URL", db)
        .env(
            "GSR_SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode(KEY),
        )
        .env("GSR_REPLICA", name)
        .log(env.dir.path().join(format!("serve-{name}.log")))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_run_each_of_50_jobs_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Drop the database whether the scenario passed or not, then report its result.
    let outcome = tokio::spawn(fifty_jobs_on_two_replicas(db.url.clone())).await;
    db.drop_db().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn fifty_jobs_on_two_replicas(db_url: String) {
    let env = Env::new().await;
    let store = PgStore::connect(&db_url, SecretBox::from_key(KEY))
        .await
        .expect("store (runs the migrations)");
    let seeded = seed(&store, &env, CONCURRENCY).await;

    let root_a = tempfile::tempdir().expect("tempdir");
    let root_b = tempfile::tempdir().expect("tempdir");
    let a = replica(&env, &root_a, "replica-a", &db_url).await;
    let b = replica(&env, &root_b, "replica-b", &db_url).await;
    for server in [&a, &b] {
        env.admin
            .add_hook(
                env.project_id,
                &format!("{}/hooks/{}", server.base, seeded.runner),
                Some(&seeded.webhook_secret),
            )
            .await
            .expect("hook");
    }

    let ran = env.dir.path().join("ran.txt");
    let mut ids = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let spec = env
            .job(&["echo \"$CI_JOB_ID\" >> \"$RAN_FILE\"", "sleep 0.2"])
            .with_variable(VariableInput::new(
                "RAN_FILE",
                ran.to_string_lossy().into_owned(),
            ));
        ids.push(env.enqueue(spec).await);
    }

    // Hang guard only: wait until GitLab has every job in a final state.
    let deadline = Instant::now() + Duration::from_secs(600);
    let final_views = loop {
        let views: HashMap<u64, gsr_sim::JobView> = env
            .admin
            .jobs()
            .await
            .expect("jobs")
            .into_iter()
            .map(|v| (v.id, v))
            .collect();
        let open = ids
            .iter()
            .filter(|id| {
                !views
                    .get(id)
                    .is_some_and(|v| ["success", "failed", "canceled"].contains(&v.status.as_str()))
            })
            .count();
        if open == 0 {
            break views;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of {JOBS} jobs unfinished after 10 minutes\n--- replica-a ---\n{}\n--- replica-b ---\n{}",
            a.stderr(),
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    for id in &ids {
        let v = &final_views[id];
        if v.status.as_str() != "success" {
            panic!(
                "job {id}: {} ({:?})\n--- trace ---\n{}\n--- replica-a ---\n{}\n--- replica-b ---\n{}",
                v.status.as_str(),
                v.failure_reason,
                env.trace(*id).await,
                a.stderr(),
                b.stderr()
            );
        }
    }

    // Every job's script ran exactly once.
    let text = std::fs::read_to_string(&ran).expect("the jobs wrote the shared file");
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    for line in text.lines() {
        *runs
            .entry(line.trim().parse().expect("a job id"))
            .or_default() += 1;
    }
    let expected: BTreeMap<u64, usize> = ids.iter().map(|id| (*id, 1)).collect();
    assert_eq!(runs, expected, "script runs per job id");

    // The store has one row per GitLab job, finished as success, claimed by a replica.
    let history = store
        .jobs_for_runner(seeded.owner, seeded.runner, 1000)
        .await
        .expect("history");
    assert_eq!(
        history.len(),
        JOBS,
        "one job row per GitLab job: {history:#?}"
    );
    let recorded: BTreeSet<i64> = history.iter().map(|j| j.gitlab_job_id).collect();
    let wanted: BTreeSet<i64> = ids.iter().map(|id| i64::try_from(*id).unwrap()).collect();
    assert_eq!(recorded, wanted);
    assert!(
        history.iter().all(|j| j.status == JobStatus::Success),
        "{history:#?}"
    );
    let mut per_replica: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &history {
        *per_replica.entry(j.replica.as_str()).or_default() += 1;
    }
    eprintln!("jobs per replica: {per_replica:?}");
    assert_eq!(
        per_replica.keys().copied().collect::<Vec<_>>(),
        ["replica-a", "replica-b"],
        "both replicas ran jobs (each may run {CONCURRENCY} at once): {per_replica:?}"
    );
    // GitLab's view agrees: each replica's jobs went to one runner manager of its own, so
    // the replica the store names is the one that took the job.
    let mut managers: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
    for j in &history {
        let id = u64::try_from(j.gitlab_job_id).unwrap();
        managers
            .entry(j.replica.as_str())
            .or_default()
            .insert(final_views[&id].runner_system_id.as_deref());
    }
    let distinct: BTreeSet<_> = managers.values().flatten().collect();
    assert!(
        managers.values().all(|m| m.len() == 1) && distinct.len() == 2,
        "{managers:?}"
    );

    // Nobody logged the runner token or the webhook secret.
    let token = store.runner_token(seeded.runner).await.expect("token");
    for server in [&a, &b] {
        let log = server.stderr();
        assert!(
            !log.contains(token.expose_secret()),
            "runner token in a log"
        );
        assert!(
            !log.contains(&seeded.webhook_secret),
            "webhook secret in a log"
        );
    }

    for server in [a, b] {
        let log = server.log.clone();
        let status = server.stop().await;
        assert!(
            status.success(),
            "{status:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    store.pool().close().await;
}
