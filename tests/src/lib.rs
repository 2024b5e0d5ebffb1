//! Black-box, cross-crate scenarios for procyard: architecture rules checked as tests, and
//! helpers shared by the scenarios under `tests/tests/`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}
