//! Waiting for something that happens eventually: poll a check until it
//! holds, or panic naming what was awaited and how long it was given.
//!
//! A check returns `bool` (holds or not), `Option<T>` (`Some` is the value
//! waited for, returned to the caller) or `Result<T, E>` (`Err` says what
//! is still wrong; the last one is in the panic message). The limit is a bound, not a measure:
//! tests pick a generous one and assume nothing about timing below it. Polls
//! start 10 ms apart and back off to 200 ms, and the check runs once more
//! at the limit before giving up.
//!
//! ```ignore
//! eventually("the socket to appear", Duration::from_secs(10), || path.exists());
//! let ip = eventually("pod a's IP", LIMIT, || pod_ip(&state(), "a"));
//! eventually("no listeners", LIMIT, || match listening() {
//!     l if l.is_empty() => Ok(()),
//!     l => Err(format!("still listening on {l:?}")),
//! });
//! let v = eventually_async("a holder", LIMIT, async || holder(&api)).await;
//! ```

use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// What a check returns: what it yields when it holds, or (maybe) why it
/// does not yet.
pub trait Ready {
    type Output;
    fn ready(self) -> Result<Self::Output, Option<String>>;
}

impl Ready for bool {
    type Output = ();
    fn ready(self) -> Result<(), Option<String>> {
        self.then_some(()).ok_or(None)
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Ready for Result<T, E> {
    type Output = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Polls `check` (blocking the thread between polls) until it holds, and
/// returns what it yielded; panics if it still does not hold after `limit`.
#[track_caller]
pub fn eventually<R: Ready>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> R,
) -> R::Output {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match check().ready() {
            Ok(value) => return value,
            Err(last) => last,
        };
        let elapsed = start.elapsed();
        if elapsed >= limit {
            timed_out(what, limit, last);
        }
        std::thread::sleep(pause.min(limit - elapsed));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`eventually`] for async tests: awaits `check` and sleeps on the tokio
/// timer between polls. A check still pending at the limit also times out.
pub async fn eventually_async<R: Ready>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Output {
    let start = tokio::time::Instant::now();
    let deadline = start + limit;
    let mut pause = FIRST_PAUSE;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(outcome) => match outcome.ready() {
                Ok(value) => return value,
                Err(why) => last = why,
            },
            Err(_) => timed_out(what, limit, last),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            timed_out(what, limit, last);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[track_caller]
fn timed_out(what: &str, limit: Duration, last: Option<String>) -> ! {
    match last {
        Some(last) => panic!("timed out after {limit:?} waiting for {what}: {last}"),
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_what_the_check_yields_once_it_holds() {
        let polls = Cell::new(0);
        let got = eventually("the third poll", Duration::from_secs(5), || {
            polls.set(polls.get() + 1);
            (polls.get() == 3).then_some("third")
        });
        assert_eq!(got, "third");
        eventually("a bool check", Duration::from_secs(5), || true);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    fn panics_naming_what_and_how_long() {
        eventually("the impossible", Duration::from_millis(50), || false);
    }

    #[test]
    #[should_panic(expected = "waiting for an empty list: still [1, 2]")]
    fn panics_with_the_last_error_of_a_result_check() {
        eventually("an empty list", Duration::from_millis(30), || {
            Err::<(), _>(format!("still {:?}", [1, 2]))
        });
    }

    #[tokio::test]
    async fn async_twin_polls_and_times_out() {
        let mut polls = 0;
        let got = eventually_async("two polls", Duration::from_secs(5), async || {
            polls += 1;
            (polls == 2).then_some(polls)
        })
        .await;
        assert_eq!(got, 2);
        let hung = tokio::spawn(async {
            eventually_async("a hung check", Duration::from_millis(50), async || {
                std::future::pending::<bool>().await
            })
            .await
        });
        let err = hung.await.expect_err("times out");
        let msg = err.into_panic();
        let msg = msg.downcast_ref::<String>().expect("message");
        assert_eq!(msg, "timed out after 50ms waiting for a hung check");
    }
}
