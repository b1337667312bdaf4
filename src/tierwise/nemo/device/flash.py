"""The one implementation of device I/O and of the zone state machine, compiled: every engine's request path and
the Python `ZonedDevice` API both go through these functions.

A device is a `Flash` bundle of plain values and numpy arrays, whatever its backend (`kind`):
- MEM: every zone in one anonymous mapping (`data`, zone z at [z * zone_cap, (z + 1) * zone_cap)).
- FILE: one file per zone (file length = write pointer), all mapped read-only into `data` the same way; writes
  are `pwrite`s to the zone's file, resets and finishes `ftruncate`s, so what a crash leaves is what was written.
- SYSCALL: a real zoned block device: `pread` / `pwrite` (O_DIRECT, through the page-aligned `stage`) and the
  kernel's zone ioctls; no mapping, so reads land in a buffer the caller gives.
- BLOCK: a conventional SSD (`ftl`): "zones" are segments the engines fill sequentially and reset (trim); pages
  may also be rewritten in place (`write_at`), and the FTL model underneath counts NAND programs.

Zone rules (the kernel's zoned block model): writes are whole blocks at the write pointer and within the zone
capacity; a write to an EMPTY or CLOSED zone opens it implicitly, closing another implicitly opened zone when the
open limit is reached; reads stay below the write pointer. A broken rule or a failed system call raises
`DeviceFault` after recording what happened in `err`, which the Python layer turns into a `ZoneError` (or
`SimulatedCrash`) naming the zone and the rule.

Every operation updates the counters (`stats`, `zone_stats`) and the timing model (`timing`).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from tierwise.nemo.device import ftl as ftl_model
from tierwise.nemo.device import timing
from tierwise.nemo.native import copy_bytes, internal, sys_errno, sys_ftruncate, sys_ioctl, sys_pread, sys_pwrite

MEM, FILE, SYSCALL, BLOCK = range(4)

# zone conditions (the kernel's BLK_ZONE_COND_*)
EMPTY, IMP_OPEN, EXP_OPEN, CLOSED, FULL = 0x1, 0x2, 0x3, 0x4, 0xE

# stats: device totals
BYTES_WRITTEN, BYTES_READ, WRITE_IOS, READ_IOS, RESETS, FINISHES = range(6)
# zone_stats rows: per-zone counts
Z_WRITTEN, Z_READ, Z_RESETS, Z_FINISHES = range(4)

# fault: the fault-injection plan of a FILE device (tierwise.nemo.device.file.FaultPlan) and its progress
CRASH_AFTER, TORN, SEED, CRASH_BEFORE_RESET, WRITTEN_TOTAL, RESETS_SEEN, DEAD = range(7)  # DEAD: crashed or closed
TORN_DROP, TORN_ZEROS, TORN_GARBAGE = range(3)

# err: what went wrong: [code, zone, a number (offset, length or errno), another]
(E_NONE, E_ZONE_RANGE, E_CLOSED, E_FULL, E_LENGTH, E_CAPACITY, E_READ_RANGE, E_ACTIVE_LIMIT, E_OPEN_LIMIT, E_NOT_OPEN,
 E_OPEN_FULL, E_IO, E_CRASH_WRITE, E_CRASH_RESET, E_SHORT, E_BLOCK_ONLY, E_BLOCK_RANGE) = range(17)

# zone management ioctls: _IOW(0x12, 131 / 134 / 135 / 136, struct blk_zone_range) (include/uapi/linux/blkzoned.h)
BLKRESETZONE, BLKOPENZONE, BLKCLOSEZONE, BLKFINISHZONE = 0x40101283, 0x40101286, 0x40101287, 0x40101288

Flash = namedtuple("Flash", [
    "kind",  # MEM, FILE, SYSCALL or BLOCK
    "num_zones", "zone_size", "zone_cap", "block",  # geometry in bytes
    "max_open", "max_active",  # zone limits, 0 = none
    "data",  # uint8[num_zones * zone_cap]: the mapped zones (empty for SYSCALL)
    "wp",  # int64[num_zones]: write pointers (bytes)
    "cond",  # int64[num_zones]: zone conditions
    "stats",  # int64[6]: device totals
    "zone_stats",  # int64[4, num_zones]: per-zone written / read bytes, resets, finishes
    "fds",  # int64[num_zones]: FILE: each zone's file; SYSCALL: the device fd in [0]
    "starts",  # int64[num_zones]: SYSCALL: each zone's byte offset on the device
    "stage",  # uint8[...]: page-aligned staging buffer (O_DIRECT writes, unaligned SYSCALL reads)
    "direct",  # FILE: 1 = zone files are O_DIRECT (writes go through `stage`)
    "fault",  # int64[7]: fault injection (FILE)
    "err",  # int64[5]: the last fault: code, zone and up to three numbers
    "ftl",  # ftl.Ftl: the FTL of a BLOCK device (empty otherwise)
    "timing",  # timing.Timing
    "range_arg",  # int64[2]: the struct blk_zone_range of a zone ioctl
])


class DeviceFault(Exception):
    """Raised by compiled device code; `Flash.err` says what happened (the Python layer re-raises it as a
    ZoneError or SimulatedCrash with the details)."""


@internal
def _fail(F, code, zone, a, b):
    F.err[0] = code
    F.err[1] = zone
    F.err[2] = a
    F.err[3] = b
    raise DeviceFault("device fault")


# ---- open / active accounting ---------------------------------------------------------------------------------------

@internal
def _count(F, active):
    """Open zones, or (active) open and closed ones."""
    n = 0
    for z in range(F.num_zones):
        c = F.cond[z]
        if c == IMP_OPEN or c == EXP_OPEN or (active and c == CLOSED):
            n += 1
    return n


@internal
def _zone_ioctl(F, request, z):
    F.range_arg[0] = F.starts[z] // 512
    F.range_arg[1] = F.zone_size // 512
    if sys_ioctl(F.fds[0], request, F.range_arg.ctypes.data) < 0:
        _fail(F, E_IO, z, sys_errno(), request)


@internal
def _make_room_to_open(F, z):
    """Before zone z (not open) opens: check the active limit, implicitly close an IMP_OPEN zone at the open
    limit (as a ZNS controller does)."""
    if F.cond[z] == EMPTY and F.max_active and _count(F, True) >= F.max_active:
        _fail(F, E_ACTIVE_LIMIT, z, F.max_active, 0)
    if F.max_open and _count(F, False) >= F.max_open:
        victim = -1
        for i in range(F.num_zones):
            if F.cond[i] == IMP_OPEN:
                victim = i
                break
        if victim < 0:
            _fail(F, E_OPEN_LIMIT, z, F.max_open, 0)
        if F.kind == SYSCALL:
            _zone_ioctl(F, BLKCLOSEZONE, victim)
        F.cond[victim] = CLOSED


@internal(inline=True)
def _check_zone(F, z):
    if F.fault[DEAD]:
        _fail(F, E_CLOSED, z, 0, 0)
    if z < 0 or z >= F.num_zones:
        _fail(F, E_ZONE_RANGE, z, F.num_zones, 0)


# ---- writes ---------------------------------------------------------------------------------------------------------

@internal
def _garbage(seed, i):
    x = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(i) * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return np.uint8(x & np.uint64(0xFF))


@internal
def _pwrite_all(F, fd, src, start, n, offset, z):
    """Write src[start:start + n] at `offset` of `fd` (through `stage` when direct I/O needs aligned memory)."""
    done = 0
    while done < n:
        if F.direct or F.kind == SYSCALL:
            chunk = min(n - done, F.stage.shape[0])
            copy_bytes(F.stage, 0, src, start + done, chunk)
            got = sys_pwrite(fd, F.stage.ctypes.data, chunk, offset + done)
        else:
            got = sys_pwrite(fd, src.ctypes.data + start + done, n - done, offset + done)
        if got <= 0:
            _fail(F, E_IO, z, sys_errno(), n)
        done += got


@internal
def _torn_write(F, z, src, start, n, wp):
    """The write that crosses the fault plan's byte limit: only its first bytes reach the zone file."""
    keep = F.fault[CRASH_AFTER] - F.fault[WRITTEN_TOTAL]
    whole = keep - keep % F.block
    if whole:
        _pwrite_all(F, F.fds[z], src, start, whole, wp, z)
    partial = keep - whole
    if partial and F.fault[TORN] != TORN_DROP:
        page = F.stage[:F.block]
        copy_bytes(page, 0, src, start + whole, partial)
        for i in range(partial, F.block):
            page[i] = 0 if F.fault[TORN] == TORN_ZEROS else _garbage(F.fault[SEED], i)
        sys_pwrite(F.fds[z], page.ctypes.data, F.block, wp + whole)
    F.fault[DEAD] = 1
    F.err[4] = n
    _fail(F, E_CRASH_WRITE, z, wp, keep)


