//! Go toolchain versions as written in build info ("go1.27.3-X:foo").

use std::fmt;

/// A Go release number. Pre-releases ("go1.27rc1") map to patch 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        GoVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses a Go version string as found in build info or `go version`
    /// output: "go1.27.3", "go1.21", "go1.27.3-X:nosizespecializedmalloc",
    /// "go1.25.5 X:foo", "go1.27rc1", "devel go1.28-abcdef ...".
    /// Anything after the numbers is ignored.
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.trim();
        let s = s.strip_prefix("devel ").unwrap_or(s).trim_start();
        let rest = s.strip_prefix("go")?;
        let (major, rest) = take_num(rest)?;
        let mut minor = 0;
        let mut patch = 0;
        if let Some(r) = rest.strip_prefix('.') {
            let (m, r) = take_num(r)?;
            minor = m;
            if let Some((p, _)) = r.strip_prefix('.').and_then(take_num) {
                patch = p;
            }
        }
        Some(GoVersion::new(major, minor, patch))
    }
}

/// A leading run of ASCII digits as a `u32`, and the rest of the string.
fn take_num(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let (digits, rest) = s.split_at(end);
    Some((digits.parse().ok()?, rest))
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Experiments named in a version string's "X:" suffix
/// ("go1.27.3-X:a,b" or "go1.25.5 X:a,b"), lowercased, in order.
pub fn version_experiments(s: &str) -> Vec<String> {
    let Some(pos) = s.find("X:") else {
        return Vec::new();
    };
    // "X:" must start a word: at the beginning, or after '-' or whitespace.
    let before = s.get(..pos).and_then(|b| b.chars().last());
    if !matches!(before, None | Some('-') | Some(' ') | Some('\t')) {
        return Vec::new();
    }
    let list = s.get(pos + 2..).unwrap_or("");
    let list = list.split(char::is_whitespace).next().unwrap_or("");
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        let v = |s| GoVersion::parse(s);
        assert_eq!(v("go1.27.3"), Some(GoVersion::new(1, 27, 3)));
        assert_eq!(v("go1.21"), Some(GoVersion::new(1, 21, 0)));
        assert_eq!(
            v("go1.27.3-X:nosizespecializedmalloc"),
            Some(GoVersion::new(1, 27, 3))
        );
        assert_eq!(v("go1.25.5 X:foo"), Some(GoVersion::new(1, 25, 5)));
        assert_eq!(v("go1.27rc1"), Some(GoVersion::new(1, 27, 0)));
        assert_eq!(v("go1.21beta2"), Some(GoVersion::new(1, 21, 0)));
        assert_eq!(v("go1"), Some(GoVersion::new(1, 0, 0)));
        assert_eq!(v("devel go1.28-abc123 Tue"), Some(GoVersion::new(1, 28, 0)));
        assert_eq!(v(" go1.19.8\n"), Some(GoVersion::new(1, 19, 8)));
        assert_eq!(v("go1.22.x"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(v(""), None);
        assert_eq!(v("go"), None);
        assert_eq!(v("1.21.3"), None);
        assert_eq!(v("go1."), None);
        assert_eq!(v("go99999999999.1"), None);
        assert_eq!(v("go1.é"), None);
    }

    #[test]
    fn orders_and_displays() {
        assert!(GoVersion::new(1, 27, 0) > GoVersion::new(1, 26, 9));
        assert!(GoVersion::new(1, 21, 13) > GoVersion::new(1, 21, 2));
        assert_eq!(GoVersion::new(1, 27, 3).to_string(), "1.27.3");
    }

    #[test]
    fn experiments_from_suffix() {
        assert_eq!(
            version_experiments("go1.27.3-X:nosizespecializedmalloc"),
            vec!["nosizespecializedmalloc"]
        );
        assert_eq!(
            version_experiments("go1.25.5 X:Foo,bar"),
            vec!["foo", "bar"]
        );
        assert!(version_experiments("go1.21.13").is_empty());
        assert!(version_experiments("go1.21.13-MAX:y").is_empty());
        assert!(version_experiments("go1.21 X:").is_empty());
    }
}
