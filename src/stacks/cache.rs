//! The cache in front of a remote stack source. An answer is used for
//! `ttl` without asking again; concurrent lookups of one stack share one
//! request. When the source is down (unreachable, timed out, 5xx, 429 — what
//! [`StackSourceError::Unavailable`] means), the stack's last answer is served
//! for at most `ttl + stale_window` after it was fetched, with a warning; past
//! that the lookup fails and the API answers 503. Tags are never guessed: a
//! stack never seen, or seen too long ago, is not served from memory.
//!
//! "No such stack" (a 404, which for HCP Terraform also means "no access") is
//! remembered for `negative_ttl` only, usually much shorter than `ttl`: a stack
//! created a moment ago becomes usable within seconds, while a stream of
//! requests for a name that does not exist still costs the service one request
//! per `negative_ttl`. A negative answer is never served stale: while the
//! source is down, an unknown stack stays an error, not a 404.
//!
//! A refusal (the source rejected the broker's token or sent something
//! unreadable: [`StackSourceError::Refused`]) is not "down": nothing stale
//! stands in for it, because the operator has to act.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::{Stack, StackRef, StackSource, StackSourceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub stale_window: Duration,
    pub negative_ttl: Duration,
    pub capacity: u64,
}

/// `inner`, cached as the module says.
pub struct Cached<S> {
    inner: S,
    /// Where the source says what; what `try_get_with` coalesces on.
    fresh: Cache<StackRef, Option<Stack>>,
    /// The last stack each reference resolved to, with when it was fetched.
    last_good: Cache<StackRef, (Instant, Stack)>,
    settings: CacheSettings,
    /// Names the source in warnings.
    name: &'static str,
}

/// A found stack lives for `ttl`, a missing one for `negative_ttl`.
struct FreshFor {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<StackRef, Option<Stack>> for FreshFor {
    fn expire_after_create(
        &self,
        _key: &StackRef,
        value: &Option<Stack>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Some(_) => self.ttl,
            None => self.negative_ttl,
        })
    }
}

impl<S: StackSource> Cached<S> {
    pub fn new(inner: S, name: &'static str, settings: CacheSettings) -> Self {
        Cached {
            inner,
            fresh: Cache::builder()
                .max_capacity(settings.capacity)
                .expire_after(FreshFor {
                    ttl: settings.ttl,
                    negative_ttl: settings.negative_ttl,
                })
                .build(),
            last_good: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl + settings.stale_window)
                .build(),
            settings,
            name,
        }
    }

    async fn fetch(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
        let found = self.inner.stack(reference).await?;
        match &found {
            Some(stack) => {
                self.last_good
                    .insert(reference.clone(), (Instant::now(), stack.clone()))
                    .await
            }
            // The source says it is gone (or no longer ours to read): forget it.
            None => self.last_good.invalidate(reference).await,
        }
        Ok(found)
    }

    /// The stack's last answer, if it is recent enough to stand in.
    async fn stale(&self, reference: &StackRef) -> Option<(Duration, Stack)> {
        let (fetched, stack) = self.last_good.get(reference).await?;
        let age = fetched.elapsed();
        (age < self.settings.ttl + self.settings.stale_window).then_some((age, stack))
    }
}

