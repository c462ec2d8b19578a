//! The API flows against scripted exchanges: a `tower_test` mock stands in for the API
//! server, each test asserts the requests the backend sends (method, path, query, body
//! fields) and feeds the responses a real API server would give, errors included.
//!
//! The scripts are strict: a request the script does not expect fails the test, and at
//! the end of each test the backend is dropped and no request may remain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gsr_backend::{Backend, BackendError, CancellationToken, JobExit, Launch, ReapReport, Running};
use gsr_backend_k8s::{K8sBackend, K8sSettings, SoleClaimer};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

const PAYLOAD: &[u8] = include_bytes!("fixtures/job.json");
const NS: &str = "ci-jobs";
/// Hang guard only: every exchange is immediate, this just turns a hang into a failure.
const GUARD: Duration = Duration::from_secs(60);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

/// One request as the test sees it.
struct Req {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
    respond: Send,
}

impl Req {
    fn json(self, status: u16, body: Value) {
        self.respond.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    fn text(self, status: u16, body: &str) {
        self.respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(body.as_bytes().to_vec()))
                .unwrap(),
        );
    }

    /// A `metav1.Status` failure, as the API server sends errors.
    fn fail(self, code: u16, reason: &str, message: &str) {
        self.json(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": reason, "code": code}),
        );
    }

    fn expect(&self, method: Method, path: &str) {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "query {:?}",
            self.query
        );
    }
}

async fn next(handle: &mut Handle) -> Req {
    let (req, respond) = tokio::time::timeout(GUARD, handle.next_request())
        .await
        .expect("the backend sent no request")
        .expect("the client is gone");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default();
    Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        body,
        respond,
    }
}

/// After the backend is dropped, the script must have seen every request.
async fn no_more_requests(mut handle: Handle) {
    let more = tokio::time::timeout(GUARD, handle.next_request())
        .await
        .expect("the client was not dropped");
    if let Some((req, _)) = more {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

fn settings() -> K8sSettings {
    K8sSettings {
        namespace: NS.into(),
        gsr_image: "registry.example.com/gsr:1.0".into(),
        ..K8sSettings::default()
    }
}

fn backend(settings: K8sSettings, me: &str) -> (K8sBackend, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let backend = K8sBackend::new(client, settings, Arc::new(SoleClaimer::new(me))).unwrap();
    (backend, handle)
}

fn launch(abort: CancellationToken) -> Launch {
    Launch {
        job_id: 8712,
        payload: PAYLOAD.to_vec().into(),
        gitlab_url: "https://gitlab.example.com".into(),
        timeout: Duration::from_secs(3600),
        labels: [
            ("gsr.claimer".to_string(), "serve-0/1".to_string()),
            ("gsr.job".to_string(), "8712".to_string()),
        ]
        .into(),
        abort,
    }
}

fn pod(name: &str, rv: &str, status: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "uid": "pod-uid-1", "resourceVersion": rv},
           "status": status})
}

fn job_state(phase: &str, state: Value) -> Value {
    json!({"phase": phase, "containerStatuses": [
        {"name": "job", "image": "ruby:3.3", "imageID": "", "ready": true, "restartCount": 0,
         "state": state}]})
}

fn events(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(t, o)| serde_json::to_string(&json!({"type": t, "object": o})).unwrap() + "\n")
        .collect()
}

