//! What the router keeps for callers it does not know yet, and how it is
//! bounded: login challenges it can recognise without keeping them, and
//! the rate at which one source address may bind new nicks.
//!
//! A challenge is `nonce ‖ issued ‖ HMAC-SHA256(secret, nonce ‖ issued)`:
//! the router keeps no table of challenges handed out, so asking for them
//! costs it nothing but the answer, however fast one client asks. What it
//! keeps is the nonces of challenges already used in a login whose
//! signature checked (so each is good once), only until they expire, and
//! at most a share per source address ([`USED_PER_SOURCE`] by default): a
//! flood from one address
//! fills its own share, never anyone else's.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::hmac;

/// How long a login challenge stays good.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(30);
/// Logins one source address may complete within [`CHALLENGE_TTL`] by
/// default: the used nonces the router remembers for it. Past it that
/// address waits.
pub const USED_PER_SOURCE: usize = 4096;
/// Sources with used nonces remembered at once; past it the oldest
/// entries are forgotten first, which can only make a replay possible for
/// a challenge still within its 30 s, never refuse a login.
const MAX_SOURCES: usize = 65_536;

const NONCE: usize = 16;
const ISSUED: usize = 8;
const REACH: usize = 1;
const TAG: usize = 32;
/// What the MAC covers first: a challenge's tag means nothing elsewhere.
const DOMAIN: &[u8] = b"parley login challenge v2";
/// Bytes of a challenge.
pub const CHALLENGE_LEN: usize = NONCE + ISSUED + REACH + TAG;

/// What dialing a peer's address back found, carried by its challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No dial-back was asked for.
    Unchecked = 0,
    Direct = 1,
    Relayed = 2,
}

impl Reach {
    fn from_byte(b: u8) -> Option<Reach> {
        match b {
            0 => Some(Reach::Unchecked),
            1 => Some(Reach::Direct),
            2 => Some(Reach::Relayed),
            _ => None,
        }
    }
}

/// What a checked reach is bound to: the address dialed and the key it
/// had to present, so a login can use the outcome only for those.
fn dialed(address: &str, key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((address.len() as u64).to_be_bytes());
    h.update(address.as_bytes());
    h.update(key);
    h.finalize().into()
}

/// Why a challenge was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not one this router made (or made by an earlier run of it).
    Unknown,
    Expired,
    /// Already used in a login.
    Used,
    /// This source address completed its share of logins within
    /// [`CHALLENGE_TTL`].
    Busy,
}

/// Challenges this router hands out and recognises. The secret is drawn
/// at start: a restart invalidates the challenges of the run before,
/// which live 30 s anyway.
pub struct Challenges {
    key: hmac::Key,
    per_source: usize,
    /// The clock challenges count from (monotonic: a wall-clock step
    /// cannot revive or kill them).
    epoch: Instant,
    used: Mutex<Used>,
}

#[derive(Default)]
struct Used {
    /// Per source: nonces used, oldest first, with when they expire.
    by_source: HashMap<IpAddr, VecDeque<([u8; NONCE], Instant)>>,
}

