//! The axum adapter: HTTP requests → [`Delivery`] → [`HookResponse`](crate::HookResponse)
//! → HTTP responses.
//!
//! Routing is done by hand in one fallback handler rather than with `Router::route`, so
//! that any configured `WEBHOOK_PATH` (including `/`, or one that happens to contain
//! characters axum's path syntax reserves) is matched literally and can never make the
//! router panic at start-up. Body size is limited twice: `RequestBodyLimitLayer` refuses
//! a too-large `Content-Length` before anything is read, and `DefaultBodyLimit` bounds
//! the bytes actually buffered (chunked bodies): both answer 413.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::delivery::Delivery;
use crate::service::Webhook;

/// The health check path.
pub const HEALTHZ: &str = "/healthz";

#[derive(Clone)]
struct AppState {
    webhook: Arc<Webhook>,
    path: Arc<str>,
}

/// The receiver's HTTP surface: `POST path` (the hook), `GET /healthz` (`ok`), 404 for
/// other paths, 405 for other methods, 413 for bodies over `body_limit` bytes.
///
/// `path` gets a leading `/` when it has none; it is compared with the request path
/// literally (query strings are ignored). A `path` of `/healthz` takes `POST` there and
/// keeps `GET` as the health check.
pub fn app(webhook: Arc<Webhook>, path: &str, body_limit: usize) -> Router {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let state = AppState {
        webhook,
        path: path.into(),
    };
    Router::new()
        .fallback(dispatch)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TraceLayer::new_for_http())
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let path = req.uri().path();
    let is_hook = path == &*state.path;
    let is_health = path == HEALTHZ;
    match req.method() {
        &Method::POST if is_hook => receive(state, req).await,
        &Method::GET | &Method::HEAD if is_health => (StatusCode::OK, "ok").into_response(),
        _ if is_hook || is_health => {
            let allow = match (is_hook, is_health) {
                (true, true) => "POST, GET, HEAD",
                (true, false) => "POST",
                _ => "GET, HEAD",
            };
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, allow)],
                "method not allowed",
            )
                .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The [`Delivery`] of a hook request: GitLab's `X-Gitlab-*` and `Idempotency-Key`
/// headers (trimmed, empty ones dropped; the token kept as raw bytes) and the body. Other
/// HTTP front ends (`gsr serve`) use it so every entry point reads a hook alike.
pub fn delivery(headers: &HeaderMap, body: Bytes) -> Delivery {
    Delivery {
        event: header_string(headers, "x-gitlab-event"),
        token: headers.get("x-gitlab-token").map(|v| v.as_bytes().to_vec()),
        event_uuid: header_string(headers, "x-gitlab-event-uuid"),
        webhook_uuid: header_string(headers, "x-gitlab-webhook-uuid"),
        idempotency_key: header_string(headers, "idempotency-key"),
        body,
    }
}

async fn receive(state: AppState, req: Request) -> Response {
    let headers = req.headers().clone();
    let body = match Bytes::from_request(req, &()).await {
        Ok(b) => b,
        // 413 over the limit, 400 for a broken body: axum's rejection knows which.
        Err(rejection) => return rejection.into_response(),
    };
    let delivery = delivery(&headers, body);
    let answer = state.webhook.handle(delivery);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match answer.done {
        None => (status, answer.message).into_response(),
        Some(done) => match done.await {
            Ok(summary) => (status, Json(summary)).into_response(),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the job did not end normally (shutting down?)",
            )
                .into_response(),
        },
    }
}

/// Serve `router` on `listener` until `stop` resolves, then shut down in order: stop
/// accepting connections and claiming jobs, let open requests finish, and wait for the
/// running jobs (call [`Webhook::abort_jobs`] to cut that short).
pub async fn serve(
    listener: tokio::net::TcpListener,
    webhook: Arc<Webhook>,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let w = webhook.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            stop.await;
            w.stop_claiming();
        })
        .await?;
    let jobs = webhook.status().jobs_running;
    if jobs > 0 {
        tracing::info!(jobs, "waiting for the running jobs to end");
    }
    webhook.drained().await;
    Ok(())
}
