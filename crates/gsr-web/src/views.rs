//! HTML templates (`maud`: every interpolated value is HTML-escaped).

use axum::http::StatusCode;
use gsr_store::{Job, Runner};
use maud::{html, Markup, DOCTYPE};

use crate::session::Session;

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;\
padding:0 1rem;color:#222}header{display:flex;justify-content:space-between;align-items:center;\
border-bottom:1px solid #ddd;margin-bottom:1rem}table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #eee;padding:.4rem;text-align:left}label{display:block;\
margin:.6rem 0 .2rem}.error{color:#b00020}.secret{background:#fff8e1;border:1px solid #f0c36d;\
padding:1rem}code{background:#f4f4f4;padding:.1rem .3rem}.button{display:inline-block;\
padding:.4rem .8rem;border:1px solid #888;border-radius:4px;text-decoration:none;color:#222}";

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gsr" }
                style { (CSS) }
            }
            body {
                header {
                    h2 { a href="/" { "gsr" } }
                    @if let Some(s) = session {
                        nav {
                            a href="/runners" { "Runners" } " "
                            form method="post" action="/auth/logout" style="display:inline" {
                                input type="hidden" name="_csrf" value=(s.csrf);
                                button type="submit" id="logout" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(crate) fn login_page() -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "GitLab runners, serverless" }
            p { "Sign in with your GitLab account to create and manage runners for your projects." }
            p { a.button href="/auth/login" id="login" { "Sign in with GitLab" } }
        },
    )
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.error { (message) }
            p { a href="/runners" { "Back to your runners" } }
        },
    )
}

fn tags(r: &Runner) -> Markup {
    html! {
        @if r.tags.is_empty() { em { "none" } }
        @for t in &r.tags { code { (t) } " " }
    }
}

