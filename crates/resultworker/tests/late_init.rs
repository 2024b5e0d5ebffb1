//! The trap of `#[tokio::main]`: `init()` inside the async main runs after the runtime's
//! threads exist. The application is told at `start`, in words that say what to write
//! instead; a worker program that calls `init` late refuses the same way (with its name).

use procyard_resultworker::{Config, Error, ResultWorker};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _square = procyard_resultworker::register("square", |x: u64| Ok::<_, String>(x * x));
    procyard_resultworker::init();
    resultworker_hardening_init_inside_tokio_main_is_refused_with_the_fix();
    resultworker_hardening_threaded_worker_refuses_with_the_fix();
}

fn expect_refusal(result: Result<ResultWorker, Error>, worker_named: bool) {
    let error = result.expect_err("a worker whose init ran with threads alive must be refused");
    let Error::InitAfterThreads { program, threads } = &error else {
        panic!("expected InitAfterThreads, got {error:?}");
    };
    assert!(*threads > 1, "{error}");
    assert_eq!(program.is_some(), worker_named, "{error:?}");
    let message = error.to_string();
    for words in ["procyard_resultworker::init()", "fn main()", "#[tokio::main]", "block_on"] {
        assert!(message.contains(words), "{words:?} missing from: {message}");
    }
}

fn resultworker_hardening_init_inside_tokio_main_is_refused_with_the_fix() {
    expect_refusal(ResultWorker::new(Config::default().max_workers(1)), false);
    println!("resultworker_hardening_init_inside_tokio_main_is_refused_with_the_fix ... ok");
}

fn resultworker_hardening_threaded_worker_refuses_with_the_fix() {
    // Named explicitly, the program is not assumed to be this one: the worker (this program
    // run again, its `init` inside the runtime too) refuses instead of failing every job.
    let exe = std::env::current_exe().expect("current exe");
    expect_refusal(ResultWorker::new(Config::default().max_workers(1).program(exe)), true);
    println!("resultworker_hardening_threaded_worker_refuses_with_the_fix ... ok");
}
