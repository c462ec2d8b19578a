//! Injected faults: the failures real GitLab produces now and then, on demand.
//!
//! A runner's retry, resync and back-off paths only run when GitLab misbehaves: a 5xx or
//! 429 with `Retry-After`, a slow answer, a connection reset mid-request, a 416 on a trace
//! patch whose offset was right (a lost acknowledgement), a 202 on the final update while
//! GitLab migrates trace chunks. Tests queue such faults through the admin API; each
//! matching request consumes one.
//!
//! `status`, `delay` and `drop` are generic and applied by the [`guard`] middleware before
//! the handler runs. `trace_416` and `final_202` depend on what the request is, so the
//! trace and job-update handlers take them themselves via [`FaultQueue::take`].
//!
//! Route `webhook_delivery` concerns the simulator's own outgoing Job Hook requests:
//! `drop` loses a delivery, `duplicate` sends it twice (see `crate::webhooks`).

use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::server::ConnHandle;
use crate::state::SimState;
use crate::types::{Fault, FaultKind, FaultRoute};

/// Queued faults, consumed in insertion order.
#[derive(Default)]
pub(crate) struct FaultQueue {
    items: Vec<Fault>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        self.items.push(fault);
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Queued faults; `times` is what remains of each.
    pub fn list(&self) -> Vec<Fault> {
        self.items.clone()
    }

    /// Consumes one use of the first queued fault for `route` whose kind is in `kinds`.
    pub fn take(&mut self, route: FaultRoute, kinds: &[FaultKind]) -> Option<Fault> {
        let idx = self
            .items
            .iter()
            .position(|f| f.route == route && kinds.contains(&f.kind))?;
        let fault = self.items[idx].clone();
        self.items[idx].times -= 1;
        if self.items[idx].times == 0 {
            self.items.remove(idx);
        }
        Some(fault)
    }
}

/// Checks a fault from the admin API before queueing it.
pub(crate) fn validate(f: &Fault) -> Result<(), String> {
    if f.times == 0 {
        return Err("times must be at least 1".into());
    }
    if f.route == FaultRoute::WebhookDelivery {
        return match f.kind {
            FaultKind::Drop | FaultKind::Duplicate => Ok(()),
            _ => Err("route webhook_delivery takes kinds drop and duplicate only".into()),
        };
    }
    match f.kind {
        FaultKind::Status => match f.status {
            Some(s) if (200..=599).contains(&s) => Ok(()),
            _ => Err("kind status needs `status` between 200 and 599".into()),
        },
        FaultKind::Delay => match f.delay_ms {
            Some(_) => Ok(()),
            None => Err("kind delay needs `delay_ms`".into()),
        },
        FaultKind::Drop => Ok(()),
        FaultKind::Trace416 if f.route == FaultRoute::PatchTrace => Ok(()),
        FaultKind::Trace416 => Err("trace_416 applies to route patch_trace only".into()),
        FaultKind::Final202 if f.route == FaultRoute::UpdateJob => Ok(()),
        FaultKind::Final202 => Err("final_202 applies to route update_job only".into()),
        FaultKind::Duplicate => Err("duplicate applies to route webhook_delivery only".into()),
    }
}

/// Response extension: which fault shaped this response (for the request log).
#[derive(Clone, Debug)]
pub(crate) struct FaultNote(pub String);

/// Response extension: the connection was killed, no response reached the client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dropped;

/// What the generic faults decided for one request.
pub(crate) enum Verdict {
    /// Process the request (possibly after a delay, noted here).
    Proceed(Option<FaultNote>),
    /// Answer this instead of processing.
    Answer(Response),
}