pub(crate) fn runner_list(s: &Session, runners: &[Runner], max: u32) -> Markup {
    layout(
        "Runners",
        Some(s),
        html! {
            h1 { "Your runners" }
            p { (runners.len()) " of " (max) " runners. "
                @if (runners.len() as u64) < u64::from(max) {
                    a.button href="/runners/new" id="new-runner" { "New runner" }
                } @else {
                    span.error { "Runner limit reached." }
                }
            }
            @if runners.is_empty() {
                p { "No runners yet." }
            } @else {
                table {
                    thead { tr { th { "Description" } th { "GitLab id" } th { "Tags" } th { "State" } th { "Backend" } } }
                    tbody {
                        @for r in runners {
                            tr {
                                td { a href={ "/runners/" (r.id) } { (display_name(r)) } }
                                td { (r.gitlab_runner_id) }
                                td { (tags(r)) }
                                td { @if r.paused { "paused" } @else { "active" } }
                                td { (r.backend) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn display_name(r: &Runner) -> String {
    if r.description.is_empty() {
        format!("runner #{}", r.gitlab_runner_id)
    } else {
        r.description.clone()
    }
}

/// Values shown in the runner form.
#[derive(Debug, Clone)]
pub(crate) struct FormValues {
    pub project_id: String,
    pub description: String,
    pub tags: String,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: String,
    pub maximum_timeout: String,
    pub paused: bool,
    pub backend: String,
    pub concurrency: String,
}

impl Default for FormValues {
    fn default() -> Self {
        Self {
            project_id: String::new(),
            description: String::new(),
            tags: String::new(),
            run_untagged: true,
            locked: true,
            access_level: "not_protected".into(),
            maximum_timeout: String::new(),
            paused: false,
            backend: "local".into(),
            concurrency: "1".into(),
        }
    }
}

impl FormValues {
    pub(crate) fn of(r: &Runner) -> Self {
        Self {
            project_id: String::new(),
            description: r.description.clone(),
            tags: r.tags.join(", "),
            run_untagged: r.run_untagged,
            locked: r.locked,
            access_level: r.access_level.as_str().into(),
            maximum_timeout: r.maximum_timeout.map(|t| t.to_string()).unwrap_or_default(),
            paused: r.paused,
            backend: r.backend.clone(),
            concurrency: r.concurrency.to_string(),
        }
    }
}

fn field_error(errors: &[(String, String)], field: &str) -> Markup {
    html! {
        @for (f, m) in errors {
            @if f == field { div.error id={ "error-" (field) } { (m) } }
        }
    }
}

/// New (`editing = None`) or edit form.
pub(crate) fn runner_form(
    s: &Session,
    editing: Option<&Runner>,
    v: &FormValues,
    errors: &[(String, String)],
) -> Markup {
    let (title, action) = match editing {
        None => ("New runner".to_string(), "/runners".to_string()),
        Some(r) => (
            format!("Edit {}", display_name(r)),
            format!("/runners/{}", r.id),
        ),
    };
    layout(
        &title,
        Some(s),
        html! {
            h1 { (title) }
            (field_error(errors, "runner"))
            form method="post" action=(action) id="runner-form" {
                input type="hidden" name="_csrf" value=(s.csrf);
                @if editing.is_some() { input type="hidden" name="_method" value="PUT"; }
                @if editing.is_none() {
                    label for="project_id" { "GitLab project id (you must be Maintainer or Owner)" }
                    input type="number" id="project_id" name="project_id" value=(v.project_id) required;
                    (field_error(errors, "project_id"))
                }
                label for="description" { "Description" }
                input type="text" id="description" name="description" value=(v.description);
                (field_error(errors, "description"))
                label for="tags" { "Tags (comma separated)" }
                input type="text" id="tags" name="tags" value=(v.tags);
                (field_error(errors, "tags"))
                label { input type="checkbox" name="run_untagged" value="true" checked[v.run_untagged]; " Run untagged jobs" }
                label { input type="checkbox" name="locked" value="true" checked[v.locked]; " Locked to its project" }
                label { input type="checkbox" name="paused" value="true" checked[v.paused]; " Paused" }
                label for="access_level" { "Access level" }
                select id="access_level" name="access_level" {
                    option value="not_protected" selected[v.access_level == "not_protected"] { "All branches" }
                    option value="ref_protected" selected[v.access_level == "ref_protected"] { "Protected branches only" }
                }
                (field_error(errors, "access_level"))
                label for="maximum_timeout" { "Maximum job timeout (seconds, empty = none)" }
                input type="number" id="maximum_timeout" name="maximum_timeout" value=(v.maximum_timeout);
                (field_error(errors, "maximum_timeout"))
                label for="backend" { "Backend" }
                select id="backend" name="backend" {
                    @for b in crate::service::BACKENDS {
                        option value=(b) selected[v.backend == *b] { (b) }
                    }
                }
                (field_error(errors, "backend"))
                label for="concurrency" { "Concurrent jobs" }
                input type="number" id="concurrency" name="concurrency" min="1" max="100" value=(v.concurrency);
                (field_error(errors, "concurrency"))
                p { button type="submit" id="save" { @if editing.is_some() { "Save" } @else { "Create runner" } } }
            }
        },
    )
}

/// The webhook secret shown once, right after creation.
pub(crate) struct Once<'a> {
    pub webhook_secret: &'a str,
}

/// A runner's page; [`RunnerPage::render`] produces it.
pub(crate) struct RunnerPage<'a> {
    session: &'a Session,
    runner: &'a Runner,
    webhook_url: &'a str,
    once: Option<Once<'a>>,
    status: Option<&'a str>,
    jobs: &'a [Job],
}

pub(crate) fn runner_page<'a>(
    session: &'a Session,
    runner: &'a Runner,
    webhook_url: &'a str,
    once: Option<Once<'a>>,
) -> RunnerPage<'a> {
    RunnerPage {
        session,
        runner,
        webhook_url,
        once,
        status: None,
        jobs: &[],
    }
}

fn secs(d: Option<chrono::TimeDelta>) -> String {
    d.map(|d| format!("{:.1} s", d.num_milliseconds() as f64 / 1000.0))
        .unwrap_or_else(|| "–".into())
}

impl<'a> RunnerPage<'a> {
    pub(crate) fn with_status(mut self, status: Option<&'a str>) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn with_jobs(mut self, jobs: &'a [Job]) -> Self {
        self.jobs = jobs;
        self
    }

    pub(crate) fn render(self) -> Markup {
        let (s, r, webhook_url) = (self.session, self.runner, self.webhook_url);
        layout(
            &display_name(r),
            Some(s),
            html! {
                h1 { (display_name(r)) }
                @if let Some(o) = self.once {
                    div.secret id="webhook-setup" {
                        h2 { "Runner created — set up the GitLab webhook now" }
                        p { "In your project, open " strong { "Settings → Webhooks" } ", add a webhook with:" }
                        ul {
                            li { "URL: " code id="webhook-url" { (webhook_url) } }
                            li { "Secret token: " code id="webhook-secret" { (o.webhook_secret) } }
                            li { "Trigger: " strong { "Job events" } }
                        }
                        p { strong { "This secret is shown only once." } " Copy it now." }
                    }
                }
                table {
                    tr { th { "GitLab runner id" } td { (r.gitlab_runner_id) } }
                    tr { th { "GitLab" } td { (r.gitlab_url) } }
                    tr { th { "Status in GitLab" } td id="gitlab-status" { (self.status.unwrap_or("unknown")) } }
                    tr { th { "Description" } td id="description" { (r.description) } }
                    tr { th { "Tags" } td id="tags" { (tags(r)) } }
                    tr { th { "Run untagged" } td { (r.run_untagged) } }
                    tr { th { "Locked" } td { (r.locked) } }
                    tr { th { "Access level" } td { (r.access_level.as_str()) } }
                    tr { th { "Maximum timeout" } td { @match r.maximum_timeout { Some(t) => { (t) " s" }, None => "none" } } }
                    tr { th { "State" } td id="state" { @if r.paused { "paused" } @else { "active" } } }
                    tr { th { "Backend" } td { (r.backend) } }
                    tr { th { "Concurrency" } td { (r.concurrency) } }
                    tr { th { "Webhook URL" } td { code { (webhook_url) } } }
                }
                p {
                    a.button href={ "/runners/" (r.id) "/edit" } id="edit" { "Edit" } " "
                    form method="post" action={ "/runners/" (r.id) "/pause" } style="display:inline" {
                        input type="hidden" name="_csrf" value=(s.csrf);
                        @if r.paused {
                            input type="hidden" name="paused" value="false";
                            button type="submit" id="resume" { "Resume" }
                        } @else {
                            input type="hidden" name="paused" value="true";
                            button type="submit" id="pause" { "Pause" }
                        }
                    } " "
                    form method="post" action={ "/runners/" (r.id) } style="display:inline" {
                        input type="hidden" name="_csrf" value=(s.csrf);
                        input type="hidden" name="_method" value="DELETE";
                        button type="submit" id="delete" { "Delete runner" }
                    }
                }
                h2 { "Jobs" }
                @if self.jobs.is_empty() {
                    p { "No jobs yet." }
                } @else {
                    table id="jobs" {
                        thead { tr { th { "GitLab job" } th { "Status" } th { "Claimed" } th { "Queued" } th { "Pickup" } th { "Run" } th { "Failure" } } }
                        tbody {
                            @for j in self.jobs {
                                tr {
                                    td { (j.gitlab_job_id) }
                                    td { (j.status.as_str()) }
                                    td { (j.claimed_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                                    td { (secs(j.queued_duration.and_then(|d| chrono::TimeDelta::from_std(d).ok()))) }
                                    td { (secs(j.started_at.map(|t| t - j.claimed_at))) }
                                    td { (secs(j.started_at.zip(j.finished_at).map(|(a, b)| b - a))) }
                                    td { (j.failure_reason.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            },
        )
    }
}
