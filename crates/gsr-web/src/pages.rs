//! The HTML runner pages. Forms POST (with `_method=PUT|DELETE` for edit and delete, as
//! browsers only send GET and POST) and carry the session's CSRF token in `_csrf`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use gsr_store::RunnerId;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::error::ApiError;
use crate::service::{self, FieldErrors, RawInput, RawMode};
use crate::session::Session;
use crate::views::{self, Choices, FormValues, Once};
use crate::WebState;

pub(crate) fn routes() -> Router<WebState> {
    Router::new()
        .route("/runners", get(list).post(create))
        .route("/runners/new", get(new_form))
        .route(
            "/runners/{id}",
            get(show).post(post_override).put(put).delete(delete),
        )
        .route("/runners/{id}/edit", get(edit_form))
        .route("/runners/{id}/delete", get(delete_form))
        .route("/runners/{id}/pause", post(pause))
        .route("/runners/{id}/webhook-secret", post(new_webhook_secret))
}

pub(crate) fn parse_id(id: &str) -> Result<RunnerId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

/// The runner form as posted. Unchecked checkboxes are absent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunnerForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    #[serde(rename = "_method")]
    method: Option<String>,
    /// `user_token` (default), `registration_token` or `runner_token`.
    mode: String,
    project_id: String,
    gitlab_url: String,
    /// Secrets: read once, never put back into a form.
    registration_token: String,
    runner_token: String,
    description: String,
    tags: String,
    run_untagged: Option<String>,
    locked: Option<String>,
    access_level: String,
    maximum_timeout: String,
    paused: Option<String>,
    backend: String,
    concurrency: String,
}

impl RunnerForm {
    fn values(&self) -> FormValues {
        FormValues {
            mode: if self.mode.is_empty() {
                service::MODE_USER.into()
            } else {
                self.mode.clone()
            },
            gitlab_url: self.gitlab_url.clone(),
            project_id: self.project_id.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            run_untagged: self.run_untagged.is_some(),
            locked: self.locked.is_some(),
            access_level: self.access_level.clone(),
            maximum_timeout: self.maximum_timeout.clone(),
            paused: self.paused.is_some(),
            backend: self.backend.clone(),
            concurrency: self.concurrency.clone(),
        }
    }

    fn raw_mode(&self) -> RawMode {
        let project_id = match self.project_id.trim() {
            "" => None,
            // Not a number: 0, which validation reports for the user-token mode only.
            p => Some(p.parse::<i64>().unwrap_or(0)),
        };
        RawMode {
            mode: self.mode.clone(),
            project_id,
            gitlab_url: self.gitlab_url.clone(),
            registration_token: self.registration_token.clone(),
            runner_token: self.runner_token.clone(),
        }
    }

    fn raw(&self, errors: &mut FieldErrors) -> RawInput {
        let maximum_timeout = match self.maximum_timeout.trim() {
            "" => None,
            t => t.parse().map(Some).unwrap_or_else(|_| {
                errors.push(("maximum_timeout".into(), "a number of seconds".into()));
                None
            }),
        };
        let concurrency = self.concurrency.trim().parse().unwrap_or_else(|_| {
            errors.push(("concurrency".into(), "a number".into()));
            1
        });
        RawInput {
            description: self.description.trim().to_string(),
            tags: service::parse_tags(&self.tags),
            run_untagged: self.run_untagged.is_some(),
            locked: self.locked.is_some(),
            access_level: self.access_level.clone(),
            maximum_timeout,
            paused: self.paused.is_some(),
            backend: self.backend.clone(),
            concurrency,
        }
    }
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn list(State(st): State<WebState>, s: Session) -> Result<Response, ApiError> {
    let runners = st.store.list_runners(s.user_id()).await?;
    let mut rows = Vec::with_capacity(runners.len());
    for runner in runners {
        let running = st.store.count_unfinished_jobs(runner.id).await?;
        let last_job = st
            .store
            .jobs_for_runner(s.user_id(), runner.id, 1)
            .await?
            .into_iter()
            .next();
        rows.push(views::ListRow {
            runner,
            running,
            last_job,
        });
    }
    Ok(views::runner_list(&s, &rows, st.config.max_runners).into_response())
}

pub(crate) fn choices(st: &WebState) -> Choices {
    Choices {
        gitlab_urls: st.gitlab_urls(),
        backends: st.backends.as_ref().clone(),
    }
}

async fn new_form(State(st): State<WebState>, s: Session) -> Response {
    let v = FormValues {
        backend: st.backends.first().cloned().unwrap_or_default(),
        ..FormValues::default()
    };
    views::runner_form(&s, &choices(&st), None, &v, &[]).into_response()
}

async fn create(
    State(st): State<WebState>,
    s: Session,
    Form(f): Form<RunnerForm>,
) -> Result<Response, ApiError> {
    s.check_csrf(f.csrf.as_deref())?;
    let mut errors = FieldErrors::new();
    let mode = f.raw_mode().validate(&st, &mut errors);
    let raw = f.raw(&mut errors);
    let input = raw.validate(&st.backends, &mut errors);
    let choices = choices(&st);
    let form_error = |errors: FieldErrors| {
        no_store(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                views::runner_form(&s, &choices, None, &f.values(), &errors),
            )
                .into_response(),
        )
    };
    let (Some(mode), Some(input), true) = (mode, input, errors.is_empty()) else {
        return Ok(form_error(errors));
    };
    match service::create(&st, s.user_id(), mode, input).await {
        Ok(created) => {
            let url = service::webhook_url(&st, created.runner.id);
            let status = service::gitlab_status(&st, s.user_id(), &created.runner).await;
            let page = views::runner_page(
                &s,
                &created.runner,
                &url,
                Some(Once {
                    webhook_secret: created.webhook_secret.expose_secret(),
                }),
            )
            .with_status(status.as_deref())
            .render();
            Ok(no_store((StatusCode::CREATED, page).into_response()))
        }
        Err(ApiError::Invalid(errs)) => Ok(form_error(errs)),
        Err(ApiError::Quota) => Ok(form_error(vec![(
            "runner".into(),
            "runner limit reached".into(),
        )])),
        Err(ApiError::Gitlab(m)) => Ok(form_error(vec![("runner".into(), m)])),
        Err(e) => Err(e),
    }
}

