//! procyard-resultworker with threads of its own: a pool of threads started after `init`,
//! each waiting on its futures, and a future awaited on a plain executor
//! (`futures_lite::future::block_on`).
//!
//! `init()` runs first in `main`, before any thread starts (see the `tokio` example for why).
//!
//! Run it: `cargo run -p procyard-resultworker --example thread_pool`.

use std::time::Duration;

use procyard_resultworker::{Config, Error, ResultWorker, as_completed, register, wait_all};

/// The program's own entry point (also the test `example_thread_pool`'s).
pub fn main() {
    let double = register("double", |x: u64| Ok::<_, String>(2 * x));
    let fail = register("fail", |_: ()| Err::<u64, _>("no luck"));
    procyard_resultworker::init();

    let worker = match ResultWorker::new(Config::default().max_workers(2)) {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("thread_pool example: {}", procyard_core::report(&e));
            std::process::exit(1);
        }
    };

    // A pool of four threads, started after `init`, each calling and waiting.
    let pool: Vec<_> = (0..4u64)
        .map(|t| {
            let (worker, double) = (worker.clone(), double.clone());
            std::thread::spawn(move || {
                let futures: Vec<_> = (0..5).map(|i| worker.call(&double, &(t * 10 + i))).collect();
                wait_all(&futures).into_iter().map(|r| r.expect("double")).sum::<u64>()
            })
        })
        .collect();
    let total: u64 = pool.into_iter().map(|t| t.join().expect("a pool thread")).sum();
    assert_eq!(total, 2 * (0..4u64).map(|t| (0..5).map(|i| t * 10 + i).sum::<u64>()).sum::<u64>());

    // `.await` on a plain executor.
    let value = futures_lite::future::block_on(worker.call(&double, &21)).expect("double");
    assert_eq!(value, 42);

    // The outcomes in the order they arrive; a job's own error is typed.
    let futures = vec![worker.call(&double, &1), worker.call(&fail, &())];
    let mut failed = 0;
    for (index, outcome) in as_completed(&futures) {
        match outcome {
            Ok(v) => assert_eq!((index, v), (0, 2)),
            Err(Error::Failed { message }) => {
                assert_eq!((index, message.as_str()), (1, "no luck"));
                failed += 1;
            }
            Err(e) => panic!("unexpected outcome: {e}"),
        }
    }
    assert_eq!(failed, 1);
    println!("thread_pool example: total {total}");
    worker.stop(Duration::from_secs(5));
}
