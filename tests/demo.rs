//! The README's first command: `sluice demo` runs offline, lands the two
//! passing PRs through the train (each landing a car whose build passed),
//! and leaves the failing one open with a failure status.

use std::process::Command;

#[test]
fn the_offline_demo_lands_the_passing_prs_as_tested_cars() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--port", "0", "--dir"])
        .arg(dir.path().join("demo"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let landings: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("main "))
        .collect();
    assert_eq!(landings.len(), 2, "{text}");
    for (line, pr) in landings.iter().zip(["#1", "#3"]) {
        assert!(line.contains(&format!("({pr})")), "{line}");
        // The link of the car's build, from the success status on the very
        // sha main moved to.
        let link = line.split("tested: ").nth(1).unwrap_or("");
        assert!(link.starts_with("http://127.0.0.1:"), "{line}");
    }
    assert!(text.contains("#2 status: failure"), "{text}");
    assert!(!text.contains("merged by GitHub"), "{text}");
}
