//! Time for scheduling, as pure functions: time zones and `--at` times ([`zone`],
//! [`parse_at`]).

mod zone;

pub use zone::{parse_at, zone};
