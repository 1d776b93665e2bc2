//! Tag selector values: exact, or globs with `*` and `?`.

use std::fmt;

/// One accepted value of a tag selector: exact, or a glob with `*` and `?`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValuePattern(String);

impl ValuePattern {
    pub fn new(pattern: &str) -> Self {
        ValuePattern(pattern.to_owned())
    }

    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?'])
    }

    pub fn matches(&self, value: &str) -> bool {
        glob_match(self.0.as_bytes(), value.as_bytes())
    }

    /// Whether every value this pattern matches is also matched by `other`.
    pub(super) fn covered_by(&self, other: &ValuePattern) -> bool {
        if self.is_glob() {
            other.0 == self.0 || other.0 == "*"
        } else {
            other.matches(&self.0)
        }
    }
}

impl fmt::Display for ValuePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
fn glob_match(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == b'?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((star_p, star_v)) => {
                    p = star_p + 1;
                    v = star_v + 1;
                    star = Some((star_p, star_v + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}
