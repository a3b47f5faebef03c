//! The guest kernel's vmcoreinfo, found in its memory: the text a Linux kernel built with
//! `CRASH_CORE` keeps for crash dump tools (`OSRELEASE=6.1.0-57-amd64`, `PAGESIZE=4096`,
//! `KERNELOFFSET=...`, `SYMBOL(init_uts_ns)=...`, `NUMBER(phys_base)=...`, one `KEY=VALUE` a
//! line). The kernel writes it into a page of its own (`vmcoreinfo_data`), which starts with
//! `OSRELEASE=`; it also copies it into an ELF note, not page-aligned, which is not looked for.
//!
//! Every byte is the guest's: a candidate page is taken only if it is a NUL-terminated run of
//! `KEY=VALUE` lines of printable ASCII with a `PAGESIZE` line, within one page. Where several
//! pages qualify (a kernel that was kexec'd or rebooted leaves old copies), the one whose
//! release the guest's own banner (`Linux version <release> `) names wins.

use crate::ram::{BridgeError, GuestRam, PAGE_SIZE};

/// How a vmcoreinfo page starts.
const START: &[u8] = b"OSRELEASE=";
/// Lines a real vmcoreinfo has at least (Linux 6.1 writes about 100).
const MIN_LINES: usize = 4;

/// A vmcoreinfo text found in guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmcoreInfo {
    /// Where its page starts in the VM's RAM (`ram` offset, page-aligned).
    pub offset: usize,
    /// The text, every line ending with a newline.
    pub text: String,
}

impl VmcoreInfo {
    /// The value of `key` (`OSRELEASE`, `PAGESIZE`, `SYMBOL(prb)`, `NUMBER(phys_base)`...).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }

    /// The kernel release (`OSRELEASE`).
    pub fn release(&self) -> Option<&str> {
        self.get("OSRELEASE")
    }

    /// Whether the page it was found in still holds the same text (the guest did not reboot
    /// into another kernel or free the page).
    ///
    /// # Errors
    ///
    /// As the copy out of RAM.
    pub fn still_in(&self, ram: &GuestRam) -> Result<bool, BridgeError> {
        if self.offset + PAGE_SIZE > ram.len() || self.text.len() >= PAGE_SIZE {
            return Ok(false);
        }
        // the same text and its NUL: what `parse` would take from the page again, without
        // parsing it (this is asked at every open of a file of a Linux guest)
        let mut bytes = vec![0u8; self.text.len() + 1];
        ram.copy_to(self.offset, &mut bytes)?;
        Ok(bytes[..self.text.len()] == *self.text.as_bytes() && bytes[self.text.len()] == 0)
    }
}

/// The vmcoreinfo text at the start of `page`, or `None` if the bytes are not one: it must start
/// with `OSRELEASE=`, end with a NUL within the page, and be lines of `KEY=VALUE` in printable
/// ASCII, among them `PAGESIZE=`.
pub fn parse(page: &[u8]) -> Option<String> {
    let page = &page[..page.len().min(PAGE_SIZE)];
    if !page.starts_with(START) {
        return None;
    }
    let end = page.iter().position(|&byte| byte == 0)?;
    let text = std::str::from_utf8(&page[..end]).ok()?;
    let mut lines = 0;
    let mut page_size = false;
    for line in text.split_terminator('\n') {
        let (key, value) = line.split_once('=')?;
        let key_ok = !key.is_empty()
            && key.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_-.()".contains(&byte));
        let value_ok = value.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ');
        if !key_ok || !value_ok {
            return None;
        }
        page_size |= key == "PAGESIZE";
        lines += 1;
    }
    (lines >= MIN_LINES && page_size && text.ends_with('\n')).then(|| text.to_string())
}

