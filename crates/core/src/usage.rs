//! [`Usage`]: what a reaped child cost, from the kernel.

use std::time::Duration;

/// The resources a reaped child used, as the kernel counted them when it was reaped
/// (`waitid`'s rusage): its own and those of the descendants it waited for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The largest resident set size, in KiB.
    pub max_rss_kib: u64,
    /// CPU time spent in user mode.
    pub user: Duration,
    /// CPU time spent in the kernel on its behalf.
    pub system: Duration,
}

impl Usage {
    pub(crate) fn from_rusage(r: &libc::rusage) -> Usage {
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        Usage {
            max_rss_kib: r.ru_maxrss.max(0) as u64,
            user: time(r.ru_utime),
            system: time(r.ru_stime),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Command, Exit};

    /// `dd` with a 64 MiB block reads /dev/zero into a buffer that size: every page resident.
    #[test]
    fn a_child_that_fills_64_mib_shows_it_in_max_rss() {
        let mut child = Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", "status=none"])
            .spawn()
            .unwrap();
        let (exit, usage) = child.wait_usage().unwrap();
        assert_eq!(exit, Exit::Code(0));
        assert!(usage.max_rss_kib >= 50 * 1024, "{usage:?}");
        assert_eq!(child.usage(), Some(usage));
        assert_eq!(child.try_wait_usage().unwrap(), Some((exit, usage)));
    }

    #[test]
    fn a_busy_child_shows_user_cpu() {
        let script = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
        let mut child = Command::shell(script).spawn().unwrap();
        let (exit, usage) = child.wait_usage().unwrap();
        assert_eq!(exit, Exit::Code(0));
        assert!(usage.user > std::time::Duration::ZERO, "{usage:?}");
        assert!(usage.max_rss_kib > 0, "{usage:?}");
    }

    #[test]
    fn a_running_child_has_no_usage_yet() {
        let mut child = Command::new("cat").stdin(crate::Stdio::Pipe).spawn().unwrap();
        assert_eq!(child.try_wait_usage().unwrap(), None);
        assert_eq!(child.usage(), None);
        drop(child.take_stdin());
        let (exit, _) = child.wait_usage().unwrap();
        assert_eq!(exit, Exit::Code(0));
    }
}
