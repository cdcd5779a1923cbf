//! [`Policy`]: which service accounts may use a listener, and as which database user.
//!
//! `allow` entries are `namespace/serviceaccount` (exact) or `namespace/*` (every service
//! account of the namespace). An empty list admits no one. `users` maps
//! `namespace/serviceaccount` to a database user and wins over the service account's
//! annotation.

use std::collections::BTreeMap;

/// A listener's pod-identity policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<(String, Option<String>)>,
    users: BTreeMap<String, String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

impl Policy {
    /// Parses `allow` and `users` entries; errors name the bad entry.
    pub fn new(allow: &[String], users: &BTreeMap<String, String>) -> Result<Policy, String> {
        let mut parsed = Vec::new();
        for a in allow {
            let (ns, sa) = a.split_once('/').ok_or_else(|| {
                format!("pod identity: allow entry {a:?} must be NAMESPACE/SERVICEACCOUNT or NAMESPACE/*")
            })?;
            if !valid_name(ns) || !(sa == "*" || valid_name(sa)) {
                return Err(format!(
                    "pod identity: allow entry {a:?} is not NAMESPACE/SERVICEACCOUNT or NAMESPACE/* (lower-case Kubernetes names)"
                ));
            }
            parsed.push((ns.to_owned(), (sa != "*").then(|| sa.to_owned())));
        }
        for (k, v) in users {
            match k.split_once('/') {
                Some((ns, sa)) if valid_name(ns) && valid_name(sa) && !v.is_empty() => {}
                _ => {
                    return Err(format!(
                        "pod identity: user mapping {k:?} = {v:?} must map NAMESPACE/SERVICEACCOUNT to a non-empty user"
                    ));
                }
            }
        }
        Ok(Policy {
            allow: parsed,
            users: users.clone(),
        })
    }

    /// Whether `namespace/sa` may use the listener.
    pub fn allows(&self, namespace: &str, sa: &str) -> bool {
        self.allow
            .iter()
            .any(|(ns, s)| ns == namespace && s.as_deref().is_none_or(|s| s == sa))
    }

    /// The mapped user of `namespace/sa`, if any.
    pub fn user(&self, namespace: &str, sa: &str) -> Option<&str> {
        self.users
            .get(&format!("{namespace}/{sa}"))
            .map(String::as_str)
    }

    /// The allow list as written (for messages).
    pub fn describe(&self) -> String {
        if self.allow.is_empty() {
            return "nothing".into();
        }
        self.allow
            .iter()
            .map(|(ns, sa)| format!("{ns}/{}", sa.as_deref().unwrap_or("*")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let users = BTreeMap::from([("shop/api".to_string(), "shop_api".to_string())]);
        let p = Policy::new(&["shop/api".into(), "batch/*".into()], &users).unwrap();
        assert!(p.allows("shop", "api"));
        assert!(!p.allows("shop", "web"));
        assert!(p.allows("batch", "anything"));
        assert!(!p.allows("kube-system", "api"));
        assert_eq!(p.user("shop", "api"), Some("shop_api"));
        assert_eq!(p.user("batch", "x"), None);
        assert_eq!(p.describe(), "shop/api, batch/*");
        for bad in ["shop", "*/api", "Shop/api", "shop/", "/api"] {
            assert!(
                Policy::new(&[bad.into()], &BTreeMap::new()).is_err(),
                "{bad}"
            );
        }
        let bad_users = BTreeMap::from([("shop".to_string(), "u".to_string())]);
        assert!(Policy::new(&[], &bad_users).is_err());
        assert!(!Policy::default().allows("a", "b"));
    }
}
