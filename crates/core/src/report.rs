//! Error reports: an error and every cause, on one line, each said once.
//!
//! `report(&e)` gives `unable to spawn worker for task app: unable to spawn /opt/app: No such
//! file or directory (os error 2)`. A cause whose text the previous message already contains
//! (an error that formats its source inline), or that repeats the previous message inside its
//! own (a library that says its error twice), adds only what is new.

use std::error::Error;
use std::fmt;

/// Formats `error` and its chain of sources as `outer: cause: root cause`.
pub fn report(error: &(dyn Error + 'static)) -> String {
    Report(error).to_string()
}

/// [`report`] as a `Display` value, for `format!` and `tracing` fields without an allocation.
#[derive(Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !previous.contains(&text) {
                // A cause that repeats the previous message inside its own adds only the rest.
                let added = if previous.is_empty() {
                    text.clone()
                } else {
                    text.replacen(&previous, "", 1)
                };
                let added = added.trim_matches(|c: char| c == ':' || c.is_whitespace());
                if !added.is_empty() {
                    write!(f, ": {added}")?;
                }
            }
            previous = text;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<dyn Error + 'static>>);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn every_cause_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let inner = Wrap("unable to spawn /opt/app", Some(Box::new(io)));
        let outer = Wrap("unable to start a worker for task app", Some(Box::new(inner)));
        assert_eq!(
            report(&outer),
            "unable to start a worker for task app: unable to spawn /opt/app: \
             No such file or directory (os error 2)"
        );
        let inline = Wrap("read failed: broken", Some(Box::new(Wrap("broken", None))));
        assert_eq!(report(&inline), "read failed: broken");
        let echo = Wrap("disk is full", Some(Box::new(Wrap("Error code 13: disk is full", None))));
        assert_eq!(report(&echo), "disk is full: Error code 13");
        let more = Wrap("open q", Some(Box::new(Wrap("open q: permission denied", None))));
        assert_eq!(report(&more), "open q: permission denied");
    }
}
