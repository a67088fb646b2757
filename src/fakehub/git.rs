//! Git plumbing for the fake GitHub: every command runs from argv (never a
//! shell string), under a timeout, with a fixed identity and no user config.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const GIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a git command printed and how it ended.
pub(crate) struct GitOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A commit as `git log` tells it.
#[derive(Clone, Debug)]
pub(crate) struct CommitInfo {
    pub sha: String,
    pub tree: String,
    pub parents: Vec<String>,
    pub author_name: String,
    pub author_email: String,
    /// Unix seconds.
    pub author_at: u64,
    pub committer_name: String,
    pub committer_email: String,
    pub committer_at: u64,
    /// The whole message, as stored (trailing newline trimmed by git log).
    pub message: String,
}

/// Who the fake commits are from.
#[derive(Clone, Debug)]
pub(crate) struct Ident {
    pub name: String,
    pub email: String,
    /// An ISO 8601 date, or None for "now".
    pub date: Option<String>,
}

/// The address of the fake's users' commits: `<login>` then this.
pub(crate) const NOREPLY: &str = "@users.noreply.fakehub.invalid";

impl Ident {
    pub fn user(login: &str) -> Ident {
        Ident {
            name: login.to_string(),
            email: format!("{login}{NOREPLY}"),
            date: None,
        }
    }
}

/// A bare repository on disk.
#[derive(Clone, Debug)]
pub(crate) struct Git {
    pub dir: PathBuf,
}

impl Git {
    pub fn new(dir: PathBuf) -> Git {
        Git { dir }
    }

    /// Runs `git <args>` in the bare repository. A non-zero exit is not an
    /// error here: callers that care use [`Git::ok`].
    pub async fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        env: &[(&str, &str)],
        author: Option<&Ident>,
    ) -> anyhow::Result<GitOutput> {
        run_git(Some(&self.dir), args, stdin, env, author).await
    }

    /// Runs `git <args>` and fails unless it exits 0; returns trimmed stdout.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args, None, &[], None).await?;
        check(args, out)
    }

    pub async fn rev_parse(&self, rev: &str) -> anyhow::Result<Option<String>> {
        let spec = format!("{rev}^{{commit}}");
        let out = self
            .run(
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &spec,
                ],
                None,
                &[],
                None,
            )
            .await?;
        Ok((out.code == Some(0)).then(|| out.stdout.trim().to_string()))
    }

    /// The sha a branch points at, if the branch exists.
    pub async fn branch(&self, branch: &str) -> anyhow::Result<Option<String>> {
        self.rev_parse(&format!("refs/heads/{branch}")).await
    }

    /// Moves `refname` to `new` only if it is still at `old` (None: must not
    /// exist yet).
    pub async fn update_ref(
        &self,
        refname: &str,
        new: &str,
        old: Option<&str>,
    ) -> anyhow::Result<()> {
        let zero = "0".repeat(new.len());
        let old = old.unwrap_or(&zero);
        self.ok(&["update-ref", refname, new, old])
            .await
            .map(|_| ())
    }

    /// Writes a commit whose tree is `parent`'s tree (or empty) with `files`
    /// written over it; returns its sha. No ref moves.
    pub async fn commit_files(
        &self,
        parent: Option<&str>,
        files: &[(&str, &str)],
        message: &str,
        author: &Ident,
    ) -> anyhow::Result<String> {
        let index = tempfile::NamedTempFile::new_in(&self.dir).context("temporary index")?;
        let index_path = index.path().to_string_lossy().into_owned();
        // An empty file is not a valid index: let git create it.
        std::fs::remove_file(index.path()).ok();
        let env = [("GIT_INDEX_FILE", index_path.as_str())];
        match parent {
            Some(p) => {
                let out = self.run(&["read-tree", p], None, &env, None).await?;
                check(&["read-tree"], out)?;
            }
            None => {
                let out = self
                    .run(&["read-tree", "--empty"], None, &env, None)
                    .await?;
                check(&["read-tree"], out)?;
            }
        }
        for (path, content) in files {
            let out = self
                .run(
                    &["hash-object", "-w", "--stdin"],
                    Some(content.as_bytes()),
                    &[],
                    None,
                )
                .await?;
            let blob = check(&["hash-object"], out)?;
            let info = format!("100644,{blob},{path}");
            let out = self
                .run(
                    &["update-index", "--add", "--cacheinfo", &info],
                    None,
                    &env,
                    None,
                )
                .await?;
            check(&["update-index"], out)?;
        }
        let out = self.run(&["write-tree"], None, &env, None).await?;
        let tree = check(&["write-tree"], out)?;
        self.commit_tree(&tree, parent.into_iter().collect(), message, author)
            .await
    }

    pub async fn commit_tree(
        &self,
        tree: &str,
        parents: Vec<&str>,
        message: &str,
        author: &Ident,
    ) -> anyhow::Result<String> {
        let mut args = vec!["commit-tree", tree];
        for p in &parents {
            args.push("-p");
            args.push(p);
        }
        args.push("-F");
        args.push("-");
        let out = self
            .run(&args, Some(message.as_bytes()), &[], Some(author))
            .await?;
        check(&["commit-tree"], out)
    }

    /// A trial merge of `theirs` into `ours`: Some(tree) if it is clean.
    /// With `base`, that commit is used as the merge base (a cherry-pick).
    pub async fn merge_tree(
        &self,
        ours: &str,
        theirs: &str,
        base: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let base_arg = base.map(|b| format!("--merge-base={b}"));
        let mut args = vec!["merge-tree", "--write-tree", "--no-messages"];
        if let Some(b) = &base_arg {
            args.push(b);
        }
        args.push(ours);
        args.push(theirs);
        let out = self.run(&args, None, &[], None).await?;
        match out.code {
            Some(0) => Ok(Some(
                out.stdout
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            )),
            Some(1) => Ok(None),
            _ => bail!("git merge-tree failed: {}", out.stderr.trim()),
        }
    }

    /// Whether `ancestor` is reachable from `descendant` (a commit is its
    /// own ancestor).
    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> anyhow::Result<bool> {
        let out = self
            .run(
                &["merge-base", "--is-ancestor", ancestor, descendant],
                None,
                &[],
                None,
            )
            .await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!("git merge-base --is-ancestor failed: {}", out.stderr.trim()),
        }
    }

    /// The type of an object ("commit", "tree", ...), if it exists. Only
    /// full hex object ids are looked up.
    pub async fn object_type(&self, sha: &str) -> anyhow::Result<Option<String>> {
        if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let out = self.run(&["cat-file", "-t", sha], None, &[], None).await?;
        Ok((out.code == Some(0)).then(|| out.stdout.trim().to_string()))
    }

    /// What a commit holds, if `sha` is a commit.
    pub async fn commit_info(&self, sha: &str) -> anyhow::Result<Option<CommitInfo>> {
        if self.object_type(sha).await?.as_deref() != Some("commit") {
            return Ok(None);
        }
        let out = self.ok(&["log", "-1", COMMIT_FORMAT, sha, "--"]).await?;
        Ok(Some(parse_commit(&out)))
    }

    /// The commits of `range` (`base..head`), oldest first and parents
    /// before children (`--date-order`), at most `max`; one git call.
    pub async fn commits_in(&self, range: &str, max: usize) -> anyhow::Result<Vec<CommitInfo>> {
        let count = format!("--max-count={max}");
        let out = self
            .ok(&[
                "log",
                "-z",
                "--reverse",
                "--date-order",
                &count,
                COMMIT_FORMAT,
                range,
                "--",
            ])
            .await?;
        Ok(out
            .split('\0')
            .filter(|r| !r.trim().is_empty())
            .map(|r| parse_commit(r.trim_start_matches('\n')))
            .collect())
    }

    /// Every branch as (name, sha), sorted by name.
    pub async fn branches(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = self
            .ok(&[
                "for-each-ref",
                "--sort=refname",
                "--format=%(refname)%00%(objectname)",
                "refs/heads/",
            ])
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (name, sha) = l.split_once('\0')?;
                Some((
                    name.strip_prefix("refs/heads/")?.to_string(),
                    sha.to_string(),
                ))
            })
            .collect())
    }

    /// Deletes `refname` only if it is still at `old`.
    pub async fn delete_ref(&self, refname: &str, old: &str) -> anyhow::Result<()> {
        self.ok(&["update-ref", "-d", refname, old])
            .await
            .map(|_| ())
    }

    /// The author of a commit, to keep it when a commit is replayed.
    pub async fn author_of(&self, sha: &str) -> anyhow::Result<Ident> {
        let line = self
            .ok(&["log", "-1", "--format=%an%x00%ae%x00%aI", sha, "--"])
            .await?;
        let mut parts = line.split('\0');
        Ok(Ident {
            name: parts.next().unwrap_or("fakehub").to_string(),
            email: parts.next().unwrap_or("fakehub@invalid").to_string(),
            date: parts.next().map(str::to_string),
        })
    }
}

