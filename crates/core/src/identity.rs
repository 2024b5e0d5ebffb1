//! Process identity: pid plus start time plus boot id, so a recycled pid is never mistaken
//! for the process it used to name.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{Error, Pid, Result};

/// Who a process is, as precisely as `/proc` can say: its pid, its start time in clock ticks
/// since boot (field 22 of `/proc/PID/stat`) and the boot it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: Pid,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
}

/// What `/proc/PID/stat` says about a process right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (`R`, `S`, `D`, `T`, `Z`, …).
    pub state: char,
    /// The parent pid (0 for none).
    pub ppid: i32,
    /// The process group id.
    pub pgid: i32,
    /// The session id.
    pub sid: i32,
    /// Threads in the process.
    pub num_threads: u64,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`; `Ok(None)` when no such process exists.
    pub fn read(pid: Pid) -> Result<Option<ProcStat>> {
        let path = format!("/proc/{pid}/stat");
        let text = match read_small(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // ESRCH can surface while the process is being torn down.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(Error::path("read", path, e)),
        };
        let text = String::from_utf8_lossy(&text);
        parse_stat(&text).map(Some).ok_or_else(|| {
            Error::path(
                "parse",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected format"),
            )
        })
    }

    /// Whether the process has exited and waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }

    /// Whether the process is stopped (SIGSTOP or a tracer).
    pub fn is_stopped(&self) -> bool {
        self.state == 'T' || self.state == 't'
    }
}

/// The whole of a small `/proc` file: open, one read into a buffer that holds it (a
/// `stat` line is a few hundred bytes), close — where `read_to_string` also asks the size
/// and reads in doubling steps from 32 bytes (seven system calls for a `stat` line, on the
/// daemon's path from a job's exit to the next job's start).
fn read_small(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            // A short read of a `/proc` record is the whole of it.
            Ok(n) if len + n < buf.len() => {
                len += n;
                break;
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22 → index 19.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        num_threads: fields.get(17)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// This boot's id (read once).
pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

impl ProcessIdentity {
    /// The identity of the live (or zombie) process `pid`; `Ok(None)` if there is none.
    pub fn of(pid: Pid) -> Result<Option<ProcessIdentity>> {
        Ok(ProcStat::read(pid)?.map(|stat| ProcessIdentity {
            pid,
            start_time: stat.start_time,
            boot_id: boot_id().to_owned(),
        }))
    }

    /// The identity of this process.
    pub fn current() -> Result<ProcessIdentity> {
        let pid = Pid::current();
        ProcessIdentity::of(pid)?.ok_or_else(|| {
            Error::path(
                "read",
                "/proc/self/stat",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    /// Whether the process this identity was taken from still exists (possibly as a zombie):
    /// same boot, and the pid now names a process with the same start time.
    pub fn is_same_process(&self) -> Result<bool> {
        if self.boot_id != boot_id() {
            return Ok(false);
        }
        Ok(ProcStat::read(self.pid)?.is_some_and(|stat| stat.start_time == self.start_time))
    }

    /// Like [`ProcessIdentity::is_same_process`], and the process has not exited.
    pub fn is_running(&self) -> Result<bool> {
        if self.boot_id != boot_id() {
            return Ok(false);
        }
        Ok(ProcStat::read(self.pid)?
            .is_some_and(|stat| stat.start_time == self.start_time && !stat.is_zombie()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_parens_and_spaces() {
        let text = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 1 1";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.pgid, 1234);
        assert_eq!(stat.start_time, 987654);
        assert_eq!(stat.num_threads, 1);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    /// A `/proc` file longer than the first buffer reads whole (a `stat` line can pass 1 KiB
    /// with large counters): the same bytes as `std::fs::read`.
    #[test]
    fn small_proc_files_read_whole() {
        let status = read_small("/proc/self/status").unwrap();
        assert!(status.len() > 1024, "/proc/self/status is {} bytes", status.len());
        let head = |b: &[u8]| String::from_utf8_lossy(b).lines().next().map(str::to_owned);
        assert_eq!(head(&status), head(&std::fs::read("/proc/self/status").unwrap()));
        assert!(status.ends_with(b"\n"), "nothing cut off at the end");
        let stat = read_small("/proc/self/stat").unwrap();
        assert!(parse_stat(&String::from_utf8_lossy(&stat)).is_some());
    }

    #[test]
    fn current_process_is_itself() {
        let me = ProcessIdentity::current().unwrap();
        assert!(me.is_same_process().unwrap());
        assert!(me.is_running().unwrap());
        let mut other = me.clone();
        other.start_time += 1;
        assert!(!other.is_same_process().unwrap());
        let mut other_boot = me;
        other_boot.boot_id = "elsewhere".into();
        assert!(!other_boot.is_same_process().unwrap());
    }
}
