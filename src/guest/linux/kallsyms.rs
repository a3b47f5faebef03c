//! The kernel's symbol table, decoded from its own memory as `kernel/kallsyms.c` does: the
//! compressed names (`kallsyms_names`: per symbol a length, one byte, or two when the top bit
//! is set, then that many indexes into a table of 256 tokens), the token table and its index,
//! and the addresses (`kallsyms_offsets` relative to `kallsyms_relative_base`; on x86_64 with
//! per-CPU symbols absolute, which the sign of the offsets tells). The first character of a
//! name is the symbol's type (`T`, `t`, `D`, ...), as `/proc/kallsyms` prints it.
//!
//! The tables' addresses come from vmcoreinfo (`SYMBOL(kallsyms_names)`..., Linux >= 6.0); on
//! older kernels they are recognised in the kernel image ([`locate`], as vmlinux-to-elf finds
//! them in kernel files): the token table by its run of single-digit tokens, its index by the
//! offsets of the tokens, the symbol count and base before the names by the markers that end
//! where the token table starts.
//! [`parse`] is pure over the tables' bytes and bounded: at most [`MAX_SYMBOLS`] symbols, names
//! of at most [`MAX_NAME`] bytes, every index checked.

use std::fmt::Write as _;

use super::btf::u32_at;
use super::reader::KernelReader;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};

/// Symbols a table may have (Linux 6.1 has about 150,000).
pub const MAX_SYMBOLS: u32 = 1 << 21;
/// Bytes a name may expand to (the kernel's `KSYM_NAME_LEN`).
pub const MAX_NAME: usize = 512;
/// Bytes of compressed names read at most.
const MAX_NAMES_BYTES: u64 = 32 << 20;
/// Bytes of the token table read at most.
const MAX_TOKEN_TABLE: u64 = 64 << 10;

/// One symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Its value as `/proc/kallsyms` prints it: an address, or for a per-CPU symbol on x86_64
    /// its offset in each CPU's area (which is why it is a number, not a [`Gva`]).
    pub address: u64,
    /// Its type, as `nm` and `/proc/kallsyms` give it.
    pub kind: char,
    /// Its name.
    pub name: String,
}

/// The bytes of the tables, as read from the kernel.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// `kallsyms_num_syms`.
    pub num_syms: u32,
    /// `kallsyms_relative_base`.
    pub relative_base: u64,
    /// `kallsyms_offsets`: `num_syms` little-endian i32.
    pub offsets: Vec<u8>,
    /// `kallsyms_names` and what follows it (the parse stops where the names end).
    pub names: Vec<u8>,
    /// `kallsyms_token_table`: 256 NUL-terminated tokens.
    pub token_table: Vec<u8>,
    /// `kallsyms_token_index`: 256 little-endian u16 offsets into the token table.
    pub token_index: Vec<u8>,
}

fn corrupt(why: String) -> LinuxError {
    LinuxError::Corrupt { what: "symbol table (kallsyms)", why }
}

/// Reads the kernel's symbol tables where its vmcoreinfo says they are, or, for a kernel whose
/// vmcoreinfo does not name them (Linux < 6.0), where they are found in its image.
///
/// # Errors
///
/// Memory the kernel's tables do not map, a count past [`MAX_SYMBOLS`], tables that are
/// neither named nor found.
pub fn read_tables<M: GuestMemory + ?Sized>(reader: &KernelReader<'_, M>) -> Result<Tables, LinuxError> {
    let kernel = reader.kernel();
    if kernel.vmcoreinfo().get("SYMBOL(kallsyms_names)").is_none() {
        return find_tables(reader);
    }
    let num_syms = reader.u32(kernel.symbol("kallsyms_num_syms")?, "kallsyms_num_syms")?;
    if num_syms > MAX_SYMBOLS {
        return Err(corrupt(format!("{num_syms} symbols, more than {MAX_SYMBOLS}")));
    }
    let relative_base = reader.u64(kernel.symbol("kallsyms_relative_base")?, "kallsyms_relative_base")?;
    let read = |address: Gva, len: u64, what: &'static str| reader.bytes(address, len as usize, what);
    let offsets = read(kernel.symbol("kallsyms_offsets")?, u64::from(num_syms) * 4, "kallsyms_offsets")?;
    let (names_at, tokens_at, index_at) = (
        kernel.symbol("kallsyms_names")?,
        kernel.symbol("kallsyms_token_table")?,
        kernel.symbol("kallsyms_token_index")?,
    );
    // the names end before the markers and the token table that follow them
    let names_len = tokens_at
        .0
        .checked_sub(names_at.0)
        .filter(|len| *len > 0)
        .unwrap_or(MAX_NAMES_BYTES)
        .min(MAX_NAMES_BYTES);
    let names = read(names_at, names_len, "kallsyms_names")?;
    let tokens_len = index_at
        .0
        .checked_sub(tokens_at.0)
        .filter(|len| *len > 0)
        .unwrap_or(MAX_TOKEN_TABLE)
        .min(MAX_TOKEN_TABLE);
    let token_table = read(tokens_at, tokens_len, "kallsyms_token_table")?;
    let token_index = read(index_at, 512, "kallsyms_token_index")?;
    Ok(Tables { num_syms, relative_base, offsets, names, token_table, token_index })
}

