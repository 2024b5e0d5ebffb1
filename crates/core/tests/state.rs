//! State files under concurrent rewriting: readers never see a torn file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
    // Readers that have read at least once: the writer goes on until each has read while it
    // was writing (a loaded machine may not run the readers during the first writes).
    let readers_started = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            let done = done.clone();
            let readers_started = readers_started.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let s: State = read_json(&path).expect("never torn").expect("never absent");
                    assert!(s.status == "running" || s.status == "finished");
                    if reads == 0 {
                        readers_started.fetch_add(1, Ordering::Relaxed);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let deadline = procyard_core::Deadline::after(Duration::from_secs(60));
    let mut i = 0;
    // (A reader that panicked has finished: its join below reports why.)
    while (i < 600 || readers_started.load(Ordering::Relaxed) < 2)
        && !readers.iter().any(|r| r.is_finished())
    {
        assert!(!deadline.is_expired(), "the readers never ran");
        write_json_atomic(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
        i += 1;
    }
    done.store(true, Ordering::Relaxed);
    let reads: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(reads.iter().all(|&n| n > 0), "{reads:?}");
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "temp files left: {names:?}");
}
