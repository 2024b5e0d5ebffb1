//! A child subreaper adopts a job's setsid'd escapee, and stops and reaps it.
//! (Its own test binary: becoming a subreaper changes the whole test process.)

use std::io::Read;

use procyard_core::{Command, Pid, ProcStat, Signal, Stdio, subreaper};

#[test]
fn core_hardening_subreaper_stops_setsid_escapee() {
    subreaper::become_subreaper().unwrap();
    let mut child = Command::new("/bin/sh")
        .args(["-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::Pipe)
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::fs::File::from(child.take_stdout().unwrap()).read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    let escapee = Pid::from_raw(out.trim().parse().unwrap()).unwrap();
    // The shell has exited: the escapee is ours now, outside any group we know.
    let stat = ProcStat::read(escapee).unwrap().expect("the escapee is running");
    assert_eq!(stat.ppid, Pid::current().as_raw());
    assert_eq!(subreaper::adopted_children(&[]), vec![escapee]);

    let stopped =
        subreaper::stop_adopted(&[], Signal::TERM, std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(stopped, 1);
    assert!(ProcStat::read(escapee).unwrap().is_none(), "the escapee was stopped and reaped");
}
