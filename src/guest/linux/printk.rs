//! The kernel log: the lockless printk ring buffer of Linux >= 5.10
//! (`kernel/printk/printk_ringbuffer.c`), read with the layout the kernel's vmcoreinfo gives of
//! each of its structures (`OFFSET(prb_desc.state_var)`, `SIZE(printk_info)`...), so that no
//! offset of one build is written here.
//!
//! The ring has `2^count_bits` descriptors; the ones from `tail_id` to `head_id` that are
//! committed or finalized and still carry their own id hold a record: its text is a block of
//! the data ring (`[begin, next)`, after the block's id; a block that wraps starts at the ring's
//! start), its sequence number, time and length are in the matching `printk_info`. Every index
//! and length is the guest's: the walk visits at most `2^count_bits` descriptors (capped at
//! [`MAX_COUNT_BITS`]), a block that does not fit the ring is skipped, and memory that cannot be
//! read ends the walk with an error.

use std::fmt::Write as _;

use super::reader::KernelReader;
use super::{LinuxError, LinuxKernel};
use crate::guest::memory::{GuestMemory, Gva};

/// The largest descriptor ring walked: 2^20 records (a 6.1 kernel with `log_buf_len=32M` has
/// 2^20; the default is 2^13).
pub const MAX_COUNT_BITS: u32 = 20;
/// The largest data ring read: 2^28 bytes.
pub const MAX_SIZE_BITS: u32 = 28;

const DESC_FLAGS_SHIFT: u32 = 62;
const DESC_ID_MASK: u64 = !(3 << DESC_FLAGS_SHIFT);
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;

/// Where each field of the ring buffer's structures is, from vmcoreinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Layout {
    pub desc_ring: u64,
    pub text_data_ring: u64,
    pub count_bits: u64,
    pub descs: u64,
    pub infos: u64,
    pub head_id: u64,
    pub tail_id: u64,
    pub desc_size: u64,
    pub state_var: u64,
    pub text_blk_lpos: u64,
    pub lpos_begin: u64,
    pub lpos_next: u64,
    pub info_size: u64,
    pub seq: u64,
    pub ts_nsec: u64,
    pub text_len: u64,
    pub size_bits: u64,
    pub data: u64,
    pub counter: u64,
}

impl Layout {
    /// Linux 6.1's layout on x86_64, as its vmcoreinfo says: for tests and fuzzing, which have
    /// no kernel to ask ([`Layout::of`] is what reads a guest).
    #[cfg(any(test, fuzzing))]
    pub const LINUX_6_1: Layout = Layout {
        desc_ring: 0,
        text_data_ring: 48,
        count_bits: 0,
        descs: 8,
        infos: 16,
        head_id: 24,
        tail_id: 32,
        desc_size: 24,
        state_var: 0,
        text_blk_lpos: 8,
        lpos_begin: 0,
        lpos_next: 8,
        info_size: 88,
        seq: 0,
        ts_nsec: 8,
        text_len: 16,
        size_bits: 0,
        data: 8,
        counter: 0,
    };

