//! `/proc/<pid>/mountinfo`, parsed as bytes: mount points are paths, and a path need not be
//! UTF-8 (or ASCII) to be mounted on.
//!
//! A line is `id parent major:minor root mount-point options [optional fields...] - type source
//! super-options`; the kernel escapes space, tab, newline and backslash in paths as `\ooo`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The directory of the mounted file system that the mount shows (`/` for all of it).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type, e.g. `fuse`, `fuse.qemu-bridge`, `cgroup2`.
    pub fs_type: String,
    /// The mount source, e.g. `qemu-bridge`, `/dev/sda1`.
    pub source: String,
    /// Per-superblock options, e.g. `rw,memory` for a cgroup v1 hierarchy.
    pub super_options: String,
}

/// Parses mountinfo text; lines that are not well formed are skipped.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&byte| byte == b'\n').filter_map(parse_line).collect()
}

/// The mounts this process sees (`/proc/self/mountinfo`).
///
/// # Errors
///
/// When the file cannot be read.
pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    std::fs::read("/proc/self/mountinfo").map(|text| parse(&text))
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&byte| byte == b' ').collect();
    let separator = fields.iter().position(|field| *field == b"-")?;
    if separator < 6 || fields.len() < separator + 4 {
        return None;
    }
    let text = |field: &[u8]| String::from_utf8_lossy(&unescape(field)).into_owned();
    Some(MountEntry {
        root: path(fields[3]),
        mount_point: path(fields[4]),
        fs_type: text(fields[separator + 1]),
        source: text(fields[separator + 2]),
        super_options: text(fields[separator + 3]),
    })
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

/// Undoes the kernel's `\ooo` octal escapes.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut index = 0;
    while index < field.len() {
        let octal =
            field.get(index + 1..index + 4).filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (field[index], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn fuse_mount_with_optional_fields_and_escapes() {
        let text =
            b"36 35 98:0 / /mnt/with\\040space rw,nosuid shared:7 master:1 - fuse qemu-bridge ro,user_id=0\n\
                     37 35 0:52 /lxc/c1 /cg\\134x rw - cgroup cgroup rw,memory\n";
        let entries = parse(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!((entries[0].fs_type.as_str(), entries[0].source.as_str()), ("fuse", "qemu-bridge"));
        assert_eq!(entries[0].super_options, "ro,user_id=0");
        assert_eq!(entries[1].root, PathBuf::from("/lxc/c1"));
        assert_eq!(entries[1].mount_point, PathBuf::from("/cg\\x"));
    }

    #[test]
    fn non_ascii_and_non_utf8_mount_points_stay_bytes() {
        // "/tmp/mnt-ü" in UTF-8, and a Latin-1 byte that is not UTF-8
        let entries = parse(
            b"1 0 0:1 / /tmp/mnt-\xc3\xbc rw - fuse qemu-bridge rw\n2 0 0:1 / /x\xfc rw - tmpfs t rw\n",
        );
        assert_eq!(entries[0].mount_point, PathBuf::from("/tmp/mnt-ü"));
        assert_eq!(entries[1].mount_point.as_os_str().as_bytes(), b"/x\xfc");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [&b""[..], b"garbage", b"1 2 3 - fuse x rw", b"1 2 0:1 / /m rw - fuse"] {
            assert_eq!(parse(line), vec![], "{:?}", String::from_utf8_lossy(line));
        }
        // a trailing backslash or a short escape is kept as it is
        assert_eq!(unescape(b"a\\04"), b"a\\04");
        assert_eq!(unescape(b"a\\"), b"a\\");
    }
}
