//! The kernel's own types, from its BTF blob (`kernel/bpf/btf.c`, `include/uapi/linux/btf.h`):
//! enough of it to find a structure by name and the byte offset of a member by its path
//! (`tasks`, `cred`, `uid.val`), looking into anonymous structures and unions as C does.
//!
//! The blob is the guest's: every entry is checked to lie within the type section, counts are
//! capped, chains of typedefs and qualifiers stop after [`MAX_HOPS`], anonymous members are
//! searched [`MAX_DEPTH`] deep; a blob that breaks a rule is an error, never a hang.

/// Types a blob may have (Linux 6.1 has about 130,000).
pub const MAX_TYPES: usize = 1 << 21;
/// Typedefs, qualifiers and forward declarations followed from one type at most.
pub const MAX_HOPS: usize = 32;
/// Anonymous structures and unions looked into at most, one inside the other.
pub const MAX_DEPTH: usize = 8;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_FWD: u8 = 7;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_FLOAT: u8 = 16;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Why a blob or a lookup in it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    /// The blob breaks a rule of the format.
    #[error("the BTF is corrupt: {0}")]
    Corrupt(String),
    /// No structure of that name.
    #[error("the BTF has no struct {0}")]
    NoStruct(String),
    /// A member path does not name a member.
    #[error("struct {strukt} has no member {path}")]
    NoMember {
        /// The structure.
        strukt: String,
        /// The path asked for.
        path: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where its record starts in the type section.
    record: u32,
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    /// For structs and unions: their members, `members[first..first + count]`; for arrays:
    /// the element type in `first` and the element count in `elements`.
    first: u32,
    count: u16,
    elements: u32,
}

/// What a type is ([`Btf::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// `void` (id 0).
    Void,
    /// An integer of `size` bytes.
    Int {
        /// Bytes.
        size: u32,
        /// Signed.
        signed: bool,
        /// A character.
        char: bool,
        /// A boolean.
        bool: bool,
    },
    /// A pointer to the type of that id.
    Pointer(u32),
    /// `count` elements of the type `element`.
    Array {
        /// The element's type id.
        element: u32,
        /// Elements.
        count: u32,
    },
    /// A struct of `size` bytes.
    Struct {
        /// Bytes.
        size: u32,
    },
    /// A union of `size` bytes.
    Union {
        /// Bytes.
        size: u32,
    },
    /// An enum of `size` bytes.
    Enum {
        /// Bytes.
        size: u32,
        /// Signed values.
        signed: bool,
    },
    /// A struct or union declared, not defined.
    Forward {
        /// A union.
        union: bool,
    },
    /// A typedef, qualifier or type tag of the type of that id.
    Alias(u32),
    /// A function's type.
    Function,
    /// A floating-point number of `size` bytes.
    Float {
        /// Bytes.
        size: u32,
    },
    /// Functions, variables, sections and tags: no type of data.
    Other,
}

/// A member of a struct or union ([`Btf::members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its name (empty for an anonymous struct or union).
    pub name: String,
    /// Its type.
    pub type_id: u32,
    /// Its offset in bits.
    pub bit_offset: u32,
    /// Its width in bits for a bitfield, 0 otherwise.
    pub bitfield_bits: u32,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset (and, with the struct's kind flag, the bitfield size in bits 31..24).
    offset: u32,
}

/// A parsed BTF blob.
#[derive(Debug, Clone)]
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Entry>,
    members: Vec<Member>,
    strings: Vec<u8>,
    /// The ids of the named types, sorted by name (then id): a type is found by name in
    /// O(log n), not by a scan of every type.
    by_name: Vec<u32>,
}

fn corrupt(why: impl Into<String>) -> BtfError {
    BtfError::Corrupt(why.into())
}

