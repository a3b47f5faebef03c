//! Parsing of human sizes such as `64M`, `1G`, `128MiB`.

/// Parses a size. Suffixes `K`, `M`, `G`, `T` (optionally followed by `iB` or `B`) are binary
/// multiples; a bare number is MiB, as in QEMU's `-m`.
///
/// # Errors
///
/// A message naming the input when it is empty, negative, not a number, has an unknown suffix,
/// is zero or overflows.
///
/// # Examples
///
/// ```
/// assert_eq!(qemu_bridge::parse_size("64M"), Ok(64 << 20));
/// assert_eq!(qemu_bridge::parse_size("128"), Ok(128 << 20));
/// assert!(qemu_bridge::parse_size("-1G").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("invalid size {text:?}: expected a number with an optional K, M, G or T suffix"));
    }
    let number: u64 = digits.parse().map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("invalid size {text:?}: unknown suffix {suffix:?}")),
    };
    let bytes =
        number.checked_mul(1u64 << shift).ok_or_else(|| format!("invalid size {text:?}: too large"))?;
    if bytes == 0 {
        return Err(format!("invalid size {text:?}: must be greater than zero"));
    }
    Ok(bytes)
}

/// Parses an address or length: decimal or `0x` hexadecimal.
///
/// # Errors
///
/// A message naming the input when it is not a number.
pub fn parse_number(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let parsed = match trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => trimmed.parse(),
    };
    parsed.map_err(|_| format!("invalid number {text:?}: expected decimal or 0x-prefixed hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("3g"), Ok(3 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("128"), Ok(128 << 20));
        for bad in ["", "M", "-1", "1.5G", "12Q", "0", "99999999999999999999", "16777216T", " "] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("invalid size"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x7c00"), Ok(0x7c00));
        assert_eq!(parse_number("4096"), Ok(4096));
        assert!(parse_number("0xZZ").is_err());
        assert!(parse_number("-5").is_err());
        assert!(parse_number("").is_err());
    }
}
