//! Where per-user runtime files (sockets, pools) live by default.

use std::path::PathBuf;

/// The caller's runtime directory for procyard: `/run/procyard` for root,
/// `$XDG_RUNTIME_DIR/procyard` when that is set, else `/tmp/procyard-$EUID`. The effective uid
/// decides, since it is the one that owns what we create there.
pub fn runtime_dir() -> PathBuf {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return PathBuf::from("/run/procyard");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("procyard"),
        None => PathBuf::from(format!("/tmp/procyard-{}", euid.as_raw())),
    }
}
