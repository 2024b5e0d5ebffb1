//! Runs `examples/thread_pool.rs` as a test: this binary's `main` is the example's (so its
//! worker process, this binary run again, reaches `init` the same way). A failed assertion
//! exits non-zero.

#[path = "../examples/thread_pool.rs"]
mod example;

fn main() {
    example::main();
    println!("resultworker_hardening_example_thread_pool ... ok");
}
