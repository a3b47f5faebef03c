//! Formatting errors for people: the error and every cause it wraps, on one line.

use std::error::Error;

/// `error: cause: cause`, the whole `source()` chain on one line, for logs, JSON and the CLI.
///
/// # Examples
///
/// ```
/// let inner = std::io::Error::other("disk full");
/// let outer = qemu_bridge::BridgeError::Write(inner);
/// assert_eq!(qemu_bridge::error::chain(&outer), "cannot write RAM to the output file: disk full");
/// ```
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
