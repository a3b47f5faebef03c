//! VM names: the one rule every verb, the run directory and the mount agree on.
//!
//! A VM's name is its QMP socket's file stem, its directory in the mount and part of its RAM
//! file's name, so it must be usable as all three. A name that `launch` accepts is one that
//! `list` and the mount show, and the other way round.

use std::fmt;

use serde::Serialize;

/// Longest name, in bytes. The socket path `<run-dir>/<name>.qmp` must also fit a unix socket
/// address (107 bytes), which `launch` checks against the run directory it is given.
pub const MAX_LEN: usize = 100;

/// A name that is not a usable VM name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VM name {name:?}: {reason}")]
pub struct NameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A valid VM name: 1 to `MAX_LEN` bytes of UTF-8, no `/`, no control characters (newline,
/// tab, NUL...), not starting with `.` (so neither `.`, `..` nor a hidden file).
///
/// # Examples
///
/// ```
/// use qemu_bridge::VmName;
/// assert_eq!(VmName::new("web-01").unwrap().as_str(), "web-01");
/// assert!(VmName::new("a\nb").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct VmName(String);

impl VmName {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`NameError`] saying which rule it breaks.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_LEN {
            Some("it is longer than 100 bytes")
        } else if name.starts_with('.') {
            Some("it starts with '.'")
        } else if name.contains('/') {
            Some("it contains '/'")
        } else if name.chars().any(char::is_control) {
            Some("it contains a control character")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NameError { name: name.to_string(), reason }),
            None => Ok(Self(name.to_string())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VmName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for VmName {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl AsRef<std::ffi::OsStr> for VmName {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl std::str::FromStr for VmName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<Self, NameError> {
        Self::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for good in ["demo", "vm-1.test_a", "with space", "ünïcode", "a,b", &"x".repeat(MAX_LEN)] {
            assert_eq!(VmName::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn bad_names_say_why() {
        for (bad, reason) in [
            ("", "empty"),
            (".", "'.'"),
            ("..", "'.'"),
            (".hidden", "'.'"),
            ("a/b", "'/'"),
            ("a\nb", "control"),
            ("tab\there", "control"),
            ("nul\0", "control"),
            (&"x".repeat(MAX_LEN + 1), "longer"),
        ] {
            let err = VmName::new(bad).unwrap_err();
            assert!(err.to_string().contains(reason), "{bad:?}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }
}
