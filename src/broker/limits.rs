//! Rate limits, per replica (`[limits]`): issuances per principal and per
//! client address, and authentication failures per client address.
//!
//! Each limit is a keyed GCRA limiter (governor): a rate and a burst, so a
//! client may send `burst` requests at once and then one every
//! `1 / rate`. Authentication failures work as a lockout: failures are
//! counted after verification, and once an address is over its limit every
//! request from it is refused before its token is verified, until the next
//! failure would be allowed again; guessing tokens or making the broker
//! fetch keys then costs the client a 429 and the broker nothing.
//!
//! Memory is bounded: keys whose state is as good as new are forgotten by
//! [`Limits::prune`] (every minute), and past `max_tracked_keys` a new key is
//! not remembered, so it is judged as a fresh one every time (the limit
//! fails open rather than refusing everyone new; a warning says so).
//! IPv6 clients are keyed by their /64, the block one host is usually given,
//! so a client cannot step around its limit by changing its own address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::identity::Principal;

/// Which limit refused a request: the `limit` label of
/// `stackpass_rate_limited_total` and what the refusal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    IssuancePerPrincipal,
    IssuancePerAddress,
    AuthFailuresPerAddress,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::IssuancePerPrincipal => "issuance_principal",
            Limit::IssuancePerAddress => "issuance_address",
            Limit::AuthFailuresPerAddress => "auth_failures_address",
        }
    }

    /// The configuration keys that set it, for messages.
    pub fn config_key(self) -> &'static str {
        match self {
            Limit::IssuancePerPrincipal => "limits.issuance_per_principal_per_minute",
            Limit::IssuancePerAddress => "limits.issuance_per_address_per_minute",
            Limit::AuthFailuresPerAddress => "limits.auth_failures_per_address_per_minute",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Limit::IssuancePerPrincipal => "credential issuances for this caller",
            Limit::IssuancePerAddress => "credential issuances from this client address",
            Limit::AuthFailuresPerAddress => "failed authentications from this client address",
        }
    }
}

/// A refusal: which limit, and how long until a retry can pass.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After`: whole seconds, rounded up, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        let nanos = self.retry_after.as_nanos();
        (nanos.div_ceil(1_000_000_000) as u64).max(1)
    }
}

/// One limit's rate (per minute; 0 turns it off) and burst.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.burst)?;
        if self.per_minute == 0 {
            return None;
        }
        Quota::with_period(Duration::from_secs(60) / self.per_minute).map(|q| q.allow_burst(burst))
    }
}

/// What [`Limits`] is built from (`[limits]`, validated).
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub issuance_per_principal: Rate,
    pub issuance_per_address: Rate,
    pub auth_failures_per_address: Rate,
    pub max_tracked_keys: usize,
}

impl LimitSettings {
    /// Every limit off (in-process tests; a deployment sets 0 per limit).
    pub fn off() -> LimitSettings {
        let off = Rate {
            per_minute: 0,
            burst: 0,
        };
        LimitSettings {
            issuance_per_principal: off,
            issuance_per_address: off,
            auth_failures_per_address: off,
            max_tracked_keys: 1,
        }
    }
}

pub struct Limits {
    issuance_principal: Keyed<String>,
    issuance_address: Keyed<IpAddr>,
    auth_failures: Keyed<IpAddr>,
    /// Addresses over the failure limit, and until when.
    lockouts: Mutex<HashMap<IpAddr, Instant>>,
    max_keys: usize,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Limits {
        let max = settings.max_tracked_keys;
        Limits {
            issuance_principal: Keyed::new(
                Limit::IssuancePerPrincipal,
                settings.issuance_per_principal,
                max,
            ),
            issuance_address: Keyed::new(
                Limit::IssuancePerAddress,
                settings.issuance_per_address,
                max,
            ),
            auth_failures: Keyed::new(
                Limit::AuthFailuresPerAddress,
                settings.auth_failures_per_address,
                max,
            ),
            lockouts: Mutex::new(HashMap::new()),
            max_keys: max,
        }
    }

