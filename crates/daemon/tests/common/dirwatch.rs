//! Wakes a test when a file in the watched directories is created or written (inotify), so it
//! waits for a daemon's output or record without polling on a timer.

use std::path::Path;
use std::time::Duration;

/// An inotify watch on some directories.
pub struct DirWatch(std::os::fd::OwnedFd);

impl DirWatch {
    /// Watches `dirs` for files created or written.
    pub fn new<P: AsRef<Path>>(dirs: &[P]) -> Self {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).expect("inotify");
        for d in dirs {
            inotify::add_watch(&fd, d.as_ref(), WatchFlags::MODIFY | WatchFlags::CREATE)
                .expect("watch");
        }
        DirWatch(fd)
    }

    /// Blocks until something changed, or `max` passed; drains the events.
    pub fn wait(&self, max: Duration) {
        let mut fds = [rustix::event::PollFd::new(&self.0, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: max.as_secs() as _,
            tv_nsec: max.subsec_nanos() as _,
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let mut buf = [0u8; 4096];
        while matches!(rustix::io::read(&self.0, &mut buf), Ok(n) if n > 0) {}
    }
}
