//! OAuth scopes (RFC 6749 §3.3): a space-delimited, order-free set of
//! scope tokens. Sets are tiny (a handful of entries), so a sorted vector
//! beats a hash set and keeps `Display` deterministic.
//!
//! A room of one file that imports nothing: `config` validates scopes with
//! it, so it sits below every room.

use std::fmt;

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 §3.3).
pub fn is_valid_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// A set of scope tokens, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<Box<str>>);

impl ScopeSet {
    /// Parses a `scope` parameter. `None` if any token is malformed; runs
    /// of spaces are tolerated, as clients commonly send them.
    pub fn parse(s: &str) -> Option<ScopeSet> {
        let mut v = Vec::new();
        for t in s.split(' ').filter(|t| !t.is_empty()) {
            if !is_valid_scope_token(t) {
                return None;
            }
            v.push(t);
        }
        Some(ScopeSet::from_iter(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| &**s == scope)
    }

    /// Whether every scope of `self` is also in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }
}

impl<'a> FromIterator<&'a str> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut v: Vec<Box<str>> = iter.into_iter().map(Box::from).collect();
        v.sort();
        v.dedup();
        ScopeSet(v)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorts_and_dedups() {
        let s = ScopeSet::parse("b  a b").unwrap();
        assert_eq!(s.to_string(), "a b");
        assert!(ScopeSet::parse("a \"b\"").is_none());
        assert!(ScopeSet::parse("a\tb").is_none());
        assert!(ScopeSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn subset() {
        let small = ScopeSet::parse("a").unwrap();
        let big = ScopeSet::parse("a b").unwrap();
        assert!(small.is_subset(&big));
        assert!(!big.is_subset(&small));
        assert!(ScopeSet::default().is_subset(&small));
    }
}