    /// One issuance by `principal` from `address`: counted against both
    /// limits, refused if either is used up.
    pub fn issuance(&self, principal: &Principal, address: Option<IpAddr>) -> Result<(), Limited> {
        if let Some(address) = address {
            self.issuance_address.check(&address_key(address))?;
        }
        self.issuance_principal.check(&principal_key(principal))
    }

    /// Before a token is verified: refused while `address` is locked out.
    pub fn before_authentication(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        let Some(address) = address else {
            return Ok(());
        };
        if !self.auth_failures.enabled() {
            return Ok(());
        }
        let key = address_key(address);
        let lockouts = self.lockouts.lock().unwrap_or_else(|p| p.into_inner());
        match lockouts.get(&key) {
            Some(until) => {
                let now = Instant::now();
                if *until > now {
                    Err(Limited {
                        limit: Limit::AuthFailuresPerAddress,
                        retry_after: *until - now,
                    })
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// A token from `address` failed verification: counted; `Err` when this
    /// failure is over the limit, which locks the address out until the
    /// next failure would be allowed.
    pub fn authentication_failed(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        let Some(address) = address else {
            return Ok(());
        };
        let key = address_key(address);
        let Err(limited) = self.auth_failures.check(&key) else {
            return Ok(());
        };
        let mut lockouts = self.lockouts.lock().unwrap_or_else(|p| p.into_inner());
        // Only keys the limiter tracks get here, but a lockout table of its
        // own is bounded the same way.
        if lockouts.len() < self.max_keys || lockouts.contains_key(&key) {
            lockouts.insert(key, Instant::now() + limited.retry_after);
        }
        Err(limited)
    }

    /// Forgets keys whose state is as good as new, and ended lockouts.
    pub fn prune(&self) {
        self.issuance_principal.prune();
        self.issuance_address.prune();
        self.auth_failures.prune();
        let now = Instant::now();
        let mut lockouts = self.lockouts.lock().unwrap_or_else(|p| p.into_inner());
        lockouts.retain(|_, until| *until > now);
        lockouts.shrink_to_fit();
    }

    /// How many keys each limit holds (issuance principal, issuance
    /// address, auth failures).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize, usize) {
        (
            self.issuance_principal.len(),
            self.issuance_address.len(),
            self.auth_failures.len(),
        )
    }
}

/// The principal as a limit sees it: who asks, and through which agents.
fn principal_key(principal: &Principal) -> String {
    let mut key = format!("{}\n{}", principal.issuer, principal.subject);
    for actor in principal.actors() {
        key.push('\n');
        key.push_str(actor);
    }
    key
}

/// IPv4 as is (IPv4-mapped IPv6 too); IPv6 by its /64.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

type Limiter<K> = RateLimiter<K, Capped<K>, DefaultClock>;

/// One limit: off, or a keyed limiter.
struct Keyed<K: Hash + Eq + Clone> {
    limit: Limit,
    limiter: Option<Limiter<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(limit: Limit, rate: Rate, max_keys: usize) -> Keyed<K> {
        let clock = DefaultClock::default();
        Keyed {
            limit,
            limiter: rate.quota().map(|quota| {
                RateLimiter::new(
                    quota,
                    Capped {
                        map: DashMapStateStore::default(),
                        max_keys,
                        warned: AtomicBool::new(false),
                        limit,
                    },
                    clock.clone(),
                )
            }),
            clock,
        }
    }

    fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    fn check(&self, key: &K) -> Result<(), Limited> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| Limited {
            limit: self.limit,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| limiter.len())
    }
}

/// governor's DashMap store, capped: past `max_keys` a key it does not hold
/// is measured as a fresh one and not stored.
struct Capped<K: Hash + Eq + Clone> {
    map: DashMapStateStore<K>,
    max_keys: usize,
    /// Whether the "full" warning was logged since the table last had room.
    warned: AtomicBool,
    limit: Limit,
}

impl<K: Hash + Eq + Clone> StateStore for Capped<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = self.limit.label(),
                    max_tracked_keys = self.max_keys,
                    "rate limit table full: new keys are not limited until idle ones are forgotten (limits.max_tracked_keys)"
                );
            }
            metrics::counter!(crate::metrics::RATE_LIMIT_UNTRACKED, "limit" => self.limit.label())
                .increment(1);
            return f(None).map(|(outcome, _)| outcome);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for Capped<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
        if self.map.len() < self.max_keys {
            self.warned.store(false, Ordering::Relaxed);
        }
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.map);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&self.map)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&self.map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_minute: u32, burst: u32) -> Rate {
        Rate { per_minute, burst }
    }

    fn settings(principal: Rate, address: Rate, failures: Rate) -> LimitSettings {
        LimitSettings {
            issuance_per_principal: principal,
            issuance_per_address: address,
            auth_failures_per_address: failures,
            max_tracked_keys: 1000,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn failures_past_the_burst_lock_the_address_out_alone() {
        // 60/min: one failure a second once the burst of 3 is spent.
        let limits = Limits::new(settings(rate(0, 0), rate(0, 0), rate(60, 3)));
        let bad = Some(ip("198.51.100.1"));
        for _ in 0..3 {
            limits.before_authentication(bad).unwrap();
            limits.authentication_failed(bad).unwrap();
        }
        let over = limits.authentication_failed(bad).unwrap_err();
        assert_eq!(over.limit, Limit::AuthFailuresPerAddress);
        assert!(over.retry_after <= Duration::from_secs(1));
        assert_eq!(over.retry_after_seconds(), 1);
        let locked = limits.before_authentication(bad).unwrap_err();
        assert_eq!(locked.limit, Limit::AuthFailuresPerAddress);
        // Another address is apart.
        limits
            .before_authentication(Some(ip("198.51.100.2")))
            .unwrap();
        // After the emission interval, the address may try again.
        std::thread::sleep(Duration::from_millis(1100));
        limits.before_authentication(bad).unwrap();
        limits.prune();
        assert!(limits.lockouts.lock().unwrap().is_empty());
    }

    #[test]
    fn off_limits_never_refuse_and_track_nothing() {
        let limits = Limits::new(LimitSettings::off());
        let address = Some(ip("198.51.100.1"));
        for _ in 0..1000 {
            limits.authentication_failed(address).unwrap();
            limits.before_authentication(address).unwrap();
        }
        assert_eq!(limits.tracked(), (0, 0, 0));
    }

    #[test]
    fn a_full_table_judges_new_keys_as_fresh_and_keeps_limiting_old_ones() {
        let mut settings = settings(rate(0, 0), rate(0, 0), rate(1, 1));
        settings.max_tracked_keys = 2;
        let limits = Limits::new(settings);
        let (a, b, c) = (
            Some(ip("192.0.2.1")),
            Some(ip("192.0.2.2")),
            Some(ip("192.0.2.3")),
        );
        limits.authentication_failed(a).unwrap();
        limits.authentication_failed(b).unwrap();
        assert!(limits.authentication_failed(a).is_err());
        // c is not stored: each failure is judged as its first.
        limits.authentication_failed(c).unwrap();
        limits.authentication_failed(c).unwrap();
        assert_eq!(limits.tracked().2, 2);
    }

    #[test]
    fn pruning_forgets_keys_whose_buckets_refilled() {
        // 6000 a minute: a bucket of 2 refills within a few milliseconds.
        let limits = Limits::new(settings(rate(6000, 2), rate(6000, 2), rate(6000, 2)));
        for i in 0..500u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
            limits.authentication_failed(Some(address)).unwrap();
            limits.issuance_address.check(&address).unwrap();
        }
        assert_eq!(limits.tracked(), (0, 500, 500));
        std::thread::sleep(Duration::from_millis(50));
        limits.prune();
        assert_eq!(limits.tracked(), (0, 0, 0));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limited = |retry_after| Limited {
            limit: Limit::IssuancePerPrincipal,
            retry_after,
        };
        assert_eq!(limited(Duration::from_millis(1)).retry_after_seconds(), 1);
        assert_eq!(
            limited(Duration::from_millis(1001)).retry_after_seconds(),
            2
        );
        assert_eq!(limited(Duration::from_secs(30)).retry_after_seconds(), 30);
        assert_eq!(limited(Duration::ZERO).retry_after_seconds(), 1);
    }
}
