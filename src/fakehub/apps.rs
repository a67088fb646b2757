//! The App side of the fake GitHub: Apps registered with an RSA key pair,
//! their installations on accounts, JWT authentication as an App, and
//! installation access tokens that expire.
//!
//! As GitHub does (API description: `apps/get-authenticated`,
//! `apps/list-installations`, `apps/get-repo-installation`,
//! `apps/create-installation-access-token`; GitHub's docs on JWTs):
//! - an App authenticates with `Authorization: Bearer <jwt>`, an RS256 JWT
//!   signed with its private key, `iss` its id (a number or a string), `iat`
//!   not in the future, `exp` in the future and at most ten minutes ahead;
//! - a JWT only opens the `/app…` endpoints and `GET /repos/{o}/{r}/installation`;
//! - an installation token (`ghs_…`) opens the repositories of its
//!   installation (or the ones it was narrowed to), within the App's
//!   permissions, until it expires (an hour by default); then `401 Bad
//!   credentials`.

use super::state::{AppRec, InstallationRec, Selection, State, TokenRec};
use super::{FakeHub, Inner, shapes};
use anyhow::{Context, anyhow, bail};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderMap;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// GitHub's lifetime of an installation token.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How far ahead of now a JWT's `exp` may be, in seconds.
pub const JWT_MAX_AHEAD_SECS: u64 = 600;

/// The permissions [`FakeHub::register_app`] gives an App: what a merge
/// bot needs.
pub const DEFAULT_APP_PERMISSIONS: &[(&str, &str)] = &[
    ("administration", "read"),
    ("checks", "write"),
    ("contents", "write"),
    ("issues", "write"),
    ("metadata", "read"),
    ("pull_requests", "write"),
    ("statuses", "write"),
];

/// The events [`FakeHub::register_app`] subscribes an App to.
pub const DEFAULT_APP_EVENTS: &[&str] = &[
    "check_run",
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "push",
    "status",
];

/// GitHub's 401 for a JWT that is not one, or not signed by the App it names.
pub const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";
/// GitHub's 401 for a JWT whose `exp` has passed (or is missing).
pub const JWT_EXPIRED: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
/// GitHub's 401 for a JWT whose `exp` is more than ten minutes ahead.
pub const JWT_TOO_FAR: &str = "'Expiration time' claim ('exp') is too far in the future";
/// GitHub's 401 for a JWT whose `iat` is missing, not an integer, or in the
/// future.
pub const JWT_BAD_IAT: &str = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
/// GitHub's 401 for an unknown or expired token.
pub const BAD_CREDENTIALS: &str = "Bad credentials";
/// GitHub's 403 when an App's installation lacks the permission a call
/// needs (and for a JWT used where an installation token is needed).
pub const NOT_ACCESSIBLE: &str = "Resource not accessible by integration";

/// What sluice is configured with to run as an App, and what a test signs
/// JWTs with.
#[derive(Clone)]
pub struct AppKeys {
    pub app_id: u64,
    /// The App's slug: its comments are by `<slug>[bot]`.
    pub slug: String,
    /// The private key as GitHub hands it out: PKCS#1 PEM
    /// (`-----BEGIN RSA PRIVATE KEY-----`), 2048 bits.
    pub private_key_pem: String,
    /// The same key, DER `RSAPrivateKey`.
    private_key_der: Vec<u8>,
}

impl std::fmt::Debug for AppKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeys")
            .field("app_id", &self.app_id)
            .field("slug", &self.slug)
            .finish_non_exhaustive()
    }
}

impl AppKeys {
    /// A fresh key pair that no App of any fake has, for `app_id`: a JWT it
    /// signs is a forgery.
    pub fn unregistered(app_id: u64) -> anyhow::Result<AppKeys> {
        let (private_key_der, _) = generate_key()?;
        Ok(AppKeys {
            app_id,
            slug: format!("unregistered-{app_id}"),
            private_key_pem: pem("RSA PRIVATE KEY", &private_key_der),
            private_key_der,
        })
    }

    /// The login the App's comments and reactions are by.
    pub fn bot_login(&self) -> String {
        format!("{}[bot]", self.slug)
    }