/// Script `start`: the Secrets (payload + registry credentials) and the Pod are created,
/// then the Secrets are given to the Pod. Returns the Pod's name.
async fn script_start(handle: &mut Handle) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;

    let req = next(handle).await;
    req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/secrets");
    let name = req.body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gsr-job-8712-"), "{name}");
    assert_eq!(req.body["type"], "Opaque");
    assert_eq!(req.body["metadata"]["labels"]["gsr.job"], "8712");
    assert_eq!(req.body["metadata"]["labels"]["gsr.claimer"], "serve-0-1");
    assert_eq!(
        req.body["metadata"]["annotations"]["gsr.claimer"],
        "serve-0/1"
    );
    assert_eq!(
        b64.decode(req.body["data"]["payload.json"].as_str().unwrap())
            .unwrap(),
        PAYLOAD
    );
    let body = req.body.clone();
    req.json(201, body);

    let req = next(handle).await;
    req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/secrets");
    assert_eq!(req.body["metadata"]["name"], format!("{name}-pull"));
    assert_eq!(req.body["type"], "kubernetes.io/dockerconfigjson");
    let body = req.body.clone();
    req.json(201, body);

    let req = next(handle).await;
    req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/pods");
    assert_eq!(req.body["metadata"]["name"], name);
    let spec = &req.body["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["activeDeadlineSeconds"], 3600 + 300);
    assert_eq!(spec["containers"][0]["image"], "ruby:3.3");
    assert_eq!(spec["volumes"][1]["secret"]["secretName"], name);
    assert_eq!(spec["imagePullSecrets"][0]["name"], format!("{name}-pull"));
    let mut created = req.body.clone();
    created["metadata"]["uid"] = json!("pod-uid-1");
    created["metadata"]["resourceVersion"] = json!("100");
    req.json(201, created);

    for secret in [name.clone(), format!("{name}-pull")] {
        let req = next(handle).await;
        req.expect(
            Method::PATCH,
            &format!("/api/v1/namespaces/ci-jobs/secrets/{secret}"),
        );
        assert_eq!(req.content_type, "application/merge-patch+json");
        assert_eq!(
            req.body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": "pod-uid-1"}])
        );
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}});
        req.json(200, body);
    }
    name
}

