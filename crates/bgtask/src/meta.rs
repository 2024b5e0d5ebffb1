//! [`Meta`]: a task's metadata, a JSON object, and how it is matched and updated.

/// Metadata: a JSON object.
pub type Meta = serde_json::Map<String, serde_json::Value>;

/// Subset match: every key of `wanted` is in `meta` with an equal value. Arrays and objects
/// are compared whole, element by element over their whole length.
pub fn meta_matches(wanted: &Meta, meta: &Meta) -> bool {
    wanted.iter().all(|(k, v)| meta.get(k) == Some(v))
}

/// Merges `update` into `meta`: a `null` value removes its key.
pub(crate) fn merge_meta(meta: &mut Meta, update: &Meta) {
    for (k, v) in update {
        if v.is_null() {
            meta.remove(k);
        } else {
            meta.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> Meta {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn arrays_compare_whole() {
        let task = meta(json!({"tags": ["a", "b", "c"], "name": "x"}));
        assert!(meta_matches(&meta(json!({"tags": ["a", "b", "c"]})), &task));
        assert!(!meta_matches(&meta(json!({"tags": ["a", "b", "d"]})), &task));
        assert!(!meta_matches(&meta(json!({"tags": ["a", "b"]})), &task));
        assert!(!meta_matches(&meta(json!({"tags": ["a", "b", "c", "d"]})), &task));
        assert!(meta_matches(&meta(json!({})), &task));
        assert!(!meta_matches(&meta(json!({"missing": 1})), &task));
    }

    #[test]
    fn null_removes() {
        let mut m = meta(json!({"a": 1, "b": 2}));
        merge_meta(&mut m, &meta(json!({"a": null, "c": 3})));
        assert_eq!(m, meta(json!({"b": 2, "c": 3})));
    }
}