/// Applies the next generic fault (`status`, `delay`, `drop`) queued for `route`.
pub(crate) async fn check(
    state: &SimState,
    route: FaultRoute,
    conn: Option<ConnHandle>,
) -> Verdict {
    let fault = state.db().faults.take(
        route,
        &[FaultKind::Status, FaultKind::Delay, FaultKind::Drop],
    );
    let Some(fault) = fault else {
        return Verdict::Proceed(None);
    };
    match fault.kind {
        FaultKind::Delay => {
            let ms = fault.delay_ms.unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Verdict::Proceed(Some(FaultNote(format!("delay {ms}ms"))))
        }
        FaultKind::Status => {
            let code = fault.status.unwrap_or(500);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = json!({ "message": format!("{code} {} (simulated fault)", status.canonical_reason().unwrap_or("")) });
            let mut resp = (status, Json(body)).into_response();
            if let Some(secs) = fault.retry_after {
                resp.headers_mut()
                    .insert("Retry-After", HeaderValue::from(secs));
            }
            resp.extensions_mut()
                .insert(FaultNote(format!("status {code}")));
            Verdict::Answer(resp)
        }
        FaultKind::Drop => match conn {
            Some(conn) => {
                conn.kill();
                let mut resp = StatusCode::INTERNAL_SERVER_ERROR.into_response();
                resp.extensions_mut().insert(Dropped);
                resp.extensions_mut().insert(FaultNote("drop".into()));
                Verdict::Answer(resp)
            }
            None => {
                // Without a real connection (oneshot tests) there is nothing to drop.
                let mut resp = (
                    StatusCode::BAD_GATEWAY,
                    "drop fault needs a connection served by gsr_sim::spawn",
                )
                    .into_response();
                resp.extensions_mut().insert(FaultNote("drop".into()));
                Verdict::Answer(resp)
            }
        },
        FaultKind::Trace416 | FaultKind::Final202 | FaultKind::Duplicate => Verdict::Proceed(None),
    }
}

/// The connection handle of a request served through [`crate::spawn`], if any.
pub(crate) fn conn_of(req: &Request) -> Option<ConnHandle> {
    req.extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|c| c.0.clone())
}

/// Route middleware: applies generic faults for the route it is attached to.
pub(crate) async fn guard(
    State((state, route)): State<(SimState, FaultRoute)>,
    req: Request,
    next: Next,
) -> Response {
    let conn = conn_of(&req);
    match check(&state, route, conn).await {
        Verdict::Answer(resp) => resp,
        Verdict::Proceed(note) => {
            let mut resp = next.run(req).await;
            if let Some(note) = note {
                resp.extensions_mut().insert(note);
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_and_by_kind() {
        let mut q = FaultQueue::default();
        q.push(Fault::final_202(2));
        q.push(Fault::status(FaultRoute::UpdateJob, 503, 1));
        let generic = [FaultKind::Status, FaultKind::Delay, FaultKind::Drop];
        let f = q
            .take(FaultRoute::UpdateJob, &generic)
            .expect("status fault");
        assert_eq!(f.status, Some(503));
        assert!(q.take(FaultRoute::UpdateJob, &generic).is_none());
        assert!(q
            .take(FaultRoute::PatchTrace, &[FaultKind::Final202])
            .is_none());
        assert!(q
            .take(FaultRoute::UpdateJob, &[FaultKind::Final202])
            .is_some());
        assert!(q
            .take(FaultRoute::UpdateJob, &[FaultKind::Final202])
            .is_some());
        assert!(q
            .take(FaultRoute::UpdateJob, &[FaultKind::Final202])
            .is_none());
    }

    #[test]
    fn validation_rejects_misplaced_kinds() {
        assert!(validate(&Fault::trace_416(1)).is_ok());
        let mut f = Fault::trace_416(1);
        f.route = FaultRoute::UpdateJob;
        assert!(validate(&f).is_err());
        assert!(validate(&Fault::status(FaultRoute::Git, 99, 1)).is_err());
        assert!(validate(&Fault::status(FaultRoute::Git, 503, 0)).is_err());
        assert!(validate(&Fault::webhook_drop(1)).is_ok());
        assert!(validate(&Fault::webhook_duplicate(2)).is_ok());
        assert!(validate(&Fault::status(FaultRoute::WebhookDelivery, 500, 1)).is_err());
        let mut f = Fault::webhook_duplicate(1);
        f.route = FaultRoute::UpdateJob;
        assert!(validate(&f).is_err());
    }
}