/// Script `cleanup`: Pod and Secrets deleted; `status` answers each.
async fn script_cleanup(handle: &mut Handle, name: &str, status: u16) {
    let req = next(handle).await;
    req.expect(
        Method::DELETE,
        &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
    );
    assert_eq!(req.body["gracePeriodSeconds"], 0);
    assert_eq!(req.body["propagationPolicy"], "Background");
    if status == 404 {
        req.fail(404, "NotFound", "pods not found");
    } else {
        req.json(200, pod(name, "200", json!({"phase": "Succeeded"})));
    }
    for secret in [name.to_string(), format!("{name}-pull")] {
        let req = next(handle).await;
        req.expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/ci-jobs/secrets/{secret}"),
        );
        if status == 404 {
            req.fail(404, "NotFound", "secrets not found");
        } else {
            req.json(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
    }
}

/// Script the start of `wait`: the Pod is read (`status`), then watched from its version.
async fn script_get_and_watch(handle: &mut Handle, name: &str, status: Value) -> Req {
    let req = next(handle).await;
    req.expect(
        Method::GET,
        &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
    );
    req.json(200, pod(name, "101", status));
    let req = next(handle).await;
    req.expect(Method::GET, "/api/v1/namespaces/ci-jobs/pods");
    assert_eq!(req.query["watch"], "true");
    assert_eq!(req.query["resourceVersion"], "101");
    assert_eq!(req.query["fieldSelector"], format!("metadata.name={name}"));
    req
}

#[tokio::test]
async fn a_job_runs_to_success_and_is_cleaned_up_twice() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let watch = script_get_and_watch(&mut handle, &name, json!({"phase": "Pending"})).await;
        watch.text(
            200,
            &events(&[
                (
                    "MODIFIED",
                    pod(&name, "102", job_state("Running", json!({"running": {}}))),
                ),
                (
                    "MODIFIED",
                    pod(
                        &name,
                        "103",
                        job_state(
                            "Running",
                            json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                        ),
                    ),
                ),
            ]),
        );
        script_cleanup(&mut handle, &name, 200).await;
        // The second clean-up finds nothing and is fine with it.
        script_cleanup(&mut handle, &name, 404).await;
        handle
    });
    let running = backend
        .start(launch(CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(running.wait().await.unwrap(), JobExit::Exec(0));
    // `wait` again answers from memory, without a request.
    assert_eq!(running.wait().await.unwrap(), JobExit::Exec(0));
    running.cleanup().await.unwrap();
    // Again (or after `reap` removed it): every delete answers 404, and that is Ok.
    running.cleanup().await.unwrap();
    drop(running);
    drop(backend);
    let handle = finish(script).await;
    no_more_requests(handle).await;
}

async fn finish(script: tokio::task::JoinHandle<Handle>) -> Handle {
    tokio::time::timeout(GUARD, script)
        .await
        .expect("script hung")
        .expect("script panicked")
}

#[tokio::test]
async fn a_secret_conflict_fails_the_start_and_leaves_nothing() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let req = next(&mut handle).await;
        req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/secrets");
        req.fail(409, "AlreadyExists", "secrets \"x\" already exists");
        handle
    });
    let Err(err) = backend.start(launch(CancellationToken::new())).await else {
        panic!("the job started")
    };
    assert!(
        matches!(err, BackendError::Start { job_id: 8712, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("409 AlreadyExists"), "{err}");
    drop(backend);
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn a_forbidden_pod_removes_the_secrets_already_created() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let mut names = Vec::new();
        for _ in 0..2 {
            let req = next(&mut handle).await;
            req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/secrets");
            names.push(req.body["metadata"]["name"].as_str().unwrap().to_string());
            let body = req.body.clone();
            req.json(201, body);
        }
        let req = next(&mut handle).await;
        req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/pods");
        req.fail(
            403,
            "Forbidden",
            "pods is forbidden: exceeded quota: compute",
        );
        for name in names {
            let req = next(&mut handle).await;
            req.expect(
                Method::DELETE,
                &format!("/api/v1/namespaces/ci-jobs/secrets/{name}"),
            );
            req.json(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        handle
    });
    let Err(err) = backend.start(launch(CancellationToken::new())).await else {
        panic!("the job started")
    };
    assert!(matches!(err, BackendError::Start { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("403 Forbidden: pods is forbidden: exceeded quota"),
        "{err}"
    );
    drop(backend);
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn a_failed_job_reports_its_exit_status_and_fetches_the_log() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let running = job_state("Running", json!({"running": {}}));
        let watch = script_get_and_watch(&mut handle, &name, running).await;
        let failed = job_state(
            "Failed",
            json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        );
        watch.text(200, &events(&[("MODIFIED", pod(&name, "102", failed))]));
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}/log"),
        );
        assert_eq!(req.query["container"], "job");
        assert_eq!(req.query["tailLines"], "50");
        req.text(200, "gsr: job 8712 failed: script exited with 1\n");
        script_cleanup(&mut handle, &name, 200).await;
        handle
    });
    let running = backend
        .start(launch(CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(running.wait().await.unwrap(), JobExit::Exec(1));
    running.cleanup().await.unwrap();
    drop((running, backend));
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn image_pull_back_off_is_not_run() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
        );
        let status = json!({"phase": "Pending", "containerStatuses": [
            {"name": "job", "image": "ruby:3.3", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff",
                                   "message": "Back-off pulling image \"ruby:3.3\""}}}]});
        req.json(200, pod(&name, "101", status));
        // No watch, no log: the verdict is final at once.
        script_cleanup(&mut handle, &name, 200).await;
        handle
    });
    let running = backend
        .start(launch(CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(running.wait().await.unwrap(), JobExit::NotRun);
    running.cleanup().await.unwrap();
    drop((running, backend));
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn an_expired_watch_is_reopened_and_a_deleted_pod_was_killed() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let running = job_state("Running", json!({"running": {}}));
        let watch = script_get_and_watch(&mut handle, &name, running.clone()).await;
        watch.text(
            200,
            &events(&[(
                "ERROR",
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "too old resource version: 101 (150)", "reason": "Expired", "code": 410}),
            )]),
        );
        // Read again, watch again from the new version.
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
        );
        req.json(200, pod(&name, "150", running.clone()));
        let req = next(&mut handle).await;
        req.expect(Method::GET, "/api/v1/namespaces/ci-jobs/pods");
        assert_eq!(req.query["resourceVersion"], "150");
        // Someone deletes the Pod while `gsr exec` runs.
        req.text(200, &events(&[("DELETED", pod(&name, "151", running))]));
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}/log"),
        );
        req.fail(404, "NotFound", "pods not found");
        script_cleanup(&mut handle, &name, 404).await;
        handle
    });
    let running = backend
        .start(launch(CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(running.wait().await.unwrap(), JobExit::Killed);
    running.cleanup().await.unwrap();
    drop((running, backend));
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn abort_deletes_the_pod_with_the_grace_period() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let abort = CancellationToken::new();
    let fire = abort.clone();
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let running = job_state("Running", json!({"running": {}}));
        // The watch stays open (never answered) until the claimer aborts.
        let watch = script_get_and_watch(&mut handle, &name, running.clone()).await;
        fire.cancel();
        let req = next(&mut handle).await;
        req.expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
        );
        assert_eq!(req.body["gracePeriodSeconds"], 30);
        req.json(200, pod(&name, "160", running));
        drop(watch);
        // `gsr exec` got SIGTERM, reported the job and exited 1.
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
        );
        let ended = job_state(
            "Failed",
            json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        );
        req.json(200, pod(&name, "161", ended));
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}/log"),
        );
        req.text(200, "gsr: interrupted\n");
        script_cleanup(&mut handle, &name, 200).await;
        handle
    });
    // The claimer's token (Launch::abort) ends the job like `Running::abort`.
    let running = backend.start(launch(abort)).await.unwrap();
    assert_eq!(running.wait().await.unwrap(), JobExit::Exec(1));
    running.cleanup().await.unwrap();
    drop((running, backend));
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn running_abort_also_ends_the_job() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let running = job_state("Running", json!({"running": {}}));
        let watch = script_get_and_watch(&mut handle, &name, running.clone()).await;
        tx.send(()).unwrap();
        let req = next(&mut handle).await;
        req.expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
        );
        assert_eq!(req.body["gracePeriodSeconds"], 30);
        // Already gone: the job was killed with its Pod.
        req.fail(404, "NotFound", "pods not found");
        drop(watch);
        let req = next(&mut handle).await;
        req.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}/log"),
        );
        req.fail(404, "NotFound", "pods not found");
        handle
    });
    let running: Arc<dyn Running> = backend
        .start(launch(CancellationToken::new()))
        .await
        .unwrap()
        .into();
    let waiter = tokio::spawn({
        let running = running.clone();
        async move { running.wait().await }
    });
    rx.await.unwrap();
    running.abort();
    assert_eq!(waiter.await.unwrap().unwrap(), JobExit::Killed);
    drop((running, backend));
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn a_pod_that_never_starts_is_given_up_as_not_run() {
    let settings = K8sSettings {
        start_timeout_secs: 1,
        ..settings()
    };
    let (backend, mut handle) = backend(settings, "serve-0/1");
    let script = tokio::spawn(async move {
        let name = script_start(&mut handle).await;
        let unschedulable = json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient cpu."}]});
        // Nothing happens on the watch; the start timeout ends the wait.
        let watch = script_get_and_watch(&mut handle, &name, unschedulable).await;
        let req = next(&mut handle).await;
        drop(watch);
        req.expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/ci-jobs/pods/{name}"),
        );
        req.json(200, pod(&name, "170", json!({"phase": "Pending"})));
        for secret in [name.clone(), format!("{name}-pull")] {
            let req = next(&mut handle).await;
            req.expect(
                Method::DELETE,
                &format!("/api/v1/namespaces/ci-jobs/secrets/{secret}"),
            );
            req.json(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        handle
    });
    let running = backend
        .start(launch(CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(running.wait().await.unwrap(), JobExit::NotRun);
    running.cleanup().await.unwrap();
    drop((running, backend));
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn validate_dry_runs_the_objects_and_reviews_access() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let req = next(&mut handle).await;
        req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/secrets");
        assert_eq!(req.query["dryRun"], "All");
        let body = req.body.clone();
        req.json(201, body);
        let req = next(&mut handle).await;
        req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/pods");
        assert_eq!(req.query["dryRun"], "All");
        let body = req.body.clone();
        req.json(201, body);
        let mut asked = Vec::new();
        for _ in 0..8 {
            let req = next(&mut handle).await;
            req.expect(
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            );
            let attrs = &req.body["spec"]["resourceAttributes"];
            assert_eq!(attrs["namespace"], NS);
            let what = format!(
                "{} {}{}",
                attrs["verb"].as_str().unwrap(),
                attrs["resource"].as_str().unwrap(),
                attrs["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            );
            let mut answer = req.body.clone();
            answer["status"] = json!({"allowed": what != "delete pods"});
            asked.push(what);
            req.json(201, answer);
        }
        assert_eq!(
            asked,
            [
                "get pods",
                "watch pods",
                "list pods",
                "delete pods",
                "patch secrets",
                "list secrets",
                "delete secrets",
                "get pods/log"
            ]
        );
        handle
    });
    let err = backend.validate().await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("not allowed in namespace ci-jobs: delete pods"),
        "{err}"
    );
    drop(backend);
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn validate_names_a_namespace_we_may_not_use() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let req = next(&mut handle).await;
        req.expect(Method::POST, "/api/v1/namespaces/ci-jobs/secrets");
        req.fail(403, "Forbidden", "secrets is forbidden: User \"system:serviceaccount:gsr:gsr\" cannot create resource \"secrets\"");
        handle
    });
    let err = backend.validate().await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("cannot create Secrets in namespace ci-jobs: 403 Forbidden"),
        "{err}"
    );
    drop(backend);
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn reap_removes_only_the_objects_of_dead_claimers() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let object = |kind: &str,
                  name: &str,
                  claimer_annotation: Option<&str>,
                  claimer_label: &str,
                  job: &str| {
        let mut meta = json!({"name": name, "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "gsr", "gsr.claimer": claimer_label, "gsr.job": job}});
        if let Some(c) = claimer_annotation {
            meta["annotations"] = json!({"gsr.claimer": c, "gsr.job": job});
        }
        json!({"apiVersion": "v1", "kind": kind, "metadata": meta})
    };
    let script = tokio::spawn(async move {
        let req = next(&mut handle).await;
        req.expect(Method::GET, "/api/v1/namespaces/ci-jobs/pods");
        assert_eq!(
            req.query["labelSelector"],
            "app.kubernetes.io/managed-by=gsr,gsr.claimer"
        );
        req.json(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                object("Pod", "gsr-job-1-aaaaaaaa", Some("serve-0/0"), "serve-0-0", "1"),
                object("Pod", "gsr-job-2-bbbbbbbb", Some("serve-0/1"), "serve-0-1", "2"),
                // Label only (annotations stripped by someone): compared sanitized.
                object("Pod", "gsr-job-3-cccccccc", None, "serve-0-1", "3"),
                object("Pod", "gsr-job-4-dddddddd", None, "serve-9-9", "4"),
            ]}),
        );
        let req = next(&mut handle).await;
        req.expect(
            Method::DELETE,
            "/api/v1/namespaces/ci-jobs/pods/gsr-job-1-aaaaaaaa",
        );
        req.json(
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gsr-job-1-aaaaaaaa"}}),
        );
        let req = next(&mut handle).await;
        req.expect(
            Method::DELETE,
            "/api/v1/namespaces/ci-jobs/pods/gsr-job-4-dddddddd",
        );
        req.fail(404, "NotFound", "already gone");
        let req = next(&mut handle).await;
        req.expect(Method::GET, "/api/v1/namespaces/ci-jobs/secrets");
        req.json(
            200,
            json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": [
                object("Secret", "gsr-job-1-aaaaaaaa", Some("serve-0/0"), "serve-0-0", "1"),
                object("Secret", "gsr-job-5-eeeeeeee", Some("serve-0/0"), "serve-0-0", "5"),
                object("Secret", "gsr-job-2-bbbbbbbb", Some("serve-0/1"), "serve-0-1", "2"),
            ]}),
        );
        for name in ["gsr-job-1-aaaaaaaa", "gsr-job-5-eeeeeeee"] {
            let req = next(&mut handle).await;
            req.expect(
                Method::DELETE,
                &format!("/api/v1/namespaces/ci-jobs/secrets/{name}"),
            );
            req.json(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        handle
    });
    let report = backend.reap().await.unwrap();
    assert_eq!(
        report,
        ReapReport {
            jobs: 2,
            objects: 3,
            left_alone: 3
        }
    );
    drop(backend);
    no_more_requests(finish(script).await).await;
}

#[tokio::test]
async fn healthcheck_lists_one_pod() {
    let (backend, mut handle) = backend(settings(), "serve-0/1");
    let script = tokio::spawn(async move {
        let req = next(&mut handle).await;
        req.expect(Method::GET, "/api/v1/namespaces/ci-jobs/pods");
        assert_eq!(req.query["limit"], "1");
        req.json(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        );
        let req = next(&mut handle).await;
        req.fail(503, "ServiceUnavailable", "etcd is down");
        handle
    });
    backend.healthcheck().await.unwrap();
    let err = backend.healthcheck().await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    drop(backend);
    no_more_requests(finish(script).await).await;
}
