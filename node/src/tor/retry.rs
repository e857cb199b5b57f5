//! The retry schedule of an onion dial, apart from Tor so that it can be
//! tested without a network.
//!
//! A dial is a series of attempts within one budget. Each attempt has its
//! own deadline ([`RetryPolicy::attempt_timeout`]). An attempt that fails
//! is followed by another after a pause (1 s doubling to 8 s); an attempt
//! that is still pending after [`RetryPolicy::hedge_after`] gets a fresh
//! attempt beside it (at most [`RetryPolicy::max_in_flight`] at once), and
//! the first one that connects wins. Why both: an onion connection attempt
//! can hang for minutes inside arti (an introduction point acknowledges a
//! service that is gone or not accepting yet, and the client then waits for
//! a rendezvous that never comes; arti's own bound on that wait is derived
//! from circuit build times and exceeds our whole budget on a young
//! network). A dial that waited for such an attempt would not notice that
//! the service came back.

use std::{future::Future, time::Duration};

use futures::{StreamExt as _, stream::FuturesUnordered};
use tokio::time::Instant;

/// When and how often a dial tries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The whole dial, every attempt included.
    pub budget: Duration,
    /// One attempt's own deadline.
    pub attempt_timeout: Duration,
    /// A pending attempt gets a fresh attempt beside it after this long.
    pub hedge_after: Duration,
    /// The first pause after a failed attempt; doubled after each failure.
    pub backoff_min: Duration,
    /// The longest pause after a failed attempt.
    pub backoff_max: Duration,
    /// Attempts pending at once, at most.
    pub max_in_flight: usize,
}

impl RetryPolicy {
    /// The schedule of an onion dial with `budget`: 30 s per attempt, a
    /// fresh attempt beside a pending one after 10 s (at most 3 pending),
    /// 1 s doubling to 8 s after a failure.
    pub fn onion(budget: Duration) -> Self {
        RetryPolicy {
            budget,
            attempt_timeout: Duration::from_secs(30),
            hedge_after: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            max_in_flight: 3,
        }
    }
}

/// Every attempt failed within the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// How long the dial took.
    pub elapsed: Duration,
    /// Attempts started.
    pub attempts: u32,
    /// The last attempt's error (or "no answer").
    pub last: String,
}

/// Runs `attempt(n)` (n = 1, 2, ...) on `policy`'s schedule until one
/// returns `Ok`, which is returned with its number; attempts still pending
/// then are dropped. Errors are texts, for the final report.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<(T, u32), Exhausted>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let deadline = started + policy.budget;
    let mut pending = FuturesUnordered::new();
    let mut attempts = 0u32;
    let mut pause = policy.backoff_min;
    let mut next_start = started;
    let mut last: Option<String> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left = deadline - now;
        // An attempt needs at least the shortest pause to be worth starting.
        let may_start = pending.len() < policy.max_in_flight.max(1)
            && (left >= policy.backoff_min || attempts == 0);
        if now >= next_start && may_start {
            attempts += 1;
            let n = attempts;
            let own = policy.attempt_timeout.min(left);
            if n > 1 && !pending.is_empty() {
                tracing::info!(
                    attempt = n,
                    "onion service: no answer to {} attempt(s) after {:.0} s; retrying in parallel",
                    pending.len(),
                    policy.hedge_after.as_secs_f64()
                );
            }
            let fut = attempt(n);
            pending.push(async move {
                let res = match tokio::time::timeout(own, fut).await {
                    Ok(res) => res,
                    Err(_) => Err(format!("no answer within {} s", own.as_secs())),
                };
                (n, res)
            });
            next_start = now + policy.hedge_after;
            continue;
        }
        // Wake for the next start (if one may start) or the deadline; an
        // attempt that ends wakes us too.
        let wake = if may_start {
            next_start.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            Some((n, res)) = pending.next(), if !pending.is_empty() => match res {
                Ok(v) => return Ok((v, n)),
                Err(e) => {
                    let now = Instant::now();
                    next_start = next_start.min(now + pause);
                    if now + pause < deadline {
                        tracing::info!(
                            attempt = n,
                            "onion service not reachable yet ({e}); retrying in {:.0} s",
                            pause.as_secs_f64()
                        );
                    }
                    pause = (pause * 2).min(policy.backoff_max);
                    last = Some(e);
                }
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    let last = match (last, pending.is_empty()) {
        (Some(e), true) => e,
        (Some(e), false) => format!("{e} (and {} attempt(s) without an answer)", pending.len()),
        (None, _) => "no answer".to_string(),
    };
    Err(Exhausted {
        elapsed: started.elapsed(),
        attempts,
        last,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A schedule in milliseconds, so that the tests are quick; the budgets
    /// leave ample room for a busy machine. Nothing below asserts how long
    /// anything took.
    fn quick(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_millis(budget_ms),
            attempt_timeout: Duration::from_millis(300),
            hedge_after: Duration::from_millis(40),
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            max_in_flight: 3,
        }
    }

    #[tokio::test]
    async fn a_hung_attempt_does_not_hold_up_a_later_one() {
        // Attempt 1 never answers (an introduction acknowledged by a
        // service that is gone); attempt 2, started beside it, connects.
        let (v, n) = retry(&quick(5_000), |n| async move {
            if n == 1 {
                futures::future::pending::<()>().await;
            }
            Ok::<_, String>(n * 10)
        })
        .await
        .unwrap();
        assert_eq!((v, n), (20, 2));
    }

    #[tokio::test]
    async fn failed_attempts_are_retried_until_one_connects() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let (v, n) = retry(&quick(5_000), move |n| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 4 {
                    Err(format!("descriptor not found ({n})"))
                } else {
                    Ok("stream")
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((v, n), ("stream", 4));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_attempt_past_its_own_deadline_counts_as_failed() {
        // Every attempt hangs: each is cut at its own deadline, fresh ones
        // keep starting, and the dial ends with the budget.
        let err = retry(&quick(3_000), |_| {
            futures::future::pending::<Result<(), String>>()
        })
        .await
        .unwrap_err();
        assert!(err.attempts > 3, "{err:?}");
        assert!(err.last.starts_with("no answer"), "{err:?}");
        assert!(err.elapsed >= Duration::from_millis(3_000), "{err:?}");
    }

    #[tokio::test]
    async fn no_more_than_max_in_flight_attempts_are_pending() {
        let live = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (l, m) = (live.clone(), most.clone());
        let _ = retry(&quick(2_000), move |_| {
            let (l, m) = (l.clone(), m.clone());
            async move {
                let now = l.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                // Decrement when dropped or done.
                struct Dec(Arc<AtomicU32>);
                impl Drop for Dec {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _d = Dec(l);
                futures::future::pending::<Result<(), String>>().await
            }
        })
        .await;
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(
            live.load(Ordering::SeqCst),
            0,
            "pending attempts are dropped"
        );
    }

    #[tokio::test]
    async fn the_budget_ends_the_dial_with_the_last_error() {
        let err = retry(&quick(1_000), |n| async move {
            Err::<(), _>(format!("attempt {n}: Onion Service not found"))
        })
        .await
        .unwrap_err();
        assert!(err.attempts >= 2, "{err:?}");
        assert_eq!(
            err.last,
            format!("attempt {}: Onion Service not found", err.attempts)
        );
    }
}
