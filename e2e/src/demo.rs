//! The narrated demo (`weft-e2e demo`, `make demo`).

use crate::error::Result;

/// Runs the demo; with `keep`, leaves the cluster up.
pub fn run(_keep: bool) -> Result<()> {
    Ok(())
}
