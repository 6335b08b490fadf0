//! Password hashing: argon2id, PHC strings, never a plaintext password on
//! disk.

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than 1024 bytes")]
    TooLong,
    #[error("could not hash the password: {0}")]
    Hash(String),
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    if password.is_empty() {
        return Err(CredentialError::Empty);
    }
    if password.len() > 1024 {
        return Err(CredentialError::TooLong);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// Checks a password against a stored hash. With no hash (unknown login) a
/// dummy hash is still verified, so the time taken does not tell whether
/// the login exists.
pub fn verify_password(hash: Option<&str>, password: &str) -> bool {
    verify_with_memory(hash, password, &mut Vec::new())
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("relaygate-dummy").unwrap_or_default())
}

/// [`verify_password`] with argon2's working memory (19 MiB with the
/// default parameters) supplied by the caller, so that a thread checking
/// password after password allocates it once.
pub fn verify_with_memory(hash: Option<&str>, password: &str, memory: &mut Vec<Block>) -> bool {
    let text: &str = match hash {
        Some(h) => h,
        None => dummy_hash(),
    };
    let Ok(parsed) = PasswordHash::new(text) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let blocks = params.block_count();
    if memory.len() != blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        memory.as_mut_slice(),
    );
    // Output's equality is constant-time.
    let ok = computed.is_ok() && Output::new(&out).is_ok_and(|o| o == *expected);
    ok && hash.is_some()
}

/// Logins verified recently, so that a roaming user whose mail program
/// logs in for every message costs one argon2 verification per TTL, not
/// one per session. An entry is a keyed hash (BLAKE2b with a random
/// per-process key) of the login, the password and the stored hash it
/// was verified against: never the password itself. A changed password,
/// a removed user or another auth mode changes (or removes) the stored
/// hash, so an old entry can never match again. Failures are never kept.
#[derive(Debug)]
pub struct LoginCache {
    key: [u8; 32],
    ttl: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
    /// Client addresses (IPv6 by /64) a login succeeded from, and when:
    /// their checks go in the known lane of [`PasswordChecker`].
    known: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, std::time::Instant>>,
}

/// Logins kept at most.
const LOGIN_CACHE_MAX: usize = 10_000;
/// Addresses a login succeeded from, kept at most, and for how long.
const KNOWN_ADDRESSES_MAX: usize = 10_000;
const KNOWN_ADDRESS_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl LoginCache {
    pub fn new(ttl: std::time::Duration) -> LoginCache {
        let mut key = [0u8; 32];
        // Without randomness, a key nobody can guess from outside still
        // comes from the time and the process: the cache only ever saves
        // work for a password that was right.
        if getrandom::fill(&mut key).is_err() {
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            key = tag_with(&[0u8; 32], &[seed.as_bytes()]);
        }
        LoginCache {
            key,
            ttl,
            entries: Default::default(),
            known: Default::default(),
        }
    }

    /// Remembers that a login succeeded from `client` (its key: an IPv4
    /// address, an IPv6 /64).
    pub fn known_address(&self, client: std::net::IpAddr) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if known.len() >= KNOWN_ADDRESSES_MAX && !known.contains_key(&client) {
            known.retain(|_, at| at.elapsed() < KNOWN_ADDRESS_FOR);
            if known.len() >= KNOWN_ADDRESSES_MAX {
                // The oldest goes.
                if let Some(oldest) = known.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip) {
                    known.remove(&oldest);
                }
            }
        }
        known.insert(client, std::time::Instant::now());
    }

    /// Whether a login succeeded from `client` lately.
    pub fn is_known_address(&self, client: std::net::IpAddr) -> bool {
        self.known
            .lock()
            .ok()
            .and_then(|k| k.get(&client).copied())
            .is_some_and(|at| at.elapsed() < KNOWN_ADDRESS_FOR)
    }

    fn tag(&self, login: &str, password: &str, hash: &str) -> [u8; 32] {
        tag_with(
            &self.key,
            &[login.as_bytes(), password.as_bytes(), hash.as_bytes()],
        )
    }

    /// Whether this login with this password was verified against this
    /// stored hash within the TTL.
    pub fn hit(&self, login: &str, password: &str, hash: &str) -> bool {
        let tag = self.tag(login, password, hash);
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        match entries.get(&tag) {
            Some(at) if at.elapsed() < self.ttl => true,
            Some(_) => {
                entries.remove(&tag);
                false
            }
            None => false,
        }
    }

    /// Remembers a successful verification.
    pub fn remember(&self, login: &str, password: &str, hash: &str) {
        let tag = self.tag(login, password, hash);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= LOGIN_CACHE_MAX {
            let ttl = self.ttl;
            entries.retain(|_, at| at.elapsed() < ttl);
            if entries.len() >= LOGIN_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(tag, std::time::Instant::now());
    }
}