#[async_trait::async_trait]
impl<S: StackSource> StackSource for Cached<S> {
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
        let answer = self
            .fresh
            .try_get_with_by_ref(reference, self.fetch(reference))
            .await;
        let error = match answer {
            Ok(found) => return Ok(found),
            // moka shares one error between every caller that waited on the lookup.
            Err(shared) => Arc::unwrap_or_clone(shared),
        };
        match error {
            StackSourceError::Unavailable(message) => match self.stale(reference).await {
                Some((age, stack)) => {
                    tracing::warn!(
                        source = self.name,
                        stack = %reference,
                        age_seconds = age.as_secs(),
                        error = %message,
                        "stack source unavailable; serving the stack's last answer"
                    );
                    Ok(Some(stack))
                }
                None => Err(StackSourceError::Unavailable(format!(
                    "{message} (and no answer for {reference} younger than {}s to fall back on)",
                    (self.settings.ttl + self.settings.stale_window).as_secs()
                ))),
            },
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A source that counts its lookups, can be down or refusing, and whose
    /// tags can change.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        down: AtomicBool,
        refusing: AtomicBool,
        missing: AtomicBool,
        component: Mutex<String>,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl StackSource for Arc<Fake> {
        async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(StackSourceError::Unavailable("HTTP 503".into()));
            }
            if self.refusing.load(Ordering::SeqCst) {
                return Err(StackSourceError::Refused("HTTP 401".into()));
            }
            if self.missing.load(Ordering::SeqCst) {
                return Ok(None);
            }
            Ok(Some(Stack {
                reference: reference.clone(),
                tags: BTreeMap::from([(
                    "backstage-component".to_owned(),
                    self.component.lock().unwrap().clone(),
                )]),
            }))
        }
    }

    fn settings(ttl_ms: u64, stale_ms: u64, negative_ms: u64) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            stale_window: Duration::from_millis(stale_ms),
            negative_ttl: Duration::from_millis(negative_ms),
            capacity: 100,
        }
    }

    fn fake() -> Arc<Fake> {
        let fake = Arc::new(Fake::default());
        *fake.component.lock().unwrap() = "payments".into();
        fake
    }

    fn component(stack: &Option<Stack>) -> &str {
        &stack.as_ref().unwrap().tags["backstage-component"]
    }

    fn reference() -> StackRef {
        StackRef::parse("pulumi:acme/payments/prod").unwrap()
    }

    #[tokio::test]
    async fn answers_are_reused_for_the_ttl_then_fetched_again() {
        let source = fake();
        let cached = Cached::new(source.clone(), "test", settings(300, 0, 0));
        let r = reference();
        assert_eq!(component(&cached.stack(&r).await.unwrap()), "payments");
        assert_eq!(component(&cached.stack(&r).await.unwrap()), "payments");
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);

        *source.component.lock().unwrap() = "search".into();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(component(&cached.stack(&r).await.unwrap()), "search");
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_stack_share_one_request() {
        let source = Arc::new(Fake {
            delay: Duration::from_millis(100),
            ..Fake::default()
        });
        let cached = Arc::new(Cached::new(source.clone(), "test", settings(10_000, 0, 0)));
        let r = reference();
        let lookups: Vec<_> = (0..8)
            .map(|_| {
                let cached = cached.clone();
                let r = r.clone();
                tokio::spawn(async move { cached.stack(&r).await.unwrap() })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.unwrap().is_some());
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_down_source_is_covered_by_the_stale_window_and_no_longer() {
        let source = fake();
        let cached = Cached::new(source.clone(), "test", settings(100, 300, 0));
        let r = reference();
        cached.stack(&r).await.unwrap();

        source.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Past the ttl, within the stale window: the source is asked, and its
        // last answer stands in.
        assert_eq!(component(&cached.stack(&r).await.unwrap()), "payments");
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);

        tokio::time::sleep(Duration::from_millis(300)).await;
        let err = cached.stack(&r).await.unwrap_err();
        assert!(matches!(err, StackSourceError::Unavailable(_)), "{err}");

        // Back up: fresh answers again.
        source.down.store(false, Ordering::SeqCst);
        assert_eq!(component(&cached.stack(&r).await.unwrap()), "payments");
    }

    #[tokio::test]
    async fn a_stack_never_seen_is_not_guessed_and_a_refusal_is_not_covered() {
        let source = fake();
        source.down.store(true, Ordering::SeqCst);
        let cached = Cached::new(source.clone(), "test", settings(50, 10_000, 0));
        let r = reference();
        assert!(matches!(
            cached.stack(&r).await.unwrap_err(),
            StackSourceError::Unavailable(_)
        ));

        source.down.store(false, Ordering::SeqCst);
        cached.stack(&r).await.unwrap();
        source.refusing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(matches!(
            cached.stack(&r).await.unwrap_err(),
            StackSourceError::Refused(_)
        ));
    }

    #[tokio::test]
    async fn missing_stacks_are_remembered_briefly_and_never_served_stale() {
        let source = fake();
        source.missing.store(true, Ordering::SeqCst);
        let cached = Cached::new(source.clone(), "test", settings(10_000, 10_000, 100));
        let r = reference();
        assert!(cached.stack(&r).await.unwrap().is_none());
        assert!(cached.stack(&r).await.unwrap().is_none());
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);

        tokio::time::sleep(Duration::from_millis(150)).await;
        source.missing.store(false, Ordering::SeqCst);
        assert!(cached.stack(&r).await.unwrap().is_some());
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stack_that_disappears_is_not_served_stale_afterwards() {
        let source = fake();
        let cached = Cached::new(source.clone(), "test", settings(50, 10_000, 0));
        let r = reference();
        cached.stack(&r).await.unwrap();
        source.missing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cached.stack(&r).await.unwrap().is_none());
        source.missing.store(false, Ordering::SeqCst);
        source.down.store(true, Ordering::SeqCst);
        assert!(cached.stack(&r).await.is_err());
    }
}