impl Challenges {
    /// Challenges of which one source address may use `per_source` within
    /// [`CHALLENGE_TTL`].
    pub fn new(per_source: usize) -> Challenges {
        Challenges {
            key: hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()),
            per_source,
            epoch: Instant::now(),
            used: Mutex::new(Used::default()),
        }
    }

    /// What the MAC covers: the fields, and for a checked reach the
    /// address and key it was checked for.
    fn signed(nonce: &[u8], issued: &[u8], reach: u8, address: &str, key: &[u8]) -> Vec<u8> {
        let mut signed = DOMAIN.to_vec();
        signed.extend_from_slice(nonce);
        signed.extend_from_slice(issued);
        signed.push(reach);
        if reach != Reach::Unchecked as u8 {
            signed.extend_from_slice(&dialed(address, key));
        }
        signed
    }

    /// A fresh challenge, with no dial-back. Costs no memory here.
    pub fn issue(&self) -> Vec<u8> {
        self.issue_for(Reach::Unchecked, "", &[])
    }

    /// A fresh challenge carrying what dialing `address` back for `key`
    /// found: good for a login with that address and key.
    pub fn issue_for(&self, reach: Reach, address: &str, key: &[u8]) -> Vec<u8> {
        let nonce = rand::random::<[u8; NONCE]>();
        let issued = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .to_be_bytes();
        let tag = hmac::sign(
            &self.key,
            &Self::signed(&nonce, &issued, reach as u8, address, key),
        );
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&issued);
        out.push(reach as u8);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Whether `challenge` is one of ours, still good and unused, for a
    /// login at `address` with `key`; what its dial-back found. Does not
    /// use it (see [`Challenges::redeem`]).
    pub fn check(&self, challenge: &[u8], address: &str, key: &[u8]) -> Result<Reach, Refused> {
        if challenge.len() != CHALLENGE_LEN {
            return Err(Refused::Unknown);
        }
        let (nonce, rest) = challenge.split_at(NONCE);
        let (issued, rest) = rest.split_at(ISSUED);
        let (reach, tag) = rest.split_at(REACH);
        let reach = reach[0];
        let signed = Self::signed(nonce, issued, reach, address, key);
        hmac::verify(&self.key, &signed, tag).map_err(|_| Refused::Unknown)?;
        let reach = Reach::from_byte(reach).ok_or(Refused::Unknown)?;
        let issued = u64::from_be_bytes(issued.try_into().map_err(|_| Refused::Unknown)?);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(issued) >= ttl_ms() || issued > now {
            return Err(Refused::Expired);
        }
        Ok(reach)
    }

    /// Uses `challenge` (already [`check`](Challenges::check)ed) for a login
    /// from `source` whose signature checked: refused if it was used
    /// before, or if `source` has used its share.
    pub fn redeem(&self, challenge: &[u8], source: Option<IpAddr>) -> Result<(), Refused> {
        let Some(nonce) = challenge
            .get(..NONCE)
            .and_then(|n| <[u8; NONCE]>::try_from(n).ok())
        else {
            return Err(Refused::Unknown);
        };
        // A caller with no address (not over a parley link) shares one
        // bucket with every other such caller.
        let source = source.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let now = Instant::now();
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if !used.by_source.contains_key(&source) && used.by_source.len() >= MAX_SOURCES {
            used.prune(now);
        }
        let list = used.by_source.entry(source).or_default();
        while list.front().is_some_and(|(_, until)| *until <= now) {
            list.pop_front();
        }
        // A challenge lives 30 s, so a replay can only come from within
        // the nonces still listed.
        if list.iter().any(|(n, _)| *n == nonce) {
            return Err(Refused::Used);
        }
        if list.len() >= self.per_source {
            return Err(Refused::Busy);
        }
        list.push_back((nonce, now + CHALLENGE_TTL));
        Ok(())
    }
}

impl Used {
    /// Drops every expired entry, and empty sources.
    fn prune(&mut self, now: Instant) {
        self.by_source.retain(|_, list| {
            while list.front().is_some_and(|(_, until)| *until <= now) {
                list.pop_front();
            }
            !list.is_empty()
        });
        if self.by_source.len() >= MAX_SOURCES {
            // Still full of live entries from as many addresses: forget the
            // smallest lists, which cost a replay window at worst.
            let mut sizes: Vec<(usize, IpAddr)> = self
                .by_source
                .iter()
                .map(|(ip, l)| (l.len(), *ip))
                .collect();
            sizes.sort();
            for (_, ip) in sizes.into_iter().take(MAX_SOURCES / 4) {
                self.by_source.remove(&ip);
            }
        }
    }
}

fn ttl_ms() -> u64 {
    u64::try_from(CHALLENGE_TTL.as_millis()).unwrap_or(u64::MAX)
}

/// How fast one source address may bind nicks never bound before: a
/// token bucket of `burst` bindings, refilled one per `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRate {
    pub burst: u32,
    pub every: Duration,
}

impl Default for BindingRate {
    /// 64 at once, then one a minute: a household or an office behind one
    /// address starts freely; a squatter gets 1,440 a day, not 2,000 in
    /// two seconds.
    fn default() -> Self {
        BindingRate {
            burst: 64,
            every: Duration::from_secs(60),
        }
    }
}

/// Sources whose buckets are kept at once; full buckets are dropped first
/// (a full bucket is what a new source gets anyway).
const MAX_BUCKETS: usize = 65_536;

/// Per-source token buckets for new nick bindings.
pub type Bindings = Buckets<IpAddr>;

