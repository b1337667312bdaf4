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
- The C library's `pread`, `pwrite`, `ftruncate`, `ioctl` and `errno`, so compiled device code does its own I/O
  (registered with LLVM like XXH3, so functions calling them stay cacheable; ctypes functions would not).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import platform
import sys
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed, lower_getattr_generic
from numba.core.typing.templates import AttributeTemplate
from numba.extending import infer_getattr, intrinsic, models, register_model

from tierwise.common.compiled import serialise_cache_files

_XXH3_SYMBOL = "XXH3_128bits_withSeed"


def _drop_stale_compiled_code() -> None:
    """numba's on-disk cache keys a compiled function by its own source file only: after an edit to a function it
    calls in another file, the cached caller would go on running the old code. So when any source file of this
    package changed since the caches were written, drop them all (they are rebuilt on first use). A source tree
    that is not writable (an installed package) is left alone."""
    root = Path(__file__).parent
    digest = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        digest.update(f"{f.relative_to(root)}:{st.st_mtime_ns}:{st.st_size};".encode())
    stamp = root / "__pycache__" / "compiled-sources.sha1"
    try:
        if stamp.exists() and stamp.read_text() == digest.hexdigest():
            return
        for cached in [*root.rglob("*.nbi"), *root.rglob("*.nbc")]:
            cached.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:
        pass


serialise_cache_files()
_drop_stale_compiled_code()


def _register_xxh3() -> bool:
    try:
        import xxhash._xxhash as ext

        fn = getattr(ctypes.CDLL(ext.__file__), _XXH3_SYMBOL)
    except (ImportError, OSError, AttributeError):
        return False
    llvm.add_symbol(_XXH3_SYMBOL, ctypes.cast(fn, ctypes.c_void_p).value)
    return True


HAVE_XXH3 = _register_xxh3()
if not HAVE_XXH3:  # every engine hashes keys in compiled code with it
    raise ImportError("tierwise needs the xxhash package's C function XXH3_128bits_withSeed; this xxhash build does "
                      "not export it: reinstall xxhash>=3 from its PyPI wheels (pip install --force-reinstall xxhash)")


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


@njit(cache=True, inline="always")
def get_uint(buf, at, n):
    """The little-endian unsigned integer in buf[at:at + n] (n <= 8), as an int64."""
    v = np.int64(0)
    for i in range(n):
        v |= np.int64(buf[at + i]) << (8 * i)
    return v


@njit(cache=True, inline="always")
def put_uint(buf, at, v, n) -> None:
    """Store v as n little-endian bytes at buf[at]."""
    for i in range(n):
        buf[at + i] = (np.int64(v) >> (8 * i)) & 0xFF


def unref(fn):
    """`njit(cache=True)` without reference counting, for hot compiled functions that neither allocate arrays nor
    get new ones from their callees (views of their arguments are fine). Numba otherwise wraps every array a
    function binds, passes or slices in calls that increment and decrement its owner's count: tens of calls per
    request in the replay loop, more than the work itself. Compiling such a function with the runtime off drops
    them; one that tried to allocate fails to compile."""
    return njit(cache=True, _nrt=False)(fn)


def internal(fn=None, *, inline: bool = False):
    """`njit(cache=True)` for a function that only compiled code calls: numba then builds no Python-callable wrapper
    for it. With state bundles of dozens of arrays as arguments that wrapper alone costs seconds of compile time per
    function. `inline=True` inlines it into its callers (hot, small functions: no call with a large bundle)."""
    opts = dict(cache=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
    if inline:
        opts["inline"] = "always"
    return njit(**opts)(fn) if fn is not None else njit(**opts)


def state_field(index: int, doc: str) -> property:
    """A Python attribute stored at `self.st[index]`: scalars that compiled code reads and updates in place (a
    plain attribute would be a copy it cannot see)."""
    def get(self) -> int:
        return int(self.st[index])

    def put(self, value: int) -> None:
        self.st[index] = value

    return property(get, put, doc=doc)


# ---- the C library, for compiled device I/O -------------------------------------------------------------------------
_LIBC = ctypes.CDLL(None, use_errno=True)
for _name in ("pread", "pwrite", "ftruncate", "ioctl", "__errno_location"):
    llvm.add_symbol(f"tierwise_{_name}", ctypes.cast(getattr(_LIBC, _name), ctypes.c_void_p).value)


def _libc_codegen(name, pointer_args):
    """Code calling C `name` on integer arguments (those at `pointer_args` are addresses, passed as pointers; the
    first of a file-descriptor call is a C int); int results are sign-extended to int64."""
    def codegen(context, builder, signature, values):
        i64, i32, i8p = ir.IntType(64), ir.IntType(32), ir.IntType(8).as_pointer()
        params, actual = [], []
        for i, (ty, v) in enumerate(zip(signature.args, values)):
            v = context.cast(builder, v, ty, types.int64)
            if i in pointer_args:
                params.append(i8p)
                actual.append(builder.inttoptr(v, i8p))
            elif i == 0:
                params.append(i32)
                actual.append(builder.trunc(v, i32))
            else:
                params.append(i64)
                actual.append(v)
        ret = i32 if name in ("ftruncate", "ioctl") else i64
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, params), f"tierwise_{name}")
        out = builder.call(fn, actual)
        return builder.sext(out, i64) if ret is i32 else out

    return codegen


def _ints(*args) -> bool:
    return all(isinstance(a, types.Integer) for a in args)


