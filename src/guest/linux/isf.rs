//! A Volatility 3 symbol table (ISF, format 6.2.0) of a Linux guest's kernel, made from what the
//! kernel carries in its own memory: every type of its BTF, every symbol of its kallsyms, and
//! its banner, so that Volatility recognises the kernel and reads it with no other file.
//!
//! What Volatility needs of it (read in Volatility 3's sources): the banner as
//! `linux_banner.constant_data` (the exact bytes of `linux_banner[]`, NUL included), addresses
//! as the kernel was linked (Volatility finds the KASLR shifts itself: the runtime address less
//! vmcoreinfo's `KERNELOFFSET`), a `pointer` and a `void` base type, anonymous members marked
//! `anonymous` (it folds their fields into the parent), typedefs resolved, and a type on the
//! symbols its plugins take objects from. BTF types no global variable, so those come from a
//! small table here ([`TYPED_SYMBOLS`]); the rest of the symbols have addresses only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::btf::{Btf, TypeKind};
use super::kallsyms::Symbol;

/// Symbols given a type: the kernel's global objects Volatility's Linux plugins start from.
pub const TYPED_SYMBOLS: [(&str, &str); 12] = [
    ("init_task", "task_struct"),
    ("init_mm", "mm_struct"),
    ("init_files", "files_struct"),
    ("init_fs", "fs_struct"),
    ("init_cred", "cred"),
    ("init_nsproxy", "nsproxy"),
    ("init_pid_ns", "pid_namespace"),
    ("init_uts_ns", "uts_namespace"),
    ("init_net", "net"),
    ("modules", "list_head"),
    ("super_blocks", "list_head"),
    ("net_namespace_list", "list_head"),
];

/// Symbols whose type is a structure of no name, known by its members: the timekeeper's
/// `static struct { seqcount_raw_spinlock_t seq; struct timekeeper timekeeper; } tk_core`, which
/// Volatility reads for the times tasks started.
const ANONYMOUS_TYPED: [(&str, &[&str]); 1] = [("tk_core", &["seq", "timekeeper"])];

/// Symbols left out: Volatility takes a typed object from them when present, and BTF cannot
/// say their type (`taint_flags` is an array whose length the kernel's version decides).
const LEFT_OUT: [&str; 1] = ["taint_flags"];

/// Type references nested at most (pointers to arrays of pointers...).
const MAX_NESTING: usize = 32;

/// The file name under which the table is served: Volatility caches what it learned of a file
/// by its path, so a kernel of another banner gets another name.
pub fn file_name(release: &str, banner: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(banner.as_bytes());
    let release: String = release
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || ".-_+".contains(c) { c } else { '_' })
        .collect();
    format!("{release}-{:02x}{:02x}{:02x}{:02x}.json", digest[0], digest[1], digest[2], digest[3])
}

/// The ISF of the kernel whose types are `btf`, whose symbols are `symbols` (at their runtime
/// addresses, relocated by `kernel_offset`) and whose banner is `banner` (`linux_banner`'s
/// text, newline included).
///
/// The JSON is written as it is made, each type's value once into one string, with the keys of
/// every object in sorted order (as `serde_json`'s maps write them): a 6.1 kernel's 10 MB table
/// costs a tenth of what a tree of JSON values did.
pub fn generate(btf: &Btf, symbols: &[Symbol], banner: &str, kernel_offset: u64) -> Vec<u8> {
    let mut isf = Isf::new(btf);
    isf.types();
    let symbols = isf.symbols(symbols, banner, kernel_offset);
    let mut out = String::with_capacity(16 << 20);
    out.push_str("{\"base_types\":");
    object(&mut out, &isf.base_types);
    out.push_str(",\"enums\":");
    object(&mut out, &isf.enums);
    out.push_str(",\"metadata\":{\"format\":\"6.2.0\",\"linux\":{\"symbols\":[{\"kind\":\"symtab\",\"name\":");
    string(&mut out, "kallsyms, read from the guest's memory");
    out.push_str("}],\"types\":[{\"kind\":\"dwarf\",\"name\":");
    string(&mut out, "BTF, read from the guest's memory");
    out.push_str("}]},\"producer\":{\"name\":\"qemu-bridge\",\"version\":");
    string(&mut out, env!("CARGO_PKG_VERSION"));
    out.push_str("}},\"symbols\":");
    object(&mut out, &symbols);
    out.push_str(",\"user_types\":");
    object(&mut out, &isf.user_types);
    out.push('}');
    out.into_bytes()
}

