//! procyard-procmgr's first hour: 20 shell commands collected with `wait_all`, a command's
//! captured output, a registered function with typed messages, and the outcomes as they come.
//!
//! Run it: `cargo run -p procyard-procmgr --example first_hour`.

use std::time::Duration;

use procyard_procmgr::{
    Command, Endpoint, Exit, Outcome, Scheduler, Stdio, Strategy, Task, as_completed, wait_all,
};

/// A function task: sends its progress as typed messages, returns a value.
fn count_to(n: u64, endpoint: &mut Endpoint) -> Result<u64, procyard_procmgr::Error> {
    for i in 1..=n {
        endpoint.send(&i)?;
    }
    Ok(n)
}

/// The program's own entry point (also the test `example_first_hour`'s).
pub fn main() {
    // Register functions, then `init` — first thing in `main`, as in procyard-resultworker: a
    // process started for a function task is this program again, and never returns from it.
    let count = procyard_procmgr::register("count_to", count_to);
    procyard_procmgr::init();
    if let Err(e) = run(&count) {
        eprintln!("first_hour example: {}", procyard_core::report(&e));
        std::process::exit(1);
    }
}

fn run(count: &procyard_procmgr::Function<u64, u64>) -> Result<(), procyard_procmgr::Error> {
    let scheduler = Scheduler::new(Strategy::Throttled(4))?;

    // 20 shell commands, built in place (the builder's `&mut Command` is accepted).
    let handles = (0..20)
        .map(|i| {
            let script = format!("exit {}", i % 3);
            scheduler.schedule(Task::command(Command::shell(script).stdout(Stdio::Null)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes = wait_all(&handles);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(*outcome, Outcome::Exited { code: (i % 3) as u8 });
    }
    // Waiting takes `&self`: the handles can be waited on again, by reference.
    for h in &handles {
        assert!(matches!(h.wait(), Outcome::Exited { .. }));
    }

    // stdout and stderr, on success and on failure alike.
    let task = Task::command(Command::shell("echo out; echo err >&2; exit 4")).capture_output();
    let outcome = scheduler.schedule(task)?.wait();
    let output = outcome.output().expect("a captured command");
    assert_eq!(output.status, Exit::Code(4));
    assert_eq!((&output.stdout[..], &output.stderr[..]), (&b"out\n"[..], &b"err\n"[..]));

    // A registered function: typed value, typed messages.
    let handle = scheduler.schedule(Task::call(count, &3)?)?;
    assert_eq!(handle.wait().value_as::<u64>(), Some(3));
    assert_eq!(handle.messages::<u64>()?, [1, 2, 3]);

    // The outcomes in the order the tasks complete.
    let quick = ["exit 0", "exit 1"].map(|s| scheduler.schedule(Task::command(Command::shell(s))));
    let quick = quick.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut seen: Vec<usize> = as_completed(&quick).map(|(index, _)| index).collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1]);

    scheduler.stop(Duration::from_secs(5))?;
    println!("first_hour example: 20 commands, a captured output, a function with 3 messages");
    Ok(())
}
