//! The invariants of DESIGN.md that can be read off the source tree, as a test (the same
//! checks `cargo xtask tidy` runs).

#[path = "../../xtask/src/tidy.rs"]
#[allow(dead_code, reason = "shared with xtask, which uses more of it")]
mod tidy;

#[test]
fn crate_graph_is_a_star_and_unsafe_stays_in_core_sys() {
    let problems = tidy::check(&procyard_tests::workspace_root());
    assert!(problems.is_empty(), "tidy problems:\n{}", problems.join("\n"));
}

#[test]
fn tidy_catches_a_sibling_dependency_stray_unsafe_raw_signals_and_socket_unlinks() {
    // The checker itself must be able to fail: build a bad workspace and look.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("crates/core/src/sys")).unwrap();
    std::fs::write(
        root.join("crates/core/Cargo.toml"),
        "[package]\nname = \"procyard-core\"\n[dependencies]\nlibc = \"0.2\"\n",
    )
    .unwrap();
    std::fs::write(root.join("crates/core/src/lib.rs"), "//! core\nfn f() { unsafe { g() } }\n")
        .unwrap();
    for (folder, package) in tidy::COMPONENTS {
        let dir = root.join("crates").join(folder);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let deps = if *folder == "daemon" {
            "procyard-core.workspace = true\nprocyard-bgtask.workspace = true\n"
        } else {
            "procyard-core.workspace = true\n"
        };
        std::fs::write(
            dir.join("Cargo.toml"),
            format!("[package]\nname = \"{package}\"\n[dependencies]\n{deps}"),
        )
        .unwrap();
        std::fs::write(dir.join("src/lib.rs"), "//! x\n#![forbid(unsafe_code)]\n").unwrap();
    }
    std::fs::write(root.join("crates/bgtask/src/extra.rs"), "fn no_header() {}\n").unwrap();
    std::fs::write(
        root.join("crates/asyncjob/src/kill.rs"),
        "//! x\nfn f(p: Pid) { let _ = rustix::process::kill_process_group(p, s); }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("crates/daemon/src/sock.rs"),
        "//! x\nfn f() { std::fs::remove_file(&self.socket_path); }\n",
    )
    .unwrap();
    let problems = tidy::check(root);
    let text = problems.join("\n");
    assert!(text.contains("depends on sibling procyard-bgtask"), "{text}");
    assert!(text.contains("crates/core/src/lib.rs:2: `unsafe` outside"), "{text}");
    assert!(text.contains("crates/bgtask/src/extra.rs: must open with a //! line"), "{text}");
    assert!(text.contains("crates/asyncjob/src/kill.rs:2: raw signal call"), "{text}");
    assert!(text.contains("crates/daemon/src/sock.rs:2: socket path removed by hand"), "{text}");
}

#[test]
fn tidy_structure_catches_module_cycles_and_long_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("crates/bgtask/src");
    std::fs::create_dir_all(src.join("supervisor")).unwrap();
    std::fs::write(src.join("lib.rs"), "//! x\nmod client;\nmod supervisor;\nmod pool;\n").unwrap();
    std::fs::write(src.join("client.rs"), "//! x\nuse crate::pool::Layout;\n").unwrap();
    std::fs::write(src.join("pool.rs"), "//! x\nuse crate::{\n    supervisor::{self, Run},\n};\n")
        .unwrap();
    std::fs::write(src.join("supervisor/mod.rs"), "//! x\nfn f() { crate::client::X; }\n").unwrap();
    std::fs::write(src.join("big.rs"), "//! x\n".repeat(tidy::MAX_SOURCE_LINES + 1)).unwrap();
    let problems = tidy::structure(dir.path());
    let text = problems.join("\n");
    assert!(text.contains("module cycle client -> pool -> supervisor -> client"), "{text}");
    assert!(text.contains("crates/bgtask/src/big.rs: 501 lines"), "{text}");
    assert_eq!(problems.len(), 2, "{text}");
}
