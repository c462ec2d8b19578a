//! Splitting the repository URL GitLab sends into a credential-free URL (what git sees in its
//! argv and writes to `.git/config`) and the credentials (handed to git only through the
//! environment of its child processes, read back by the credential helper).

use secrecy::{ExposeSecret, SecretString};

use crate::GitError;

/// The parts of `git_info.repo_url`.
pub(crate) struct Remote {
    /// The URL without userinfo: safe to log, to pass as an argument and to store.
    pub(crate) url: String,
    /// Credentials for `http(s)` remotes; `None` for other schemes or URLs without userinfo.
    pub(crate) creds: Option<Credentials>,
}

/// Basic-auth credentials for one host.
pub(crate) struct Credentials {
    /// `gitlab-ci-token` in practice.
    pub(crate) username: String,
    /// The job token.
    pub(crate) password: SecretString,
    /// `scheme://host[:port]`: the credential helper is configured for this URL only, so a
    /// submodule on another host never receives the token.
    pub(crate) scope: String,
    /// The bare host name (no port), to rewrite same-host SSH submodule URLs to HTTPS.
    pub(crate) host: String,
    /// `scheme://host[:port]/`, the HTTPS base same-host SSH URLs are rewritten to.
    pub(crate) base: String,
}

impl Remote {
    /// Parse `raw`. Never puts the password in an error message.
    pub(crate) fn parse(raw: &SecretString) -> Result<Remote, GitError> {
        let raw = raw.expose_secret().trim();
        if raw.is_empty() {
            return Err(GitError::InvalidRequest(
                "the repository URL is empty".into(),
            ));
        }
        if raw.starts_with('-') {
            return Err(GitError::InvalidRequest(
                "the repository URL must not start with '-'".into(),
            ));
        }
        let Some(scheme_end) = raw.find("://") else {
            // scp-like (`git@host:group/project.git`) or a local path: no userinfo to strip
            // (an scp-like URL cannot carry a password).
            return Ok(Remote {
                url: raw.to_owned(),
                creds: None,
            });
        };
        let scheme = raw[..scheme_end].to_ascii_lowercase();
        let rest = &raw[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let url = format!("{scheme}://{hostport}{path}");
        let creds = match userinfo {
            Some(info) if scheme == "http" || scheme == "https" => {
                let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                let password = SecretString::from(percent_decode(pass));
                if password.expose_secret().is_empty() {
                    None
                } else {
                    let host = host_of(hostport);
                    Some(Credentials {
                        username: percent_decode(user),
                        password,
                        scope: format!("{scheme}://{hostport}"),
                        base: format!("{scheme}://{hostport}/"),
                        host,
                    })
                }
            }
            _ => None,
        };
        Ok(Remote { url, creds })
    }
}

/// `host` from `host[:port]` or `[v6]:port`.
fn host_of(hostport: &str) -> String {
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    hostport.split(':').next().unwrap_or(hostport).to_owned()
}

/// Decode `%XX` escapes; anything malformed is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Remote {
        Remote::parse(&SecretString::from(s)).unwrap()
    }

    #[test]
    fn strips_gitlab_userinfo() {
        let r = parse("https://gitlab-ci-token:glcbt-abc123@gitlab.example.com/group/proj.git");
        assert_eq!(r.url, "https://gitlab.example.com/group/proj.git");
        let c = r.creds.unwrap();
        assert_eq!(c.username, "gitlab-ci-token");
        assert_eq!(c.password.expose_secret(), "glcbt-abc123");
        assert_eq!(c.scope, "https://gitlab.example.com");
        assert_eq!(c.host, "gitlab.example.com");
    }

    #[test]
    fn keeps_port_and_decodes() {
        let r = parse("HTTP://u%40x:p%3Aw%2@127.0.0.1:8080/a/b.git?x=1");
        assert_eq!(r.url, "http://127.0.0.1:8080/a/b.git?x=1");
        let c = r.creds.unwrap();
        assert_eq!(c.username, "u@x");
        assert_eq!(c.password.expose_secret(), "p:w%2");
        assert_eq!(c.scope, "http://127.0.0.1:8080");
        assert_eq!(c.host, "127.0.0.1");
    }

    #[test]
    fn file_urls_lose_their_userinfo() {
        let r = parse("file://gitlab-ci-token:secret@/tmp/repo.git");
        assert_eq!(r.url, "file:///tmp/repo.git");
        assert!(r.creds.is_none());
    }

    #[test]
    fn no_userinfo_and_scp_like() {
        let r = parse("https://example.com/a.git");
        assert_eq!(r.url, "https://example.com/a.git");
        assert!(r.creds.is_none());
        let r = parse("git@example.com:a/b.git");
        assert_eq!(r.url, "git@example.com:a/b.git");
        assert!(r.creds.is_none());
        assert_eq!(host_of("[::1]:80"), "::1");
    }

    #[test]
    fn rejects_option_like_and_empty() {
        assert!(Remote::parse(&SecretString::from("--upload-pack=x")).is_err());
        assert!(Remote::parse(&SecretString::from(" ")).is_err());
    }
}