/// BLAKE2b of a secret key and length-prefixed fields, cut to 32 bytes.
fn tag_with(key: &[u8; 32], fields: &[&[u8]]) -> [u8; 32] {
    use blake2::Digest;
    let mut h = blake2::Blake2b512::new();
    h.update(key);
    for f in fields {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f);
    }
    let out = h.finalize();
    let mut tag = [0u8; 32];
    tag.copy_from_slice(out.get(..32).unwrap_or(&[0u8; 32]));
    tag
}

/// The engine's password checks: a few threads (about one per core), each
/// with one argon2 working memory it reuses, behind two bounded queues.
/// The memory is bounded by the threads, however many clients send AUTH at
/// once; a check that cannot be queued is refused at once (the client gets
/// 454 4.7.0) rather than waited for.
///
/// The queues are two lanes: one for clients the gateway already trusts
/// ([`Lane::Known`]: allow-listed, or an address a login succeeded from
/// lately), taken first, and one for everyone else. A flood of guesses
/// from thousands of addresses fills only the second, so the office and
/// its roaming users still get their logins checked.
#[derive(Debug, Clone)]
pub struct PasswordChecker {
    handle: Arc<CheckerHandle>,
}

/// Which queue a check waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Allow-listed, or an address a login succeeded from lately.
    Known,
    Other,
}

struct Job {
    hash: Option<String>,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job { .. }")
    }
}

#[derive(Debug, Default)]
struct Queues {
    known: VecDeque<Job>,
    other: VecDeque<Job>,
    /// Every checker handle is gone: the threads end.
    closed: bool,
}

#[derive(Debug)]
struct CheckerQueues {
    queues: Mutex<Queues>,
    ready: Condvar,
    /// Checks waiting at most, per lane.
    capacity: usize,
}

/// The checkers' queues as their users hold them: when the last handle
/// goes, the threads are told to end.
#[derive(Debug)]
struct CheckerHandle(Arc<CheckerQueues>);

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        if let Ok(mut q) = self.0.queues.lock() {
            q.closed = true;
        }
        self.0.ready.notify_all();
    }
}

/// The queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks waiting")]
pub struct CheckerBusy;

impl PasswordChecker {
    /// `threads` checkers behind two queues of `queue` waiting checks each.
    pub fn start(threads: usize, queue: usize) -> PasswordChecker {
        let queues = Arc::new(CheckerQueues {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            capacity: queue,
        });
        for i in 0..threads.max(1) {
            let queues = Arc::clone(&queues);
            let _ = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || check_loop(&queues));
        }
        PasswordChecker {
            handle: Arc::new(CheckerHandle(queues)),
        }
    }

    /// About one checker per core, at most four.
    pub fn for_this_machine() -> PasswordChecker {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordChecker::start(cores.clamp(1, 4), 32)
    }

    /// Queues a check in `lane`; the answer comes on the receiver.
    pub fn submit(
        &self,
        lane: Lane,
        hash: Option<String>,
        password: String,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, CheckerBusy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let shared = &self.handle.0;
        {
            let mut q = shared.queues.lock().map_err(|_| CheckerBusy)?;
            let queue = match lane {
                Lane::Known => &mut q.known,
                Lane::Other => &mut q.other,
            };
            if queue.len() >= shared.capacity {
                return Err(CheckerBusy);
            }
            queue.push_back(Job {
                hash,
                password,
                reply,
            });
        }
        shared.ready.notify_one();
        Ok(answer)
    }
}

