//! `procyard-bgtask-supervise`: the small program that runs one task's supervisor. The
//! `procyard-bgtask` library and CLI execute it with a spawn request on stdin; it links only
//! the supervisor's code, so each supervisor keeps fewer pages resident than one forked from,
//! or executed as, the full CLI.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_none_or(|a| a != "__supervise")
        || std::io::stdin().is_terminal()
    {
        let _ = writeln!(
            std::io::stderr(),
            "procyard-bgtask-supervise: runs a task's supervisor for procyard-bgtask; it is not \
             meant to be run by hand (use `procyard-bgtask spawn -- CMD`)"
        );
        return ExitCode::from(2);
    }
    ExitCode::from(procyard_bgtask::__private::supervise_from_stdio() as u8)
}