/// What [`parse_commit`] reads: fields split by US (0x1f), the message
/// last.
const COMMIT_FORMAT: &str =
    "--format=%H%x1f%T%x1f%P%x1f%an%x1f%ae%x1f%at%x1f%cn%x1f%ce%x1f%ct%x1f%B";

/// One commit as [`COMMIT_FORMAT`] prints it.
fn parse_commit(record: &str) -> CommitInfo {
    let mut p = record.splitn(10, '\x1f');
    let mut next = || p.next().unwrap_or_default().to_string();
    CommitInfo {
        sha: next(),
        tree: next(),
        parents: next().split_whitespace().map(str::to_string).collect(),
        author_name: next(),
        author_email: next(),
        author_at: next().parse().unwrap_or_default(),
        committer_name: next(),
        committer_email: next(),
        committer_at: next().parse().unwrap_or_default(),
        message: next().trim_end_matches('\n').to_string(),
    }
}

fn check(args: &[&str], out: GitOutput) -> anyhow::Result<String> {
    if out.code != Some(0) {
        bail!(
            "git {} exited with {:?}: {}",
            args.first().copied().unwrap_or_default(),
            out.code,
            out.stderr.trim()
        );
    }
    Ok(out.stdout.trim().to_string())
}

/// Runs git with `dir` as its git directory (or none, for `init`).
pub(crate) async fn run_git(
    dir: Option<&Path>,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    author: Option<&Ident>,
) -> anyhow::Result<GitOutput> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("--git-dir").arg(dir);
    }
    cmd.args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let who = author.cloned().unwrap_or_else(|| Ident::user("fakehub"));
    for prefix in ["GIT_AUTHOR", "GIT_COMMITTER"] {
        cmd.env(format!("{prefix}_NAME"), &who.name);
        cmd.env(format!("{prefix}_EMAIL"), &who.email);
    }
    if let Some(date) = &who.date {
        cmd.env("GIT_AUTHOR_DATE", date);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("spawning git")?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("git stdin")?;
        pipe.write_all(input).await.context("writing git stdin")?;
        drop(pipe);
    }
    let output = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("git {} timed out after {GIT_TIMEOUT:?}", args.join(" ")))?
        .context("waiting for git")?;
    Ok(GitOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
