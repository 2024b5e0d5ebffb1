//! Runs `examples/first_hour.rs` as a test: this binary's `main` is the example's (so a
//! process started for a function task, this binary run again, reaches `init` the same way).
//! A failed assertion exits non-zero.

#[path = "../examples/first_hour.rs"]
mod example;

fn main() {
    example::main();
    println!("procmgr_hardening_example_first_hour ... ok");
}