    /// The layout `kernel`'s vmcoreinfo gives.
    ///
    /// # Errors
    ///
    /// [`LinuxError::Missing`] for a kernel without the lockless ring buffer (before 5.10).
    pub fn of(kernel: &LinuxKernel) -> Result<Self, LinuxError> {
        let get = |key: &str| -> Result<u64, LinuxError> {
            let value = kernel.number(key)?;
            u64::try_from(value)
                .map_err(|_| LinuxError::BadNumber { key: key.into(), value: value.to_string() })
        };
        Ok(Self {
            desc_ring: get("OFFSET(printk_ringbuffer.desc_ring)")?,
            text_data_ring: get("OFFSET(printk_ringbuffer.text_data_ring)")?,
            count_bits: get("OFFSET(prb_desc_ring.count_bits)")?,
            descs: get("OFFSET(prb_desc_ring.descs)")?,
            infos: get("OFFSET(prb_desc_ring.infos)")?,
            head_id: get("OFFSET(prb_desc_ring.head_id)")?,
            tail_id: get("OFFSET(prb_desc_ring.tail_id)")?,
            desc_size: get("SIZE(prb_desc)")?,
            state_var: get("OFFSET(prb_desc.state_var)")?,
            text_blk_lpos: get("OFFSET(prb_desc.text_blk_lpos)")?,
            lpos_begin: get("OFFSET(prb_data_blk_lpos.begin)")?,
            lpos_next: get("OFFSET(prb_data_blk_lpos.next)")?,
            info_size: get("SIZE(printk_info)")?,
            seq: get("OFFSET(printk_info.seq)")?,
            ts_nsec: get("OFFSET(printk_info.ts_nsec)")?,
            text_len: get("OFFSET(printk_info.text_len)")?,
            size_bits: get("OFFSET(prb_data_ring.size_bits)")?,
            data: get("OFFSET(prb_data_ring.data)")?,
            counter: get("OFFSET(atomic_long_t.counter)")?,
        })
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// When it was logged, in nanoseconds since boot.
    pub ts_nsec: u64,
    /// Its text (lines separated by `\n`, no trailing newline).
    pub text: String,
}

/// Reads `len` bytes at a kernel virtual address.
pub type Reader<'a> = dyn Fn(u64, &mut [u8]) -> Result<(), LinuxError> + 'a;

fn u64_at(read: &Reader<'_>, va: u64) -> Result<u64, LinuxError> {
    let mut bytes = [0u8; 8];
    read(va, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn u32_at(read: &Reader<'_>, va: u64) -> Result<u32, LinuxError> {
    let mut bytes = [0u8; 4];
    read(va, &mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn corrupt(why: String) -> LinuxError {
    LinuxError::Corrupt { what: "printk ring buffer", why }
}

/// The records of the ring buffer at `ring` (the `struct printk_ringbuffer`), oldest first.
///
/// # Errors
///
/// [`LinuxError::Corrupt`] for a ring larger than the caps; what `read` returns for memory that
/// cannot be read (descriptors that are being written or were overwritten are skipped, not
/// errors).
pub fn records(layout: &Layout, ring: u64, read: &Reader<'_>) -> Result<Vec<Record>, LinuxError> {
    let at = |base: u64, offset: u64| base.wrapping_add(offset);
    let desc_ring = at(ring, layout.desc_ring);
    let data_ring = at(ring, layout.text_data_ring);
    let count_bits = u32_at(read, at(desc_ring, layout.count_bits))?;
    let size_bits = u32_at(read, at(data_ring, layout.size_bits))?;
    if count_bits > MAX_COUNT_BITS || !(4..=MAX_SIZE_BITS).contains(&size_bits) {
        return Err(corrupt(format!("2^{count_bits} descriptors and 2^{size_bits} bytes of text")));
    }
    let descs = u64_at(read, at(desc_ring, layout.descs))?;
    let infos = u64_at(read, at(desc_ring, layout.infos))?;
    let data = u64_at(read, at(data_ring, layout.data))?;
    let head = u64_at(read, at(at(desc_ring, layout.head_id), layout.counter))? & DESC_ID_MASK;
    let tail = u64_at(read, at(at(desc_ring, layout.tail_id), layout.counter))? & DESC_ID_MASK;
    let count = 1u64 << count_bits;
    let size = 1u64 << size_bits;
    // at most one lap of the ring, whatever the ids say
    let span = (head.wrapping_sub(tail) & DESC_ID_MASK).min(count - 1);
    let mut records = Vec::new();
    let mut text = Vec::new();
    for step in 0..=span {
        let id = tail.wrapping_add(step) & DESC_ID_MASK;
        let index = id & (count - 1);
        let desc = at(descs, index * layout.desc_size);
        let state_var = u64_at(read, at(desc, layout.state_var))?;
        let state = state_var >> DESC_FLAGS_SHIFT;
        if state_var & DESC_ID_MASK != id || (state != DESC_COMMITTED && state != DESC_FINALIZED) {
            continue;
        }
        let lpos = at(desc, layout.text_blk_lpos);
        let begin = u64_at(read, at(lpos, layout.lpos_begin))?;
        let next = u64_at(read, at(lpos, layout.lpos_next))?;
        let info = at(infos, index * layout.info_size);
        let seq = u64_at(read, at(info, layout.seq))?;
        let ts_nsec = u64_at(read, at(info, layout.ts_nsec))?;
        let mut len_bytes = [0u8; 2];
        read(at(info, layout.text_len), &mut len_bytes)?;
        let text_len = u64::from(u16::from_le_bytes(len_bytes));
        text.clear();
        // a record without text has both positions odd (FAILED_LPOS, NO_LPOS)
        if begin & 1 == 0 || next & 1 == 0 {
            let Some((start, len)) = block(begin, next, size_bits, size) else { continue };
            // the block starts with its descriptor's id
            if len < 8 {
                continue;
            }
            let len = (len - 8).min(text_len);
            text.resize(len as usize, 0);
            read(at(data, start + 8), &mut text)?;
        }
        records.push(Record { seq, ts_nsec, text: String::from_utf8_lossy(&text).into_owned() });
    }
    Ok(records)
}

/// The data block `[begin, next)` of a ring of `size` bytes: its start index and length, or
/// `None` for positions no writer could have left.
fn block(begin: u64, next: u64, size_bits: u32, size: u64) -> Option<(u64, u64)> {
    let (wraps_begin, wraps_next) = (begin >> size_bits, next >> size_bits);
    let index = |lpos: u64| lpos & (size - 1);
    if wraps_begin == wraps_next && begin < next {
        Some((index(begin), next - begin))
    } else if wraps_begin.wrapping_add(1) == wraps_next {
        // a block that does not fit before the end is written at the start
        Some((0, index(next)))
    } else {
        None
    }
}

/// The records of the log (`prb`) of the kernel `reader` reads, whose ring buffer has
/// `layout` ([`Layout::of`] the kernel), oldest first.
///
/// # Errors
///
/// As [`records`], or no `prb` in vmcoreinfo.
pub fn read<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    layout: &Layout,
) -> Result<Vec<Record>, LinuxError> {
    let ring = reader.u64(reader.kernel().symbol("prb")?, "prb")?;
    records(layout, ring, &|va: u64, buf: &mut [u8]| reader.read(Gva(va), buf, "log"))
}

/// The records as `dmesg` prints them: `[    1.234567] text`, every line of a record with the
/// record's time.
pub fn text(records: &[Record]) -> String {
    let mut text = String::new();
    for record in records {
        let (seconds, micros) = (record.ts_nsec / 1_000_000_000, record.ts_nsec % 1_000_000_000 / 1000);
        for line in record.text.split('\n') {
            let _ = writeln!(text, "[{seconds:5}.{micros:06}] {line}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest-memory image: the ring at 0x1000, descriptors at 0x2000, infos at 0x3000, text
    /// at 0x8000 (2^8 bytes), four descriptors.
    struct Image(Vec<u8>);

    impl Image {
        fn new(head: u64, tail: u64) -> Self {
            let mut image = Image(vec![0; 0x9000]);
            image.put(0x1000, &2u32.to_le_bytes());
            image.put(0x1008, &0x2000u64.to_le_bytes());
            image.put(0x1010, &0x3000u64.to_le_bytes());
            image.put(0x1018, &head.to_le_bytes());
            image.put(0x1020, &tail.to_le_bytes());
            image.put(0x1030, &8u32.to_le_bytes());
            image.put(0x1038, &0x8000u64.to_le_bytes());
            image
        }

        fn put(&mut self, at: usize, bytes: &[u8]) {
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }

        /// Descriptor `id` (state finalized) with text `text` at data position `begin`.
        fn record(&mut self, id: u64, begin: u64, text: &str, ts_nsec: u64) {
            let index = (id & 3) as usize;
            let next = begin + 8 + text.len() as u64;
            self.put(0x2000 + index * 24, &(DESC_FINALIZED << DESC_FLAGS_SHIFT | id).to_le_bytes());
            self.put(0x2000 + index * 24 + 8, &begin.to_le_bytes());
            self.put(0x2000 + index * 24 + 16, &next.to_le_bytes());
            self.put(0x3000 + index * 88, &id.to_le_bytes());
            self.put(0x3000 + index * 88 + 8, &ts_nsec.to_le_bytes());
            self.put(0x3000 + index * 88 + 16, &(text.len() as u16).to_le_bytes());
            let start = 0x8000 + (begin & 0xff) as usize;
            self.put(start, &id.to_le_bytes());
            self.put(start + 8, text.as_bytes());
        }

        fn records(&self) -> Result<Vec<Record>, LinuxError> {
            let reader = |va: u64, buf: &mut [u8]| -> Result<(), LinuxError> {
                let start = usize::try_from(va).map_err(|_| corrupt("far".into()))?;
                let bytes = start.checked_add(buf.len()).and_then(|end| self.0.get(start..end));
                buf.copy_from_slice(bytes.ok_or_else(|| corrupt(format!("{va:#x} is not in the image")))?);
                Ok(())
            };
            records(&Layout::LINUX_6_1, 0x1000, &reader)
        }
    }

    #[test]
    fn records_from_tail_to_head_as_dmesg_prints_them() {
        let mut image = Image::new(6, 4);
        image.record(4, 0x100, "Linux version 6.1", 0);
        image.record(5, 0x120, "two\nlines", 1_234_567_890);
        image.record(6, 0x140, "last", 2_000_001_000);
        let records = image.records().unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(
            text(&records),
            "[    0.000000] Linux version 6.1\n[    1.234567] two\n[    1.234567] lines\n[    2.000001] last\n"
        );
    }

    #[test]
    fn overwritten_reserved_and_wrapping_records() {
        let mut image = Image::new(7, 4);
        image.record(4, 0x100, "old", 0);
        image.record(5, 0x1e0, "wraps", 1);
        // descriptor 5's block does not fit before the end of the 256-byte ring: written at 0
        let index = 1;
        image.put(0x2000 + index * 24 + 8, &0x1f8u64.to_le_bytes());
        image.put(0x2000 + index * 24 + 16, &(0x200u64 + 8 + 5).to_le_bytes());
        image.put(0x8000, &5u64.to_le_bytes());
        image.put(0x8008, b"wraps");
        image.record(6, 0x210, "being written", 2);
        image.put(0x2000 + 2 * 24, &6u64.to_le_bytes()); // state reserved
        image.record(7, 0x230, "new", 3);
        // descriptor 4 was reused by id 8: its id is not 4 any more
        image.put(0x2000, &(DESC_FINALIZED << DESC_FLAGS_SHIFT | 8).to_le_bytes());
        let texts: Vec<String> = image.records().unwrap().into_iter().map(|r| r.text).collect();
        assert_eq!(texts, ["wraps", "new"]);
    }

    #[test]
    fn lying_indices_cost_one_lap_and_bad_memory_is_an_error() {
        // ids 2^61 apart: the walk is one lap of four descriptors, none of which match
        let image = Image::new(1 << 61, 0);
        assert_eq!(image.records().unwrap(), []);
        let mut huge = Image::new(0, 0);
        huge.put(0x1000, &40u32.to_le_bytes());
        assert!(huge.records().unwrap_err().to_string().contains("2^40 descriptors"));
        let mut far = Image::new(4, 4);
        far.record(4, 0x100, "x", 0);
        far.put(0x1038, &0xdead_0000u64.to_le_bytes());
        assert!(far.records().is_err());
        // a text length past the block is cut to the block
        let mut long = Image::new(4, 4);
        long.record(4, 0x100, "abc", 0);
        long.put(0x3000 + 16, &60000u16.to_le_bytes());
        assert_eq!(long.records().unwrap()[0].text, "abc");
    }
}
