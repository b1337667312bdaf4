"""Native primitives the compiled (numba) hot paths need: XXH3-128 and CRC-32C callable from nopython code.

The Python paths hash with the `xxhash` package and checksum with the `crc32c` package; compiled code must give
the very same values, because both are part of the on-flash format (set offsets, Bloom positions, page checksums).
- XXH3-128: the `xxhash` package's extension module exports the C function `XXH3_128bits_withSeed`; we register its
  address with LLVM under that name, so compiled code calls the same C code the Python path does (cache-safe: the
  symbol is re-registered at every import, before any cached function is loaded). `HAVE_XXH3` is False where the
  symbol is not exported; callers then keep to their Python path.
- CRC-32C: the SSE4.2 `crc32` instruction on x86-64 (8 bytes per instruction), else a table-driven loop.
- Memory primitives numba lacks: `load_u64` (an unaligned 8-byte load), `copy_bytes` (a checked memmove),
  `prefetch`, and `borrow` / `unref`, which keep numba's reference counting out of hot loops.
"""

from __future__ import annotations

import ctypes
import platform
import sys

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_XXH3_SYMBOL = "XXH3_128bits_withSeed"


def _register_xxh3() -> bool:
    try:
        import xxhash._xxhash as ext

        fn = getattr(ctypes.CDLL(ext.__file__), _XXH3_SYMBOL)
    except (ImportError, OSError, AttributeError):
        return False
    llvm.add_symbol(_XXH3_SYMBOL, ctypes.cast(fn, ctypes.c_void_p).value)
    return True


HAVE_XXH3 = _register_xxh3()


@intrinsic
def _xxh3_128_call(typingctx, ptr, n, seed):
    """XXH3_128bits_withSeed(ptr, n, seed) -> (low64, high64). The C function returns a {u64, u64} struct by value,
    which the x86-64 and AArch64 calling conventions return in two registers, as LLVM's {i64, i64} does."""
    sig = types.UniTuple(types.uint64, 2)(types.voidptr, types.intp, types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.LiteralStructType([i64, i64]), [ir.IntType(8).as_pointer(), i64, i64])
        result = builder.call(cgutils.get_or_insert_function(builder.module, fnty, _XXH3_SYMBOL), args)
        parts = [builder.extract_value(result, 0), builder.extract_value(result, 1)]
        return context.make_tuple(builder, signature.return_type, parts)

    return sig, codegen


@njit(cache=True)
def xxh3_128(data, seed):
    """(low 64 bits, high 64 bits) of XXH3-128 of a contiguous uint8 array, equal to `xxhash.xxh3_128_intdigest`."""
    return _xxh3_128_call(data.ctypes.data, data.shape[0], np.uint64(seed))


def _has_sse42() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return "+sse4.2" in llvm.get_host_cpu_features().flatten().split(",")


HAVE_CRC_INSTRUCTION = _has_sse42()
_LITTLE_ENDIAN = sys.byteorder == "little"


def _crc_instruction(width):
    """The SSE4.2 crc32 instruction on a `width`-bit operand as an intrinsic (crc, operand) -> crc."""
    @intrinsic
    def crc_step(typingctx, crc, word):
        sig = types.uint64(types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            i64, i32, op = ir.IntType(64), ir.IntType(32), ir.IntType(width)
            if width == 64:
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, i64]),
                                                    "llvm.x86.sse42.crc32.64.64")
                return builder.call(fn, args)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, op]),
                                                f"llvm.x86.sse42.crc32.32.{width}")
            out = builder.call(fn, [builder.trunc(args[0], i32), builder.trunc(args[1], op)])
            return builder.zext(out, i64)

        return sig, codegen

    return crc_step


_crc32c_u64, _crc32c_u8 = _crc_instruction(64), _crc_instruction(8)


def _crc_table() -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table[b] = c
    return table


_TABLE = _crc_table()


