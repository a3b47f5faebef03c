//! Waiting for something to happen outside this process (a QEMU to answer, a mount to appear, a
//! process to exit): one polling loop with a deadline, instead of one per caller.

use std::time::{Duration, Instant};

/// How often [`until`] looks by default.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// Calls `probe` every `interval` until it returns `Some`, or until `timeout` has passed since
/// the call (then `None`). `probe` runs at least once, and once more at the deadline, so a
/// condition that became true while we slept is not missed.
pub fn until<T>(timeout: Duration, interval: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last_look = Instant::now() >= deadline;
        if let Some(value) = probe() {
            return Some(value);
        }
        if last_look {
            return None;
        }
        std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// [`until`] for a condition: whether `condition` held within `timeout`, polled every
/// [`INTERVAL`].
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    until(timeout, INTERVAL, || condition().then_some(())).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_the_timeout_having_looked_at_the_deadline() {
        let started = Instant::now();
        let mut looks = 0;
        assert!(!wait_for(Duration::from_millis(50), || {
            looks += 1;
            false
        }));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(looks >= 2, "looked {looks} times");
    }

    #[test]
    fn a_zero_timeout_still_looks_once() {
        assert!(wait_for(Duration::ZERO, || true));
    }
}
