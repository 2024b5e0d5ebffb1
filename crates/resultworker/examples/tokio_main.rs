//! procyard-resultworker under `#[tokio::main]`, written the way an async program usually is:
//! `init()` inside the async `main`, after the runtime's threads exist.
//!
//! It works: the worker process (this program run again) then has the runtime's threads too,
//! so it does not fork its jobs (unsound in a multi-threaded process) but starts each function
//! job as a new process of this program by exec, whose `main` reaches `init` and runs the job.
//! That costs a program start per job; `examples/tokio.rs` shows the faster form (`init` in a
//! plain `fn main`, then the runtime), where the worker forks.
//!
//! Run it: `cargo run -p procyard-resultworker --example tokio_main`.

use std::time::Duration;

use procyard_resultworker::{CommandOutput, Config, Error, Job, ResultWorker, register};

/// The program's own entry point (also the test `example_tokio_main`'s).
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
pub async fn main() {
    let square = register("square", |x: u64| Ok::<_, String>(x * x));
    let pid = register("pid", |(): ()| Ok::<_, String>(std::process::id()));
    let fail = register("fail", |_: ()| Err::<(), _>("no luck"));
    let panic = register("panic", |_: ()| -> Result<(), String> { panic!("boom") });
    let nap = register("nap", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(())
    });
    procyard_resultworker::init();

    let worker = match ResultWorker::start(Config::default().max_workers(2)) {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("tokio_main example: {}", procyard_core::report(&e));
            std::process::exit(1);
        }
    };
    let futures: Vec<_> = (1..=4u64).map(|i| worker.call(&square, &i)).collect();
    let mut total = 0;
    for future in futures {
        total += future.await.expect("square");
    }
    assert_eq!(total, 30);

    // Each job ran in a process of its own, neither this one nor the worker.
    let a = worker.call(&pid, &()).await.expect("pid");
    let b = worker.call(&pid, &()).await.expect("pid");
    assert_ne!(a, b);
    assert_ne!(a, std::process::id());
    assert_ne!(Some(a), worker.worker_pid().map(|p| p.as_raw() as u32));

    // Errors and panics are the job's own, typed.
    assert!(
        matches!(worker.call(&fail, &()).await, Err(Error::Failed { message }) if message == "no luck")
    );
    assert!(
        matches!(worker.call(&panic, &()).await, Err(Error::Failed { message }) if message.contains("boom"))
    );

    // A timeout kills the job's process.
    let started = std::time::Instant::now();
    let late = worker.submit::<()>(nap.job(&60_000).timeout(Duration::from_millis(200))).await;
    assert!(matches!(late, Err(Error::TimedOut { .. })), "{late:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    let output: CommandOutput =
        worker.submit(Job::command("sh", ["-c", "echo out"])).await.expect("a command");
    assert_eq!(output.stdout, b"out\n");
    println!("tokio_main example: total {total}, jobs in processes {a} and {b}");
    worker.stop(Duration::from_secs(5));
}
