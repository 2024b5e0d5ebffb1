//! The scheduling parts of a config: `[daemon] timezone` (the zone of local `--at` times).

use toml::Spanned;

use super::validate::Validator;
use crate::Result;

impl Validator<'_> {
    /// A time zone name (default UTC), refused with the field named when no zone has it.
    pub(super) fn timezone(&self, v: &Option<Spanned<String>>, field: &str) -> Result<String> {
        let Some(v) = v else { return Ok("UTC".to_owned()) };
        match crate::schedule::zone(v.get_ref()) {
            Ok(_) => Ok(v.get_ref().clone()),
            Err(message) => Err(self.err(Some(v.span()), field, message)),
        }
    }
}
