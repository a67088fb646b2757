//! Cloning over HTTP, as from `https://github.com/{owner}/{name}.git`:
//! git's smart protocol (fetch only), served by `git http-backend` under
//! `{api_url}/git/{owner}/{name}.git`. A private repository (see
//! [`FakeHub::set_private`]) answers only a caller with HTTP Basic
//! credentials whose password is the hub's token or a live installation
//! token that reaches the repository with `contents` permission, as GitHub
//! answers `x-access-token:<token>`; anyone else gets GitHub's 401 (asking
//! for credentials). Pushing is refused (sluice never pushes over git).

use super::{FakeHub, Inner};
use base64::Engine;
use http::{HeaderMap, Method, Response, StatusCode};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// Longest a `git http-backend` call may take.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(60);

type Reply = Response<Vec<u8>>;

fn plain(status: u16, text: &str) -> Reply {
    let mut r = Response::new(text.as_bytes().to_vec());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// `{owner}/{name}` and the rest of a `/git/{owner}/{name}.git/{rest}`
/// path, if it is one.
pub(crate) fn split(path: &str) -> Option<(String, &str)> {
    let rest = path.strip_prefix("/git/")?;
    let (owner, rest) = rest.split_once('/')?;
    let (name, rest) = rest.split_once(".git/")?;
    let valid = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    (valid(owner) && valid(name)).then(|| (format!("{owner}/{name}"), rest))
}

/// The password of HTTP Basic credentials.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

/// Whether the caller may read `repo`.
fn may_read(inner: &Inner, repo: &str, headers: &HeaderMap) -> bool {
    let st = inner.state.lock().expect("state");
    if !st.private.contains(repo) {
        return true;
    }
    let Some(password) = basic_password(headers) else {
        return false;
    };
    if inner.token.as_deref() == Some(password.as_str()) {
        return true;
    }
    let Some(rec) = st.tokens.get(&password) else {
        return false;
    };
    let Some(inst) = st.installations.get(&rec.installation_id) else {
        return false;
    };
    rec.expires > SystemTime::now()
        && inst.covers(repo)
        && rec.repos.as_ref().is_none_or(|r| r.contains(repo))
        && rec
            .permissions
            .as_ref()
            .is_none_or(|p| p.contains_key("contents"))
}

pub(crate) async fn serve(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let Some((repo, rest)) = split(path) else {
        return plain(404, "Not Found");
    };
    let known = inner.state.lock().expect("state").repos.contains_key(&repo);
    if !known {
        return plain(404, "Repository not found.");
    }
    if rest == "git-receive-pack" || query.contains("receive-pack") {
        return plain(403, "Write access to repository not granted.");
    }
    match (method, rest) {
        (&Method::GET, "info/refs") if query == "service=git-upload-pack" => {}
        (&Method::POST, "git-upload-pack") => {}
        _ => return plain(404, "Not Found"),
    }
    if !may_read(inner, &repo, headers) {
        let mut r = plain(
            401,
            "Invalid username or token. Password authentication is not supported for Git operations.",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"GitHub\""),
        );
        return r;
    }
    match backend(inner, method, &repo, rest, query, headers, body).await {
        Ok(r) => r,
        Err(e) => plain(500, &format!("git http-backend: {e}")),
    }
}

/// Runs `git http-backend` as a CGI for one request.
async fn backend(
    inner: &Inner,
    method: &Method,
    repo: &str,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> anyhow::Result<Reply> {
    let header = |name: http::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &inner.repos_dir)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", format!("/{repo}.git/{rest}"))
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header(http::header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header(http::header::CONTENT_ENCODING),
        )
        .env(
            "GIT_PROTOCOL",
            headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = body.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
        let _ = stdin.shutdown().await;
    });
    let out = tokio::time::timeout(BACKEND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {BACKEND_TIMEOUT:?}"))??;
    let _ = writer.await;
    // CGI: headers, a blank line, the body.
    let raw = out.stdout;
    let split_at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .ok_or_else(|| anyhow::anyhow!("no CGI header in its output"))?;
    let (head, rest) = raw.split_at(split_at.0);
    let mut reply = Response::new(rest[split_at.1..].to_vec());
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(200);
            *reply.status_mut() = StatusCode::from_u16(code)?;
        } else if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            reply.headers_mut().insert(n, v);
        }
    }
    Ok(reply)
}

impl FakeHub {
    /// Makes `repo` private (or public again): cloning it over HTTP
    /// ([`FakeHub::http_clone_base`]) then needs credentials.
    pub fn set_private(&self, repo: &str, private: bool) {
        let mut st = self.inner.state.lock().expect("state");
        if private {
            st.private.insert(repo.to_string());
        } else {
            st.private.remove(repo);
        }
    }

    /// Every installation token handed out so far (live or not), so a
    /// test can look for them where they must not be.
    pub fn issued_tokens(&self) -> Vec<String> {
        let st = self.inner.state.lock().expect("state");
        st.tokens.keys().cloned().collect()
    }

    /// `http://…/git`: a repository's clone URL over HTTP is
    /// `{http_clone_base}/{owner}/{name}.git`.
    pub fn http_clone_base(&self) -> String {
        format!("{}/git", self.inner.api_url.trim_end_matches('/'))
    }
}
