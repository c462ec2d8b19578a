//! The bounded memory of deliveries already acted on.
//!
//! GitLab re-sends a delivery with the same `Idempotency-Key`, one event fires every hook
//! configured for it with the same `X-Gitlab-Event-UUID`, and a job has exactly one
//! `pending` event per attempt (a retried job gets a new id). A delivery is a duplicate
//! when *any* of its keys was seen; its other keys are then remembered too, so a later
//! copy that shares only those is still caught. The oldest keys are forgotten first, so
//! memory stays flat however long the process lives.

use std::collections::{HashSet, VecDeque};

/// What identifies a delivery for deduplication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `Idempotency-Key`.
    Idempotency(String),
    /// `X-Gitlab-Event-UUID`.
    Event(String),
    /// The `build_id` of a `pending` Job Hook.
    Build(u64),
}

/// A set of [`Key`]s that forgets the oldest beyond its capacity.
#[derive(Debug)]
pub struct Seen {
    set: HashSet<Key>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl Seen {
    /// Remember at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Record `keys`; true when none of them was known (the delivery is new).
    pub fn insert_all(&mut self, keys: &[Key]) -> bool {
        let new = !keys.iter().any(|k| self.set.contains(k));
        for k in keys {
            if self.set.insert(k.clone()) {
                self.order.push_back(k.clone());
                if self.order.len() > self.capacity {
                    if let Some(old) = self.order.pop_front() {
                        self.set.remove(&old);
                    }
                }
            }
        }
        new
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_known_key_makes_a_duplicate() {
        let mut s = Seen::new(100);
        assert!(s.insert_all(&[Key::Idempotency("a".into()), Key::Build(1)]));
        assert!(!s.insert_all(&[Key::Idempotency("a".into()), Key::Build(1)]));
        // Same job, new delivery key: still a duplicate, and the new key is remembered.
        assert!(!s.insert_all(&[Key::Event("e".into()), Key::Build(1)]));
        assert!(!s.insert_all(&[Key::Event("e".into()), Key::Build(2)]));
        assert!(s.insert_all(&[Key::Build(3)]));
    }

    #[test]
    fn bounded_forgets_the_oldest() {
        let mut s = Seen::new(3);
        for i in 0..10 {
            assert!(s.insert_all(&[Key::Build(i)]));
        }
        assert_eq!(s.len(), 3);
        assert!(!s.insert_all(&[Key::Build(9)]));
        assert!(s.insert_all(&[Key::Build(0)]), "forgotten");
    }
}