@internal
def _store(F, z, src, start, n, wp):
    """Put src[start:start + n] at byte `wp` of zone z, by backend."""
    if F.kind == FILE:
        if F.fault[CRASH_AFTER] >= 0 and F.fault[WRITTEN_TOTAL] + n > F.fault[CRASH_AFTER]:
            _torn_write(F, z, src, start, n, wp)
        _pwrite_all(F, F.fds[z], src, start, n, wp, z)
        F.fault[WRITTEN_TOTAL] += n
    elif F.kind == SYSCALL:
        _pwrite_all(F, F.fds[0], src, start, n, F.starts[z] + wp, z)
    else:
        copy_bytes(F.data, z * F.zone_cap + wp, src, start, n)
        if F.kind == BLOCK:
            ftl_model.program(F.ftl, F.timing, (z * F.zone_cap + wp) // F.block, n // F.block)


@internal
def append(F, z, src, start, n):
    """Write src[start:start + n] (whole blocks) at the write pointer of zone z; returns the byte offset in the
    zone where it landed."""
    _check_zone(F, z)
    cond = F.cond[z]
    if cond == FULL:
        _fail(F, E_FULL, z, 0, 0)
    if n <= 0 or n % F.block:
        _fail(F, E_LENGTH, z, n, F.block)
    wp = F.wp[z]
    if wp + n > F.zone_cap:
        _fail(F, E_CAPACITY, z, n, wp)
    if cond != IMP_OPEN and cond != EXP_OPEN:
        _make_room_to_open(F, z)
        F.cond[z] = IMP_OPEN
    _store(F, z, src, start, n, wp)
    F.wp[z] = wp + n
    if wp + n == F.zone_cap:
        F.cond[z] = FULL
    F.stats[BYTES_WRITTEN] += n
    F.stats[WRITE_IOS] += 1
    F.zone_stats[Z_WRITTEN, z] += n
    if F.kind != BLOCK:  # the FTL reports its own NAND programs
        timing.program_pages(F.timing, z, wp // F.block, n // F.block)
    return wp


@internal
def write_at(F, offset, src, start, n):
    """A conventional (BLOCK) device only: overwrite whole pages at byte `offset` of the logical space in place."""
    if F.kind != BLOCK:
        _fail(F, E_BLOCK_ONLY, -1, offset, n)
    if offset < 0 or n <= 0 or offset % F.block or n % F.block or offset + n > F.data.shape[0]:
        _fail(F, E_BLOCK_RANGE, -1, offset, n)
    copy_bytes(F.data, offset, src, start, n)
    ftl_model.program(F.ftl, F.timing, offset // F.block, n // F.block)
    F.stats[BYTES_WRITTEN] += n
    F.stats[WRITE_IOS] += 1
    F.zone_stats[Z_WRITTEN, offset // F.zone_cap] += n


@internal
def trim(F, offset, n):
    """A conventional (BLOCK) device only: drop whole pages (the FTL stops copying them; they read as zeros)."""
    if F.kind != BLOCK:
        _fail(F, E_BLOCK_ONLY, -1, offset, n)
    if offset < 0 or n <= 0 or offset % F.block or n % F.block or offset + n > F.data.shape[0]:
        _fail(F, E_BLOCK_RANGE, -1, offset, n)
    ftl_model.trim(F.ftl, offset // F.block, n // F.block)
    F.data[offset:offset + n] = 0


# ---- reads ----------------------------------------------------------------------------------------------------------

@internal(inline=True)
def _check_read(F, z, offset, n):
    _check_zone(F, z)
    # a conventional device reads anywhere (pages rewritten in place lie beyond any segment's write pointer)
    limit = F.zone_cap if F.cond[z] == FULL or F.kind == BLOCK else F.wp[z]
    if n <= 0 or offset < 0 or offset + n > limit:
        _fail(F, E_READ_RANGE, z, offset, n)


@internal
def _count_read(F, z, offset, n, foreground):
    F.stats[BYTES_READ] += n
    F.stats[READ_IOS] += 1
    F.zone_stats[Z_READ, z] += n
    if F.timing.p[timing.ENABLED]:
        for page in range(offset // F.block, (offset + n - 1) // F.block + 1):
            if F.kind == BLOCK:
                blk, p = ftl_model.physical_block(F.ftl, (z * F.zone_cap) // F.block + page)
                if blk < 0:
                    continue  # never written: the FTL answers without touching NAND
                unit, page = blk, p
            else:
                unit = z
            if foreground:
                timing.read(F.timing, unit, page)
            else:
                timing.background_read(F.timing, unit, page)


@internal
def _pread_into(F, z, offset, n, out):
    """SYSCALL: read into out[:n] (page-aligned memory and range: straight; otherwise through `stage`)."""
    fd, base = F.fds[0], F.starts[z]
    b = F.block
    if offset % b == 0 and n % b == 0 and out.ctypes.data % b == 0:
        got = sys_pread(fd, out.ctypes.data, n, base + offset)
        if got != n:
            _fail(F, E_IO if got < 0 else E_SHORT, z, sys_errno() if got < 0 else offset, n)
        return
    lo = offset - offset % b
    hi = (offset + n + b - 1) // b * b
    done = 0
    while lo + done < hi:  # through the stage, a stage's worth at a time
        chunk = min(hi - lo - done, F.stage.shape[0])
        got = sys_pread(fd, F.stage.ctypes.data, chunk, base + lo + done)
        if got != chunk:
            _fail(F, E_IO if got < 0 else E_SHORT, z, sys_errno() if got < 0 else offset, n)
        first = max(offset, lo + done)
        last = min(offset + n, lo + done + chunk)
        copy_bytes(out, first - offset, F.stage, first - lo - done, last - first)
        done += chunk


@internal
def read(F, z, offset, n, scratch, foreground):
    """n bytes at `offset` of zone z (below the write pointer): a view of the mapped device, or (SYSCALL) of
    `scratch`, into which they are read. `foreground`: the current request waits for this read (its latency)."""
    _check_read(F, z, offset, n)
    _count_read(F, z, offset, n, foreground)
    if F.kind == SYSCALL:
        _pread_into(F, z, offset, n, scratch)
        return scratch[:n]
    base = z * F.zone_cap + offset
    return F.data[base:base + n]


@internal
def read_into(F, z, offset, out, foreground):
    """Read len(out) bytes at `offset` of zone z into `out` (a copy, on every backend)."""
    n = out.shape[0]
    _check_read(F, z, offset, n)
    _count_read(F, z, offset, n, foreground)
    if F.kind == SYSCALL:
        _pread_into(F, z, offset, n, out)
    else:
        copy_bytes(out, 0, F.data, z * F.zone_cap + offset, n)


# ---- zone management ------------------------------------------------------------------------------------------------

@internal
def reset(F, z):
    """Rewind zone z's write pointer to 0 and drop its data (EMPTY)."""
    _check_zone(F, z)
    if F.kind == FILE:
        if F.fault[CRASH_BEFORE_RESET] > 0:
            F.fault[RESETS_SEEN] += 1
            if F.fault[RESETS_SEEN] == F.fault[CRASH_BEFORE_RESET]:
                F.fault[DEAD] = 1
                _fail(F, E_CRASH_RESET, z, F.fault[RESETS_SEEN], 0)
        if sys_ftruncate(F.fds[z], 0) < 0:
            _fail(F, E_IO, z, sys_errno(), 0)
    elif F.kind == SYSCALL:
        _zone_ioctl(F, BLKRESETZONE, z)
    elif F.kind == BLOCK:  # a segment: trim it
        written = F.zone_cap if F.cond[z] == FULL else F.wp[z]
        if written:
            trim(F, z * F.zone_cap, F.zone_cap)
    erased = F.zone_cap if F.cond[z] == FULL else F.wp[z]
    F.wp[z] = 0
    F.cond[z] = EMPTY
    F.stats[RESETS] += 1
    F.zone_stats[Z_RESETS, z] += 1
    if F.kind != BLOCK and erased:  # the FTL erases blocks in its GC instead
        timing.erase(F.timing, z, erased // F.block)


@internal
def finish(F, z):
    """Move zone z to FULL (no more writes until reset); its unwritten tail reads as zeros."""
    _check_zone(F, z)
    if F.cond[z] == FULL:
        return
    if F.kind == FILE:
        if sys_ftruncate(F.fds[z], F.zone_cap) < 0:  # sparse: the tail reads as zeros
            _fail(F, E_IO, z, sys_errno(), 0)
    elif F.kind == SYSCALL:
        _zone_ioctl(F, BLKFINISHZONE, z)
    else:
        base = z * F.zone_cap
        F.data[base + F.wp[z]:base + F.zone_cap] = 0
    F.cond[z] = FULL
    F.stats[FINISHES] += 1
    F.zone_stats[Z_FINISHES, z] += 1


@internal
def open_zone(F, z):
    """Explicitly open zone z (EXP_OPEN); counts against the open and active limits."""
    _check_zone(F, z)
    cond = F.cond[z]
    if cond == EXP_OPEN:
        return
    if cond == FULL:
        _fail(F, E_OPEN_FULL, z, 0, 0)
    if cond != IMP_OPEN:
        _make_room_to_open(F, z)
    if F.kind == SYSCALL:
        _zone_ioctl(F, BLKOPENZONE, z)
    F.cond[z] = EXP_OPEN


@internal
def close_zone(F, z):
    """Close an open zone (CLOSED; EMPTY again if nothing was written); closing a CLOSED zone is a no-op."""
    _check_zone(F, z)
    cond = F.cond[z]
    if cond == CLOSED:
        return
    if cond != IMP_OPEN and cond != EXP_OPEN:
        _fail(F, E_NOT_OPEN, z, cond, 0)
    if F.kind == SYSCALL:
        _zone_ioctl(F, BLKCLOSEZONE, z)
    F.cond[z] = CLOSED if F.wp[z] else EMPTY
