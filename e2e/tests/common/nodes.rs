//! What the tests read of a node's own files.

use std::collections::BTreeMap;
use std::path::Path;

/// Every file of a directory and its bytes (absent directory: empty): a
/// node's CNI config dir as a runtime would find it.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// Whether a chain of plugin types ends in weft-cni.
pub fn chained(chain: &[String]) -> bool {
    chain.last().is_some_and(|t| t == "weft-cni")
}
