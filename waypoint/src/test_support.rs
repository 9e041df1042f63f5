//! What the unit tests of several modules share.

/// The size of the future (or anything) `f` returns, without calling it:
/// the hot path's futures are held per request and copied when boxed.
pub fn returned_size<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}
