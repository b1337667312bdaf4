"""Sizes and counts on the command line, one reading for every command (docs/cli.md).

Sizes: a number with an optional unit. K, M, G, T and KiB, MiB, GiB, TiB are binary (1M = 1 MiB = 2^20 B, as
memcached's -m and CacheLib's sizes are); KB, MB, GB, TB are decimal (1 MB = 10^6 B, as model files are quoted);
B or no unit means bytes. Counts: 10M, 250k, 1e6, 1_000_000 (decimal).
"""

from __future__ import annotations

import math
import re

from tierwise.common.errors import TierwiseError

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_COUNT = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes of `8M`, `1.5G`, `64MiB`, `17.3MB`, `4096`; a TierwiseError naming `what` otherwise."""
    if isinstance(text, int):
        return text
    m = _SIZE.fullmatch(str(text))
    if not m or (m.group(3).lower() == "i"):
        raise TierwiseError(f"{what}: cannot read {text!r} as a size; use a number with a unit, e.g. 8M, 1G, 512K "
                            "(K/M/G = KiB/MiB/GiB; KB/MB/GB are decimal)")
    prefix, suffix = m.group(2).lower(), m.group(3).lower()
    base = 1000 if suffix == "b" and prefix else 1024  # MB decimal; M, MiB binary
    value = float(m.group(1)) * base ** _POWER[prefix]
    if not math.isfinite(value):
        raise TierwiseError(f"{what}: {text!r} is too large")
    return int(value)


def parse_count(text: str | int, what: str = "count") -> int:
    """A positive whole number written `1000000`, `10M`, `250k` or `1e6`."""
    if isinstance(text, int):
        if text < 1:
            raise TierwiseError(f"{what}: {text} must be a positive whole number")
        return text
    t = str(text).strip().lower().replace("_", "")
    mult = _COUNT.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise TierwiseError(f"{what}: cannot read {text!r} as a count (examples: 1000000, 10M, 250k)") from None
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise TierwiseError(f"{what}: {text!r} must be a positive whole number")
    return int(value)


def format_bytes(n: float) -> str:
    """`24 MiB`, `1.5 GiB`, `512 B`: binary units, at most three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_size(n: int) -> str:
    """The shortest exact flag spelling of `n` bytes: `8M`, `64K`, `1536K`, `100` (parse_size reads it back)."""
    for power, suffix in ((4, "T"), (3, "G"), (2, "M"), (1, "K")):
        if n and n % 1024**power == 0:
            return f"{n // 1024**power}{suffix}"
    return str(n)
