//! Connection metadata limits, shared by the server (which enforces them at login) and clients
//! (which check before connecting).

use std::collections::BTreeMap;

use thiserror::Error;

/// Most entries connection metadata may have.
pub const METADATA_MAX_ENTRIES: usize = 16;
/// Longest metadata key, in bytes.
pub const METADATA_MAX_KEY: usize = 64;
/// Longest metadata value, in bytes.
pub const METADATA_MAX_VALUE: usize = 256;
/// Default for the most bytes of metadata in all (keys plus values); a server may configure
/// another total.
pub const METADATA_MAX_TOTAL: usize = 2048;

/// Why connection metadata is refused (see [`check_metadata`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    /// More than [`METADATA_MAX_ENTRIES`] entries.
    #[error("{0} metadata entries; at most {METADATA_MAX_ENTRIES} are allowed")]
    TooManyEntries(usize),
    /// A key is empty or longer than [`METADATA_MAX_KEY`] bytes.
    #[error("metadata key {0:?} must be 1..={METADATA_MAX_KEY} bytes")]
    BadKey(String),
    /// A value is longer than [`METADATA_MAX_VALUE`] bytes.
    #[error("metadata value of {0:?} is longer than {METADATA_MAX_VALUE} bytes")]
    ValueTooLong(String),
    /// Keys and values together exceed the total allowed.
    #[error("metadata is {size} bytes; at most {max} are allowed")]
    TooLarge {
        /// Bytes given.
        size: usize,
        /// Bytes allowed.
        max: usize,
    },
}

/// Checks metadata against the entry, key and value limits and `max_total` bytes in all.
///
/// ```
/// use std::collections::BTreeMap;
/// let ok: BTreeMap<String, String> = [("app".into(), "1.2".into())].into_iter().collect();
/// assert!(tether_proto::metadata::check_metadata(&ok, 2048).is_ok());
/// ```
pub fn check_metadata(metadata: &BTreeMap<String, String>, max_total: usize) -> Result<(), MetadataError> {
    if metadata.len() > METADATA_MAX_ENTRIES {
        return Err(MetadataError::TooManyEntries(metadata.len()));
    }
    let mut total = 0usize;
    for (k, v) in metadata {
        if k.is_empty() || k.len() > METADATA_MAX_KEY {
            return Err(MetadataError::BadKey(k.clone()));
        }
        if v.len() > METADATA_MAX_VALUE {
            return Err(MetadataError::ValueTooLong(k.clone()));
        }
        total += k.len() + v.len();
    }
    if total > max_total {
        return Err(MetadataError::TooLarge { size: total, max: max_total });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_limit_is_enforced() {
        assert_eq!(check_metadata(&m(&[]), 0), Ok(()));
        let many: BTreeMap<String, String> = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(check_metadata(&many, 4096), Err(MetadataError::TooManyEntries(17)));
        assert!(matches!(check_metadata(&m(&[("", "v")]), 4096), Err(MetadataError::BadKey(_))));
        let long_key = "k".repeat(65);
        assert!(matches!(check_metadata(&m(&[(&long_key, "v")]), 4096), Err(MetadataError::BadKey(_))));
        let long_value = "v".repeat(257);
        assert!(matches!(check_metadata(&m(&[("k", &long_value)]), 4096), Err(MetadataError::ValueTooLong(_))));
        assert_eq!(check_metadata(&m(&[("ab", "cd")]), 3), Err(MetadataError::TooLarge { size: 4, max: 3 }));
        assert_eq!(check_metadata(&m(&[("ab", "cd")]), 4), Ok(()));
    }
}