    /// A JWT as octocrab makes one: `iat` a minute ago, `exp` in nine
    /// minutes, `iss` the app id as a number.
    pub fn jwt(&self) -> String {
        let now = shapes::now_unix() as i64;
        self.jwt_with(now - 60, now + 9 * 60)
    }

    /// A JWT with these `iat` and `exp` (Unix seconds), `iss` the app id.
    pub fn jwt_with(&self, iat: i64, exp: i64) -> String {
        self.sign_claims(&json!({"iat": iat, "exp": exp, "iss": self.app_id}))
    }

    /// Any claims, signed RS256 with this key.
    pub fn sign_claims(&self, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_der(&self.private_key_der);
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, claims, &key).expect("an RSA key the fake made signs")
    }
}

/// A 2048-bit RSA key pair: (private `RSAPrivateKey` DER, public
/// `RSAPublicKey` DER), both PKCS#1.
fn generate_key() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow!("RSA key generation failed"))?;
    let pkcs8 = pair
        .as_der()
        .map_err(|_| anyhow!("RSA key serialization failed"))?;
    let private = pkcs8_rsa_key(pkcs8.as_ref()).context("unexpected PKCS#8 layout")?;
    Ok((private, pair.public_key().as_ref().to_vec()))
}

/// A DER element's tag, header length and content length.
fn der_header(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((tag, 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*b.get(2 + i)?);
    }
    Some((tag, 2 + n, len))
}

/// The `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`: SEQUENCE {
/// version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING }.
fn pkcs8_rsa_key(der: &[u8]) -> Option<Vec<u8>> {
    let (tag, h, _) = der_header(der)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = der.get(h..)?;
    for want in [0x02, 0x30] {
        let (tag, h, len) = der_header(rest)?;
        if tag != want {
            return None;
        }
        rest = rest.get(h + len..)?;
    }
    let (tag, h, len) = der_header(rest)?;
    if tag != 0x04 {
        return None;
    }
    Some(rest.get(h..h + len)?.to_vec())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One installation token, as the fake issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallationTokenView {
    pub token: String,
    pub expires_at: SystemTime,
    /// The repositories (full names) it was narrowed to, if it was.
    pub repositories: Option<Vec<String>>,
}

/// Who made an API call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No `Authorization` (allowed only on a fake started without a token).
    Anonymous,
    /// The hub's token, or, on a fake started without one, any token the
    /// fake does not know (personal-token mode, as before Apps).
    Token(String),
    /// An App, with a valid JWT.
    App { app_id: u64 },
    /// An installation, with one of its unexpired tokens.
    Installation { installation_id: u64, token: String },
}

impl Caller {
    /// The key the primary rate limit is counted against: the token, or, as
    /// on GitHub, the installation (a fresh token does not reset it) or the
    /// App.
    pub fn rate_key(&self) -> String {
        match self {
            Caller::Anonymous => String::new(),
            Caller::Token(t) => t.clone(),
            Caller::App { app_id } => format!("app:{app_id}"),
            Caller::Installation {
                installation_id, ..
            } => format!("installation:{installation_id}"),
        }
    }
}

/// A refused call: status and GitHub's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

const fn refuse(status: u16, message: &'static str) -> Refusal {
    Refusal { status, message }
}

fn bearer(h: &str) -> Option<&str> {
    h.strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .or_else(|| h.strip_prefix("token "))
}

/// Whether `t` has a JWT's form: three base64url parts, the first a JSON
/// object with an `alg`.
fn looks_like_jwt(t: &str) -> bool {
    let mut parts = t.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|h| h.get("alg").is_some())
}

