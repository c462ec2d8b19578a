//! The credential path over smart HTTP: a test server in front of `git http-backend` that
//! demands Basic auth (like GitLab), and checks on every authorised request that no process
//! on the machine carries the token in its argv.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine;
use gsr_exec::MemorySink;
use gsr_git::{get_sources, GitError, SubmoduleStrategy};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::fixtures::{assert_no_token, file_url, git, request, Upstream, TOKEN};

#[derive(Default, Debug)]
struct Seen {
    /// Request paths that came with the right credentials.
    authorized: Vec<String>,
    /// Requests without (or with wrong) credentials.
    unauthorized: usize,
    /// Command lines that contained the token (must stay empty).
    leaks: Vec<String>,
    /// Command lines of git processes alive while a request was served.
    git_processes: Vec<String>,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

async fn serve(root: PathBuf) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let root = root.clone();
            let seen = state.clone();
            tokio::spawn(async move {
                let _ = handle(stream, &root, &seen).await;
            });
        }
    });
    Server { port, seen }
}

async fn handle(stream: TcpStream, root: &Path, seen: &Mutex<Seen>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length") {
        body.resize(len.parse().unwrap(), 0);
        reader.read_exact(&mut body).await?;
    }
    let mut stream = reader.into_inner();

    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{TOKEN}"))
    );
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if header("authorization").as_deref() != Some(expected.as_str()) {
        seen.lock().unwrap().unauthorized += 1;
        stream
            .write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"GitLab\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        return stream.shutdown().await;
    }
    {
        let (leaks, gits) = scan_processes();
        let mut seen = seen.lock().unwrap();
        seen.authorized.push(path.to_owned());
        seen.leaks.extend(leaks);
        seen.git_processes.extend(gits);
    }

    let mut cgi = tokio::process::Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "HTTP_GIT_PROTOCOL",
            header("git-protocol").unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(enc) = header("content-encoding") {
        cgi.env("HTTP_CONTENT_ENCODING", enc);
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await?;
    writer.await.unwrap();
    let raw = out.stdout;
    let (head, payload) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => (&raw[..0], &raw[..]),
    };
    let mut status = "200 OK".to_owned();
    let mut response = Vec::new();
    let mut extra = String::new();
    for line in String::from_utf8_lossy(head).lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                status = v.trim().to_owned();
            } else {
                extra.push_str(&format!("{}: {}\r\n", k.trim(), v.trim()));
            }
        }
    }
    response.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    response.extend_from_slice(payload);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Every process's argv: those with the token, and git ones (to show the scan saw the
/// client side of the request being served).
fn scan_processes() -> (Vec<String>, Vec<String>) {
    let mut leaks = Vec::new();
    let mut gits = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(TOKEN) {
            leaks.push(cmdline.clone());
        }
        if cmdline.starts_with("git") || cmdline.contains("/git ") {
            gits.push(cmdline);
        }
    }
    (leaks, gits)
}

#[tokio::test]
async fn http_fetch_uses_the_token_only_through_the_helper() {
    // Upstream under <root>/group/proj.git, a submodule repository next to it, referenced
    // once by a relative URL and once by a same-host SSH URL (rewritten to HTTP).
    let up = Upstream::new();
    let root = up.tmp.path().to_owned();
    let sub = root.join("group").join("sub.git");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, &["init", "-q", "--bare"]);
    let sub_work = TempDir::new().unwrap();
    git(sub_work.path(), &["init", "-q"]);
    std::fs::write(sub_work.path().join("inner.txt"), "inner").unwrap();
    git(sub_work.path(), &["add", "-A"]);
    git(sub_work.path(), &["commit", "-q", "-m", "sub"]);
    git(
        sub_work.path(),
        &["push", "-q", &file_url(&sub), "HEAD:refs/heads/main"],
    );

    let server = serve(root.clone()).await;
    let port = server.port;
    up.commit(&[("a.txt", "one")], "c1");
    git(&up.work, &["submodule", "add", "-q", "../sub.git", "rel"]);
    git(&up.work, &["submodule", "add", "-q", "../sub.git", "ssh"]);
    git(
        &up.work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.ssh.url",
            "git@127.0.0.1:group/sub.git",
        ],
    );
    let sha = up.commit(&[], "submodules");

    let builds = TempDir::new().unwrap();
    let project = builds.path().join("proj");
    let url = format!("http://gitlab-ci-token:{TOKEN}@127.0.0.1:{port}/group/proj.git");
    let mut req = request(&project, &url, &sha);
    req.depth = 1;
    req.submodules = SubmoduleStrategy::Normal;
    let sink = MemorySink::default();
    let result = get_sources(&req, &sink).await;
    let log = String::from_utf8_lossy(&sink.contents()).into_owned();
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));

    assert_eq!(
        std::fs::read_to_string(project.join("a.txt")).unwrap(),
        "one"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("rel/inner.txt")).unwrap(),
        "inner"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("ssh/inner.txt")).unwrap(),
        "inner"
    );
    assert_eq!(
        git(&project, &["config", "remote.origin.url"]),
        format!("http://127.0.0.1:{port}/group/proj.git")
    );
    assert_no_token(&project, &sink.contents(), None);
    {
        let seen = server.seen.lock().unwrap();
        assert!(seen.leaks.is_empty(), "token in argv: {:?}", seen.leaks);
        assert!(
            seen.git_processes.iter().any(|c| c.contains("fetch")),
            "the scan saw no git client: {seen:?}"
        );
        assert!(seen.unauthorized > 0, "git first tried without credentials");
        assert!(seen
            .authorized
            .iter()
            .any(|p| p.starts_with("/group/proj.git/")));
        assert!(seen
            .authorized
            .iter()
            .any(|p| p.starts_with("/group/sub.git/")));
    }

    // A wrong token: a readable error that does not echo it.
    let bad = "glcbt-64_WrongTokenAlsoSecret999";
    let url = format!("http://gitlab-ci-token:{bad}@127.0.0.1:{port}/group/proj.git");
    let sink = MemorySink::default();
    let err = get_sources(&request(&project, &url, &sha), &sink)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Command { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`git fetch origin` failed"), "{msg}");
    assert!(!msg.contains(bad), "{msg}");
    assert!(!String::from_utf8_lossy(&sink.contents()).contains(bad));
}
