//! The backend's AWS SDK client against scripted Lambda API answers in AWS's own form
//! (what the `cargo lambda watch` emulator does not produce): function errors as HTTP 200
//! with `X-Amz-Function-Error`, throttling (`429 TooManyRequestsException`), a missing
//! function, `DryRun`'s `204`, access denied. A plain TCP server answers one scripted
//! response per connection and records each request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gsr_backend::{Backend, BackendError, CancellationToken, JobExit, Launch};
use gsr_backend_lambda::{Credentials, LambdaBackend, LambdaSettings};
use secrecy::SecretSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PAYLOAD: &str = r#"{"id":11,"token":"glcbt-scripted-known-token"}"#;

/// One recorded request: request line, lower-cased headers, body.
#[derive(Debug, Clone)]
struct Request {
    line: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

/// Serves `answers` in order, one per connection; returns its URL and the request log.
async fn server(answers: Vec<Answer>) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        for (status, reply_headers, body) in answers {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or_default().to_string();
            let headers: BTreeMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            seen.lock().unwrap().push(Request {
                line,
                headers,
                body: buf[head_end..].to_vec(),
            });
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in reply_headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            resp.push_str(body);
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (url, log)
}

fn backend(url: &str) -> LambdaBackend {
    LambdaBackend::new(LambdaSettings {
        function: "gsr".into(),
        qualifier: Some("live".into()),
        region: Some("eu-west-1".into()),
        endpoint_url: Some(url.into()),
        credentials: Credentials::Static {
            access_key_id: "AKIDSCRIPTED".into(),
            secret_access_key: "scripted-secret-key".to_string().into(),
        },
    })
}

fn launch() -> Launch {
    Launch {
        job_id: 11,
        payload: SecretSlice::from(PAYLOAD.as_bytes().to_vec()),
        gitlab_url: "http://gitlab.example".into(),
        timeout: Duration::from_secs(600),
        labels: BTreeMap::new(),
        abort: CancellationToken::new(),
    }
}

async fn run(answers: Vec<Answer>) -> (Result<JobExit, BackendError>, Vec<Request>) {
    let (url, log) = server(answers).await;
    let job = backend(&url).start(launch()).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(120), job.wait())
        .await
        .expect("wait returns");
    job.cleanup().await.unwrap();
    let requests = log.lock().unwrap().clone();
    (exit, requests)
}

const SUMMARY: &str = r#"{"job_id":11,"outcome":"success","failure_reason":null,"delivered":true,"delivery":"accepted","message":null}"#;

#[tokio::test]
async fn a_synchronous_signed_invocation_carries_the_payload() {
    let (exit, requests) = run(vec![(200, vec![], SUMMARY)]).await;
    assert_eq!(exit.unwrap(), JobExit::Exec(0));
    let [req] = requests.as_slice() else {
        panic!("{requests:#?}")
    };
    assert!(
        req.line
            .starts_with("POST /2015-03-31/functions/gsr/invocations?Qualifier=live "),
        "{}",
        req.line
    );
    assert_eq!(
        req.headers.get("x-amz-invocation-type").map(String::as_str),
        Some("RequestResponse")
    );
    let auth = req
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDSCRIPTED/")
            && auth.contains("/eu-west-1/lambda/aws4_request"),
        "{auth}"
    );
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["job"], PAYLOAD);
    assert_eq!(body["gitlab_url"], "http://gitlab.example");
    // The secret key is used to sign, never sent.
    let all = format!("{req:?}");
    assert!(!all.contains("scripted-secret-key"));
}

#[tokio::test]
async fn function_errors_in_aws_form() {
    let died = r#"{"errorType":"Runtime.ExitError","errorMessage":"signal: killed"}"#;
    let (exit, _) = run(vec![(
        200,
        vec![("x-amz-function-error", "Unhandled")],
        died,
    )])
    .await;
    assert_eq!(exit.unwrap(), JobExit::Killed);
    let refused = r#"{"errorType":"gsr::InvalidJob","errorMessage":"no id"}"#;
    let (exit, _) = run(vec![(
        200,
        vec![("x-amz-function-error", "Unhandled")],
        refused,
    )])
    .await;
    assert_eq!(exit.unwrap(), JobExit::NotRun);
}

#[tokio::test]
async fn throttling_is_retried_other_refusals_are_not_run() {
    let throttled = (
        429,
        vec![("x-amzn-errortype", "TooManyRequestsException")],
        r#"{"message":"Rate exceeded","Reason":"ReservedFunctionConcurrentInvocationLimitExceeded"}"#,
    );
    let (exit, requests) = run(vec![throttled, (200, vec![], SUMMARY)]).await;
    assert_eq!(exit.unwrap(), JobExit::Exec(0));
    assert_eq!(requests.len(), 2, "one retry after the throttle");

    let missing = (
        404,
        vec![("x-amzn-errortype", "ResourceNotFoundException")],
        r#"{"message":"Function not found: arn:aws:lambda:eu-west-1:1:function:gsr"}"#,
    );
    let (exit, requests) = run(vec![missing]).await;
    assert_eq!(exit.unwrap(), JobExit::NotRun);
    assert_eq!(requests.len(), 1, "never re-sent");

    // A Lambda service error (5xx): the SDK does not retry it (that could run the job twice).
    let service = (
        500,
        vec![("x-amzn-errortype", "ServiceException")],
        r#"{"message":"internal"}"#,
    );
    let (exit, requests) = run(vec![service, (200, vec![], SUMMARY)]).await;
    assert_eq!(exit.unwrap(), JobExit::NotRun);
    assert_eq!(requests.len(), 1, "never re-sent");
}

#[tokio::test]
async fn validate_is_a_dry_run() {
    let (url, log) = server(vec![(204, vec![], "")]).await;
    backend(&url)
        .validate()
        .await
        .expect("204: the function may be invoked");
    let requests = log.lock().unwrap().clone();
    assert_eq!(
        requests[0]
            .headers
            .get("x-amz-invocation-type")
            .map(String::as_str),
        Some("DryRun")
    );

    let denied = (
        403,
        vec![("x-amzn-errortype", "AccessDeniedException")],
        r#"{"message":"User is not authorized to perform: lambda:InvokeFunction"}"#,
    );
    let (url, _) = server(vec![denied]).await;
    let err = backend(&url).validate().await.unwrap_err();
    assert!(
        matches!(err, BackendError::Unavailable { .. })
            && err.to_string().contains("lambda:InvokeFunction"),
        "{err}"
    );
    assert!(!err.to_string().contains("scripted-secret-key"), "{err}");
}
