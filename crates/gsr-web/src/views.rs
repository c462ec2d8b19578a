//! HTML templates (`maud`: every interpolated value is HTML-escaped).
//!
//! The pages work without JavaScript (the CSP allows none). The one enhancement is CSS:
//! on the new-runner form, `:has()` shows only the fields of the chosen creation mode;
//! a browser without `:has()` shows all of them, and the server ignores the others.

use axum::http::StatusCode;
use gsr_store::{Job, JobStatus, Runner};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::service::{self, MODE_REGISTRATION, MODE_RUNNER, MODE_USER};
use crate::session::Session;

const CSS: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
a{color:#0969da}.top{background:#24292f;color:#fff}
.top .in{max-width:64rem;margin:0 auto;padding:.55rem 1rem;display:flex;align-items:center;justify-content:space-between;gap:1rem}
.top a{color:#fff;text-decoration:none}
.brand{font-weight:700;font-size:1.1rem}.brand small{font-weight:400;color:#c9d1d9;margin-left:.5rem}
.top nav{display:flex;gap:1rem;align-items:center}.top nav form{margin:0}
.top button{background:transparent;color:#fff;border-color:#57606a}
main{max-width:64rem;margin:1.5rem auto 3rem;padding:0 1rem}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem 1.25rem;margin-bottom:1rem}
h1{font-size:1.5rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:0 0 .6rem}
.head{display:flex;justify-content:space-between;align-items:center;gap:1rem;flex-wrap:wrap}
table{border-collapse:collapse;width:100%}
th,td{padding:.5rem .6rem;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:.85rem}tbody tr:last-child td{border-bottom:0}
dl.props{display:grid;grid-template-columns:11rem 1fr;gap:.4rem 1rem;margin:0}
dl.props dt{color:var(--muted)}dl.props dd{margin:0}
.badge{display:inline-block;padding:0 .55rem;border-radius:1rem;font-size:.8rem;font-weight:600;line-height:1.6rem;white-space:nowrap}
.b-ok{background:#dafbe1;color:var(--ok)}.b-run{background:#ddf4ff;color:#0969da}
.b-idle{background:#eaeef2;color:#424a53}.b-warn{background:#fff8c5;color:var(--warn)}
.b-bad{background:#ffebe9;color:var(--bad)}
.button,button{display:inline-block;font:inherit;font-weight:600;font-size:.9rem;padding:.35rem .9rem;border-radius:6px;border:1px solid var(--line);background:#f6f8fa;color:var(--fg);text-decoration:none;cursor:pointer}
.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
.danger{color:var(--bad)}
.actions{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center;margin-top:1rem}.actions form{margin:0}
label{display:block;font-weight:600;margin:.9rem 0 .25rem}
.hint{display:block;color:var(--muted);font-size:.85rem;font-weight:400;margin:.15rem 0 0}
input[type=text],input[type=number],input[type=password],select{font:inherit;width:100%;max-width:34rem;padding:.4rem .6rem;border:1px solid var(--line);border-radius:6px;background:#fff}
input[aria-invalid=true]{border-color:var(--bad);box-shadow:0 0 0 1px var(--bad)}
label.check{font-weight:400;margin:.35rem 0;display:flex;gap:.5rem;align-items:flex-start}
label.check input{margin-top:.3rem}
.field-error{color:var(--bad);font-size:.9rem;margin-top:.25rem}.error{color:var(--bad)}
.errors{border:1px solid #ff818266;background:#ffebe9;color:var(--bad);padding:.6rem 1rem;border-radius:6px;margin-bottom:1rem}
.secret{background:#fff8c5;border-color:#d4a72c}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eaeef2;padding:.1rem .35rem;border-radius:4px;font-size:.88em}
code.copy{display:block;padding:.45rem .7rem;margin:.2rem 0 .6rem;word-break:break-all;user-select:all;background:#fff;border:1px solid var(--line)}
fieldset{border:1px solid var(--line);border-radius:8px;padding:.4rem 1rem 1rem;margin:1rem 0}
legend{font-weight:600;padding:0 .35rem}
.modes{display:grid;gap:.5rem}.modes label{margin:0}
.muted{color:var(--muted)}ol li,ul li{margin:.2rem 0}
.tag{display:inline-block;background:#ddf4ff;color:#0550ae;border-radius:1rem;padding:0 .5rem;font-size:.8rem;margin:0 .25rem .15rem 0}
#runner-form:has(#mode-user_token:checked) .mode-fields:not(#fields-user_token),
#runner-form:has(#mode-registration_token:checked) .mode-fields:not(#fields-registration_token),
#runner-form:has(#mode-runner_token:checked) .mode-fields:not(#fields-runner_token),
#runner-form:has(#mode-user_token:checked) .token-only,
#runner-form:not(:has(#mode-runner_token:checked)) .runner-token-only{display:none}
"#;

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gsr" }
                style { (PreEscaped(CSS)) }
            }
            body {
                div.top { div.in {
                    a.brand href="/" { "gsr" small { "serverless GitLab runners" } }
                    @if let Some(s) = session {
                        nav {
                            a href="/runners" { "Your runners" }
                            form method="post" action="/auth/logout" {
                                input type="hidden" name="_csrf" value=(s.csrf);
                                button type="submit" id="logout" { "Sign out" }
                            }
                        }
                    }
                } }
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
            div.card style="max-width:36rem;margin:3rem auto" {
                h1 { "GitLab runners that exist only while a job runs" }
                p { "gsr runs your GitLab CI jobs: GitLab tells it when a job is waiting, gsr claims it and runs it. "
                    "Sign in with your GitLab account to create and manage runners for the projects you maintain." }
                p { a.button.primary href="/auth/login" id="login" { "Log in with GitLab" } }
                p.muted { "gsr asks GitLab for the " code { "api" } " scope so it can create, change and delete runners for you." }
            }
        },
    )
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            div.card {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
                p.error { (message) }
                p { a href="/runners" { "Back to your runners" } }
            }
        },
    )
}

fn tags(r: &Runner) -> Markup {
    html! {
        @if r.tags.is_empty() { span.muted { "no tags" } }
        @for t in &r.tags { span.tag { (t) } }
    }
}

/// A runner's state for people: paused, running, idle, or a setup problem.
fn state_badge(r: &Runner, running: u32, gitlab_status: Option<&str>) -> Markup {
    let (class, label) = if gitlab_status == Some("missing in GitLab") {
        ("b-bad", "setup failed".to_string())
    } else if r.paused {
        ("b-idle", "paused".to_string())
    } else if running > 0 {
        (
            "b-run",
            format!(
                "running {running} job{}",
                if running == 1 { "" } else { "s" }
            ),
        )
    } else {
        match gitlab_status {
            Some("online") | None => ("b-ok", "idle".to_string()),
            Some("never_contacted") => ("b-warn", "not connected yet".to_string()),
            Some(_) => ("b-warn", "offline".to_string()),
        }
    };
    html! { span class={ "badge " (class) } data-state=(label) { (label) } }
}

/// What the state means and what to do about it.
fn state_help(r: &Runner, running: u32, gitlab_status: Option<&str>) -> &'static str {
    match gitlab_status {
        Some("missing in GitLab") => {
            "GitLab no longer knows this runner (deleted in GitLab, or its token was reset). \
             Delete it here and create it again."
        }
        _ if r.paused => "GitLab gives a paused runner no jobs. Resume it to run jobs again.",
        _ if running > 0 => "Jobs are running right now; see the job history below.",
        Some("never_contacted") => {
            "gsr has not asked GitLab for jobs with this runner yet. This normally happens \
             within seconds; if it stays like this, check that gsr serve is running."
        }
        Some("online") => "Connected to GitLab and waiting for jobs.",
        Some(_) => {
            "GitLab has not heard from gsr for this runner recently. Check that gsr serve is \
             running and can reach GitLab."
        }
        None => "Waiting for jobs.",
    }
}

fn job_badge(s: JobStatus) -> Markup {
    let class = match s {
        JobStatus::Success => "b-ok",
        JobStatus::Failed => "b-bad",
        JobStatus::Claimed | JobStatus::Running => "b-run",
        JobStatus::Canceled => "b-idle",
        JobStatus::Lost => "b-warn",
    };
    html! { span class={ "badge " (class) } { (s.as_str()) } }
}

fn mode_label(r: &Runner) -> &'static str {
    match service::registration_of(r) {
        MODE_REGISTRATION => "registered with a registration token",
        MODE_RUNNER => "added with an existing runner token",
        _ => "created by gsr with your GitLab account",
    }
}

/// One row of the runner list.
pub(crate) struct ListRow {
    pub runner: Runner,
    /// Unfinished jobs.
    pub running: u32,
    /// The newest job, if any.
    pub last_job: Option<Job>,
}

/// The list: each runner with its unfinished-job count and newest job.
pub(crate) fn runner_list(s: &Session, runners: &[ListRow], max: u32) -> Markup {
    layout(
        "Runners",
        Some(s),
        html! {
            div.head {
                h1 { "Your runners" }
                @if (runners.len() as u64) < u64::from(max) {
                    a.button.primary href="/runners/new" id="new-runner" { "New runner" }
                }
            }
            p.muted { "You use " (runners.len()) " of your " (max) " runners."
                @if (runners.len() as u64) >= u64::from(max) {
                    " " strong.danger { "Runner limit reached" } ": delete one to create another."
                }
            }
            div.card {
                @if runners.is_empty() {
                    p { "No runners yet. " a href="/runners/new" { "Create your first runner" }
                        " for a GitLab project you maintain." }
                } @else {
                    table id="runners" {
                        thead { tr { th { "Runner" } th { "State" } th { "Last job" } th { "Tags" } th { "Runtime" } } }
                        tbody {
                            @for row in runners {
                                @let r = &row.runner;
                                tr {
                                    td { a href={ "/runners/" (r.id) } { (display_name(r)) }
                                        br; span.hint { "GitLab runner #" (r.gitlab_runner_id) } }
                                    td { (state_badge(r, row.running, None)) }
                                    td { @if let Some(j) = &row.last_job {
                                            (job_badge(j.status)) " " span.hint style="display:inline" { "#" (j.gitlab_job_id) ", " (ago(j.claimed_at)) }
                                        } @else { span.muted { "none yet" } } }
                                    td { (tags(r)) }
                                    td { (r.backend) span.hint { "up to " (r.concurrency) " at a time" } }
                                }
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

/// What the server offers in the runner form.
#[derive(Debug, Clone)]
pub(crate) struct Choices {
    /// The configured GitLab first.
    pub gitlab_urls: Vec<String>,
    pub backends: Vec<String>,
}

/// Values shown in the runner form. Tokens are never among them: a token the user typed is
/// not sent back, they type it again.
#[derive(Debug, Clone)]
pub(crate) struct FormValues {
    pub mode: String,
    pub gitlab_url: String,
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
            mode: MODE_USER.into(),
            gitlab_url: String::new(),
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
            mode: service::registration_of(r).to_string(),
            gitlab_url: r.gitlab_url.clone(),
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

fn has_error(errors: &[(String, String)], field: &str) -> bool {
    errors.iter().any(|(f, _)| f == field)
}

fn field_error(errors: &[(String, String)], field: &str) -> Markup {
    html! {
        @for (f, m) in errors {
            @if f == field { div.field-error id={ "error-" (field) } { (m) } }
        }
    }
}

/// Errors of fields the form has no place for (e.g. `runner`, `body`).
fn general_errors(errors: &[(String, String)], shown: &[&str]) -> Markup {
    html! {
        @for (f, m) in errors {
            @if !shown.contains(&f.as_str()) { div.errors id={ "error-" (f) } { (m) } }
        }
    }
}

const FORM_FIELDS: &[&str] = &[
    "mode",
    "project_id",
    "gitlab_url",
    "registration_token",
    "runner_token",
    "description",
    "tags",
    "access_level",
    "maximum_timeout",
    "backend",
    "concurrency",
];

fn field_label(f: &str) -> &str {
    match f {
        "mode" => "How to get the runner",
        "project_id" => "GitLab project id",
        "gitlab_url" => "GitLab instance",
        "registration_token" => "Registration token",
        "runner_token" => "Runner authentication token",
        "description" => "Description",
        "tags" => "Tags",
        "access_level" => "Protected branches",
        "maximum_timeout" => "Maximum job timeout",
        "backend" => "Runtime",
        "concurrency" => "Concurrent jobs",
        other => other,
    }
}

fn text_input(
    id: &str,
    kind: &str,
    value: &str,
    errors: &[(String, String)],
    extra: Markup,
) -> Markup {
    html! {
        input type=(kind) id=(id) name=(id) value=(value)
            autocomplete=[(kind == "password").then_some("off")]
            aria-invalid=[has_error(errors, id).then_some("true")]
            aria-describedby={ "hint-" (id) };
        (extra)
        (field_error(errors, id))
    }
}

fn gitlab_select(id: &str, c: &Choices, v: &FormValues, errors: &[(String, String)]) -> Markup {
    html! {
        select id=(id) name="gitlab_url" aria-invalid=[has_error(errors, "gitlab_url").then_some("true")] {
            @for u in &c.gitlab_urls {
                option value=(u) selected[v.gitlab_url.trim_end_matches('/') == u] { (u) }
            }
        }
    }
}

/// New (`editing = None`) or edit form.
pub(crate) fn runner_form(
    s: &Session,
    c: &Choices,
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
    let mode = |m: &str| v.mode == m;
    layout(
        &title,
        Some(s),
        html! {
            h1 { (title) }
            (general_errors(errors, FORM_FIELDS))
            @if errors.iter().any(|(f, _)| FORM_FIELDS.contains(&f.as_str())) {
                div.errors id="form-errors" {
                    "Please correct these fields:"
                    ul style="margin:.3rem 0 0" {
                        @for (f, m) in errors {
                            @if FORM_FIELDS.contains(&f.as_str()) {
                                li { a href={ "#" (f) } style="color:inherit" { (field_label(f)) } ": " (m) }
                            }
                        }
                    }
                }
            }
            form.card method="post" action=(action) id="runner-form" novalidate {
                input type="hidden" name="_csrf" value=(s.csrf);
                @if let Some(r) = editing {
                    input type="hidden" name="_method" value="PUT";
                    p.muted { "GitLab runner #" (r.gitlab_runner_id) " on " code { (r.gitlab_url) } ", "
                        (mode_label(r)) ". Changes to GitLab-side settings are saved in GitLab too." }
                } @else {
                    fieldset {
                        legend { "How should gsr get the runner?" }
                        div.modes {
                            label.check { input type="radio" name="mode" id="mode-user_token" value=(MODE_USER) checked[mode(MODE_USER)];
                                span { "Create a new runner for a project " span.hint { "Recommended. gsr creates it in GitLab with your account (you must be Maintainer or Owner of the project)." } } }
                            label.check { input type="radio" name="mode" id="mode-registration_token" value=(MODE_REGISTRATION) checked[mode(MODE_REGISTRATION)];
                                span { "Register with a registration token " span.hint { "GitLab's older way; some GitLab instances have it turned off." } } }
                            label.check { input type="radio" name="mode" id="mode-runner_token" value=(MODE_RUNNER) checked[mode(MODE_RUNNER)];
                                span { "Use a runner you already created in GitLab " span.hint { "Paste its runner authentication token (glrt-…); its settings are taken from GitLab." } } }
                        }
                        (field_error(errors, "mode"))
                    div.mode-fields id="fields-user_token" {
                        label for="project_id" { "GitLab project id"
                            span.hint id="hint-project_id" { "The number shown on the project's overview page (Project ID)." } }
                        (text_input("project_id", "number", &v.project_id, errors, html! {}))
                    }
                    div.token-only id="fields-gitlab" {
                        label for="gitlab_url" { "GitLab instance"
                            span.hint id="hint-gitlab_url" { "Where the runner lives. Only the instances this server is set up for are offered." } }
                        (gitlab_select("gitlab_url", c, v, errors))
                        (field_error(errors, "gitlab_url"))
                    }
                    div.mode-fields id="fields-registration_token" {
                        label for="registration_token" { "Registration token"
                            span.hint id="hint-registration_token" { "From the project's, group's or instance's Settings → CI/CD → Runners. It is used once and not stored." } }
                        (text_input("registration_token", "password", "", errors, html! {}))
                    }
                    div.mode-fields id="fields-runner_token" {
                        label for="runner_token" { "Runner authentication token"
                            span.hint id="hint-runner_token" { "Starts with glrt-. It is stored encrypted and never shown again." } }
                        (text_input("runner_token", "password", "", errors, html! {}))
                    }
                    }
                }
                fieldset {
                    legend { "Settings in GitLab" }
                    @if editing.is_none() {
                        p.hint.runner-token-only { "For a runner you already created in GitLab, gsr takes these settings from GitLab when your account may read the runner; otherwise it keeps what you enter here." }
                    }
                    label for="description" { "Description" span.hint id="hint-description" { "Shown in GitLab's runner list." } }
                    (text_input("description", "text", &v.description, errors, html! {}))
                    label for="tags" { "Tags" span.hint id="hint-tags" { "Comma separated. Jobs with tags only run on runners that have all of them." } }
                    (text_input("tags", "text", &v.tags, errors, html! {}))
                    label.check { input type="checkbox" name="run_untagged" value="true" checked[v.run_untagged]; span { "Run untagged jobs" } }
                    label.check { input type="checkbox" name="locked" value="true" checked[v.locked]; span { "Locked to its current projects" } }
                    label.check { input type="checkbox" name="paused" value="true" checked[v.paused]; span { "Paused (GitLab gives it no jobs)" } }
                    label for="access_level" { "Protected branches" }
                    select id="access_level" name="access_level" {
                        option value="not_protected" selected[v.access_level == "not_protected"] { "Run jobs of all branches" }
                        option value="ref_protected" selected[v.access_level == "ref_protected"] { "Run jobs of protected branches only" }
                    }
                    (field_error(errors, "access_level"))
                    label for="maximum_timeout" { "Maximum job timeout" span.hint id="hint-maximum_timeout" { "Seconds, at least 600. Empty: the project's timeout applies." } }
                    (text_input("maximum_timeout", "number", &v.maximum_timeout, errors, html! {}))
                }
                fieldset {
                    legend { "Where jobs run" }
                    label for="backend" { "Runtime" span.hint id="hint-backend" { "The backend that starts a worker for each job." } }
                    select id="backend" name="backend" aria-invalid=[has_error(errors, "backend").then_some("true")] {
                        @for b in &c.backends {
                            option value=(b) selected[v.backend == *b] { (b) }
                        }
                    }
                    (field_error(errors, "backend"))
                    label for="concurrency" { "Concurrent jobs" span.hint id="hint-concurrency" { "How many jobs of this runner may run at the same time (1–100)." } }
                    (text_input("concurrency", "number", &v.concurrency, errors, html! {}))
                }
                div.actions {
                    button.primary type="submit" id="save" { @if editing.is_some() { "Save changes" } @else { "Create runner" } }
                    @if let Some(r) = editing {
                        a.button href={ "/runners/" (r.id) } { "Cancel" }
                    } @else {
                        a.button href="/runners" { "Cancel" }
                    }
                }
            }
        },
    )
}

/// What deleting `r` does in GitLab, by how it was created.
fn delete_effect(r: &Runner) -> &'static str {
    match service::registration_of(r) {
        MODE_REGISTRATION => {
            "gsr unregisters it in GitLab with its runner token: the runner is removed there too."
        }
        MODE_RUNNER => {
            "You created this runner in GitLab, so it stays there: gsr only forgets its token \
             and removes its runner manager (like gitlab-runner unregister). Delete the runner \
             in GitLab yourself if you no longer need it."
        }
        _ => "gsr deletes it in GitLab too, with your account.",
    }
}

/// `GET /runners/:id/delete`: what delete does, and the button that does it.
pub(crate) fn delete_page(s: &Session, r: &Runner, running: usize) -> Markup {
    layout(
        &format!("Delete {}", display_name(r)),
        Some(s),
        html! {
            div.card style="max-width:40rem" {
                h1 { "Delete " (display_name(r)) "?" }
                p id="delete-effect" { (delete_effect(r)) }
                @if running > 0 {
                    p.errors { (running) " job(s) of this runner are still running. They finish, but gsr will no longer pick up new jobs for it." }
                }
                p { "Jobs waiting in GitLab for this runner's tags will need another runner. The job history here is deleted with it." }
                form method="post" action={ "/runners/" (r.id) } {
                    input type="hidden" name="_csrf" value=(s.csrf);
                    input type="hidden" name="_method" value="DELETE";
                    div.actions {
                        button.primary.danger type="submit" id="confirm-delete" style="background:#cf222e;border-color:#a40e26;color:#fff" { "Delete runner" }
                        a.button href={ "/runners/" (r.id) } { "Keep it" }
                    }
                }
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
    /// The secret in `once` replaced an old one (not a new runner).
    rotated: bool,
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
        rotated: false,
    }
}

/// A duration for people: `35 ms`, `2.4 s`, `3 min 5 s`; `–` when unknown.
fn secs(d: Option<chrono::TimeDelta>) -> String {
    let Some(d) = d else {
        return "–".into();
    };
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// `just now`, `5 min ago`, `3 h ago`, `2 days ago`.
fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - t).num_seconds().max(0);
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

fn webhook_steps(webhook_url: &str, secret: Option<&str>) -> Markup {
    html! {
        ol {
            li { "In GitLab, open the project, then " strong { "Settings → Webhooks" } " and choose " strong { "Add new webhook" } "." }
            li { "URL:" code.copy id="webhook-url" { (webhook_url) } }
            li { "Secret token:"
                @if let Some(secret) = secret {
                    code.copy id="webhook-secret" { (secret) }
                } @else {
                    " the secret shown when the runner was created."
                }
            }
            li { "Trigger: tick " strong { "Job events" } " only, then save." }
        }
    }
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

    pub(crate) fn rotated(mut self) -> Self {
        self.rotated = true;
        self
    }

    pub(crate) fn render(self) -> Markup {
        let (s, r, webhook_url) = (self.session, self.runner, self.webhook_url);
        let running = self
            .jobs
            .iter()
            .filter(|j| matches!(j.status, JobStatus::Claimed | JobStatus::Running))
            .count();
        let running = u32::try_from(running).unwrap_or(u32::MAX);
        layout(
            &display_name(r),
            Some(s),
            html! {
                div.head {
                    h1 { (display_name(r)) " " (state_badge(r, running, self.status)) }
                    div.actions style="margin:0" {
                        a.button href={ "/runners/" (r.id) "/edit" } id="edit" { "Edit" }
                        form method="post" action={ "/runners/" (r.id) "/pause" } {
                            input type="hidden" name="_csrf" value=(s.csrf);
                            @if r.paused {
                                input type="hidden" name="paused" value="false";
                                button type="submit" id="resume" { "Resume" }
                            } @else {
                                input type="hidden" name="paused" value="true";
                                button type="submit" id="pause" { "Pause" }
                            }
                        }
                        a.button.danger href={ "/runners/" (r.id) "/delete" } id="delete" { "Delete runner" }
                    }
                }
                p.muted id="state-help" { (state_help(r, running, self.status)) }
                @if let Some(o) = &self.once {
                    div.card.secret id="webhook-setup" {
                        @if self.rotated {
                            h2 { "New webhook secret token" }
                            p { "The old secret token no longer works. In GitLab, edit the project's webhook for this URL and paste the new secret token." }
                        } @else {
                            h2 { "Runner created. One more step: the GitLab webhook" }
                            p { "GitLab tells gsr about waiting jobs through a project webhook. Without it jobs still run, but only when gsr's background check notices them." }
                        }
                        (webhook_steps(webhook_url, Some(o.webhook_secret)))
                        p { strong { "Copy the secret token now: it is shown only this once." } }
                    }
                }
                div.card {
                    h2 { "Settings" }
                    dl.props {
                        dt { "GitLab runner" } dd { "#" span id="gitlab-runner-id" { (r.gitlab_runner_id) } " on " code { (r.gitlab_url) } }
                        dt { "Created" } dd { (mode_label(r)) }
                        dt { "Status in GitLab" } dd id="gitlab-status" { (self.status.unwrap_or("unknown").replace('_', " ")) }
                        dt { "Description" } dd id="description" { @if r.description.is_empty() { span.muted { "none" } } @else { (r.description) } }
                        dt { "Tags" } dd id="tags" { (tags(r)) }
                        dt { "Untagged jobs" } dd { @if r.run_untagged { "runs them" } @else { "does not run them" } }
                        dt { "Locked" } dd { @if r.locked { "yes, to its current projects" } @else { "no" } }
                        dt { "Branches" } dd { @if r.access_level.as_str() == "ref_protected" { "protected branches only" } @else { "all branches" } }
                        dt { "Maximum timeout" } dd { @match r.maximum_timeout { Some(t) => { (t) " s" }, None => "the project's" } }
                        dt { "State" } dd id="state" { @if r.paused { "paused" } @else { "active" } }
                        dt { "Runtime" } dd { (r.backend) ", up to " (r.concurrency) " job" @if r.concurrency != 1 { "s" } " at a time" }
                    }
                }
                @if self.once.is_none() {
                    details.card id="webhook-help" {
                        summary { strong { "GitLab webhook setup" } }
                        (webhook_steps(webhook_url, None))
                        form method="post" action={ "/runners/" (r.id) "/webhook-secret" } {
                            input type="hidden" name="_csrf" value=(s.csrf);
                            p { "Lost the secret token? " button type="submit" id="new-webhook-secret" { "Generate a new secret token" } }
                            p.hint { "The old one stops working at once; paste the new one into GitLab's webhook." }
                        }
                    }
                }
                div.card {
                    h2 { "Jobs" }
                    @if self.jobs.is_empty() {
                        p.muted id="no-jobs" { "No jobs yet. Jobs appear here as soon as gsr claims them from GitLab." }
                    } @else {
                        table id="jobs" {
                            thead { tr { th { "GitLab job" } th { "Status" } th { "Claimed" } th title="Time the job waited in GitLab's queue" { "Queued" } th title="From claim to start" { "Pickup" } th { "Run time" } th { "Failure" } } }
                            tbody {
                                @for j in self.jobs {
                                    tr {
                                        td { "#" (j.gitlab_job_id) }
                                        td class="job-status" { (job_badge(j.status)) }
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
                }
            },
        )
    }
}