/// Token buckets, one per key (a source address, a sender's key), at most
/// [`MAX_BUCKETS`] kept.
pub struct Buckets<K> {
    rate: BindingRate,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    pub fn new(rate: BindingRate) -> Buckets<K> {
        Buckets {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes up to `want` tokens from `key`'s bucket: how many it took,
    /// and, when that is fewer, how long until the next.
    pub fn take_up_to(&self, key: K, want: u32) -> (u32, Option<Duration>) {
        let burst = f64::from(self.rate.burst.max(1));
        let every = self.rate.every.as_secs_f64().max(1e-9);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / every < burst
            });
        }
        let (tokens, at) = buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / every).min(burst);
        *at = now;
        // Whole tokens only: the fraction stays for the next call.
        let took = (tokens.floor() as u32).min(want);
        *tokens -= f64::from(took);
        if took < want {
            (took, Some(Duration::from_secs_f64((1.0 - *tokens) * every)))
        } else {
            (took, None)
        }
    }
}

impl Buckets<IpAddr> {
    /// Takes one new binding from `source`'s bucket; `Err` with how long
    /// until the next one when it is empty.
    pub fn take(&self, source: Option<IpAddr>) -> Result<(), Duration> {
        let source = source.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        match self.take_up_to(source, 1) {
            (1, _) => Ok(()),
            (_, wait) => Err(wait.unwrap_or(self.rate.every)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_is_ours_good_once_and_only_unchanged() {
        let c = Challenges::new(USED_PER_SOURCE);
        let one = c.issue();
        assert_eq!(one.len(), CHALLENGE_LEN);
        assert_eq!(c.check(&one, "", &[]), Ok(Reach::Unchecked));
        let source = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(c.redeem(&one, source), Ok(()));
        assert_eq!(c.redeem(&one, source), Err(Refused::Used));
        let mut changed = c.issue();
        changed[NONCE] ^= 1;
        assert_eq!(c.check(&changed, "", &[]), Err(Refused::Unknown));
        assert_eq!(c.check(&one[..10], "", &[]), Err(Refused::Unknown));
        // Another router's (or an earlier run's) challenge.
        assert_eq!(
            Challenges::new(USED_PER_SOURCE).check(&c.issue(), "", &[]),
            Err(Refused::Unknown)
        );
    }

    #[test]
    fn a_dial_back_outcome_holds_only_for_its_address_and_key() {
        let c = Challenges::new(USED_PER_SOURCE);
        let one = c.issue_for(Reach::Direct, "10.0.0.1:7000", b"key");
        assert_eq!(c.check(&one, "10.0.0.1:7000", b"key"), Ok(Reach::Direct));
        assert_eq!(
            c.check(&one, "10.0.0.1:7001", b"key"),
            Err(Refused::Unknown)
        );
        assert_eq!(
            c.check(&one, "10.0.0.1:7000", b"yek"),
            Err(Refused::Unknown)
        );
        // The outcome cannot be flipped.
        let mut flipped = one.clone();
        flipped[NONCE + ISSUED] = Reach::Relayed as u8;
        assert_eq!(
            c.check(&flipped, "10.0.0.1:7000", b"key"),
            Err(Refused::Unknown)
        );
    }

    #[test]
    fn one_source_fills_only_its_own_share() {
        let c = Challenges::new(USED_PER_SOURCE);
        let eve = Some(IpAddr::from([10, 0, 0, 66]));
        for _ in 0..USED_PER_SOURCE {
            assert_eq!(c.redeem(&c.issue(), eve), Ok(()));
        }
        assert_eq!(c.redeem(&c.issue(), eve), Err(Refused::Busy));
        assert_eq!(
            c.redeem(&c.issue(), Some(IpAddr::from([10, 0, 0, 1]))),
            Ok(())
        );
    }

    #[test]
    fn new_bindings_come_in_a_burst_then_at_the_rate() {
        let b = Bindings::new(BindingRate {
            burst: 3,
            every: Duration::from_secs(3600),
        });
        let eve = Some(IpAddr::from([10, 0, 0, 66]));
        for _ in 0..3 {
            assert!(b.take(eve).is_ok());
        }
        let wait = b.take(eve).unwrap_err();
        assert!(wait > Duration::from_secs(3000), "{wait:?}");
        assert!(b.take(Some(IpAddr::from([10, 0, 0, 1]))).is_ok());
    }
}
