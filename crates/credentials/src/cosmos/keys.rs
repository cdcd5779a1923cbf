//! Which Cosmos DB account key is the password: the key kinds, the pair fetched from ARM,
//! the keys the database refused, and the choice between them.
//!
//! The kind chosen ([`CosmosKeyKind`]) names the preferred key; the other key of its pair
//! (primary ↔ secondary, or the read-only pair) is the fallback. After a fetch the key in use
//! stays while it is in the fetched pair and was not refused; otherwise the preferred key,
//! then the other one. Refusals are remembered for [`REFUSAL_MEMORY`], so a transient refusal
//! heals, and forgotten when a fetch returns a changed pair (a rotation step). This module holds no lock and does no I/O: `CosmosKeySource` keeps [`Keys`] in its
//! refresher's state.

use std::{str::FromStr, time::Duration};

use tokio::time::Instant;

use crate::secret::Secret;

/// How long a refused key is remembered.
pub(super) const REFUSAL_MEMORY: Duration = Duration::from_secs(60);

/// Which account key is the password (the other key of the same pair is the fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CosmosKeyKind {
    /// `primaryMasterKey` (fallback `secondaryMasterKey`).
    #[default]
    Primary,
    /// `secondaryMasterKey` (fallback `primaryMasterKey`).
    Secondary,
    /// `primaryReadonlyMasterKey` from `…/readonlykeys` (fallback `secondaryReadonlyMasterKey`).
    ReadOnlyPrimary,
    /// `secondaryReadonlyMasterKey` from `…/readonlykeys` (fallback `primaryReadonlyMasterKey`).
    ReadOnlySecondary,
}

impl CosmosKeyKind {
    /// True for the read-only kinds (fetched from `…/readonlykeys`).
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            CosmosKeyKind::ReadOnlyPrimary | CosmosKeyKind::ReadOnlySecondary
        )
    }

    /// The configuration spelling: `primary`, `secondary`, `readonly-primary`, `readonly-secondary`.
    pub fn as_str(self) -> &'static str {
        match self {
            CosmosKeyKind::Primary => "primary",
            CosmosKeyKind::Secondary => "secondary",
            CosmosKeyKind::ReadOnlyPrimary => "readonly-primary",
            CosmosKeyKind::ReadOnlySecondary => "readonly-secondary",
        }
    }

    /// (the kind's key field, the fallback's field) in the ARM answer.
    pub(super) fn fields(self) -> (&'static str, &'static str) {
        match self {
            CosmosKeyKind::Primary => ("primaryMasterKey", "secondaryMasterKey"),
            CosmosKeyKind::Secondary => ("secondaryMasterKey", "primaryMasterKey"),
            CosmosKeyKind::ReadOnlyPrimary => {
                ("primaryReadonlyMasterKey", "secondaryReadonlyMasterKey")
            }
            CosmosKeyKind::ReadOnlySecondary => {
                ("secondaryReadonlyMasterKey", "primaryReadonlyMasterKey")
            }
        }
    }

    /// The last path segment of the ARM action.
    pub(super) fn action(self) -> &'static str {
        if self.is_read_only() {
            "readonlykeys"
        } else {
            "listKeys"
        }
    }
}

impl std::fmt::Display for CosmosKeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CosmosKeyKind {
    type Err = String;

    /// Accepts the [`as_str`](Self::as_str) spellings, case-insensitively, with `-`, `_` or
    /// nothing between the words (`readonly` may also be `read-only`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "primary" => Ok(CosmosKeyKind::Primary),
            "secondary" => Ok(CosmosKeyKind::Secondary),
            "readonlyprimary" | "primaryreadonly" => Ok(CosmosKeyKind::ReadOnlyPrimary),
            "readonlysecondary" | "secondaryreadonly" => Ok(CosmosKeyKind::ReadOnlySecondary),
            _ => Err(format!(
                "unknown Cosmos DB key kind {s:?} (expected primary, secondary, readonly-primary or readonly-secondary)"
            )),
        }
    }
}

/// The kind's key and the other key of its pair.
#[derive(Clone)]
pub(super) struct Pair {
    pub(super) preferred: Secret,
    pub(super) other: Option<Secret>,
}

impl Pair {
    fn keys(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.preferred).chain(self.other.iter())
    }

    fn contains(&self, k: &Secret) -> bool {
        self.keys().any(|x| x == k)
    }
}

impl PartialEq for Pair {
    fn eq(&self, o: &Self) -> bool {
        self.preferred == o.preferred && self.other == o.other
    }
}

/// What a fetch changed, for the log line.
pub(super) struct Stored {
    /// The key now in use.
    pub(super) key: Secret,
    /// The fetched pair differs from the one before.
    pub(super) keys_changed: bool,
    /// A key was in use before and it is not the one in use now.
    pub(super) key_switched: bool,
    /// The key in use is the kind's key (not the fallback).
    pub(super) preferred: bool,
}

/// The keys of a `CosmosKeySource`.
#[derive(Default)]
pub(super) struct Keys {
    pair: Option<Pair>,
    /// The key `password()` answers with.
    pub(super) current: Option<Secret>,
    /// Keys the database refused, and when.
    refused: Vec<(Secret, Instant)>,
    /// When keys were last obtained.
    pub(super) fetched_at: Option<Instant>,
}

impl Keys {
    fn is_refused(&self, k: &Secret) -> bool {
        self.refused.iter().any(|(r, _)| r == k)
    }

    fn forget_old_refusals(&mut self, now: Instant) {
        self.refused
            .retain(|(_, at)| now.saturating_duration_since(*at) < REFUSAL_MEMORY);
    }