async fn show(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let r = st.store.get_runner(s.user_id(), id).await?;
    let url = service::webhook_url(&st, r.id);
    let jobs = st
        .store
        .jobs_for_runner(s.user_id(), id, JOB_HISTORY)
        .await?;
    let status = service::gitlab_status(&st, s.user_id(), &r).await;
    let page = views::runner_page(&s, &r, &url, None)
        .with_status(status.as_deref())
        .with_jobs(&jobs)
        .render();
    Ok(page.into_response())
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
}

/// `POST /runners/:id/webhook-secret`: a new webhook secret (the old one stops working),
/// shown once like at creation — for a person who did not copy the first one.
async fn new_webhook_secret(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    s.check_csrf(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    let secret = st.store.rotate_webhook_secret(s.user_id(), id).await?;
    let r = st.store.get_runner(s.user_id(), id).await?;
    let url = service::webhook_url(&st, r.id);
    let jobs = st
        .store
        .jobs_for_runner(s.user_id(), id, JOB_HISTORY)
        .await?;
    let status = service::gitlab_status(&st, s.user_id(), &r).await;
    let page = views::runner_page(
        &s,
        &r,
        &url,
        Some(Once {
            webhook_secret: secret.expose_secret(),
        }),
    )
    .with_status(status.as_deref())
    .with_jobs(&jobs)
    .rotated()
    .render();
    Ok(no_store(page.into_response()))
}

/// Jobs shown on a runner's page.
const JOB_HISTORY: u32 = 50;

#[derive(Debug, Deserialize)]
struct PauseForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    paused: String,
}

/// `POST /runners/:id/pause` with `paused=true|false`.
async fn pause(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<PauseForm>,
) -> Result<Response, ApiError> {
    s.check_csrf(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    let paused = f.paused == "true";
    service::set_paused(&st, s.user_id(), id, paused).await?;
    Ok(Redirect::to(&format!("/runners/{id}")).into_response())
}

async fn edit_form(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let r = st.store.get_runner(s.user_id(), id).await?;
    Ok(views::runner_form(&s, &choices(&st), Some(&r), &FormValues::of(&r), &[]).into_response())
}

/// `GET /runners/:id/delete`: the confirmation page (deleting is not undoable and its
/// effect in GitLab depends on how the runner was created).
async fn delete_form(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let r = st.store.get_runner(s.user_id(), id).await?;
    let running = st.store.count_unfinished_jobs(id).await?;
    Ok(views::delete_page(&s, &r, running as usize).into_response())
}

/// `POST /runners/:id` with `_method=PUT` or `_method=DELETE`.
async fn post_override(
    st: State<WebState>,
    s: Session,
    id: Path<String>,
    f: Form<RunnerForm>,
) -> Result<Response, ApiError> {
    match f.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("PUT") | Some("PATCH") => put(st, s, id, f).await,
        Some("DELETE") => delete(st, s, id, f).await,
        _ => {
            s.check_csrf(f.csrf.as_deref())?;
            Err(ApiError::field("_method", "expected PUT or DELETE"))
        }
    }
}

async fn put(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<RunnerForm>,
) -> Result<Response, ApiError> {
    s.check_csrf(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    let current = st.store.get_runner(s.user_id(), id).await?;
    let mut errors = FieldErrors::new();
    let input = f.raw(&mut errors).validate(&st.backends, &mut errors);
    let choices = choices(&st);
    let form_error = |errors: FieldErrors| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            views::runner_form(&s, &choices, Some(&current), &f.values(), &errors),
        )
            .into_response()
    };
    let Some(input) = input else {
        return Ok(form_error(errors));
    };
    match service::update(&st, s.user_id(), id, input).await {
        Ok(r) => Ok(Redirect::to(&format!("/runners/{}", r.id)).into_response()),
        Err(ApiError::Invalid(errs)) => Ok(form_error(errs)),
        Err(ApiError::Gitlab(m)) => Ok(form_error(vec![("runner".into(), m)])),
        Err(e) => Err(e),
    }
}

async fn delete(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
    Form(f): Form<RunnerForm>,
) -> Result<Response, ApiError> {
    s.check_csrf(f.csrf.as_deref())?;
    let id = parse_id(&id)?;
    service::delete(&st, s.user_id(), id).await?;
    Ok(Redirect::to("/runners").into_response())
}
