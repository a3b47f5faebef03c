"""A bounded parser of BPF Type Format (BTF) blobs, as the Linux kernel keeps its own types in
``.BTF`` (``/sys/kernel/btf/vmlinux``).

The input is guest memory, hence hostile: every offset, length, type id and string reference is
checked, and every failure is a :class:`ValueError` naming where (type id, byte offset). Parsing
is in two steps: :class:`Btf` indexes the type records (where each is, its kind and name, and the
names and enumerators by name: the library's parser, fuzzed, through ``_native.BtfIndex``);
:meth:`Btf.get` decodes one record in full, on demand, and caches it.

Only the format is handled here; turning types into drgn types is :mod:`qemu_bridge.drgn`'s.
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass

from . import _native

MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h)
UNKN = 0
INT = 1
PTR = 2
ARRAY = 3
STRUCT = 4
UNION = 5
ENUM = 6
FWD = 7
TYPEDEF = 8
VOLATILE = 9
CONST = 10
RESTRICT = 11
FUNC = 12
FUNC_PROTO = 13
VAR = 14
DATASEC = 15
FLOAT = 16
DECL_TAG = 17
TYPE_TAG = 18
ENUM64 = 19

KIND_NAMES = {
    INT: "int", PTR: "ptr", ARRAY: "array", STRUCT: "struct", UNION: "union", ENUM: "enum",
    FWD: "fwd", TYPEDEF: "typedef", VOLATILE: "volatile", CONST: "const", RESTRICT: "restrict",
    FUNC: "func", FUNC_PROTO: "func_proto", VAR: "var", DATASEC: "datasec", FLOAT: "float",
    DECL_TAG: "decl_tag", TYPE_TAG: "type_tag", ENUM64: "enum64",
}

# INT encoding bits
INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4

# Bounds: a vmlinux BTF is ~5 MB with ~150k types; these leave room and stop absurd input.
MAX_BLOB = 256 << 20
MAX_TYPES = 4 << 20
MAX_NAME = 4096


@dataclass(frozen=True)
class Member:
    name: str | None
    type: int
    bit_offset: int
    bit_size: int  # 0: not a bit field (or, without kind_flag, as the member's int type says)


@dataclass(frozen=True)
class Param:
    name: str | None
    type: int


@dataclass(frozen=True)
class Enumerator:
    name: str
    value: int


@dataclass(frozen=True)
class SecInfo:
    type: int
    offset: int
    size: int


@dataclass(frozen=True)
class Type:
    """One decoded BTF type. Which fields mean something depends on ``kind``:

    - INT: ``size``, ``encoding`` (INT_* bits), ``bits`` (nr_bits), ``int_offset``
    - PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG, FUNC, VAR, DECL_TAG: ``type``
    - ARRAY: ``type`` (element), ``index_type``, ``nelems``
    - STRUCT, UNION: ``size``, ``members``; ENUM, ENUM64: ``size``, ``enumerators``, ``signed``
    - FWD: ``kind_flag`` (1: union); FUNC_PROTO: ``type`` (return), ``params``, ``variadic``
    - FUNC: ``linkage`` (vlen); VAR: ``linkage``; DATASEC: ``size``, ``secinfos``; FLOAT: ``size``
    - DECL_TAG: ``component_idx``
    """

    id: int
    kind: int
    name: str | None
    kind_flag: bool = False
    vlen: int = 0
    size: int = 0
    type: int = 0
    encoding: int = 0
    bits: int = 0
    int_offset: int = 0
    index_type: int = 0
    nelems: int = 0
    members: tuple[Member, ...] = ()
    params: tuple[Param, ...] = ()
    variadic: bool = False
    enumerators: tuple[Enumerator, ...] = ()
    signed: bool = False
    secinfos: tuple[SecInfo, ...] = ()
    linkage: int = 0
    component_idx: int = -1

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind {self.kind}")


_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_3U32 = struct.Struct("<III")
_2U32 = struct.Struct("<II")
_2I = struct.Struct("<Ii")


class Btf:
    """A parsed BTF blob (little- or big-endian header is checked; only little-endian types are
    supported, as on every architecture qemu-bridge serves)."""

    def __init__(self, data: bytes | bytearray | memoryview):
        data = bytes(data)
        if len(data) > MAX_BLOB:
            raise ValueError(f"BTF: blob of {len(data)} bytes is larger than {MAX_BLOB}")
        if len(data) < _HDR.size:
            raise ValueError(f"BTF: blob of {len(data)} bytes is shorter than its header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(data, 0)
        if magic != MAGIC:
            if magic == 0x9FEB:
                raise ValueError("BTF header: big-endian BTF is not supported")
            raise ValueError(f"BTF header: bad magic {magic:#06x}")
        if version != 1:
            raise ValueError(f"BTF header: unsupported version {version}")
        if hdr_len < _HDR.size or hdr_len > len(data):
            raise ValueError(f"BTF header: hdr_len {hdr_len} out of range (blob {len(data)} bytes)")
        base = hdr_len
        for what, o, n in (("type", type_off, type_len), ("string", str_off, str_len)):
            if base + o + n > len(data):
                raise ValueError(
                    f"BTF header: {what} section [{o:#x}, +{n:#x}) beyond the blob ({len(data) - base:#x} bytes)"
                )
        if type_len % 4:
            raise ValueError(f"BTF header: type section length {type_len} is not a multiple of 4")
        self._types = data[base + type_off: base + type_off + type_len]
        self._strs = data[base + str_off: base + str_off + str_len]
        if str_len and self._strs[0] != 0:
            raise ValueError("BTF string section: does not start with an empty string")
        if str_len and self._strs[-1] != 0:
            raise ValueError("BTF string section: last string is not NUL-terminated")

        # Where each type's record is, its kind and name, and the names indexed: by the library's
        # parser (what it refuses is a ValueError saying why). Index 0 is void.
        self._index = _native.BtfIndex(data)
        offsets, kinds, name_offs = self._index.records()
        self._offsets = array.array("I")
        self._offsets.frombytes(offsets)
        self._kinds = kinds
        self._name_offs = array.array("I")
        self._name_offs.frombytes(name_offs)
        if sys.byteorder != "little":
            self._offsets.byteswap()
            self._name_offs.byteswap()
        if len(self._offsets) - 1 > MAX_TYPES:
            raise ValueError(f"BTF: more than {MAX_TYPES} types")
        self._cache: dict[int, Type] = {}

    # -- strings --

    def string(self, off: int, where: str = "") -> str:
        """The NUL-terminated string at ``off`` in the string section."""
        strs = self._strs
        if off < 0 or off >= len(strs):
            if off == 0:
                return ""
            raise ValueError(f"BTF{where}: string offset {off:#x} beyond the string section ({len(strs):#x})")
        end = strs.find(b"\0", off, off + MAX_NAME + 1)
        if end < 0:
            raise ValueError(f"BTF{where}: string at {off:#x} is not terminated within {MAX_NAME} bytes")
        try:
            return strs[off:end].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"BTF{where}: string at {off:#x} is not UTF-8: {e}") from None

    def _opt_name(self, off: int, where: str) -> str | None:
        return self.string(off, where) or None if off else None

    # -- index --

    def __len__(self) -> int:
        """Number of type ids, void (0) included."""
        return len(self._offsets)

    def kind(self, tid: int) -> int:
        self._check_id(tid, "")
        return self._kinds[tid]

    def _check_id(self, tid: int, where: str) -> None:
        if not isinstance(tid, int) or tid < 0 or tid >= len(self._offsets):
            raise ValueError(f"BTF{where}: type id {tid} out of range (0..{len(self._offsets) - 1})")

    def name_of(self, tid: int) -> str | None:
        self._check_id(tid, "")
        if tid == 0:
            return None
        return self._opt_name(self._name_offs[tid], f" type {tid}")

    def by_name(self, name: str) -> list[int]:
        """Ids of the named types (all kinds) with this name, in id order."""
        if not name:
            return []
        return self._index.named(name)

    def enumerator(self, name: str) -> tuple[int, int] | None:
        """``(enum type id, value)`` of the enumerator with this name, first one wins."""
        found = self._index.enumerator(name)
        if found is None:
            return None
        tid, i = found
        return tid, self.get(tid).enumerators[i].value

    def ids_of_kind(self, *kinds: int):
        for tid in range(1, len(self._offsets)):
            if self._kinds[tid] in kinds:
                yield tid

    # -- decoding one type --

    def get(self, tid: int) -> Type:
        """The decoded type ``tid`` (0 is void, kind UNKN)."""
        t = self._cache.get(tid)
        if t is not None:
            return t
        self._check_id(tid, "")
        t = self._decode(tid)
        self._cache[tid] = t
        return t

    def _ref(self, ref: int, tid: int, what: str) -> int:
        if ref >= len(self._offsets):
            raise ValueError(
                f"BTF type {tid} ({self._kind_name(tid)}): {what} refers to type {ref}, "
                f"beyond the last ({len(self._offsets) - 1})"
            )
        return ref

    def _kind_name(self, tid: int) -> str:
        return KIND_NAMES.get(self._kinds[tid], str(self._kinds[tid]))

    def _decode(self, tid: int) -> Type:
        if tid == 0:
            return Type(0, UNKN, None)
        types = self._types
        off = self._offsets[tid]
        name_off, info, size_or_type = _TYPE.unpack_from(types, off)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        where = f" type {tid} ({KIND_NAMES.get(kind, kind)}) at type offset {off:#x}"
        name = self._opt_name(name_off, where)
        p = off + 12

        if kind == INT:
            (enc,) = _U32.unpack_from(types, p)
            encoding = (enc >> 24) & 0x0F
            int_offset = (enc >> 16) & 0xFF
            bits = enc & 0xFF
            if size_or_type not in (1, 2, 4, 8, 16):
                raise ValueError(f"BTF{where}: int size {size_or_type}")
            if bits > size_or_type * 8 or int_offset + bits > size_or_type * 8 or bits == 0:
                raise ValueError(f"BTF{where}: int of {bits} bits at {int_offset} in {size_or_type} bytes")
            if name is None:
                raise ValueError(f"BTF{where}: int with no name")
            return Type(tid, kind, name, kflag, vlen, size=size_or_type, encoding=encoding, bits=bits,
                        int_offset=int_offset)
        if kind in (PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            ref = self._ref(size_or_type, tid, "target")
            if kind == TYPEDEF and name is None:
                raise ValueError(f"BTF{where}: typedef with no name")
            return Type(tid, kind, name, kflag, vlen, type=ref)
        if kind == FUNC:
            ref = self._ref(size_or_type, tid, "prototype")
            if ref and self._kinds[ref] != FUNC_PROTO:
                raise ValueError(f"BTF{where}: prototype {ref} is a {self._kind_name(ref)}")
            return Type(tid, kind, name, kflag, vlen, type=ref, linkage=vlen)
        if kind == FWD:
            return Type(tid, kind, name, kflag, vlen)
        if kind == FLOAT:
            if size_or_type not in (2, 4, 8, 12, 16):
                raise ValueError(f"BTF{where}: float size {size_or_type}")
            return Type(tid, kind, name, kflag, vlen, size=size_or_type)
        if kind == ARRAY:
            elem, index_type, nelems = _3U32.unpack_from(types, p)
            self._ref(elem, tid, "element type")
            self._ref(index_type, tid, "index type")
            return Type(tid, kind, name, kflag, vlen, type=elem, index_type=index_type, nelems=nelems)
        if kind in (STRUCT, UNION):
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = _3U32.unpack_from(types, p + 12 * i)
                self._ref(m_type, tid, f"member {i}")
                if kflag:
                    bit_size, bit_off = m_off >> 24, m_off & 0xFFFFFF
                else:
                    bit_size, bit_off = 0, m_off
                if bit_off + bit_size > size_or_type * 8 and size_or_type:
                    raise ValueError(
                        f"BTF{where}: member {i} at bit {bit_off} (+{bit_size}) beyond size {size_or_type}"
                    )
                members.append(Member(self._opt_name(m_name, f"{where} member {i}"), m_type, bit_off, bit_size))
            return Type(tid, kind, name, kflag, vlen, size=size_or_type, members=tuple(members))
        if kind == ENUM:
            if size_or_type not in (1, 2, 4, 8):
                raise ValueError(f"BTF{where}: enum size {size_or_type}")
            enums = []
            for i in range(vlen):
                e_name, val = _2I.unpack_from(types, p + 8 * i)
                en = self.string(e_name, f"{where} enumerator {i}")
                if not en:
                    raise ValueError(f"BTF{where}: enumerator {i} with no name")
                enums.append(Enumerator(en, val))
            # kind_flag marks a signed enum (Linux >= 6.0); older BTF does not say: an enum with
            # a negative 32-bit value is then taken as signed, others as unsigned.
            signed = kflag or any(e.value < 0 for e in enums)
            if not signed:
                enums = [Enumerator(e.name, e.value & 0xFFFFFFFF) for e in enums]
            return Type(tid, kind, name, kflag, vlen, size=size_or_type, enumerators=tuple(enums), signed=signed)
        if kind == ENUM64:
            if size_or_type not in (1, 2, 4, 8):
                raise ValueError(f"BTF{where}: enum64 size {size_or_type}")
            enums = []
            for i in range(vlen):
                e_name, lo, hi = _3U32.unpack_from(types, p + 12 * i)
                val = (hi << 32) | lo
                if kflag and val >= 1 << 63:
                    val -= 1 << 64
                en = self.string(e_name, f"{where} enumerator {i}")
                if not en:
                    raise ValueError(f"BTF{where}: enumerator {i} with no name")
                enums.append(Enumerator(en, val))
            return Type(tid, kind, name, kflag, vlen, size=size_or_type, enumerators=tuple(enums), signed=kflag)
        if kind == FUNC_PROTO:
            params = []
            variadic = False
            ret = self._ref(size_or_type, tid, "return type")
            for i in range(vlen):
                p_name, p_type = _2U32.unpack_from(types, p + 8 * i)
                if p_type == 0 and p_name == 0:
                    if i != vlen - 1:
                        raise ValueError(f"BTF{where}: '...' is parameter {i} of {vlen}")
                    variadic = True
                    continue
                self._ref(p_type, tid, f"parameter {i}")
                params.append(Param(self._opt_name(p_name, f"{where} parameter {i}"), p_type))
            return Type(tid, kind, name, kflag, vlen, type=ret, params=tuple(params), variadic=variadic)
        if kind == VAR:
            ref = self._ref(size_or_type, tid, "type")
            (linkage,) = _U32.unpack_from(types, p)
            if name is None:
                raise ValueError(f"BTF{where}: var with no name")
            return Type(tid, kind, name, kflag, vlen, type=ref, linkage=linkage)
        if kind == DATASEC:
            infos = []
            for i in range(vlen):
                v_type, v_off, v_size = _3U32.unpack_from(types, p + 12 * i)
                self._ref(v_type, tid, f"variable {i}")
                infos.append(SecInfo(v_type, v_off, v_size))
            return Type(tid, kind, name, kflag, vlen, size=size_or_type, secinfos=tuple(infos))
        if kind == DECL_TAG:
            ref = self._ref(size_or_type, tid, "target")
            (idx,) = _I32.unpack_from(types, p)
            return Type(tid, kind, name, kflag, vlen, type=ref, component_idx=idx)
        raise ValueError(f"BTF{where}: unknown kind")  # not reached: the index pass refuses it

    def resolve(self, tid: int, *, through: tuple[int, ...] = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG),
                limit: int = 64) -> Type:
        """Follows typedefs and qualifiers (bounded: a cycle is a ValueError)."""
        seen = 0
        t = self.get(tid)
        while t.kind in through:
            seen += 1
            if seen > limit:
                raise ValueError(f"BTF type {tid}: more than {limit} typedefs/qualifiers (a cycle?)")
            t = self.get(t.type)
        return t

    def size_of(self, tid: int, depth: int = 0) -> int:
        """Size in bytes (bounded recursion)."""
        if depth > 64:
            raise ValueError(f"BTF type {tid}: type nested deeper than 64 (a cycle?)")
        t = self.resolve(tid)
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return t.size
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return t.nelems * self.size_of(t.type, depth + 1)
        raise ValueError(f"BTF type {tid}: {t.kind_name} has no size")
