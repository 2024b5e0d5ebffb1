//! Runs `examples/tokio_main.rs` as a test: this binary's `main` is the example's
//! `#[tokio::main]` (so its worker, and the job processes the worker starts by exec, reach
//! `init` inside the runtime the same way). A failed assertion exits non-zero.

#[path = "../examples/tokio_main.rs"]
mod example;

fn main() {
    example::main();
    println!("resultworker_hardening_example_tokio_main ... ok");
}
