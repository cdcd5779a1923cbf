//! A snapshot of environment variables.
//!
//! Token sources are selected and configured by the same variables the Azure SDKs read
//! (`AZURE_CLIENT_ID`, `IDENTITY_ENDPOINT`, …). Reading them from an [`Env`] snapshot rather
//! than from the process lets configuration and tests inject values without touching the
//! process environment (which is unsafe to mutate in a multi-threaded program).
//!
//! Empty values count as unset, as in the SDKs. `Debug` lists variable names only: the
//! snapshot usually holds `AZURE_CLIENT_SECRET`.

use std::{collections::BTreeMap, fmt};

/// Environment variables (`AZURE_*`, `IDENTITY_*`, `PATH`, …) as seen by the token sources.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The current process environment (variables that are not valid UTF-8 are skipped).
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// Exactly the given variables.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `name`, or `None` if unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Sets (or with `None`, removes) a variable in this snapshot.
    pub fn set(&mut self, name: impl Into<String>, value: Option<String>) {
        let name = name.into();
        match value {
            Some(v) => self.vars.insert(name, v),
            None => self.vars.remove(&name),
        };
    }

    /// Every variable of the snapshot.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_unset_and_debug_hides_values() {
        let env = Env::from_pairs([("A", "1"), ("B", ""), ("AZURE_CLIENT_SECRET", "s3cr3t")]);
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("B"), None);
        assert_eq!(env.get("C"), None);
        let dbg = format!("{env:?}");
        assert!(
            dbg.contains("AZURE_CLIENT_SECRET") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
    }
}
