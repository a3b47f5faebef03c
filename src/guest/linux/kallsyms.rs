//! The kernel's symbol table, decoded from its own memory as `kernel/kallsyms.c` does: the
//! compressed names (`kallsyms_names`: per symbol a length, one byte, or two when the top bit
//! is set, then that many indexes into a table of 256 tokens), the token table and its index,
//! and the addresses (`kallsyms_offsets` relative to `kallsyms_relative_base`; on x86_64 with
//! per-CPU symbols absolute, which the sign of the offsets tells). The first character of a
//! name is the symbol's type (`T`, `t`, `D`, ...), as `/proc/kallsyms` prints it.
//!
//! The tables' addresses come from vmcoreinfo (`SYMBOL(kallsyms_names)`..., Linux >= 6.0).
//! [`parse`] is pure over the tables' bytes and bounded: at most [`MAX_SYMBOLS`] symbols, names
//! of at most [`MAX_NAME`] bytes, every index checked.

use std::fmt::Write as _;

use super::{LinuxError, LinuxKernel};
use crate::guest::memory::GuestMemory;

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
    /// Its address.
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

/// Reads the kernel's symbol tables where its vmcoreinfo says they are.
///
/// # Errors
///
/// A vmcoreinfo without the `kallsyms_*` symbols (Linux < 6.0), memory the kernel's tables do
/// not map, a count past [`MAX_SYMBOLS`].
pub fn read_tables<M: GuestMemory + ?Sized>(kernel: &LinuxKernel, memory: &M) -> Result<Tables, LinuxError> {
    let mut word = [0u8; 4];
    kernel.read(memory, kernel.symbol("kallsyms_num_syms")?, &mut word, "kallsyms_num_syms")?;
    let num_syms = u32::from_le_bytes(word);
    if num_syms > MAX_SYMBOLS {
        return Err(corrupt(format!("{num_syms} symbols, more than {MAX_SYMBOLS}")));
    }
    let relative_base =
        kernel.read_u64(memory, kernel.symbol("kallsyms_relative_base")?, "kallsyms_relative_base")?;
    let read = |address: u64, len: u64, what: &'static str| -> Result<Vec<u8>, LinuxError> {
        let mut bytes = vec![0u8; len as usize];
        kernel.read(memory, address, &mut bytes, what)?;
        Ok(bytes)
    };
    let offsets = read(kernel.symbol("kallsyms_offsets")?, u64::from(num_syms) * 4, "kallsyms_offsets")?;
    let (names_at, tokens_at, index_at) = (
        kernel.symbol("kallsyms_names")?,
        kernel.symbol("kallsyms_token_table")?,
        kernel.symbol("kallsyms_token_index")?,
    );
    // the names end before the markers and the token table that follow them
    let names_len = tokens_at
        .checked_sub(names_at)
        .filter(|len| *len > 0)
        .unwrap_or(MAX_NAMES_BYTES)
        .min(MAX_NAMES_BYTES);
    let names = read(names_at, names_len, "kallsyms_names")?;
    let tokens_len = index_at
        .checked_sub(tokens_at)
        .filter(|len| *len > 0)
        .unwrap_or(MAX_TOKEN_TABLE)
        .min(MAX_TOKEN_TABLE);
    let token_table = read(tokens_at, tokens_len, "kallsyms_token_table")?;
    let token_index = read(index_at, 512, "kallsyms_token_index")?;
    Ok(Tables { num_syms, relative_base, offsets, names, token_table, token_index })
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

/// The address of symbol `name` among `symbols` (the first of that name).
///
/// # Errors
///
/// [`LinuxError::Missing`] when the kernel has no such symbol.
pub fn address(symbols: &[Symbol], name: &str) -> Result<u64, LinuxError> {
    symbols
        .iter()
        .find(|symbol| symbol.name == name)
        .map(|symbol| symbol.address)
        .ok_or_else(|| LinuxError::Missing(format!("{name} among the kernel's symbols")))
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