@intrinsic
def sys_pread(typingctx, fd, addr, n, offset):
    """pread(fd, address, n, offset): bytes read, or -1 (see sys_errno)."""
    if _ints(fd, addr, n, offset):
        return types.int64(fd, addr, n, offset), _libc_codegen("pread", (1,))


@intrinsic
def sys_pwrite(typingctx, fd, addr, n, offset):
    """pwrite(fd, address, n, offset): bytes written, or -1."""
    if _ints(fd, addr, n, offset):
        return types.int64(fd, addr, n, offset), _libc_codegen("pwrite", (1,))


@intrinsic
def sys_ftruncate(typingctx, fd, length):
    """ftruncate(fd, length): 0, or -1."""
    if _ints(fd, length):
        return types.int64(fd, length), _libc_codegen("ftruncate", ())


@intrinsic
def sys_ioctl(typingctx, fd, request, addr):
    """ioctl(fd, request, address of the argument): the result, or -1."""
    if _ints(fd, request, addr):
        return types.int64(fd, request, addr), _libc_codegen("ioctl", (2,))


@intrinsic
def sys_errno(typingctx):
    """The calling thread's errno (after a failed sys_* call)."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32.as_pointer(), []),
                                            "tierwise___errno_location")
        return builder.sext(builder.load(builder.call(fn, [])), ir.IntType(64))

    return types.int64(), codegen


def address(array: np.ndarray) -> int:
    """The address of a numpy array's first byte (what compiled code gets from `array.ctypes.data`)."""
    return array.ctypes.data


_MAP_NORESERVE = 0x4000  # Linux; the mmap module has no name for it


def lazy_zeros(n: int, dtype) -> np.ndarray:
    """A zeroed array of n elements whose memory is only committed where it is touched (an anonymous mapping that
    reserves no swap): for pools sized to a worst case that a run rarely approaches. Freed with the last array
    over it."""
    dtype = np.dtype(dtype)
    size = max(1, n) * dtype.itemsize
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (_MAP_NORESERVE if sys.platform.startswith("linux") else 0)
    return np.frombuffer(mmap.mmap(-1, size, flags=flags), dtype)[:n]


# ---- state bundles by reference ---------------------------------------------------------------------------------------
# A design's state is a bundle: a namedtuple of arrays, numbers and smaller bundles. Numba passes a namedtuple to a
# function by value, field by field: with dozens of arrays that is hundreds of words per call (and, in functions
# built with reference counting, an atomic count update per array); measured, a call cost ~100x a pointer's. So a
# bundle is *pinned*: written once (its arrays borrowed, see `borrow`) into a small byte array, its arena, and
# compiled functions take a `Ref` to it: one pointer per call. `ref.name` reads a field where it lies: an array or
# a number as its value, a member bundle as a Ref to it. Code reads the same as on the namedtuple itself.

class Ref(types.Type):
    """A pointer to a pinned bundle (numba type); attribute access as on the bundle (see above)."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Ref[{dtype}]")


@register_model(Ref)
class _RefModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, dmm.lookup(fe_type.dtype).get_value_type().as_pointer())


@infer_getattr
class _RefAttributes(AttributeTemplate):
    key = Ref

    def generic_resolve(self, typ, attr):
        bundle = typ.dtype
        if attr in bundle.fields:
            field = bundle.types[bundle.fields.index(attr)]
            return Ref(field) if isinstance(field, types.BaseNamedTuple) else field
        return None


@lower_getattr_generic(Ref)
def _ref_getattr(context, builder, typ, value, attr):
    bundle = typ.dtype
    index = bundle.fields.index(attr)
    field = bundle.types[index]
    ptr = builder.gep(value, [context.get_constant(types.int32, 0), context.get_constant(types.int32, index)])
    if isinstance(field, types.BaseNamedTuple):
        return ptr
    return impl_ret_borrowed(context, builder, field, builder.load(ptr))


@intrinsic
def _store_bundle(typingctx, value, arena):
    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[1])(context, builder, args[1])
        builder.store(args[0], builder.bitcast(arr.data, context.get_value_type(sig.args[0]).as_pointer()))
        return context.get_dummy_value()

    return types.void(value, arena), codegen


@intrinsic
def _bundle_size(typingctx, value):
    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, context.get_abi_sizeof(context.get_value_type(sig.args[0])))

    return types.intp(value), codegen


@intrinsic
def ref_of(typingctx, arena, like):
    """The Ref of the bundle pinned in `arena`; `like` is any bundle of the same type (it gives the type)."""
    if not isinstance(like, types.BaseNamedTuple):
        return None

    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.bitcast(arr.data, context.get_value_type(sig.args[1]).as_pointer())

    return Ref(like)(arena, like), codegen


# Not cached: numba's cache index pickles the bundle types it was compiled for, and a type from a module that is
# not importable later (a test's namedtuple, say) would make the whole index unreadable. They compile in ~0.1 s.
@njit
def _pin(value, arena):
    _store_bundle(borrow(value), arena)


@njit
def _size(value):
    return _bundle_size(value)


class Pinned:
    """A bundle and its arena: compiled entry points take (arena, bundle) and make the Ref with `ref_of`. The
    bundle's arrays must live as long as the arena is used (this object keeps them)."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.arena = np.zeros(_size(bundle), np.uint8)
        _pin(bundle, self.arena)


def compiled_only(name: str) -> TypeError:
    """The error of a dispatcher that numba resolves through an @overload (by the state type of its first argument)
    when it is called from Python, where there is nothing to dispatch on."""
    return TypeError(f"{name} dispatches inside compiled code only; from Python use the engine's methods")