/// Checks an App's JWT as GitHub does; Ok: the app id.
fn verify_jwt(st: &State, token: &str, now: u64) -> Result<u64, &'static str> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JWT_UNDECODABLE)?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(JWT_UNDECODABLE);
    }
    let payload = token.split('.').nth(1).ok_or(JWT_UNDECODABLE)?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JWT_UNDECODABLE)?;
    // GitHub takes the app id as a number or as a string (its docs' samples
    // send a string, octocrab a number).
    let app_id = match &claims["iss"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or(JWT_UNDECODABLE)?;
    let app = st.apps.get(&app_id).ok_or(JWT_UNDECODABLE)?;
    let key = jsonwebtoken::DecodingKey::from_rsa_der(&app.public_key_der);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|_| JWT_UNDECODABLE)?;
    let now = now as i64;
    match claims["iat"].as_i64() {
        Some(iat) if iat <= now => {}
        _ => return Err(JWT_BAD_IAT),
    }
    match claims["exp"].as_f64() {
        Some(exp) if exp <= now as f64 => Err(JWT_EXPIRED),
        Some(exp) if exp > (now + JWT_MAX_AHEAD_SECS as i64) as f64 => Err(JWT_TOO_FAR),
        Some(_) => Ok(app_id),
        None => Err(JWT_EXPIRED),
    }
}

/// Who is calling, or why the call is refused before it is routed.
pub(crate) fn authenticate(inner: &Inner, headers: &HeaderMap) -> Result<Caller, Refusal> {
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(given) = given else {
        return match inner.token {
            Some(_) => Err(refuse(401, "Requires authentication")),
            None => Ok(Caller::Anonymous),
        };
    };
    let token = bearer(given);
    if let (Some(t), Some(hub)) = (token, &inner.token)
        && t == hub
    {
        return Ok(Caller::Token(t.to_string()));
    }
    if let Some(t) = token {
        let st = inner.state.lock().expect("state");
        if let Some(rec) = st.tokens.get(t) {
            let live = rec.expires > SystemTime::now()
                && st.installations.contains_key(&rec.installation_id);
            return if live {
                Ok(Caller::Installation {
                    installation_id: rec.installation_id,
                    token: t.to_string(),
                })
            } else {
                Err(refuse(401, BAD_CREDENTIALS))
            };
        }
        if looks_like_jwt(t) {
            return verify_jwt(&st, t, shapes::now_unix())
                .map(|app_id| Caller::App { app_id })
                .map_err(|m| refuse(401, m));
        }
    }
    match inner.token {
        Some(_) => Err(refuse(401, BAD_CREDENTIALS)),
        None => Ok(Caller::Token(token.unwrap_or(given).to_string())),
    }
}

/// The permission a repository call needs: the alternatives, each a
/// (permission, "read" | "write").
fn needed_permission(method: &str, rest: &[&str]) -> &'static [(&'static str, &'static str)] {
    let read = method == "GET" || method == "HEAD";
    match (read, rest) {
        (true, ["pulls", ..]) => &[("pull_requests", "read")],
        (false, ["pulls", _, "merge"]) => &[("contents", "write")],
        (false, ["pulls", ..]) => &[("pull_requests", "write")],
        (true, ["issues", ..]) => &[("issues", "read"), ("pull_requests", "read")],
        (false, ["issues", ..]) => &[("issues", "write"), ("pull_requests", "write")],
        (true, ["check-runs", ..] | ["commits", _, "check-runs"]) => &[("checks", "read")],
        (false, ["check-runs", ..]) => &[("checks", "write")],
        (false, ["statuses", ..]) => &[("statuses", "write")],
        (true, ["commits", .., "status"]) => &[("statuses", "read")],
        (true, ["branches", .., "protection", "required_status_checks"]) => {
            &[("administration", "read")]
        }
        (true, ["collaborators", ..]) => &[("metadata", "read")],
        (true, _) => &[("contents", "read")],
        (false, _) => &[("contents", "write")],
    }
}

fn grants(perms: &BTreeMap<String, String>, name: &str, level: &str) -> bool {
    match perms.get(name).map(String::as_str) {
        Some("write" | "admin") => true,
        Some("read") => level == "read",
        _ => false,
    }
}

