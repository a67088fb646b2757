//! The core decides and does nothing else: no I/O, no async runtime, no
//! clock, no randomness, no adapter crates. This reads its source and fails
//! on any use of those, so the boundary cannot erode unnoticed.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "SystemTime",
    "Instant",
    "octocrab",
    "warp",
    "kube",
    "reqwest",
    "google_cloud",
    "rand::",
    "tracing",
    "std::io",
];

#[test]
fn the_core_has_no_io_clock_or_randomness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // The property test drives the core with a generator; it is test code.
        if name == "proptests.rs" || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (n, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "src/core/{name}:{}: uses {word}: {line}",
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} core files found");
}