/// The guest kernel's vmcoreinfo, looked for in every data page of `ram` (holes are not read),
/// or `None` when there is none (not a Linux guest, a kernel without `CRASH_CORE`, or not booted
/// yet).
///
/// # Errors
///
/// As the copy out of RAM.
pub fn find(ram: &GuestRam) -> Result<Option<VmcoreInfo>, BridgeError> {
    // the pages that start as the text does (a few bytes of each copied), then those whole
    let mut candidates = Vec::new();
    ram.for_each_page_head(0..ram.pages(), START.len(), |page, head| {
        if head == Some(START) {
            candidates.push(page);
        }
    })?;
    let mut found: Vec<VmcoreInfo> = Vec::new();
    let mut bytes = vec![0u8; PAGE_SIZE];
    for page in candidates {
        let offset = page * PAGE_SIZE;
        let len = PAGE_SIZE.min(ram.len() - offset);
        ram.copy_to(offset, &mut bytes[..len])?;
        if let Some(text) = parse(&bytes[..len]) {
            if !found.iter().any(|known| known.text == text) {
                found.push(VmcoreInfo { offset, text });
            }
        }
    }
    if found.len() <= 1 {
        return Ok(found.pop());
    }
    // several kernels' texts: the one whose release the banner in RAM names
    let banners: Vec<Vec<u8>> = found
        .iter()
        .map(|info| format!("Linux version {} ", info.release().unwrap_or_default()).into_bytes())
        .collect();
    let mut named = vec![false; found.len()];
    ram.for_each_page(|_, bytes| {
        let Some(bytes) = bytes else { return };
        for (index, banner) in banners.iter().enumerate() {
            named[index] |= bytes.windows(banner.len()).any(|window| window == banner.as_slice());
        }
    })?;
    let chosen = named.iter().position(|&named| named).unwrap_or(0);
    Ok(Some(found.swap_remove(chosen)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first lines of a Debian 12 guest's vmcoreinfo (6.1, read from its RAM).
    const CAPTURED: &str = "OSRELEASE=6.1.0-57-cloud-amd64\nBUILD-ID=0123abcd\nPAGESIZE=4096\n\
SYMBOL(init_uts_ns)=ffffffff82a13940\nOFFSET(uts_namespace.name)=0\nSYMBOL(prb)=ffffffff8285e4e0\n\
NUMBER(phys_base)=-2147483648\nKERNELOFFSET=12c00000\nCRASHTIME=1733250000\n";

    fn page_of(text: &[u8]) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_SIZE];
        page[..text.len()].copy_from_slice(text);
        page
    }

    #[test]
    fn a_real_vmcoreinfo_parses_and_answers_keys() {
        let text = parse(&page_of(CAPTURED.as_bytes())).unwrap();
        let info = VmcoreInfo { offset: 0, text };
        assert_eq!(info.release(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(info.get("PAGESIZE"), Some("4096"));
        assert_eq!(info.get("SYMBOL(prb)"), Some("ffffffff8285e4e0"));
        assert_eq!(info.get("KERNELOFFSET"), Some("12c00000"));
        assert_eq!(info.get("SYMBOL"), None, "a key is matched whole");
        assert_eq!(info.get("MISSING"), None);
    }

    #[test]
    fn pages_that_only_look_alike_are_refused() {
        // no NUL within the page: the text would run on
        assert_eq!(parse(&vec![b'O'; PAGE_SIZE]), None);
        let full = CAPTURED.repeat(PAGE_SIZE / CAPTURED.len() + 1);
        assert_eq!(parse(full.as_bytes()), None);
        // not at the start, no PAGESIZE, a line without '=', control bytes, a cut last line
        let shifted = format!(" {CAPTURED}");
        assert_eq!(parse(&page_of(shifted.as_bytes())), None);
        let no_page_size = CAPTURED.replace("PAGESIZE=4096\n", "");
        assert_eq!(parse(&page_of(no_page_size.as_bytes())), None);
        let bare = CAPTURED.replace("BUILD-ID=0123abcd", "BUILD-ID");
        assert_eq!(parse(&page_of(bare.as_bytes())), None);
        let control = CAPTURED.replace("4096", "40\x0196");
        assert_eq!(parse(&page_of(control.as_bytes())), None);
        let cut = &CAPTURED[..CAPTURED.len() - 1];
        assert_eq!(parse(&page_of(cut.as_bytes())), None);
        assert_eq!(parse(&page_of(b"OSRELEASE=x\nPAGESIZE=4096\n")), None, "too few lines");
        assert_eq!(parse(b"OSRELEASE="), None, "short input");
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn the_page_is_found_and_a_second_kernels_copy_is_told_apart_by_the_banner() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        file.as_file().set_len(64 * PAGE_SIZE as u64).unwrap();
        let old = CAPTURED.replace("6.1.0-57-cloud-amd64", "6.1.0-48-cloud-amd64");
        file.as_file().write_all_at(&page_of(old.as_bytes()), 5 * PAGE_SIZE as u64).unwrap();
        file.as_file().write_all_at(&page_of(CAPTURED.as_bytes()), 9 * PAGE_SIZE as u64).unwrap();
        file.as_file()
            .write_all_at(
                b"Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists)",
                20 * PAGE_SIZE as u64 + 99,
            )
            .unwrap();
        let ram = GuestRam::from(crate::ram::Mapping::open(file.path()).unwrap());
        let info = find(&ram).unwrap().unwrap();
        assert_eq!((info.offset, info.release()), (9 * PAGE_SIZE, Some("6.1.0-57-cloud-amd64")));
        assert!(info.still_in(&ram).unwrap());
        // the guest reuses the page: the text is gone
        file.as_file().write_all_at(b"X", 9 * PAGE_SIZE as u64).unwrap();
        assert!(!info.still_in(&ram).unwrap());
    }

    #[test]
    fn ram_without_a_vmcoreinfo_has_none() {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        file.as_file().set_len(16 * PAGE_SIZE as u64).unwrap();
        let ram = GuestRam::from(crate::ram::Mapping::open(file.path()).unwrap());
        assert_eq!(find(&ram).unwrap(), None);
    }
}
