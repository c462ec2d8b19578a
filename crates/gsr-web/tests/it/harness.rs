//! Test world: a simulator with users alice (Maintainer of `alice/app`) and bob (Maintainer
//! of `bob/app`), an OAuth application, and the web app on an in-memory SQLite store.
//! [`Browser`] keeps cookies and records every body the app sent, so tests can assert that
//! no secret ever appeared.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use gsr_sim::{AdminClient, SimConfig, SimHandle};
use gsr_store::{SecretBox, SqliteStore, Store};
use gsr_web::{app, WebConfig, WebState};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const PUBLIC_URL: &str = "http://gsr.test";

pub struct World {
    pub sim: SimHandle,
    pub admin: AdminClient,
    pub store: Arc<dyn Store>,
    pub state: WebState,
    pub alice_project: u64,
    pub bob_project: u64,
    /// (username, GitLab user id).
    pub users: Mutex<Vec<(String, u64)>>,
    /// Every response body the app produced, for secret scans.
    pub bodies: Arc<Mutex<Vec<String>>>,
}

pub async fn world(max_runners: u32) -> World {
    let sim = gsr_sim::spawn(SimConfig::default()).await.unwrap();
    let admin = sim.admin();
    let alice = admin.create_user("alice", Some("alice-pw")).await.unwrap();
    let bob = admin.create_user("bob", Some("bob-pw")).await.unwrap();
    let pa = admin.create_project("alice/app").await.unwrap();
    let pb = admin.create_project("bob/app").await.unwrap();
    admin.add_member(pa.id, alice.id, 40).await.unwrap();
    admin.add_member(pb.id, bob.id, 40).await.unwrap();
    let (client_id, client_secret) = admin
        .create_oauth_app(
            "gsr",
            &format!("{PUBLIC_URL}/auth/callback"),
            &["api", "read_user"],
            true,
        )
        .await
        .unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::in_memory(SecretBox::generate()).await.unwrap());
    let state = WebState::new(
        store.clone(),
        WebConfig {
            gitlab_url: sim.url.clone(),
            oauth_client_id: client_id,
            oauth_client_secret: Some(client_secret.into()),
            public_url: PUBLIC_URL.into(),
            max_runners,
        },
        SecretBox::generate(),
    );
    World {
        sim,
        admin,
        store,
        state,
        alice_project: pa.id,
        bob_project: pb.id,
        users: Mutex::new(vec![("alice".into(), alice.id), ("bob".into(), bob.id)]),
        bodies: Arc::default(),
    }
}

impl World {
    /// The simulator's user id of `username` (from the store, filled at login).
    pub async fn admin_user_id(&self, username: &str) -> u64 {
        let users = self.users.lock().unwrap();
        users
            .iter()
            .find(|(n, _)| n == username)
            .map(|(_, id)| *id)
            .unwrap()
    }
}

/// One response, body as text.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A browser with a cookie jar, driving the app in-process.
pub struct Browser {
    pub router: Router,
    pub cookies: Vec<(String, String)>,
    pub bodies: Arc<Mutex<Vec<String>>>,
    pub csrf: String,
}

impl Browser {
    pub fn new(w: &World) -> Self {
        Self::with_state(w, w.state.clone())
    }

    /// A browser on an app with a changed state (extra GitLab URLs, backends).
    pub fn with_state(w: &World, state: WebState) -> Self {
        Self {
            router: app(state),
            cookies: Vec::new(),
            bodies: w.bodies.clone(),
            csrf: String::new(),
        }
    }

    pub async fn send(
        &mut self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: String,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(header::COOKIE, c.join("; "));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if !self.csrf.is_empty() && content_type == Some("application/json") {
            req = req.header("x-csrf-token", &self.csrf);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        for sc in resp.headers().get_all(header::SET_COOKIE) {
            let sc = sc.to_str().unwrap();
            let (kv, _) = sc.split_once(';').unwrap_or((sc, ""));
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() && !sc.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        self.bodies.lock().unwrap().push(body.clone());
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, uri: &str) -> Resp {
        self.send(Method::GET, uri, None, String::new()).await
    }

    pub async fn post_form(&mut self, uri: &str, fields: &[(&str, &str)]) -> Resp {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            Method::POST,
            uri,
            Some("application/x-www-form-urlencoded"),
            body,
        )
        .await
    }

    pub async fn json(&mut self, method: Method, uri: &str, body: serde_json::Value) -> Resp {
        self.send(method, uri, Some("application/json"), body.to_string())
            .await
    }

    /// Logs in through the simulator's OAuth provider as `username` (following the real
    /// redirects: app → GitLab authorize → sign-in form → app callback) and fetches the
    /// CSRF token.
    pub async fn login(&mut self, w: &World, username: &str) {
        let start = self.get("/auth/login").await;
        assert_eq!(start.status, StatusCode::SEE_OTHER, "{start:?}");
        let authorize = url::Url::parse(start.location()).unwrap();
        assert!(authorize
            .as_str()
            .starts_with(&format!("{}/oauth/authorize?", w.sim.url)));
        let q: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
        assert!(q.contains(&("code_challenge_method".into(), "S256".into())));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        // The sign-in page renders, then the user signs in (username + password).
        let page = http.get(authorize.clone()).send().await.unwrap();
        assert!(page.status().is_success(), "{}", page.text().await.unwrap());
        let mut form = q.clone();
        form.push(("username".into(), username.into()));
        form.push(("password".into(), format!("{username}-pw")));
        let back = http
            .post(format!("{}/oauth/authorize", w.sim.url))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(back.status().is_redirection(), "{}", back.status());
        let loc = back.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string();
        let callback = loc
            .strip_prefix(PUBLIC_URL)
            .expect("redirected to our callback");
        let done = self.get(callback).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{done:?}");
        assert_eq!(done.location(), "/runners");
        assert!(self.cookies.iter().any(|(k, _)| k == "gsr_session"));
        let me = self.get("/api/v1/me").await;
        assert_eq!(me.status, StatusCode::OK, "{me:?}");
        assert_eq!(me.json()["username"], username);
        self.csrf = me.json()["csrf_token"].as_str().unwrap().to_string();
    }
}
