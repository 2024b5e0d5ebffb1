//! procyard-resultworker under tokio's multi-threaded runtime.
//!
//! `init()` runs first, in a plain `fn main`, before the runtime starts its threads: the
//! worker process is this program run again, and when it reaches `init` with one thread it
//! forks a child per job (fast). Under `#[tokio::main]` (see `examples/tokio_main.rs`) that
//! works too, but the worker then has the runtime's threads and starts each job by exec: a
//! program start per job.
//!
//! Run it: `cargo run -p procyard-resultworker --example tokio`.

use std::time::Duration;

use procyard_resultworker::{CommandOutput, Config, Error, Function, Job, ResultWorker, register};

/// The program's own entry point (also the test `example_tokio`'s).
pub fn main() {
    // 1. Register the functions, then `init`: the worker process never returns from it.
    let square = register("square", |x: u64| Ok::<_, String>(x * x));
    let shout = register("shout", |s: String| Ok::<_, String>(s.to_uppercase()));
    procyard_resultworker::init();
    // 2. Only now start the runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(async_main(square, shout)) {
        eprintln!("tokio example: {}", procyard_core::report(&e));
        std::process::exit(1);
    }
}

async fn async_main(
    square: Function<u64, u64>,
    shout: Function<String, String>,
) -> Result<(), Error> {
    let worker = ResultWorker::new(Config::default().max_workers(2))?;

    // Futures are awaited like any other.
    let futures: Vec<_> = (1..=5).map(|i| worker.call(&square, &i)).collect();
    let mut total = 0;
    for future in futures {
        total += future.await?;
    }
    assert_eq!(total, 55);

    // From spawned tasks on the runtime's threads too; `&str` for a `String` argument.
    let tasks: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|s| {
            let future = worker.call(&shout, s);
            tokio::spawn(future)
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(["A", "B"]) {
        assert_eq!(task.await.expect("the task ran")?, expected);
    }

    // A command: its stdout and stderr, as `std::process::Output` has them.
    let output: CommandOutput =
        worker.submit(Job::command("sh", ["-c", "echo out; echo err >&2"])).await?;
    assert_eq!(output.stdout, b"out\n");
    println!("tokio example: total {total}, command said {:?}", output.stdout);

    worker.stop(Duration::from_secs(5));
    Ok(())
}
