//! What a lookup answered, remembered for a while: the DNS blocklists'
//! answer per client and recipient verification's per address. Bounded:
//! when full, expired answers go, then every other one (the map's order
//! has nothing to do with age or use, so half the memory stays useful and
//! the next sweep is half the bound away).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct AnswerMemory<K, V> {
    answers: Mutex<HashMap<K, (V, Instant)>>,
    bound: usize,
}

impl<K: Eq + Hash, V: Clone> AnswerMemory<K, V> {
    pub fn new(bound: usize) -> AnswerMemory<K, V> {
        AnswerMemory {
            answers: Mutex::new(HashMap::new()),
            bound,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The answer for `key`, unless it is unknown or has expired.
    pub fn recall(&self, key: &K) -> Option<V> {
        let mut answers = self.lock();
        match answers.get(key) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                answers.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl` (a zero `ttl` keeps nothing).
    pub fn remember(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut answers = self.lock();
        if answers.len() >= self.bound {
            answers.retain(|_, (_, until)| *until > now);
            let mut keep = false;
            if answers.len() >= self.bound {
                answers.retain(|_, _| {
                    keep = !keep;
                    keep
                });
            }
        }
        answers.insert(key, (value, now + ttl));
    }

    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// Answers kept now, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_memory_stays_bounded() {
        let m = AnswerMemory::new(100);
        m.remember("a", 1, Duration::from_secs(60));
        m.remember("b", 2, Duration::ZERO);
        m.remember("c", 3, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(m.recall(&"a"), Some(1));
        assert_eq!(m.recall(&"b"), None, "a zero ttl keeps nothing");
        assert_eq!(m.recall(&"c"), None, "expired");
        for i in 0..250 {
            m.remember(format!("k{i}").leak() as &str, i, Duration::from_secs(60));
        }
        assert!(m.len() <= 100 && m.len() >= 50, "{}", m.len());
        assert_eq!(m.recall(&"k249"), Some(249), "the newest is kept");
        m.forget_all();
        assert!(m.is_empty());
    }
}