fn check_loop(shared: &CheckerQueues) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(mut q) = shared.queues.lock() else {
                return;
            };
            loop {
                if let Some(job) = q.known.pop_front().or_else(|| q.other.pop_front()) {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = match shared.ready.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        // A client that went away does not need its answer, nor the work.
        if job.reply.is_closed() {
            continue;
        }
        let ok = verify_with_memory(job.hash.as_deref(), &job.password, &mut memory);
        let _ = job.reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(Some(&h), "s3cret"));
        assert!(!verify_password(Some(&h), "S3cret"));
        assert!(!verify_password(None, "s3cret"));
        assert!(!verify_password(Some("garbage"), "s3cret"));
        assert!(hash_password("").is_err());
    }

    #[test]
    fn the_login_cache_keeps_successes_for_their_hash_only() {
        let cache = LoginCache::new(std::time::Duration::from_secs(60));
        let (h1, h2) = ("$argon2id$one", "$argon2id$two");
        assert!(!cache.hit("alice", "pw", h1));
        cache.remember("alice", "pw", h1);
        assert!(cache.hit("alice", "pw", h1));
        // Another password, another user, or a new stored hash: no hit.
        assert!(!cache.hit("alice", "other", h1));
        assert!(!cache.hit("bob", "pw", h1));
        assert!(!cache.hit("alice", "pw", h2));
        // Expired entries do not count.
        let short = LoginCache::new(std::time::Duration::from_millis(1));
        short.remember("alice", "pw", h1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(!short.hit("alice", "pw", h1));
    }

    #[test]
    fn the_checker_answers_and_refuses_beyond_its_queue() {
        let h = hash_password("s3cret").unwrap();
        let checker = PasswordChecker::start(1, 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let good = checker
            .submit(Lane::Other, Some(h.clone()), "s3cret".into())
            .unwrap();
        assert!(rt.block_on(good).unwrap());
        let bad = checker
            .submit(Lane::Other, Some(h.clone()), "nope".into())
            .unwrap();
        assert!(!rt.block_on(bad).unwrap());
        // One thread busy, one waiting: the next is refused, not queued.
        let answers: Vec<_> = (0..8)
            .map(|_| checker.submit(Lane::Other, Some(h.clone()), "x".into()))
            .collect();
        assert!(answers.iter().any(|a| a.is_err()), "the queue is bounded");
        for a in answers.into_iter().flatten() {
            assert!(!rt.block_on(a).unwrap());
        }
    }

    /// A flood fills the other lane; a known client's check is still
    /// queued, and is judged before every guess still waiting.
    #[test]
    fn a_known_clients_check_goes_past_a_flood_of_guesses() {
        let h = hash_password("s3cret").unwrap();
        let checker = PasswordChecker::start(1, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut guesses = Vec::new();
        while let Ok(a) = checker.submit(Lane::Other, Some(h.clone()), "guess".into()) {
            guesses.push(a);
        }
        assert!(guesses.len() >= 2);
        let known = checker
            .submit(Lane::Known, Some(h.clone()), "s3cret".into())
            .expect("the known lane has room");
        assert!(rt.block_on(known).unwrap());
        // The thread takes the known check first: at most the one guess it
        // had begun was judged before it; the queued ones are still waiting
        // (each takes a good part of a second).
        let early: Vec<Option<bool>> = guesses.iter_mut().map(|a| a.try_recv().ok()).collect();
        let judged_before = early.iter().flatten().count();
        assert!(judged_before <= 1, "{judged_before} guesses went first");
        for (a, early) in guesses.into_iter().zip(early) {
            assert!(!early.unwrap_or_else(|| rt.block_on(a).unwrap()));
        }
    }

    #[test]
    fn addresses_a_login_succeeded_from_are_known_for_a_while() {
        let cache = LoginCache::new(std::time::Duration::from_secs(300));
        let a: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!cache.is_known_address(a));
        cache.known_address(a);
        assert!(cache.is_known_address(a));
        assert!(!cache.is_known_address("192.0.2.8".parse().unwrap()));
        for i in 0..(KNOWN_ADDRESSES_MAX as u32 + 5) {
            cache.known_address(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 + i,
            )));
        }
        assert!(cache.known.lock().unwrap().len() <= KNOWN_ADDRESSES_MAX);
    }
}
