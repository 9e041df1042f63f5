//! Run ids and the names derived from them.
//!
//! Every network namespace a run creates is called `<run id>-<role>`, and
//! every file lives under `<root>/<run id>/`. The run id is `weft-` plus four
//! random characters, so two runs on one machine never collide and `down` can
//! recognise what a killed run left behind by its prefix alone. Links need no
//! run id: they are created directly inside the run's own namespaces and
//! never exist in the machine's namespace, where names would have to be
//! unique.

use std::fmt;
use std::path::{Path, PathBuf};

use rand::Rng;

/// The fixed start of every run id.
pub const RUN_PREFIX: &str = "weft-";

/// Where runs keep their files unless `WEFT_E2E_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/tmp/weft-e2e";

/// The directory holding one subdirectory per run.
pub fn root_dir() -> PathBuf {
    std::env::var_os("WEFT_E2E_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// A run's id, e.g. `weft-k3f9`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RunId(String);

impl RunId {
    /// A fresh id that names no existing run directory or namespace.
    pub fn generate(root: &Path) -> RunId {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        loop {
            let suffix: String = (0..4)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            let id = RunId(format!("{RUN_PREFIX}{suffix}"));
            let taken = root.join(&id.0).exists()
                || Path::new("/var/run/netns")
                    .join(id.netns("underlay"))
                    .exists();
            if !taken {
                return id;
            }
        }
    }

    /// Parses an id given on the command line or found on disk.
    pub fn parse(s: &str) -> Option<RunId> {
        let suffix = s.strip_prefix(RUN_PREFIX)?;
        let ok = suffix.len() == 4
            && suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        ok.then(|| RunId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this run's namespace for `role` (`underlay`, `ctl`,
    /// `node-1`, `pod-<namespace>-<name>`).
    pub fn netns(&self, role: &str) -> String {
        format!("{}-{role}", self.0)
    }

    /// The run id a namespace name belongs to, if it looks like one of ours.
    pub fn of_netns(name: &str) -> Option<RunId> {
        let id = name.get(..RUN_PREFIX.len() + 4)?;
        let rest = &name[id.len()..];
        if !rest.starts_with('-') {
            return None;
        }
        RunId::parse(id)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_own_their_namespaces() {
        let id = RunId::parse("weft-k3f9").expect("valid");
        assert_eq!(id.netns("node-1"), "weft-k3f9-node-1");
        assert_eq!(RunId::of_netns("weft-k3f9-node-1"), Some(id.clone()));
        assert_eq!(RunId::of_netns("weft-k3f9"), None);
        assert_eq!(RunId::of_netns("weft-K3F9-x"), None);
        assert_eq!(RunId::of_netns("wn123x0"), None);
        assert_eq!(RunId::parse("weft-toolong"), None);
        let fresh = RunId::generate(Path::new("/nonexistent"));
        assert!(RunId::parse(fresh.as_str()).is_some());
    }
}
