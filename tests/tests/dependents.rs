//! A user's project: a separate crate (its own workspace, its own target directory) that
//! depends on the procyard libraries by path, as a newcomer's project would, builds each
//! crate's first-hour example as its own program and runs it. Proves that a dependency-only
//! build works: no companion program is built or installed, nothing from this workspace's
//! target directory is on the way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One example program: the crate folder and the example's file name.
struct Program {
    folder: &'static str,
    example: &'static str,
}

const PROGRAMS: &[Program] = &[
    Program { folder: "asyncjob", example: "library" },
    Program { folder: "bgtask", example: "multithreaded" },
    Program { folder: "procmgr", example: "first_hour" },
    Program { folder: "resultworker", example: "tokio" },
    Program { folder: "resultworker", example: "thread_pool" },
];

fn manifest(root: &Path) -> String {
    let mut deps = String::new();
    for folder in ["core", "asyncjob", "bgtask", "procmgr", "resultworker"] {
        let path = root.join("crates").join(folder);
        deps.push_str(&format!(
            "procyard-{folder} = {{ path = {:?} }}\n",
            path.display().to_string()
        ));
    }
    format!(
        "[package]\nname = \"procyard-user\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         [workspace]\n\n[dependencies]\n{deps}\
         tokio = {{ version = \"1\", default-features = false, features = [\"rt-multi-thread\", \"macros\", \"time\"] }}\n\
         futures-lite = \"2\"\n"
    )
}

#[test]
fn user_project_builds_and_runs_every_first_hour_example() {
    let root = procyard_tests::workspace_root();
    let project = tempfile::tempdir().unwrap();
    let bin_dir = project.path().join("src/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::write(project.path().join("Cargo.toml"), manifest(&root)).unwrap();
    // The workspace's lock file pins the same versions, so the build needs no network.
    std::fs::copy(root.join("Cargo.lock"), project.path().join("Cargo.lock")).unwrap();
    for program in PROGRAMS {
        let source = root
            .join("crates")
            .join(program.folder)
            .join("examples")
            .join(format!("{}.rs", program.example));
        let name = format!("{}_{}", program.folder, program.example);
        std::fs::copy(&source, bin_dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    }
    // A target directory of its own (kept between runs under this workspace's target/), so the
    // build never waits for the lock of the cargo that runs this test.
    let target: PathBuf = root.join("target").join("dependents");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(&cargo)
        .args(["build", "--offline", "--quiet", "--bins"])
        .current_dir(project.path())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo build");
    assert!(
        build.status.success(),
        "the user's project did not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    for program in PROGRAMS {
        let name = format!("{}_{}", program.folder, program.example);
        let scratch = tempfile::tempdir().unwrap();
        let out = Command::new(target.join("debug").join(&name))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", scratch.path())
            .env("TMPDIR", scratch.path())
            .env("PROCYARD_POOL", scratch.path().join("pool"))
            .output()
            .expect("run the example");
        assert!(
            out.status.success(),
            "{name} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