    /// The current key while it is in the pair and not refused, else the first key of the
    /// pair that was not refused.
    pub(super) fn choose(&self) -> Option<Secret> {
        let pair = self.pair.as_ref()?;
        if let Some(c) = &self.current {
            if pair.contains(c) && !self.is_refused(c) {
                return Some(c.clone());
            }
        }
        pair.keys().find(|k| !self.is_refused(k)).cloned()
    }

    /// Keeps a freshly fetched pair and picks the key to use. When both keys were refused it
    /// keeps answering with one of them (the current one if it is in the pair).
    pub(super) fn store(&mut self, pair: Pair, now: Instant) -> Stored {
        let keys_changed = self.pair.as_ref().is_some_and(|p| p != &pair);
        self.forget_old_refusals(now);
        if keys_changed {
            // The account's keys moved on (a rotation step): earlier refusals say nothing
            // about the new state, e.g. the new primary refused while only the secondary was
            // valid, and now the only valid key after the secondary's regeneration.
            self.refused.clear();
        }
        self.refused.retain(|(k, _)| pair.contains(k));
        let before = self.current.clone();
        let preferred_key = pair.preferred.clone();
        let current_in_pair = before.clone().filter(|c| pair.contains(c));
        self.pair = Some(pair);
        let key = self
            .choose()
            .or(current_in_pair)
            .unwrap_or_else(|| preferred_key.clone());
        self.current = Some(key.clone());
        self.fetched_at = Some(now);
        Stored {
            keys_changed,
            key_switched: before.as_ref().is_some_and(|b| b != &key),
            preferred: key == preferred_key,
            key,
        }
    }

    /// The database refused `rejected` at `now`. Returns the key to use instead if another
    /// connection already moved on to one that was not refused.
    pub(super) fn refuse(&mut self, rejected: &Secret, now: Instant) -> Option<Secret> {
        self.forget_old_refusals(now);
        if !self.is_refused(rejected) {
            self.refused.push((rejected.clone(), now));
        }
        self.current
            .as_ref()
            .filter(|cur| *cur != rejected && !self.is_refused(cur))
            .cloned()
    }

    /// After a re-fetch: the key to use next, which becomes the current one (`None` once
    /// both keys were refused; the current key is then left as it is).
    pub(super) fn next_key(&mut self) -> Option<Secret> {
        let k = self.choose()?;
        self.current = Some(k.clone());
        Some(k)
    }

    /// Values to scrub from ARM's error messages.
    pub(super) fn known(&self) -> Vec<Secret> {
        let mut v: Vec<Secret> = self.pair.iter().flat_map(|p| p.keys().cloned()).collect();
        v.extend(self.current.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(p: &str, s: &str) -> Pair {
        Pair {
            preferred: Secret::new(p),
            other: Some(Secret::new(s)),
        }
    }

    #[test]
    fn refusals_are_forgotten_after_a_while() {
        let now = Instant::now();
        let mut st = Keys {
            pair: Some(pair("p", "s")),
            current: Some(Secret::new("s")),
            refused: vec![(Secret::new("p"), now), (Secret::new("s"), now)],
            ..Keys::default()
        };
        assert_eq!(st.choose(), None);
        st.forget_old_refusals(now + REFUSAL_MEMORY + Duration::from_secs(1));
        assert_eq!(st.choose(), Some(Secret::new("s")), "keeps the current key");
        st.current = None;
        assert_eq!(st.choose(), Some(Secret::new("p")));
    }

    #[test]
    fn a_changed_pair_forgets_earlier_refusals() {
        let now = Instant::now();
        let mut st = Keys::default();
        st.store(pair("p0", "s0"), now);
        // Rotation 1: the primary is regenerated and only the secondary logs in.
        st.refuse(&Secret::new("p0"), now);
        st.store(pair("p1", "s0"), now);
        st.refuse(&Secret::new("p1"), now);
        st.store(pair("p1", "s0"), now);
        assert_eq!(st.next_key(), Some(Secret::new("s0")));
        // Rotation 2, seconds later: the secondary is regenerated; p1 is now the valid key.
        st.refuse(&Secret::new("s0"), now);
        st.store(pair("p1", "s1"), now);
        assert_eq!(st.next_key(), Some(Secret::new("p1")));
    }

    #[test]
    fn store_keeps_prefers_and_falls_back() {
        let now = Instant::now();
        let mut k = Keys::default();
        let s = k.store(pair("a", "b"), now);
        assert_eq!(s.key, Secret::new("a"));
        assert!(s.preferred && !s.keys_changed && !s.key_switched);
        // The current key stays while it is in the pair and not refused.
        k.current = Some(Secret::new("b"));
        let s = k.store(pair("a", "b"), now);
        assert_eq!(s.key, Secret::new("b"));
        assert!(!s.preferred && !s.key_switched);
        // Both refused: keeps answering with the current key of the pair.
        assert_eq!(k.refuse(&Secret::new("a"), now), Some(Secret::new("b")));
        assert_eq!(k.refuse(&Secret::new("b"), now), None);
        let s = k.store(pair("a", "b"), now);
        assert_eq!(s.key, Secret::new("b"));
        assert_eq!(k.next_key(), None);
        // Rotated keys: refusals of keys not in the new pair are dropped.
        let s = k.store(pair("c", "d"), now);
        assert_eq!(s.key, Secret::new("c"));
        assert!(s.keys_changed && s.key_switched && s.preferred);
        assert_eq!(k.known().len(), 3, "both keys and the current one");
    }
}