/// `text` as a JSON string, escaped as `serde_json` escapes it (quote, backslash and the
/// control characters; the rest as it is).
fn string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON object of `members`' raw values, in their (sorted) order.
fn object(out: &mut String, members: &BTreeMap<String, String>) {
    out.push('{');
    for (index, (name, value)) in members.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        string(out, name);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
}

/// A reference to a named type: `{"kind":KIND,"name":NAME}`.
fn named(kind: &str, name: &str) -> String {
    let mut value = String::with_capacity(24 + name.len());
    let _ = write!(value, "{{\"kind\":\"{kind}\",\"name\":");
    string(&mut value, name);
    value.push('}');
    value
}

struct Isf<'a> {
    btf: &'a Btf,
    /// The ISF name of each struct, union and enum: its own, or `unnamed_<kind>_<id>`.
    names: HashMap<u32, String>,
    /// Each type's JSON value, by name.
    base_types: BTreeMap<String, String>,
    user_types: BTreeMap<String, String>,
    enums: BTreeMap<String, String>,
}

impl<'a> Isf<'a> {
    fn new(btf: &'a Btf) -> Self {
        let mut base_types = BTreeMap::new();
        base_types.insert("pointer".into(), base(8, false, "int"));
        base_types.insert("void".into(), base(0, false, "void"));
        Self { btf, names: HashMap::new(), base_types, user_types: BTreeMap::new(), enums: BTreeMap::new() }
    }

    /// Every struct, union, enum and base type.
    fn types(&mut self) {
        let btf = self.btf;
        let count = btf.len() as u32;
        for id in 1..=count {
            let name = btf.type_name(id);
            let label = match btf.kind(id) {
                Some(TypeKind::Struct { .. }) => "struct",
                Some(TypeKind::Union { .. }) => "union",
                Some(TypeKind::Enum { .. }) => "enum",
                _ => continue,
            };
            let name = if name.is_empty() { format!("unnamed_{label}_{id}") } else { name };
            self.names.insert(id, name);
        }
        let mut defined = HashSet::new();
        for id in 1..=count {
            match btf.kind(id) {
                Some(TypeKind::Int { size, signed, char, bool }) => {
                    let name = btf.type_name(id);
                    let kind = if bool {
                        "bool"
                    } else if char || (size == 1 && name.contains("char")) {
                        "char"
                    } else {
                        "int"
                    };
                    if !name.is_empty() {
                        self.base_types.entry(name).or_insert_with(|| base(size, signed, kind));
                    }
                }
                Some(TypeKind::Float { size }) => {
                    self.base_types.entry(btf.type_name(id)).or_insert_with(|| base(size, true, "float"));
                }
                Some(TypeKind::Struct { size } | TypeKind::Union { size }) => {
                    let name = self.names[&id].clone();
                    // the first definition of a name stands for all (as dwarf2json does)
                    if defined.insert(name.clone()) {
                        let kind = if matches!(btf.kind(id), Some(TypeKind::Union { .. })) {
                            "union"
                        } else {
                            "struct"
                        };
                        let mut value = String::from("{\"fields\":");
                        let fields = self.fields(id);
                        object(&mut value, &fields);
                        let _ = write!(value, ",\"kind\":\"{kind}\",\"size\":{size}}}");
                        self.user_types.insert(name, value);
                    }
                }
                Some(TypeKind::Enum { size, signed }) => {
                    let name = self.names[&id].clone();
                    if !self.enums.contains_key(&name) {
                        let base_name = self.integer(size, signed);
                        let constants: BTreeMap<String, String> =
                            btf.enumerators(id).into_iter().map(|(name, value)| (name, value.to_string())).collect();
                        let mut value = String::from("{\"base\":");
                        string(&mut value, base_name);
                        value.push_str(",\"constants\":");
                        object(&mut value, &constants);
                        let _ = write!(value, ",\"size\":{size}}}");
                        self.enums.insert(name, value);
                    }
                }
                _ => {}
            }
        }
        // structs and unions only declared: an empty definition, so that a reference resolves
        for id in 1..=count {
            if let Some(TypeKind::Forward { union }) = btf.kind(id) {
                let name = btf.type_name(id);
                if !name.is_empty() && !self.user_types.contains_key(&name) {
                    let kind = if union { "union" } else { "struct" };
                    self.user_types.insert(name, format!("{{\"fields\":{{}},\"kind\":\"{kind}\",\"size\":0}}"));
                }
            }
        }
    }