/// The little-endian u32 at `at` of `bytes`, `None` past their end.
pub(super) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The type and string sections of `blob`, its header checked as the kernel checks it
/// (`btf_parse_hdr`): magic 0xeb9f, version 1, a header of at least 24 bytes, both sections
/// within the blob, a string section that starts with the empty string.
fn sections(blob: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    if blob.len() < 24 || blob[..2] != [0x9f, 0xeb] || blob[2] != 1 {
        return Err(corrupt("no BTF header (magic 0xeb9f, version 1)"));
    }
    let field = |at| u32_at(blob, at).map(|v| v as usize).ok_or_else(|| corrupt("a short header"));
    let (header, type_off, type_len, str_off, str_len) =
        (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
    let section = |off: usize, len: usize| {
        let start = header.checked_add(off)?;
        blob.get(start..start.checked_add(len)?)
    };
    let (Some(types), Some(strings)) = (section(type_off, type_len), section(str_off, str_len)) else {
        return Err(corrupt(format!("sections past the blob's {} bytes", blob.len())));
    };
    if header < 24 || strings.first() != Some(&0) {
        return Err(corrupt("a header or string section the kernel would refuse"));
    }
    Ok((types, strings))
}

/// Whether `blob` is a kernel's BTF: its header and sections as [`Btf::parse`] takes them, and
/// `task_struct` among its names (a stale or foreign blob found in memory has other names).
///
/// # Errors
///
/// [`BtfError::Corrupt`] saying what is wrong.
pub fn check(blob: &[u8]) -> Result<(), BtfError> {
    let (_, strings) = sections(blob)?;
    if !strings.windows(13).any(|window| window == b"\0task_struct\0") {
        return Err(corrupt("no task_struct among its types' names"));
    }
    Ok(())
}

impl Btf {
    /// Parses `blob` (a whole `.BTF` section: header, types, strings).
    ///
    /// # Errors
    ///
    /// [`BtfError::Corrupt`] naming what is wrong: the header, a section past the blob, an entry
    /// running past the type section, more than `MAX_TYPES` types.
    pub fn parse(blob: &[u8]) -> Result<Self, BtfError> {
        let (types_bytes, strings) = sections(blob)?;
        let mut types = vec![Entry {
            record: 0,
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            first: 0,
            count: 0,
            elements: 0,
        }];
        let mut members = Vec::new();
        let mut at = 0;
        while at < types_bytes.len() {
            if types.len() > MAX_TYPES {
                return Err(corrupt(format!("more than {MAX_TYPES} types")));
            }
            let word = |offset: usize| {
                u32_at(types_bytes, at + offset)
                    .ok_or_else(|| corrupt(format!("type {} runs past the types", types.len())))
            };
            let (name_off, info, size_or_type) = (word(0)?, word(4)?, word(8)?);
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as usize;
            let trailing = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0 | 20.. => return Err(corrupt(format!("type {} has kind {kind}", types.len()))),
                _ => 0,
            };
            let body = at + 12;
            if body + trailing > types_bytes.len() {
                return Err(corrupt(format!("type {} runs past the types", types.len())));
            }
            let mut first = members.len() as u32;
            let mut elements = 0;
            if kind == KIND_ARRAY {
                first = u32_at(types_bytes, body).unwrap_or(0);
                elements = u32_at(types_bytes, body + 8).unwrap_or(0);
            }
            if kind == KIND_INT {
                // the encoding: signed, char, bool in bits 24..28, the bits in 0..8
                elements = u32_at(types_bytes, body).unwrap_or(0);
            }
            // enumerators are kept as members: the name, and the value's low and high words
            if kind == KIND_ENUM {
                for index in 0..vlen {
                    let word = |offset: usize| u32_at(types_bytes, body + index * 8 + offset).unwrap_or(0);
                    let value = word(4);
                    let high = if info >> 31 == 1 && value >> 31 == 1 { u32::MAX } else { 0 };
                    members.push(Member { name_off: word(0), type_id: value, offset: high });
                }
            }
            if kind == KIND_ENUM64 {
                for index in 0..vlen {
                    let word = |offset: usize| u32_at(types_bytes, body + index * 12 + offset).unwrap_or(0);
                    members.push(Member { name_off: word(0), type_id: word(4), offset: word(8) });
                }
            }
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for index in 0..vlen {
                    let member = |offset: usize| u32_at(types_bytes, body + index * 12 + offset).unwrap_or(0);
                    members.push(Member { name_off: member(0), type_id: member(4), offset: member(8) });
                }
            }
            types.push(Entry {
                record: at as u32,
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                first,
                count: if [KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64].contains(&kind) {
                    vlen as u16
                } else {
                    0
                },
                elements,
            });
            at = body + trailing;
        }
        let mut btf = Self { types, members, strings: strings.to_vec(), by_name: Vec::new() };
        // each name found once, then sorted with its id: (name, id) is a total order, so the
        // unstable sort (no allocation, fewer moves) gives what a stable one would
        let mut named: Vec<(&[u8], u32)> = (1..btf.types.len() as u32)
            .filter_map(|id| {
                let name_off = btf.types[id as usize].name_off;
                (name_off != 0).then(|| (btf.name(name_off), id))
            })
            .collect();
        named.sort_unstable();
        let by_name = named.into_iter().map(|(_, id)| id).collect();
        btf.by_name = by_name;
        Ok(btf)
    }

    /// The first type (lowest id) of kind `kind` named `name`.
    fn find(&self, kind: u8, name: &str) -> Option<u32> {
        self.ids_named(name).find(|&id| self.types[id as usize].kind == kind)
    }

    /// Where the raw record of type `id` is, for a reader that decodes records itself (the
    /// Python binding's drgn types): its offset in the type section, its BTF kind number
    /// (`BTF_KIND_*`) and the offset of its name in the string section; `None` for `void` (id
    /// 0) and ids past the types.
    pub fn record(&self, id: u32) -> Option<(u32, u8, u32)> {
        let entry = self.types.get(id as usize).filter(|_| id != 0)?;
        Some((entry.record, entry.kind, entry.name_off))
    }

    /// The ids of every type named `name`, of any kind, in id order (through the index by name).
    pub fn ids_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let name = name.as_bytes();
        let first = self.by_name.partition_point(|&id| self.name(self.types[id as usize].name_off) < name);
        self.by_name[first..]
            .iter()
            .take_while(move |&&id| self.name(self.types[id as usize].name_off) == name)
            .copied()
    }

    /// The enumerator `name` of any enum: the enum's id and the enumerator's index among its
    /// enumerators, the lowest id's first (`None` if no enum has it). A scan of every enum's
    /// enumerators: for the few constants a debugger asks for by name.
    pub fn enumerator_named(&self, name: &str) -> Option<(u32, usize)> {
        let name = name.as_bytes();
        self.types.iter().enumerate().find_map(|(id, entry)| {
            if entry.kind != KIND_ENUM && entry.kind != KIND_ENUM64 {
                return None;
            }
            let start = entry.first as usize;
            let values = self.members.get(start..start + usize::from(entry.count))?;
            let index = values.iter().position(|value| self.name(value.name_off) == name)?;
            Some((id as u32, index))
        })
    }

    /// How many types it has (`void` not counted).
    pub fn len(&self) -> usize {
        self.types.len() - 1
    }

    /// Whether it has no types.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What type `id` is, `None` for an id past the types.
    pub fn kind(&self, id: u32) -> Option<TypeKind> {
        let entry = self.types.get(id as usize)?;
        let size = entry.size_or_type;
        Some(match entry.kind {
            0 => TypeKind::Void,
            KIND_INT => TypeKind::Int {
                size,
                signed: entry.elements >> 24 & 1 != 0,
                char: entry.elements >> 24 & 2 != 0,
                bool: entry.elements >> 24 & 4 != 0,
            },
            KIND_PTR => TypeKind::Pointer(size),
            KIND_ARRAY => TypeKind::Array { element: entry.first, count: entry.elements },
            KIND_STRUCT => TypeKind::Struct { size },
            KIND_UNION => TypeKind::Union { size },
            KIND_ENUM | KIND_ENUM64 => TypeKind::Enum { size, signed: entry.kind_flag },
            KIND_FWD => TypeKind::Forward { union: entry.kind_flag },
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                TypeKind::Alias(size)
            }
            KIND_FUNC_PROTO => TypeKind::Function,
            KIND_FLOAT => TypeKind::Float { size },
            _ => TypeKind::Other,
        })
    }

    /// The name of type `id` (empty for an anonymous one; bytes that are not UTF-8 as U+FFFD,
    /// the replacement character).
    pub fn type_name(&self, id: u32) -> String {
        let offset = self.types.get(id as usize).map_or(0, |entry| entry.name_off);
        String::from_utf8_lossy(self.name(offset)).into_owned()
    }

    /// The members of struct or union `id` (none for other types).
    pub fn members(&self, id: u32) -> Vec<MemberInfo> {
        let Some(entry) = self.types.get(id as usize) else { return Vec::new() };
        if entry.kind != KIND_STRUCT && entry.kind != KIND_UNION {
            return Vec::new();
        }
        let start = entry.first as usize;
        let members = self.members.get(start..start + usize::from(entry.count)).unwrap_or(&[]);
        members
            .iter()
            .map(|member| {
                let (bit_offset, bits) = match entry.kind_flag {
                    true => (member.offset & 0xff_ffff, member.offset >> 24),
                    false => (member.offset, 0),
                };
                MemberInfo {
                    name: String::from_utf8_lossy(self.name(member.name_off)).into_owned(),
                    type_id: member.type_id,
                    bit_offset,
                    bitfield_bits: bits,
                }
            })
            .collect()
    }

    /// The enumerators of enum `id`: names and values.
    pub fn enumerators(&self, id: u32) -> Vec<(String, i64)> {
        let Some(entry) = self.types.get(id as usize) else { return Vec::new() };
        if entry.kind != KIND_ENUM && entry.kind != KIND_ENUM64 {
            return Vec::new();
        }
        let start = entry.first as usize;
        let values = self.members.get(start..start + usize::from(entry.count)).unwrap_or(&[]);
        values
            .iter()
            .map(|value| {
                let name = String::from_utf8_lossy(self.name(value.name_off)).into_owned();
                (name, (u64::from(value.offset) << 32 | u64::from(value.type_id)) as i64)
            })
            .collect()
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The id of `struct name`.
    ///
    /// # Errors
    ///
    /// [`BtfError::NoStruct`].
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find(KIND_STRUCT, name).ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// The value of enumerator `name` of `enum type_name`, `None` where there is no such enum
    /// or it has no such enumerator.
    pub fn enumerator(&self, type_name: &str, name: &str) -> Option<i64> {
        let id = self.find(KIND_ENUM, type_name).or_else(|| self.find(KIND_ENUM64, type_name))?;
        self.enumerators(id).into_iter().find(|(known, _)| known == name).map(|(_, value)| value)
    }

    /// `id` with typedefs, qualifiers and type tags followed, at most [`MAX_HOPS`] of them.
    fn resolve(&self, mut id: u32) -> Result<Entry, BtfError> {
        for _ in 0..=MAX_HOPS {
            let entry = *self
                .types
                .get(id as usize)
                .ok_or_else(|| corrupt(format!("type id {id} is past the types")))?;
            match entry.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = entry.size_or_type
                }
                _ => return Ok(entry),
            }
        }
        Err(corrupt(format!("a chain of more than {MAX_HOPS} typedefs and qualifiers")))
    }

    /// The byte offset of the member at `path` (`uid.val`: names separated by dots) in `struct`
    /// type `id`, looking into anonymous members as C does.
    ///
    /// # Errors
    ///
    /// [`BtfError::NoMember`] where a name is not a member, or is a bitfield, or leads into a
    /// type that is not a struct or union; [`BtfError::Corrupt`] for a broken type chain.
    pub fn offset_of(&self, id: u32, path: &str) -> Result<u64, BtfError> {
        self.field(id, path).map(|(offset, _)| offset)
    }

    /// Whether struct `id` has a member at `path` (kernels differ: `mm_mt` or `mmap`).
    pub fn has(&self, id: u32, path: &str) -> bool {
        self.field(id, path).is_ok()
    }

    /// The byte offset and the type id of the member at `path` of struct `id`, as
    /// [`offset_of`](Self::offset_of) finds it.
    ///
    /// # Errors
    ///
    /// As [`offset_of`](Self::offset_of).
    pub fn field(&self, id: u32, path: &str) -> Result<(u64, u32), BtfError> {
        let no_member = || BtfError::NoMember {
            strukt: String::from_utf8_lossy(self.name(self.types.get(id as usize).map_or(0, |e| e.name_off)))
                .into_owned(),
            path: path.to_string(),
        };
        let mut offset = 0u64;
        let mut current = id;
        for name in path.split('.') {
            let (member_offset, member_type) =
                self.member(current, name.as_bytes(), 0)?.ok_or_else(no_member)?;
            offset += member_offset;
            current = member_type;
        }
        Ok((offset, current))
    }

    /// The number of elements of array type `id` (typedefs followed), `None` for a type that is
    /// no array.
    ///
    /// # Errors
    ///
    /// [`BtfError::Corrupt`] for a broken type chain.
    pub fn array_len(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let entry = self.resolve(id)?;
        Ok((entry.kind == KIND_ARRAY).then_some(entry.elements))
    }

    /// The size in bytes of type `id`: structs, unions, integers, enums and pointers (8 bytes:
    /// the kernels read here are 64-bit), and arrays of those, nested at most `MAX_HOPS` deep.
    ///
    /// # Errors
    ///
    /// [`BtfError::Corrupt`] for a type of no size (void, a function) or a broken chain.
    pub fn size_of(&self, id: u32) -> Result<u64, BtfError> {
        let mut elements = 1u64;
        let mut current = id;
        for _ in 0..=MAX_HOPS {
            let entry = self.resolve(current)?;
            let size = match entry.kind {
                KIND_STRUCT | KIND_UNION | KIND_INT | KIND_ENUM | KIND_ENUM64 => {
                    u64::from(entry.size_or_type)
                }
                KIND_PTR => 8,
                KIND_ARRAY => {
                    elements = elements.saturating_mul(u64::from(entry.elements));
                    current = entry.first;
                    continue;
                }
                kind => return Err(corrupt(format!("type {current} (kind {kind}) has no size"))),
            };
            return Ok(elements.saturating_mul(size));
        }
        Err(corrupt(format!("arrays nested more than {MAX_HOPS} deep")))
    }

    /// The byte offset and type of member `name` of struct or union `id`, searching anonymous
    /// members `depth` levels in.
    fn member(&self, id: u32, name: &[u8], depth: usize) -> Result<Option<(u64, u32)>, BtfError> {
        let entry = self.resolve(id)?;
        if entry.kind != KIND_STRUCT && entry.kind != KIND_UNION {
            return Ok(None);
        }
        let start = entry.first as usize;
        let members = self.members.get(start..start + usize::from(entry.count)).unwrap_or(&[]);
        let bits = |member: &Member| {
            if entry.kind_flag {
                u64::from(member.offset & 0xff_ffff)
            } else {
                u64::from(member.offset)
            }
        };
        let bitfield = |member: &Member| entry.kind_flag && member.offset >> 24 != 0;
        if let Some(member) = members.iter().find(|member| self.name(member.name_off) == name) {
            let offset = bits(member);
            if offset % 8 != 0 || bitfield(member) {
                return Ok(None);
            }
            return Ok(Some((offset / 8, member.type_id)));
        }
        if depth >= MAX_DEPTH {
            return Ok(None);
        }
        for member in
            members.iter().filter(|member| member.name_off == 0 || self.name(member.name_off).is_empty())
        {
            if let Some((inner, type_id)) = self.member(member.type_id, name, depth + 1)? {
                return Ok(Some((bits(member) / 8 + inner, type_id)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A blob: int (1), struct kuid (2) { int val }, struct cred (3) { int usage; struct kuid
    /// uid @32 }, typedef kuid_t (4) -> 2, struct task (5) { union (6) @0 { int pid }, int tgid
    /// @64 }, union (6) { int pid }.
    pub(crate) fn blob() -> Vec<u8> {
        let strings = b"\0int\0kuid\0val\0cred\0usage\0uid\0kuid_t\0task\0pid\0tgid\0";
        let off = |name: &str| {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            (strings.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap() + 1) as u32
        };
        let mut types = Vec::new();
        let mut put = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        put(&[off("int"), (KIND_INT as u32) << 24, 4, 32]);
        put(&[off("kuid"), (KIND_STRUCT as u32) << 24 | 1, 4, off("val"), 1, 0]);
        put(&[off("cred"), (KIND_STRUCT as u32) << 24 | 2, 8, off("usage"), 1, 0, off("uid"), 4, 32]);
        put(&[off("kuid_t"), (KIND_TYPEDEF as u32) << 24, 2]);
        put(&[off("task"), (KIND_STRUCT as u32) << 24 | 2, 16, 0, 6, 0, off("tgid"), 1, 64]);
        put(&[0, (KIND_UNION as u32) << 24 | 1, 4, off("pid"), 1, 0]);
        let mut blob = vec![0x9f, 0xeb, 1, 0];
        for value in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            blob.extend_from_slice(&value.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn structs_and_member_paths_through_typedefs_and_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.len(), 6);
        let cred = btf.struct_id("cred").unwrap();
        assert_eq!(btf.offset_of(cred, "uid").unwrap(), 4);
        assert_eq!(btf.offset_of(cred, "uid.val").unwrap(), 4);
        let task = btf.struct_id("task").unwrap();
        assert_eq!((btf.offset_of(task, "pid").unwrap(), btf.offset_of(task, "tgid").unwrap()), (0, 8));
        assert!(matches!(btf.offset_of(task, "comm"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.offset_of(cred, "usage.val"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.struct_id("mm_struct"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn records_names_and_enumerators_are_found_by_name() {
        let btf = Btf::parse(&blob()).unwrap();
        // the records follow one another: int (16 bytes), kuid (24), cred (36), kuid_t (12)...
        assert_eq!(btf.record(1).map(|(at, kind, _)| (at, kind)), Some((0, KIND_INT)));
        assert_eq!(btf.record(2).map(|(at, kind, _)| (at, kind)), Some((16, KIND_STRUCT)));
        assert_eq!(btf.record(4).map(|(at, kind, _)| (at, kind)), Some((76, KIND_TYPEDEF)));
        assert_eq!(btf.record(6), Some((124, KIND_UNION, 0)));
        assert_eq!((btf.record(0), btf.record(7)), (None, None));
        assert_eq!(btf.ids_named("kuid").collect::<Vec<_>>(), [2]);
        assert_eq!(btf.ids_named("pid").count(), 0, "a member's name names no type");
        assert_eq!(btf.enumerator_named("PIDTYPE_PID"), None);
        // an enum (7) { A, PIDTYPE_TGID = 5 } after the blob's types, and a second one (8) with
        // the same enumerator: the first enum's wins
        let strings = b"\0int\0PIDTYPE_TGID\0A\0pid_type\0";
        let mut types = Vec::new();
        let mut put = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        put(&[1, (KIND_INT as u32) << 24, 4, 32]);
        put(&[20, (KIND_ENUM as u32) << 24 | 2, 4, 18, 0, 5, 5]);
        put(&[0, (KIND_ENUM as u32) << 24 | 1, 4, 5, 9]);
        let mut enums = vec![0x9f, 0xeb, 1, 0];
        for value in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            enums.extend_from_slice(&value.to_le_bytes());
        }
        enums.extend_from_slice(&types);
        enums.extend_from_slice(strings);
        let btf = Btf::parse(&enums).unwrap();
        assert_eq!(btf.enumerator_named("PIDTYPE_TGID"), Some((2, 1)));
        assert_eq!(btf.enumerator_named("A"), Some((2, 0)));
        assert_eq!(btf.enumerator_named("B"), None);
        assert_eq!(btf.ids_named("pid_type").collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn headers_are_checked() {
        let strings = b"\0int\0task_struct\0";
        let mut blob = vec![0x9f, 0xeb, 1, 0];
        for value in [24u32, 0, 4, 4, strings.len() as u32] {
            blob.extend_from_slice(&value.to_le_bytes());
        }
        blob.extend_from_slice(&[0; 4]);
        blob.extend_from_slice(strings);
        assert_eq!(check(&blob), Ok(()));
        let mut past = blob.clone();
        past[20] = 0xff;
        assert!(check(&past).unwrap_err().to_string().contains("past"));
        let mut wrapping = blob.clone();
        wrapping[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&wrapping).is_err());
        let no_task = [&blob[..28], b"\0int\0tusk_struct\0"].concat();
        assert!(check(&no_task).unwrap_err().to_string().contains("task_struct"));
        assert!(check(&blob[..10]).is_err() && check(b"\x9f\xeb\x02").is_err());
    }

    #[test]
    fn hostile_blobs_are_errors() {
        let good = blob();
        let mut cut = good.clone();
        cut.truncate(good.len() - 50);
        assert!(Btf::parse(&cut).is_err(), "sections past the blob");
        let mut bad_kind = good.clone();
        bad_kind[24 + 7] = 25 << 3 >> 3 | 0x1f; // kind 31
        assert!(Btf::parse(&bad_kind).is_err());
        // a typedef that names itself: a chain that never ends
        let mut looping = good.clone();
        let typedef = 24 + 16 + 24 + 36; // the typedef's entry
        looping[typedef + 8..typedef + 12].copy_from_slice(&4u32.to_le_bytes());
        let btf = Btf::parse(&looping).unwrap();
        let cred = btf.struct_id("cred").unwrap();
        // cred.uid's type (4) is still `kuid` through the member's own id; the typedef loops
        assert!(btf.resolve(4).is_err());
        assert_eq!(btf.offset_of(cred, "uid").unwrap(), 4);
        // an anonymous union that contains itself: searched a bounded depth, not forever
        let mut nested = good.clone();
        let union = 24 + 16 + 24 + 36 + 12 + 36;
        nested[union + 16..union + 20].copy_from_slice(&6u32.to_le_bytes()); // its member is itself
        nested[union + 12..union + 16].copy_from_slice(&0u32.to_le_bytes()); // and anonymous
        let btf = Btf::parse(&nested).unwrap();
        assert!(btf.offset_of(btf.struct_id("task").unwrap(), "pid").is_err());
    }
}