impl Inner {
    /// Whether `caller` may make this call on `repo` (which exists): an
    /// installation token only on its repositories (404 elsewhere, as for a
    /// repository it cannot see) and within its permissions (403); a JWT on
    /// no repository call (403).
    pub(crate) fn repo_access(
        &self,
        caller: &Caller,
        repo: &str,
        method: &str,
        rest: &[&str],
    ) -> Result<(), Refusal> {
        match caller {
            Caller::Anonymous | Caller::Token(_) => Ok(()),
            Caller::App { .. } => Err(refuse(403, NOT_ACCESSIBLE)),
            Caller::Installation {
                installation_id,
                token,
            } => {
                let st = self.state.lock().expect("state");
                let inst = st
                    .installations
                    .get(installation_id)
                    .ok_or(refuse(401, BAD_CREDENTIALS))?;
                let rec = st.tokens.get(token).ok_or(refuse(401, BAD_CREDENTIALS))?;
                let in_scope = rec.repos.as_ref().is_none_or(|r| r.contains(repo));
                if !inst.covers(repo) || !in_scope {
                    return Err(refuse(404, "Not Found"));
                }
                let app_perms = st.apps.get(&inst.app_id).map(|a| &a.permissions);
                let perms = rec.permissions.as_ref().or(app_perms);
                let ok = perms.is_some_and(|p| {
                    needed_permission(method, rest)
                        .iter()
                        .any(|(name, level)| grants(p, name, level))
                });
                if ok {
                    Ok(())
                } else {
                    Err(refuse(403, NOT_ACCESSIBLE))
                }
            }
        }
    }

    /// The login a call writes as: `<slug>[bot]` for an installation,
    /// [`super::MERGER`] otherwise (personal-token mode).
    pub(crate) fn actor(&self, caller: &Caller) -> (String, Option<u64>) {
        if let Caller::Installation {
            installation_id, ..
        } = caller
        {
            let st = self.state.lock().expect("state");
            if let Some(app) = st
                .installations
                .get(installation_id)
                .and_then(|i| st.apps.get(&i.app_id))
            {
                return (format!("{}[bot]", app.slug), Some(app.id));
            }
        }
        (super::MERGER.to_string(), None)
    }

    /// The installation of the first App installed on `repo`, if any.
    pub(crate) fn installation_for(&self, st: &State, repo: &str) -> Option<u64> {
        st.installations
            .values()
            .find(|i| st.repos.contains_key(repo) && i.covers(repo))
            .map(|i| i.id)
    }

    /// Sends an `installation` or `installation_repositories` event.
    fn installation_event(&self, event: &str, body: Value) {
        self.enqueue(event, body);
    }
}

/// `{id, node_id, name, full_name, private}` as installation events list
/// repositories.
fn event_repo(st: &State, full: &str) -> Value {
    let id = st.repos.get(full).map_or(0, |r| r.id);
    json!({
        "id": id,
        "node_id": shapes::node_id("R", id),
        "name": full.split('/').nth(1).unwrap_or_default(),
        "full_name": full,
        "private": false,
    })
}

/// The repositories an installation reaches now, sorted.
fn covered(st: &State, inst: &InstallationRec) -> Vec<String> {
    st.repos
        .keys()
        .filter(|r| inst.covers(r))
        .cloned()
        .collect()
}

impl FakeHub {
    /// Registers a GitHub App `app_id` with slug `sluice` (its comments are
    /// by `sluice[bot]`), [`DEFAULT_APP_PERMISSIONS`] and
    /// [`DEFAULT_APP_EVENTS`], and a fresh 2048-bit RSA key pair; returns
    /// the private key. Fails if the id or the slug is taken.
    pub fn register_app(&self, app_id: u64) -> anyhow::Result<AppKeys> {
        self.register_app_with(app_id, "sluice", DEFAULT_APP_PERMISSIONS)
    }