    /// The base type of an integer of `size` bytes, added if the BTF has no such name.
    fn integer(&mut self, size: u32, signed: bool) -> &'static str {
        let name = match (size, signed) {
            (1, true) => "signed char",
            (1, false) => "unsigned char",
            (2, true) => "short int",
            (2, false) => "short unsigned int",
            (8, true) => "long int",
            (8, false) => "long unsigned int",
            (_, true) => "int",
            (_, false) => "unsigned int",
        };
        let kind = if size == 1 { "char" } else { "int" };
        if !self.base_types.contains_key(name) {
            self.base_types.insert(name.into(), base(size.clamp(1, 8), signed, kind));
        }
        name
    }

    /// The fields of struct or union `id`: anonymous members named for their place and marked,
    /// bitfields at the offset of the unit of their type that holds them.
    fn fields(&mut self, id: u32) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        for (index, member) in self.btf.members(id).into_iter().enumerate() {
            let mut reference = String::new();
            self.reference(&mut reference, member.type_id, 0);
            let (name, anonymous) = match member.name.is_empty() {
                true => (format!("unnamed_field_{index}"), true),
                false => (member.name, false),
            };
            let field = if member.bitfield_bits > 0 {
                let unit = u64::from(self.btf.size_of(member.type_id).unwrap_or(4).clamp(1, 8) as u32) * 8;
                let mut offset = u64::from(member.bit_offset) / unit * unit;
                if u64::from(member.bit_offset) + u64::from(member.bitfield_bits) > offset + unit {
                    offset = u64::from(member.bit_offset) / 8 * 8;
                }
                format!(
                    "{{\"offset\":{},\"type\":{{\"bit_length\":{},\"bit_position\":{},\"kind\":\"bitfield\",\"type\":{reference}}}}}",
                    offset / 8,
                    member.bitfield_bits,
                    u64::from(member.bit_offset) - offset,
                )
            } else if anonymous {
                format!("{{\"anonymous\":true,\"offset\":{},\"type\":{reference}}}", member.bit_offset / 8)
            } else {
                format!("{{\"offset\":{},\"type\":{reference}}}", member.bit_offset / 8)
            };
            fields.insert(name, field);
        }
        fields
    }

    /// The ISF reference to type `id`, written to `out`: typedefs and qualifiers resolved, at
    /// most [`MAX_NESTING`] deep (deeper is `void`).
    fn reference(&mut self, out: &mut String, id: u32, depth: usize) {
        if depth >= MAX_NESTING {
            out.push_str("{\"kind\":\"base\",\"name\":\"void\"}");
            return;
        }
        match self.btf.kind(id) {
            Some(TypeKind::Int { size, signed, .. }) => {
                let name = self.btf.type_name(id);
                let name = if name.is_empty() { self.integer(size, signed).to_string() } else { name };
                out.push_str(&named("base", &name));
            }
            Some(TypeKind::Float { .. }) => out.push_str(&named("base", &self.btf.type_name(id))),
            Some(TypeKind::Pointer(to)) => {
                out.push_str("{\"kind\":\"pointer\",\"subtype\":");
                self.reference(out, to, depth + 1);
                out.push('}');
            }
            Some(TypeKind::Array { element, count }) => {
                let _ = write!(out, "{{\"count\":{count},\"kind\":\"array\",\"subtype\":");
                self.reference(out, element, depth + 1);
                out.push('}');
            }
            Some(TypeKind::Struct { .. }) => out.push_str(&named("struct", &self.names[&id])),
            Some(TypeKind::Union { .. }) => out.push_str(&named("union", &self.names[&id])),
            Some(TypeKind::Enum { .. }) => out.push_str(&named("enum", &self.names[&id])),
            Some(TypeKind::Forward { union }) => {
                out.push_str(&named(if union { "union" } else { "struct" }, &self.btf.type_name(id)))
            }
            Some(TypeKind::Alias(to)) => self.reference(out, to, depth + 1),
            Some(TypeKind::Function) => out.push_str("{\"kind\":\"function\"}"),
            Some(TypeKind::Void | TypeKind::Other) | None => out.push_str("{\"kind\":\"base\",\"name\":\"void\"}"),
        }
    }

    /// Every symbol at its link-time address, the banner's bytes on `linux_banner`, the objects
    /// of [`TYPED_SYMBOLS`] typed where the BTF has their type.
    fn symbols(&mut self, symbols: &[Symbol], banner: &str, kernel_offset: u64) -> BTreeMap<String, String> {
        let mut table = BTreeMap::new();
        for symbol in symbols {
            if table.contains_key(&symbol.name) || LEFT_OUT.contains(&symbol.name.as_str()) {
                continue;
            }
            // kernel addresses (the upper half) are relocated; per-CPU offsets are not
            let address = if symbol.address >> 63 == 1 {
                symbol.address.wrapping_sub(kernel_offset)
            } else {
                symbol.address
            };
            let mut kind = None;
            if let Some((_, type_name)) = TYPED_SYMBOLS.iter().find(|(name, _)| *name == symbol.name) {
                if self.user_types.contains_key(*type_name) {
                    kind = Some(named("struct", type_name));
                }
            }
            if let Some((_, members)) = ANONYMOUS_TYPED.iter().find(|(name, _)| *name == symbol.name) {
                if let Some(type_name) = self.anonymous_struct(members) {
                    kind = Some(named("struct", &type_name));
                }
            }
            let mut constant_data = None;
            if symbol.name == "linux_banner" {
                let mut bytes = banner.as_bytes().to_vec();
                bytes.push(0);
                self.integer(1, true);
                if !self.base_types.contains_key("char") {
                    self.base_types.insert("char".into(), base(1, true, "char"));
                }
                kind = Some(format!(
                    "{{\"count\":{},\"kind\":\"array\",\"subtype\":{{\"kind\":\"base\",\"name\":\"char\"}}}}",
                    bytes.len()
                ));
                constant_data = Some(base64(&bytes));
            }
            let mut entry = format!("{{\"address\":{address}");
            if let Some(data) = constant_data {
                entry.push_str(",\"constant_data\":");
                string(&mut entry, &data);
            }
            if let Some(kind) = kind {
                entry.push_str(",\"type\":");
                entry.push_str(&kind);
            }
            entry.push('}');
            table.insert(symbol.name.clone(), entry);
        }
        table
    }
}

