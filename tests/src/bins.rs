//! The workspace's binaries, for tests that run them as processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace's root directory (this crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// A workspace binary next to the running test's executable, (re)built once per test process
/// so a stale binary is never what gets tested. Every test binary builds the same packages, so
/// they share one set of artefacts instead of rebuilding each other's.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "evolve",
                "-p",
                "tests",
                "-p",
                "sqlite-evaluator",
                "--bins",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
    });
    let path = std::env::current_exe()
        .expect("test path")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
