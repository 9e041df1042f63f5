//! `weft-e2e`: bring a local weft cluster up and down.
fn main() {}