    /// Like [`FakeHub::register_app`] with another slug and permissions
    /// (name, "read" | "write"), e.g. to show a call fails without one.
    pub fn register_app_with(
        &self,
        app_id: u64,
        slug: &str,
        permissions: &[(&str, &str)],
    ) -> anyhow::Result<AppKeys> {
        if slug.is_empty()
            || !slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("invalid app slug {slug:?}");
        }
        for (name, level) in permissions {
            if !matches!(*level, "read" | "write") {
                bail!("permission {name}: {level:?} is not read or write");
            }
        }
        let (private_key_der, public_key_der) = generate_key()?;
        let mut st = self.inner.state.lock().expect("state");
        if st.apps.contains_key(&app_id) {
            bail!("app {app_id} is registered");
        }
        if st.apps.values().any(|a| a.slug == slug) {
            bail!("app slug {slug} is taken");
        }
        st.apps.insert(
            app_id,
            AppRec {
                id: app_id,
                slug: slug.to_string(),
                name: slug.to_string(),
                owner: "fakehub".to_string(),
                public_key_der,
                permissions: permissions
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                events: DEFAULT_APP_EVENTS.iter().map(|e| e.to_string()).collect(),
                created_at: shapes::now_iso(),
            },
        );
        Ok(AppKeys {
            app_id,
            slug: slug.to_string(),
            private_key_pem: pem("RSA PRIVATE KEY", &private_key_der),
            private_key_der,
        })
    }

    /// Installs App `app_id` on `account` for the repositories `repos`
    /// (full names, all of `account`; they need not exist yet), as the
    /// account's owner does ("Only select repositories"); sends
    /// `installation` `created`. Returns the installation id.
    pub fn install_app(&self, app_id: u64, account: &str, repos: &[&str]) -> anyhow::Result<u64> {
        let mut selected = BTreeSet::new();
        for r in repos {
            if r.split('/').next() != Some(account) || r.split('/').count() != 2 {
                bail!("{r:?} is not a repository of {account}");
            }
            selected.insert(r.to_string());
        }
        self.install(app_id, account, Selection::Selected(selected))
    }

    /// Installs App `app_id` on every repository of `account`, now and
    /// later ("All repositories"); sends `installation` `created`.
    pub fn install_app_on_all(&self, app_id: u64, account: &str) -> anyhow::Result<u64> {
        self.install(app_id, account, Selection::All)
    }

    fn install(&self, app_id: u64, account: &str, selection: Selection) -> anyhow::Result<u64> {
        crate::core::RepoName::parse(&format!("{account}/x"))
            .map_err(|e| anyhow!("invalid account {account:?}: {e}"))?;
        let body = {
            let mut st = self.inner.state.lock().expect("state");
            if !st.apps.contains_key(&app_id) {
                bail!("no app {app_id}");
            }
            if st
                .installations
                .values()
                .any(|i| i.app_id == app_id && i.account == account)
            {
                bail!("app {app_id} is installed on {account}");
            }
            let id = st.fresh_id() + 40_000_000;
            let inst = InstallationRec {
                id,
                app_id,
                account: account.to_string(),
                selection,
                created_unix: shapes::now_unix(),
            };
            st.installations.insert(id, inst.clone());
            let u = self.inner.urls();
            let repos: Vec<Value> = covered(&st, &inst)
                .iter()
                .map(|r| event_repo(&st, r))
                .collect();
            json!({
                "action": "created",
                "installation": shapes::installation(&u, &st.apps[&app_id], &inst, true),
                "repositories": repos,
                "requester": null,
                "sender": shapes::user(&u, account),
            })
        };
        let id = body["installation"]["id"].as_u64().unwrap_or_default();
        self.inner.installation_event("installation", body);
        Ok(id)
    }

    /// Uninstalls: sends `installation` `deleted`; its tokens stop working.
    pub fn uninstall_app(&self, installation_id: u64) -> anyhow::Result<()> {
        let body = {
            let mut st = self.inner.state.lock().expect("state");
            let inst = st
                .installations
                .remove(&installation_id)
                .with_context(|| format!("no installation {installation_id}"))?;
            let u = self.inner.urls();
            let repos: Vec<Value> = covered(&st, &inst)
                .iter()
                .map(|r| event_repo(&st, r))
                .collect();
            json!({
                "action": "deleted",
                "installation": shapes::installation(&u, &st.apps[&inst.app_id], &inst, true),
                "repositories": repos,
                "requester": null,
                "sender": shapes::user(&u, &inst.account),
            })
        };
        self.inner.installation_event("installation", body);
        Ok(())
    }

    /// Adds repositories (full names) to a "selected" installation, as the
    /// account's owner does in the App's settings; sends
    /// `installation_repositories` `added` for those it did not have.
    pub fn add_installation_repos(
        &self,
        installation_id: u64,
        repos: &[&str],
    ) -> anyhow::Result<()> {
        self.change_installation_repos(installation_id, repos, true)
    }

    /// Removes repositories from a "selected" installation: its tokens stop
    /// opening them at once; sends `installation_repositories` `removed`.
    pub fn remove_installation_repos(
        &self,
        installation_id: u64,
        repos: &[&str],
    ) -> anyhow::Result<()> {
        self.change_installation_repos(installation_id, repos, false)
    }

    fn change_installation_repos(
        &self,
        installation_id: u64,
        repos: &[&str],
        add: bool,
    ) -> anyhow::Result<()> {
        let body = {
            let mut st = self.inner.state.lock().expect("state");
            let inst = st
                .installations
                .get_mut(&installation_id)
                .with_context(|| format!("no installation {installation_id}"))?;
            let account = inst.account.clone();
            let Selection::Selected(selected) = &mut inst.selection else {
                bail!("installation {installation_id} is on all repositories of {account}");
            };
            let mut changed = Vec::new();
            for r in repos {
                if r.split('/').next() != Some(account.as_str()) || r.split('/').count() != 2 {
                    bail!("{r:?} is not a repository of {account}");
                }
                let did = if add {
                    selected.insert(r.to_string())
                } else {
                    selected.remove(*r)
                };
                if did {
                    changed.push(r.to_string());
                }
            }
            let inst = inst.clone();
            let u = self.inner.urls();
            let listed: Vec<Value> = changed.iter().map(|r| event_repo(&st, r)).collect();
            let (added, removed) = if add {
                (listed, Vec::new())
            } else {
                (Vec::new(), listed)
            };
            json!({
                "action": if add { "added" } else { "removed" },
                "installation": shapes::installation(&u, &st.apps[&inst.app_id], &inst, true),
                "repository_selection": "selected",
                "repositories_added": added,
                "repositories_removed": removed,
                "requester": shapes::user(&u, &account),
                "sender": shapes::user(&u, &account),
            })
        };
        self.inner
            .installation_event("installation_repositories", body);
        Ok(())
    }

    /// How long installation tokens issued from now on live (default
    /// [`DEFAULT_TOKEN_LIFETIME`], GitHub's hour); e.g. 2 s to see a
    /// client renew one.
    pub fn set_installation_token_lifetime(&self, lifetime: Duration) {
        self.inner.state.lock().expect("state").token_lifetime = Some(lifetime);
    }

    /// Expires every token of the installation now (as if its hour had
    /// passed): the next call with one is answered `401 Bad credentials`.
    pub fn expire_installation_tokens(&self, installation_id: u64) {
        let mut st = self.inner.state.lock().expect("state");
        let past = SystemTime::now() - Duration::from_secs(1);
        for t in st.tokens.values_mut() {
            if t.installation_id == installation_id {
                t.expires = t.expires.min(past);
            }
        }
    }

    /// Every token issued for the installation, oldest first.
    pub fn installation_tokens(&self, installation_id: u64) -> Vec<InstallationTokenView> {
        let st = self.inner.state.lock().expect("state");
        let mut out: Vec<(SystemTime, InstallationTokenView)> = st
            .tokens
            .iter()
            .filter(|(_, t)| t.installation_id == installation_id)
            .map(|(token, t)| {
                (
                    t.expires,
                    InstallationTokenView {
                        token: token.clone(),
                        expires_at: t.expires,
                        repositories: t.repos.as_ref().map(|r| r.iter().cloned().collect()),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(at, _)| *at);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// The installation of an App that reaches `repo`, if any.
    pub fn installation_of(&self, repo: &str) -> Option<u64> {
        let st = self.inner.state.lock().expect("state");
        self.inner.installation_for(&st, repo)
    }

    /// Calls counted against an installation's primary rate limit in the
    /// current hour (all its tokens together, as on GitHub).
    pub fn installation_rate_limit_used(&self, installation_id: u64) -> u64 {
        self.inner
            .budget
            .used(&format!("installation:{installation_id}"))
    }
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let body: String = (0..36)
        .map(|_| {
            let i = rng.gen_range(0..62u8);
            char::from(match i {
                0..=9 => b'0' + i,
                10..=35 => b'a' + i - 10,
                _ => b'A' + i - 36,
            })
        })
        .collect();
    format!("ghs_{body}")
}

fn iso(t: SystemTime) -> String {
    shapes::iso8601(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// An answer of the App endpoints: status and body.
pub(crate) type AppAnswer = Result<(u16, Value), (u16, String)>;

fn app_err(status: u16, message: &str) -> (u16, String) {
    (status, message.to_string())
}

impl Inner {
    /// `GET /app`.
    pub(crate) fn get_app(&self, app_id: u64) -> AppAnswer {
        let st = self.state.lock().expect("state");
        let app = st.apps.get(&app_id).ok_or(app_err(404, "Not Found"))?;
        let mut v = shapes::integration(&self.urls(), app);
        v["installations_count"] = json!(
            st.installations
                .values()
                .filter(|i| i.app_id == app_id)
                .count()
        );
        Ok((200, v))
    }

    /// `GET /app/installations`, oldest first.
    pub(crate) fn list_installations(&self, app_id: u64) -> Vec<Value> {
        let st = self.state.lock().expect("state");
        let u = self.urls();
        st.installations
            .values()
            .filter(|i| i.app_id == app_id)
            .filter_map(|i| Some(shapes::installation(&u, st.apps.get(&i.app_id)?, i, false)))
            .collect()
    }

    /// `GET /app/installations/{id}`.
    pub(crate) fn get_installation(&self, app_id: u64, installation_id: u64) -> AppAnswer {
        let st = self.state.lock().expect("state");
        let inst = st
            .installations
            .get(&installation_id)
            .filter(|i| i.app_id == app_id)
            .ok_or(app_err(404, "Not Found"))?;
        let app = st.apps.get(&app_id).ok_or(app_err(404, "Not Found"))?;
        Ok((200, shapes::installation(&self.urls(), app, inst, false)))
    }

    /// `GET /repos/{owner}/{repo}/installation`.
    pub(crate) fn repo_installation(&self, app_id: u64, repo: &str) -> AppAnswer {
        let st = self.state.lock().expect("state");
        let inst = st
            .installations
            .values()
            .find(|i| i.app_id == app_id && st.repos.contains_key(repo) && i.covers(repo))
            .ok_or(app_err(404, "Not Found"))?;
        let app = st.apps.get(&app_id).ok_or(app_err(404, "Not Found"))?;
        Ok((200, shapes::installation(&self.urls(), app, inst, false)))
    }

    /// `POST /app/installations/{id}/access_tokens` `{repositories?,
    /// repository_ids?, permissions?}`.
    pub(crate) fn create_installation_token(
        &self,
        app_id: u64,
        installation_id: u64,
        body: &[u8],
    ) -> AppAnswer {
        let req = if body.iter().all(u8::is_ascii_whitespace) {
            serde_json::Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => m,
                _ => return Err(app_err(400, "Problems parsing JSON")),
            }
        };
        let mut st = self.state.lock().expect("state");
        let inst = st
            .installations
            .get(&installation_id)
            .filter(|i| i.app_id == app_id)
            .cloned()
            .ok_or(app_err(404, "Not Found"))?;
        let app = st
            .apps
            .get(&app_id)
            .cloned()
            .ok_or(app_err(404, "Not Found"))?;
        let reachable = covered(&st, &inst);
        let not_accessible = || {
            app_err(
                422,
                "There is at least one repository that does not exist or is not accessible to the parent installation.",
            )
        };
        let mut scope: Option<BTreeSet<String>> = None;
        match req.get("repositories") {
            None | Some(Value::Null) => {}
            Some(Value::Array(names)) => {
                let set = scope.get_or_insert_with(BTreeSet::new);
                for n in names {
                    let name = n.as_str().ok_or_else(|| {
                        app_err(
                            422,
                            &format!("Invalid request.\n\nFor 'items', {n} is not a string."),
                        )
                    })?;
                    let full = format!("{}/{name}", inst.account);
                    if !reachable.contains(&full) {
                        return Err(not_accessible());
                    }
                    set.insert(full);
                }
            }
            Some(other) => {
                return Err(app_err(
                    422,
                    &format!(
                        "Invalid request.\n\nFor 'properties/repositories', {other} is not an array."
                    ),
                ));
            }
        }
        match req.get("repository_ids") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ids)) => {
                let set = scope.get_or_insert_with(BTreeSet::new);
                for id in ids {
                    let id = id.as_u64().ok_or_else(|| {
                        app_err(
                            422,
                            &format!("Invalid request.\n\nFor 'items', {id} is not an integer."),
                        )
                    })?;
                    let full = reachable
                        .iter()
                        .find(|r| st.repos.get(*r).is_some_and(|r| r.id == id))
                        .ok_or_else(not_accessible)?;
                    set.insert(full.clone());
                }
            }
            Some(other) => {
                return Err(app_err(
                    422,
                    &format!(
                        "Invalid request.\n\nFor 'properties/repository_ids', {other} is not an array."
                    ),
                ));
            }
        }
        let permissions = match req.get("permissions") {
            None | Some(Value::Null) => None,
            Some(Value::Object(asked)) => {
                let mut narrowed = BTreeMap::new();
                for (name, level) in asked {
                    let level = level.as_str().unwrap_or_default();
                    if !matches!(level, "read" | "write") || !grants(&app.permissions, name, level)
                    {
                        return Err(app_err(
                            422,
                            "The permissions requested are not granted to this installation.",
                        ));
                    }
                    narrowed.insert(name.clone(), level.to_string());
                }
                Some(narrowed)
            }
            Some(other) => {
                return Err(app_err(
                    422,
                    &format!(
                        "Invalid request.\n\nFor 'properties/permissions', {other} is not an object."
                    ),
                ));
            }
        };
        let lifetime = st.token_lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let expires = SystemTime::now() + lifetime;
        let token = random_token();
        st.tokens.insert(
            token.clone(),
            TokenRec {
                installation_id,
                expires,
                repos: scope.clone(),
                permissions: permissions.clone(),
            },
        );
        let u = self.urls();
        let mut v = json!({
            "token": token,
            "expires_at": iso(expires),
            "permissions": permissions.as_ref().unwrap_or(&app.permissions),
            "repository_selection": match (&scope, &inst.selection) {
                (None, Selection::All) => "all",
                _ => "selected",
            },
        });
        if scope.is_some() || matches!(inst.selection, Selection::Selected(_)) {
            let listed = scope.map_or(reachable, |s| s.into_iter().collect());
            v["repositories"] = Value::Array(
                listed
                    .iter()
                    .filter_map(|r| st.repos.get(r))
                    .map(|r| shapes::repository(&u, r))
                    .collect(),
            );
        }
        Ok((201, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_pkcs1_pem_and_sign_verifiable_jwts() {
        let (private, public) = generate_key().unwrap();
        let pem = pem("RSA PRIVATE KEY", &private);
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let keys = AppKeys {
            app_id: 7,
            slug: "x".into(),
            private_key_pem: pem,
            private_key_der: private,
        };
        let jwt = keys.jwt();
        assert!(looks_like_jwt(&jwt));
        let key = jsonwebtoken::DecodingKey::from_rsa_der(&public);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(&jwt, &key, &v).unwrap();
        assert_eq!(data.claims["iss"], 7);
        assert!(!looks_like_jwt("ghs_abc"));
        assert!(!looks_like_jwt("a.b.c"));
    }

    #[test]
    fn der_lengths_of_every_form_are_read() {
        assert_eq!(der_header(&[0x30, 0x05]), Some((0x30, 2, 5)));
        assert_eq!(der_header(&[0x30, 0x82, 0x01, 0x00]), Some((0x30, 4, 256)));
        assert_eq!(der_header(&[0x30, 0x80]), None);
        assert_eq!(der_header(&[0x30]), None);
        assert_eq!(pkcs8_rsa_key(&[0x31, 0x00]), None);
    }
}
