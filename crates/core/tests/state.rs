//! State files under concurrent rewriting: readers never see a torn file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use procyard_core::state_file::{read_json, write_json_atomic};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct State {
    status: String,
    filler: Vec<u64>,
}

#[test]
fn state_files_never_read_torn_while_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let a = State { status: "running".into(), filler: (0..4000).collect() };
    let b = State { status: "finished".into(), filler: (0..9000).rev().collect() };
    write_json_atomic(&path, &a).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let s: State = read_json(&path).expect("never torn").expect("never absent");
                    assert!(s.status == "running" || s.status == "finished");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..600 {
        write_json_atomic(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let total: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(total > 0);
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "temp files left: {names:?}");
}