impl Isf<'_> {
    /// The ISF name of the first structure of no name whose members are named `members`.
    fn anonymous_struct(&self, members: &[&str]) -> Option<String> {
        (1..=self.btf.len() as u32)
            .filter(|id| {
                matches!(self.btf.kind(*id), Some(TypeKind::Struct { .. }))
                    && self.btf.type_name(*id).is_empty()
            })
            .find(|id| {
                self.btf.members(*id).iter().map(|member| member.name.as_str()).eq(members.iter().copied())
            })
            .map(|id| self.names[&id].clone())
    }
}

/// A base type's JSON value.
fn base(size: u32, signed: bool, kind: &str) -> String {
    format!("{{\"endian\":\"little\",\"kind\":\"{kind}\",\"signed\":{signed},\"size\":{size}}}")
}

/// Standard base64 with padding (RFC 4648), as Volatility decodes `constant_data`: 20 lines
/// here rather than a crate for one string per table.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(word >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn base64_is_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn types_fields_and_symbols_as_volatility_reads_them() {
        let btf = Btf::parse(&super::super::btf::tests::blob()).unwrap();
        let symbols = [
            Symbol { address: 0xffff_ffff_9000_1000, kind: 'D', name: "init_task".into() },
            Symbol { address: 0xffff_ffff_9000_2000, kind: 'D', name: "linux_banner".into() },
            Symbol { address: 0x1_2000, kind: 'A', name: "per_cpu_thing".into() },
            Symbol { address: 0xffff_ffff_9000_3000, kind: 'D', name: "taint_flags".into() },
        ];
        let isf: Value =
            serde_json::from_slice(&generate(&btf, &symbols, "Linux version 6.1\n", 0x1000_0000)).unwrap();
        assert_eq!(isf["metadata"]["format"], "6.2.0");
        assert_eq!(isf["base_types"]["pointer"]["size"], 8);
        assert_eq!(isf["base_types"]["int"]["size"], 4);
        // typedefs resolved (kuid_t is struct kuid); anonymous unions marked and named for their place
        assert_eq!(
            isf["user_types"]["cred"]["fields"]["uid"],
            json!({ "offset": 4, "type": { "kind": "struct", "name": "kuid" } })
        );
        let task = &isf["user_types"]["task"]["fields"];
        assert_eq!(task["unnamed_field_0"]["anonymous"], true);
        assert_eq!(task["unnamed_field_0"]["type"], json!({ "kind": "union", "name": "unnamed_union_6" }));
        assert_eq!(task["tgid"]["offset"], 8);
        // link-time addresses, per-CPU offsets as they are, the banner's bytes with its NUL
        assert_eq!(isf["symbols"]["init_task"]["address"], 0xffff_ffff_8000_1000u64);
        assert_eq!(isf["symbols"]["per_cpu_thing"]["address"], 0x1_2000);
        assert_eq!(isf["symbols"]["linux_banner"]["constant_data"], base64(b"Linux version 6.1\n\0"));
        assert!(isf["symbols"]["taint_flags"].is_null());
        assert_eq!(file_name("6.1.0-57-cloud-amd64", "x"), "6.1.0-57-cloud-amd64-2d711642.json");
    }
}