/// Bytes of the kernel image searched for the tables, from `_stext` (Debian 11's kernel image
/// is about 30 MiB).
pub const IMAGE_SEARCHED: u64 = 96 << 20;

/// Where the tables lie in an image ([`locate`]), as offsets in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// `kallsyms_offsets`.
    pub offsets: usize,
    /// `kallsyms_relative_base` (`kallsyms_num_syms` follows it).
    pub relative_base: usize,
    /// `kallsyms_num_syms`'s value.
    pub num_syms: u32,
    /// `kallsyms_names`.
    pub names: usize,
    /// `kallsyms_markers`.
    pub markers: usize,
    /// `kallsyms_token_table`.
    pub token_table: usize,
    /// `kallsyms_token_index`.
    pub token_index: usize,
}

/// The tokens of the ten digits, one after the other: every kernel's names use the digits, so
/// each keeps a token of its own, at its own code (48-57).
const DIGIT_TOKENS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
/// How far before the token table the symbol count is looked for.
const BEFORE_TOKENS: usize = 32 << 20;

/// Where the tables of Linux < 6.0 are in `image` (bytes of the kernel's image, in address
/// order), laid out as `scripts/kallsyms.c` writes them: offsets, relative base, count (each
/// 8-aligned), names, markers, token table, token index. `None` when nothing there checks out.
pub fn locate(image: &[u8]) -> Option<Located> {
    let mut from = 0;
    while let Some(found) = find(&image[from..], DIGIT_TOKENS) {
        let digits = from + found;
        from = digits + 1;
        let Some((token_table, token_index)) = token_table_at(image, digits) else { continue };
        if let Some(located) = counted_before(image, token_table, token_index) {
            return Some(located);
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<usize> {
    bytes.get(at..at + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
}

/// The token table whose token 48 ('0') is at `digits`, and its index: the 208 tokens from
/// there end where the index starts (aligned), and the index's offsets agree with every token.
fn token_table_at(image: &[u8], digits: usize) -> Option<(usize, usize)> {
    let mut end = digits;
    for _ in 48..256 {
        let len = image.get(end..end + 256)?.iter().position(|&b| b == 0)?;
        end += len + 1;
    }
    for align in [2, 4, 8] {
        let index = end.next_multiple_of(align);
        let table = digits.checked_sub(u16_at(image, index + 48 * 2)?)?;
        let offsets: Option<Vec<usize>> = (0..256).map(|token| u16_at(image, index + token * 2)).collect();
        let offsets = offsets?;
        // each token's NUL is just before the next one's start; the last ends the table
        let consistent = offsets[0] == 0
            && offsets.windows(2).all(|pair| pair[0] < pair[1] && image.get(table + pair[1] - 1) == Some(&0))
            && table + offsets[255] < end
            && image[table + offsets[255]..end - 1].iter().all(|&b| b != 0);
        if consistent {
            return Some((table, index));
        }
    }
    None
}

/// The relative base and symbol count before the names whose markers end where the token
/// table starts: `kallsyms_markers[0]` is 0, they grow, and there is one per 256 symbols.
fn counted_before(image: &[u8], token_table: usize, token_index: usize) -> Option<Located> {
    let lowest = token_table.saturating_sub(BEFORE_TOKENS) & !7;
    let mut at = (token_table & !7).checked_sub(16)?;
    while at >= lowest {
        let base = u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?);
        let count = u32_at(image, at + 8)?;
        // a kernel address, and a count the names between could hold
        if base >> 47 == 0x1_ffff && count > 0 && count <= MAX_SYMBOLS {
            let names = (at + 12).next_multiple_of(8);
            let markers_len = (count as usize).div_ceil(256) * 4;
            // the markers start 8-aligned, and the token table 8-aligned after them
            if let Some(markers) = token_table.checked_sub(markers_len).map(|at| at & !7) {
                let values: Option<Vec<u32>> =
                    (0..markers_len / 4).map(|i| u32_at(image, markers + i * 4)).collect();
                let fits = values.is_some_and(|values| {
                    markers > names
                        && values[0] == 0
                        && values.windows(2).all(|pair| pair[0] < pair[1])
                        && (values[values.len() - 1] as usize) < markers - names
                        && at >= 4 * count as usize
                });
                if fits {
                    return Some(Located {
                        offsets: (at - 4 * count as usize) & !7,
                        relative_base: at,
                        num_syms: count,
                        names,
                        markers,
                        token_table,
                        token_index,
                    });
                }
            }
        }
        match at.checked_sub(8) {
            Some(next) => at = next,
            None => break,
        }
    }
    None
}

/// The tables of a kernel whose vmcoreinfo does not name them: the image from `_stext` (at
/// most [`IMAGE_SEARCHED`] bytes, pages the kernel's tables do not map read as zeros) searched
/// with [`locate`].
///
/// # Errors
///
/// No `_stext` in vmcoreinfo, or no tables found.
pub fn find_tables<M: GuestMemory + ?Sized>(reader: &KernelReader<'_, M>) -> Result<Tables, LinuxError> {
    let start = reader.kernel().symbol("_stext")?;
    let mut image = vec![0u8; IMAGE_SEARCHED as usize];
    for (index, chunk) in image.chunks_mut(1 << 20).enumerate() {
        // a chunk not all mapped is read page by page; pages not mapped stay zeros
        let chunk_at = start.wrapping_add((index as u64) << 20);
        if reader.read(chunk_at, chunk, "kernel image").is_err() {
            for (page, bytes) in chunk.chunks_mut(4096).enumerate() {
                let at = chunk_at.wrapping_add((page as u64) << 12);
                let _ = reader.read(at, bytes, "kernel image");
            }
        }
    }
    let found = locate(&image).ok_or_else(|| {
        LinuxError::Missing(format!(
            "kallsyms tables (not named in vmcoreinfo, and not found in {} MiB from _stext)",
            IMAGE_SEARCHED >> 20
        ))
    })?;
    let count = found.num_syms as usize;
    Ok(Tables {
        num_syms: found.num_syms,
        relative_base: u64::from_le_bytes(
            image[found.relative_base..found.relative_base + 8].try_into().unwrap_or([0; 8]),
        ),
        offsets: image[found.offsets..found.offsets + 4 * count].to_vec(),
        names: image[found.names..found.markers].to_vec(),
        token_table: image[found.token_table..found.token_index].to_vec(),
        token_index: image[found.token_index..(found.token_index + 512).min(image.len())].to_vec(),
    })
}

/// Every symbol of the tables, in their order (by address, as `/proc/kallsyms` lists them).
///
/// # Errors
///
/// [`LinuxError::Corrupt`] naming the first thing wrong: too many symbols, a name running past
/// the table or past [`MAX_NAME`], a token index out of the token table, a token without its
/// NUL, an empty name, a byte in a name that is not printable ASCII.
pub fn parse(tables: &Tables) -> Result<Vec<Symbol>, LinuxError> {
    let count = tables.num_syms;
    if count > MAX_SYMBOLS {
        return Err(corrupt(format!("{count} symbols, more than {MAX_SYMBOLS}")));
    }
    if tables.offsets.len() < count as usize * 4 {
        return Err(corrupt(format!("{} bytes of offsets for {count} symbols", tables.offsets.len())));
    }
    let tokens = tokens(tables)?;
    let offsets: Vec<i32> = tables.offsets[..count as usize * 4]
        .chunks_exact(4)
        .map(|chunk| i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    // with per-CPU symbols absolute (x86_64 SMP), kernel symbols have negative offsets; without,
    // every offset is an unsigned distance from the base, far below 2^31
    let absolute_percpu = offsets.iter().any(|offset| *offset < 0);
    let mut symbols = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    let mut name = Vec::with_capacity(MAX_NAME);
    for (index, &offset) in offsets.iter().enumerate() {
        let byte = |at: usize| {
            tables
                .names
                .get(at)
                .copied()
                .ok_or_else(|| corrupt(format!("symbol {index}'s name runs past the table")))
        };
        let mut len = usize::from(byte(at)?);
        at += 1;
        if len & 0x80 != 0 {
            len = (len & 0x7f) | usize::from(byte(at)?) << 7;
            at += 1;
        }
        let indexes = tables
            .names
            .get(at..at + len)
            .ok_or_else(|| corrupt(format!("symbol {index}'s name runs past the table")))?;
        at += len;
        name.clear();
        for &token in indexes {
            let token = tokens[usize::from(token)];
            if name.len() + token.len() > MAX_NAME {
                return Err(corrupt(format!("symbol {index}'s name is longer than {MAX_NAME} bytes")));
            }
            name.extend_from_slice(token);
        }
        let Some((&kind, rest)) = name.split_first() else {
            return Err(corrupt(format!("symbol {index} has an empty name")));
        };
        // names and types are printable ASCII: anything else would forge lines of the listing
        if let Some(bad) = name.iter().find(|byte| !byte.is_ascii_graphic()) {
            return Err(corrupt(format!("symbol {index}'s name has a byte {bad:#04x}, which no symbol has")));
        }
        let address = match (absolute_percpu, offset >= 0) {
            (false, _) => tables.relative_base.wrapping_add(u64::from(offset as u32)),
            (true, true) => offset as u64,
            (true, false) => tables.relative_base.wrapping_sub(1).wrapping_sub(i64::from(offset) as u64),
        };
        symbols.push(Symbol {
            address,
            kind: char::from(kind),
            name: String::from_utf8_lossy(rest).into_owned(),
        });
    }
    Ok(symbols)
}

/// The 256 tokens, each checked to end within the table.
fn tokens(tables: &Tables) -> Result<Vec<&[u8]>, LinuxError> {
    if tables.token_index.len() < 512 {
        return Err(corrupt(format!("a token index of {} bytes", tables.token_index.len())));
    }
    (0..256)
        .map(|token| {
            let start = usize::from(u16::from_le_bytes([
                tables.token_index[token * 2],
                tables.token_index[token * 2 + 1],
            ]));
            let rest = tables
                .token_table
                .get(start..)
                .ok_or_else(|| corrupt(format!("token {token} starts past the token table")))?;
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| corrupt(format!("token {token} has no end")))?;
            Ok(&rest[..end])
        })
        .collect()
}

/// The kernel's symbols in their order (by address), indexed by name: a name is found in
/// O(log n).
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    list: Vec<Symbol>,
    /// Indexes into `list`, sorted by name, then index.
    by_name: Vec<u32>,
}

impl Symbols {
    /// `list`, indexed.
    pub fn new(list: Vec<Symbol>) -> Self {
        // (name, index) is a total order: the unstable sort gives what a stable one would
        let mut named: Vec<(&str, u32)> =
            list.iter().enumerate().map(|(index, symbol)| (symbol.name.as_str(), index as u32)).collect();
        named.sort_unstable();
        let by_name = named.into_iter().map(|(_, index)| index).collect();
        Self { list, by_name }
    }

    /// Every symbol named `name`, in the order of the table.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Symbol> + 'a {
        let first = self.by_name.partition_point(|&index| self.list[index as usize].name.as_str() < name);
        self.by_name[first..]
            .iter()
            .map(|&index| &self.list[index as usize])
            .take_while(move |symbol| symbol.name == name)
    }

    /// The address of the first symbol named `name`.
    ///
    /// # Errors
    ///
    /// [`LinuxError::Missing`] when there is none.
    pub fn address(&self, name: &str) -> Result<Gva, LinuxError> {
        self.named(name)
            .next()
            .map(|symbol| Gva(symbol.address))
            .ok_or_else(|| LinuxError::Missing(format!("{name} among the kernel's symbols")))
    }
}

impl std::ops::Deref for Symbols {
    type Target = [Symbol];

    fn deref(&self) -> &[Symbol] {
        &self.list
    }
}

/// The symbols as `/proc/kallsyms` prints a kernel's own (`ADDRESS TYPE NAME`, the address in 16
/// hex digits).
pub fn text(symbols: &[Symbol]) -> String {
    let mut text = String::with_capacity(symbols.len() * 40);
    for symbol in symbols {
        let _ = writeln!(text, "{:016x} {} {}", symbol.address, symbol.kind, symbol.name);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables of three symbols: tokens 0 "T", 1 "t", 2 "_text", 3 "D", 4 "lin", 5 "ux_banner",
    /// 6 "per_cpu", the rest "?".
    fn tables(offsets: &[i32], names: &[u8]) -> Tables {
        let words = ["T", "t", "_text", "D", "lin", "ux_banner", "per_cpu"];
        let mut token_table = Vec::new();
        let mut token_index = Vec::new();
        for token in 0..256 {
            token_index.extend_from_slice(&(token_table.len() as u16).to_le_bytes());
            token_table.extend_from_slice(words.get(token).copied().unwrap_or("?").as_bytes());
            token_table.push(0);
        }
        Tables {
            num_syms: offsets.len() as u32,
            relative_base: 0xffff_ffff_9c20_0000,
            offsets: offsets.iter().flat_map(|o| o.to_le_bytes()).collect(),
            names: names.to_vec(),
            token_table,
            token_index,
        }
    }

    #[test]
    fn names_expand_and_addresses_follow_the_sign_of_the_offsets() {
        // "T_text", "Dlinux_banner", "Dper_cpu"
        let names = [2, 0, 2, 3, 3, 4, 5, 2, 3, 6];
        let symbols = parse(&tables(&[-1, -0x10_0001, 0x1_2000], &names)).unwrap();
        assert_eq!(
            symbols,
            [
                Symbol { address: 0xffff_ffff_9c20_0000, kind: 'T', name: "_text".into() },
                Symbol { address: 0xffff_ffff_9c30_0000, kind: 'D', name: "linux_banner".into() },
                Symbol { address: 0x1_2000, kind: 'D', name: "per_cpu".into() },
            ]
        );
        assert_eq!(text(&symbols[..1]), "ffffffff9c200000 T _text\n");
        // no negative offset: all relative to the base
        let relative = parse(&tables(&[0, 0x1000], &names[..7])).unwrap();
        assert_eq!(relative[1].address, 0xffff_ffff_9c20_1000);
    }

    /// An image as `scripts/kallsyms.c` lays out `tables`: junk, offsets, base, count, names,
    /// markers, token table, token index, more junk.
    fn image_of(tables: &Tables) -> (Vec<u8>, Located) {
        let mut image = vec![0x5a; 1000];
        let align = |image: &mut Vec<u8>| image.resize(image.len().next_multiple_of(8), 0);
        // a decoy: the digits' run with no index after it
        image.extend_from_slice(DIGIT_TOKENS);
        align(&mut image);
        let offsets = image.len();
        image.extend_from_slice(&tables.offsets);
        align(&mut image);
        let relative_base = image.len();
        image.extend_from_slice(&tables.relative_base.to_le_bytes());
        image.extend_from_slice(&tables.num_syms.to_le_bytes());
        align(&mut image);
        let names = image.len();
        image.extend_from_slice(&tables.names);
        align(&mut image);
        let markers = image.len();
        image.extend_from_slice(&0u32.to_le_bytes());
        align(&mut image);
        let token_table = image.len();
        image.extend_from_slice(&tables.token_table);
        align(&mut image);
        let token_index = image.len();
        image.extend_from_slice(&tables.token_index);
        image.extend_from_slice(&[0x77; 300]);
        let located = Located {
            offsets,
            relative_base,
            num_syms: tables.num_syms,
            names,
            markers,
            token_table,
            token_index,
        };
        (image, located)
    }

    /// Tokens with the digits at their own codes, as a real kernel's are.
    fn digit_tables(offsets: &[i32], names: &[u8]) -> Tables {
        let mut tables = tables(offsets, names);
        let (mut token_table, mut token_index) = (Vec::new(), Vec::new());
        for token in 0..256usize {
            token_index.extend_from_slice(&(token_table.len() as u16).to_le_bytes());
            let word = match token {
                0..=6 => ["T", "t", "_text", "D", "lin", "ux_banner", "per_cpu"][token].to_string(),
                48..=57 => ((token as u8) as char).to_string(),
                _ => format!("x{token}"),
            };
            token_table.extend_from_slice(word.as_bytes());
            token_table.push(0);
        }
        tables.token_table = token_table;
        tables.token_index = token_index;
        tables
    }

    #[test]
    fn tables_are_found_in_an_image_as_the_kernel_lays_them_out() {
        let names = [2, 0, 2, 3, 3, 4, 5, 2, 3, 6];
        let tables = digit_tables(&[-1, -0x10_0001, 0x1_2000], &names);
        let (image, expected) = image_of(&tables);
        assert_eq!(locate(&image), Some(expected));
        let found = Tables {
            num_syms: 3,
            relative_base: tables.relative_base,
            offsets: image[expected.offsets..expected.offsets + 12].to_vec(),
            names: image[expected.names..expected.markers].to_vec(),
            token_table: image[expected.token_table..expected.token_index].to_vec(),
            token_index: image[expected.token_index..expected.token_index + 512].to_vec(),
        };
        assert_eq!(parse(&found).unwrap(), parse(&tables).unwrap());
        // a broken index, a base that is no kernel address, no tables at all: nothing found
        let mut broken = image.clone();
        broken[expected.token_index + 100] ^= 0xff;
        assert_eq!(locate(&broken), None);
        let mut no_base = image.clone();
        no_base[expected.relative_base + 7] = 0;
        assert_eq!(locate(&no_base), None);
        assert_eq!(locate(&[0u8; 4096]), None);
        assert_eq!(locate(DIGIT_TOKENS), None);
    }

    #[test]
    fn a_two_byte_length_is_read() {
        // a name of 130 tokens "t": the length 130 is 0x82 0x01
        let mut names = vec![0x82, 0x01];
        names.extend(std::iter::repeat_n(1u8, 130));
        let symbols = parse(&tables(&[-1], &names)).unwrap();
        assert_eq!((symbols[0].kind, symbols[0].name.len()), ('t', 129));
    }

    #[test]
    fn hostile_tables_are_errors() {
        let good = [2, 0, 2];
        for (tables, why) in [
            (tables(&[-1, -1], &good), "runs past"),
            (Tables { num_syms: MAX_SYMBOLS + 1, ..tables(&[-1], &good) }, "more than"),
            (Tables { offsets: vec![0; 2], ..tables(&[-1], &good) }, "bytes of offsets"),
            (Tables { token_index: vec![0xff; 512], ..tables(&[-1], &good) }, "past the token table"),
            (Tables { token_table: vec![b'x'; 600], ..tables(&[-1], &good) }, "no end"),
            (tables(&[-1], &[0]), "empty name"),
            (
                Tables {
                    token_table: b"T\0x\ny\0".repeat(128),
                    token_index: (0..256u16).flat_map(|t| (t % 2 * 2).to_le_bytes()).collect(),
                    ..tables(&[-1], &[2, 0, 1])
                },
                "a byte 0x0a",
            ),
        ] {
            let err = parse(&tables).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        // a name that expands past KSYM_NAME_LEN
        let mut tables = tables(&[-1], &[0x90, 0x01]);
        tables.names.extend(std::iter::repeat_n(2u8, 0x90 & 0x7f | 1 << 7));
        assert!(parse(&tables).unwrap_err().to_string().contains("longer than"));
    }
}