@njit(cache=True)
def _crc32c_bytes(crc, data, start, end):
    for i in range(start, end):
        crc = np.uint64(_TABLE[(crc ^ np.uint64(data[i])) & np.uint64(0xFF)]) ^ (crc >> np.uint64(8))
    return crc


# Three interleaved crc32 chains over 3 x 1360-byte blocks hide the instruction's 3-cycle latency (3x faster on a
# 4 KB page). Chains started at 0 are combined by the linear "append n zero bytes" map: crc(A|B|C) =
# zeros_2L(crc(A)) ^ zeros_L(crc(B)) ^ crc(C), each map a 4 x 256 table.
_BLOCK_WORDS = 170
_BLOCK = 8 * _BLOCK_WORDS


@njit(cache=True)
def _zero_shift_tables(nbytes):
    """T[k, b] = state after feeding `nbytes` zero bytes to the crc32 instruction from state b << 8k."""
    table = np.zeros((4, 256), np.uint32)
    for k in range(4):
        for b in range(256):
            crc = np.uint64(b) << np.uint64(8 * k)
            for _ in range(nbytes // 8):
                crc = _crc32c_u64(crc, np.uint64(0))
            table[k, b] = np.uint32(crc)
    return table


@njit(cache=True, inline="always")
def _shift(table, crc):
    return np.uint64(table[0, crc & np.uint64(0xFF)] ^ table[1, (crc >> np.uint64(8)) & np.uint64(0xFF)]
                     ^ table[2, (crc >> np.uint64(16)) & np.uint64(0xFF)] ^ table[3, crc >> np.uint64(24)])


@njit(cache=True, inline="always")
def _crc32c_hw(data, shift1, shift2):
    """Bytes in order: the part before the whole 3-block runs serially (8 bytes, then 1, per instruction), then the
    runs three chains at a time. Words are unaligned loads: no array view or alignment check per call."""
    n = data.shape[0]
    serial = n % (3 * _BLOCK)
    crc = np.uint64(0xFFFFFFFF)
    i = 0
    while i + 8 <= serial:
        crc = _crc32c_u64(crc, load_u64(data, i))
        i += 8
    while i < serial:
        crc = _crc32c_u8(crc, np.uint64(data[i]))
        i += 1
    for w in range(serial, n, 3 * _BLOCK):
        b = np.uint64(0)
        c = np.uint64(0)
        for k in range(w, w + _BLOCK, 8):
            crc = _crc32c_u64(crc, load_u64(data, k))
            b = _crc32c_u64(b, load_u64(data, k + _BLOCK))
            c = _crc32c_u64(c, load_u64(data, k + 2 * _BLOCK))
        crc = _shift(shift2, crc) ^ _shift(shift1, b) ^ c
    return np.uint32(crc ^ np.uint64(0xFFFFFFFF))


@njit(cache=True)
def _crc32c_sw(data):
    return np.uint32(_crc32c_bytes(np.uint64(0xFFFFFFFF), data, 0, data.shape[0]) ^ np.uint64(0xFFFFFFFF))


if HAVE_CRC_INSTRUCTION:
    _SHIFT1, _SHIFT2 = _zero_shift_tables(_BLOCK), _zero_shift_tables(2 * _BLOCK)

    @njit(cache=True, inline="always")
    def crc32c(data):
        """CRC-32C of a contiguous uint8 array, equal to `crc32c.crc32c(bytes)`."""
        return _crc32c_hw(data, _SHIFT1, _SHIFT2)
else:
    crc32c = _crc32c_sw


def _unowned(context, builder, ty, value):
    arr = cgutils.create_struct_proxy(ty)(context, builder, value=value)
    arr.meminfo = cgutils.get_null_value(arr.meminfo.type)
    arr.parent = cgutils.get_null_value(arr.parent.type)
    return arr._getvalue()


@intrinsic
def borrow(typingctx, arrays):
    """The same arrays (one, or a tuple of arrays and scalars) without their reference-count owner.

    Every view numba makes of an owned array increments and later decrements the owner's count with an atomic
    instruction; in a loop of small functions over many arrays those updates cost more than the work. Views of a
    borrowed array skip them. Only for arrays the caller keeps alive for as long as the borrowed ones are used
    (a compiled entry point borrowing its own arguments).
    """
    def unowned(context, builder, ty, value):
        if isinstance(ty, types.Array):
            return _unowned(context, builder, ty, value)
        if isinstance(ty, types.BaseTuple):
            parts = [unowned(context, builder, t, builder.extract_value(value, i)) for i, t in enumerate(ty)]
            return context.make_tuple(builder, ty, parts)
        context.nrt.incref(builder, ty, value)  # anything else is returned as a new reference, as numba expects
        return value

    def codegen(context, builder, signature, args):
        return unowned(context, builder, signature.args[0], args[0])

    return arrays(arrays), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to fetch the cache line holding array[index] (no effect on results): hides a DRAM miss behind
    the work done before the element is used."""
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        arr_ty, _ = signature.args
        arr = context.make_array(arr_ty)(context, builder, args[0])
        ptr = builder.gep(arr.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def _contiguous_bytes(array, any_rank=False) -> bool:
    return (isinstance(array, types.Array) and (any_rank or array.ndim == 1) and array.dtype == types.uint8
            and array.layout == "C")


@intrinsic
def load_u64(typingctx, array, start):
    """The 8 bytes at flat byte index `start` of a C-contiguous uint8 array (any rank) as a little-endian uint64,
    one unaligned load. No bounds check: the caller guarantees the 8 bytes lie inside the array's buffer (bytes
    past its end must be padding the caller allocated)."""
    if not _contiguous_bytes(array, any_rank=True):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(arr.data, [args[1]]), ir.IntType(64).as_pointer())
        word = builder.load(ptr, align=1)
        if not _LITTLE_ENDIAN:
            word = builder.call(cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(64), [ir.IntType(64)]), "llvm.bswap.i64"), [word])
        return word

    return types.uint64(array, start), codegen


@intrinsic
def _memmove(typingctx, dst, dst_start, src, src_start, n):
    if not (_contiguous_bytes(dst) and _contiguous_bytes(src)):
        return None

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        cgutils.raw_memmove(builder, builder.gep(d.data, [args[1]]), builder.gep(s.data, [args[3]]), args[4], 1)
        return context.get_dummy_value()

    return types.void(dst, dst_start, src, src_start, n), codegen


@njit(cache=True, inline="always")
def copy_bytes(dst, dst_start, src, src_start, n) -> None:
    """dst[dst_start:dst_start + n] = src[src_start:src_start + n] as one memmove (the ranges may overlap, as in
    packing a page in place). Out-of-range spans raise IndexError; numba's own slice copy is a checked byte loop
    several times slower."""
    if n <= 0:
        return
    if dst_start < 0 or src_start < 0 or dst_start + n > dst.shape[0] or src_start + n > src.shape[0]:
        raise IndexError("copy_bytes: span outside its array")
    _memmove(dst, dst_start, src, src_start, n)


def unref(fn):
    """`njit(cache=True)` without reference counting, for hot compiled functions that neither allocate arrays nor
    get new ones from their callees (views of their arguments are fine). Numba otherwise wraps every array a
    function binds, passes or slices in calls that increment and decrement its owner's count: tens of calls per
    request in the replay loop, more than the work itself. Compiling such a function with the runtime off drops
    them; one that tried to allocate fails to compile."""
    return njit(cache=True, _nrt=False)(fn)


def state_field(index: int, doc: str) -> property:
    """A Python attribute stored at `self.st[index]`: scalars that compiled code reads and updates in place (a
    plain attribute would be a copy it cannot see)."""
    def get(self) -> int:
        return int(self.st[index])

    def put(self, value: int) -> None:
        self.st[index] = value

    return property(get, put, doc=doc)
