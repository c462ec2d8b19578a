//! The shared store suite (`gsr_store::testsuite`) against every backend: SQLite always,
//! PostgreSQL when `GSR_TEST_DATABASE_URL` is set (and a failure, not a skip, when it is not,
//! unless `GSR_TEST_SKIP_POSTGRES=1`).

use std::str::FromStr;
use std::sync::Arc;

use gsr_store::testsuite::{run_all, Opener};
use gsr_store::{PgStore, SecretBox, SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let open: Opener = Arc::new(move |key: SecretBox| {
        let path = path.clone();
        Box::pin(
            async move { Ok(Arc::new(SqliteStore::open(&path, key).await?) as Arc<dyn Store>) },
        )
    });
    run_all(open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("via-url.db").display()
    );
    let open: Opener = Arc::new(move |key: SecretBox| {
        let url = url.clone();
        Box::pin(
            async move { Ok(Arc::new(SqliteStore::connect(&url, key).await?) as Arc<dyn Store>) },
        )
    });
    run_all(open).await;
}

#[tokio::test]
async fn sqlite_in_memory_smoke() {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::in_memory(SecretBox::generate()).await.unwrap());
    let u = store
        .upsert_user_from_gitlab(gsr_store::GitlabIdentity {
            gitlab_user_id: 1,
            username: "u".into(),
            name: "U".into(),
        })
        .await
        .unwrap();
    let r = store
        .create_runner(
            u.id,
            gsr_store::testsuite::new_runner("https://gitlab.test", "glrt-m"),
            1,
        )
        .await
        .unwrap();
    assert_eq!(store.list_runners(u.id).await.unwrap(), vec![r.runner]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    let Ok(url) = std::env::var("GSR_TEST_DATABASE_URL") else {
        if std::env::var("GSR_TEST_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("postgres store tests SKIPPED (GSR_TEST_SKIP_POSTGRES=1)");
            return;
        }
        panic!(
            "GSR_TEST_DATABASE_URL is not set, so the PostgreSQL store suite cannot run.\n\
             Point it at a server where the user may CREATE DATABASE, e.g.\n  \
             GSR_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres\n\
             (`.ci/run` starts one; see ../shared/ENVIRONMENT.md §4 to start your own),\n\
             or set GSR_TEST_SKIP_POSTGRES=1 to skip it explicitly."
        );
    };
    // A fresh database per run: the name is ours (hex), never input.
    let admin = sqlx::postgres::PgConnectOptions::from_str(&url).expect("GSR_TEST_DATABASE_URL");
    let name = format!("gsr_store_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::ConnectOptions::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("CREATE DATABASE");
    let opts = admin.clone().database(&name);
    let open: Opener = Arc::new(move |key: SecretBox| {
        let opts = opts.clone();
        Box::pin(
            async move { Ok(Arc::new(PgStore::connect_with(opts, key).await?) as Arc<dyn Store>) },
        )
    });
    let outcome =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run_all(open))).await;
    // Drop the database whether the suite passed or not, then report the suite's result.
    let dropped = sqlx::Executor::execute(
        &mut conn,
        format!("DROP DATABASE {name} WITH (FORCE)").as_str(),
    )
    .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("DROP DATABASE");
}
