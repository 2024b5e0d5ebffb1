//! Runs `examples/tokio.rs` as a test: this binary's `main` is the example's (so its worker
//! process, this binary run again, reaches `init` the same way). A failed assertion exits
//! non-zero.

#[path = "../examples/tokio.rs"]
mod example;

fn main() {
    example::main();
    println!("resultworker_hardening_example_tokio ... ok");
}
