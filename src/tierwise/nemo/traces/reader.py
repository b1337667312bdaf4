"""What every trace reader shares: fixed-size output chunks, request counting, and bad-line handling for text
traces (plain, `.zst` or `.gz`), so a format module only says how one line or record becomes requests."""

from __future__ import annotations

import gzip
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import numpy as np
import xxhash
import zstandard

from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces.request import MAX_KEY_SIZE, MAX_TIME, REQUEST_DTYPE

DEFAULT_CHUNK = 1 << 16
_MAX_VALUE = (1 << 32) - 1
_MAX_TTL = (1 << 31) - 1
_BAD_EXAMPLES = 5  # how many skipped-line messages to keep for the report


def key_id(key: str) -> int:
    """64-bit id of a textual key (trace keys are anonymised strings or hex digests; hash them all the same way)."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogateescape"))


class TraceReader(ABC):
    """Iterate a trace as `REQUEST_DTYPE` chunks of exactly `chunk_size` requests (the last may be shorter).

    After (or during) iteration: `requests` = requests yielded, `bad_lines` = malformed lines or records skipped
    (with `skip_bad=True`; otherwise the first one raises `TierwiseError` naming the file and line), and
    `bad_examples` = the first few of those messages.
    """

    format: str = ""
    skip_hint: str = "skip_bad=True"  # how the caller asks to skip bad lines; a CLI with --skip-bad says so

    def __init__(self, path: str | Path, *, chunk_size: int = DEFAULT_CHUNK, skip_bad: bool = False):
        if chunk_size <= 0:
            raise TierwiseError(f"chunk_size must be positive, got {chunk_size}")
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.skip_bad = skip_bad
        self.requests = 0
        self.bad_lines = 0
        self.bad_examples: list[str] = []

    @abstractmethod
    def _blocks(self) -> Iterator[np.ndarray]:
        """Yield the trace as REQUEST_DTYPE arrays of any length."""

    def __iter__(self) -> Iterator[np.ndarray]:
        self.requests = self.bad_lines = 0
        self.bad_examples = []
        pending: list[np.ndarray] = []
        have = 0
        for block in self._blocks():
            pending.append(block)
            have += len(block)
            if have < self.chunk_size:
                continue
            joined = np.concatenate(pending) if len(pending) > 1 else block
            cut = have - have % self.chunk_size
            for i in range(0, cut, self.chunk_size):
                self.requests += self.chunk_size
                yield joined[i:i + self.chunk_size]
            pending = [joined[cut:]] if cut < have else []
            have -= cut
        if have:
            self.requests += have
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]

    def __next__(self) -> np.ndarray:
        """`next(reader)` works too: one pass shared by successive calls (each `for` loop starts a fresh pass)."""
        if getattr(self, "_pass", None) is None:
            self._pass = iter(self)
        return next(self._pass)

    def bad(self, where: str, message: str) -> None:
        """A malformed line or record: raise, or count and skip with `skip_bad`."""
        text = f"{self.path}:{where}: {message}"
        if not self.skip_bad:
            raise TierwiseError(f"{text} ({self.skip_hint} counts and skips malformed lines or records)")
        self.bad_lines += 1
        if len(self.bad_examples) < _BAD_EXAMPLES:
            self.bad_examples.append(text)


class BinaryTraceReader(TraceReader):
    """Fixed-size little-endian records after an optional magic: `_convert` maps a record array to requests."""

    record: np.dtype
    magic: bytes = b""

    @abstractmethod
    def _convert(self, recs: np.ndarray, first: int) -> np.ndarray:
        """Requests of records `recs` (record numbers start at `first`)."""

    def _blocks(self) -> Iterator[np.ndarray]:
        try:
            size = self.path.stat().st_size
            f = open(self.path, "rb")
        except OSError as e:
            raise TierwiseError(f"cannot open trace {self.path}: {e.strerror}") from None
        with f:
            if self.magic and f.read(len(self.magic)) != self.magic:
                raise TierwiseError(f"{self.path}:byte 0: not a {self.format} trace (bad magic, expected "
                                    f"{self.magic!r})")
            body = size - len(self.magic)
            whole = body // self.record.itemsize
            torn = body % self.record.itemsize

            def report_torn() -> None:
                self.bad(f"byte {len(self.magic) + whole * self.record.itemsize}",
                         f"file size is not a whole number of {self.record.itemsize}-byte records: "
                         "truncated last record")

            if torn and not whole:
                report_torn()
            done = 0
            while done < whole:
                recs = np.fromfile(f, dtype=self.record, count=min(self.chunk_size, whole - done))
                block = self._convert(recs, done)  # a bad record in the first chunk is reported first...
                if torn and not done:
                    report_torn()  # ...then a torn tail, before any request is replayed
                yield block
                done += len(recs)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


def compression(path: Path) -> str:
    """'zst', 'gz' or '' for a file, from its first bytes (the name is not trusted)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TierwiseError(f"cannot open trace {path}: {e.strerror}") from None
    return "zst" if head == ZSTD_MAGIC else "gz" if head[:2] == GZIP_MAGIC else ""


def open_text(path: Path) -> io.TextIOBase:
    """Open a plain, zstd or gzip text trace for streaming (compression told by the content, not the name)."""
    kind = compression(path)
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise TierwiseError(f"cannot open trace {path}: {e.strerror}") from None
    if kind == "zst":
        raw = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    elif kind == "gz":
        raw = gzip.GzipFile(fileobj=raw)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")


class CsvTraceReader(TraceReader):
    """Line-oriented CSV traces: `_parse` turns one raw line into (op, key id, key size, value size, ttl, count,
    time) or raises ValueError saying what is wrong; the rest (header, chunking, range checks, line numbers,
    skipping) is here. Range checks run vectorised per block, keeping the per-line Python work small."""

    header: bool = False  # the first line is a header handed to `_read_header`

    def _read_header(self, fields: list[str]) -> None:
        """Formats with a header parse it here (raise ValueError if it is not one)."""

    @abstractmethod
    def _parse(self, line: str) -> tuple[int, int, int, int, int, int, int]:
        ...

    def _blocks(self) -> Iterator[np.ndarray]:
        rows: list[tuple[int, int, int, int, int, int, int]] = []
        lines: list[int] = []
        with open_text(self.path) as f:
            try:
                first = 1
                if self.header:
                    try:
                        self._read_header(f.readline().rstrip("\r\n").split(","))
                    except ValueError as e:
                        raise TierwiseError(f"{self.path}:1: {e}") from None
                    first = 2
                parse = self._parse
                for lineno, line in enumerate(f, first):
                    try:
                        rows.append(parse(line))
                    except (ValueError, IndexError) as e:
                        if line.strip():  # blank lines are skipped silently
                            self.bad(str(lineno), f"{e}: {line.rstrip()[:200]!r}")
                        continue
                    lines.append(lineno)
                    if len(rows) >= self.chunk_size:
                        yield self._to_block(rows, lines)
                        rows, lines = [], []
            except (zstandard.ZstdError, EOFError, gzip.BadGzipFile, OSError) as e:
                raise TierwiseError(f"{self.path}: corrupt or truncated compressed trace ({e})") from None
        if rows:
            yield self._to_block(rows, lines)

    def _to_block(self, rows: list, lines: list[int]) -> np.ndarray:
        try:
            ks, vs, ttl, count, t = (np.array(c, dtype=np.int64) for c in list(zip(*rows))[2:])
            out_of_range = ((ks < 0) | (ks > MAX_KEY_SIZE) | (vs < 0) | (vs > _MAX_VALUE) | (ttl < -_MAX_TTL)
                            | (ttl > _MAX_TTL) | (count < 1) | (t < 0) | (t > MAX_TIME))
            bad = np.flatnonzero(out_of_range).tolist()
        except OverflowError:  # a number beyond 64 bits: find it row by row
            bad = [i for i, row in enumerate(rows) if range_error(row)]
        if bad:
            for i in bad:
                self.bad(str(lines[i]), range_error(rows[i]))
            drop = set(bad)
            rows = [row for i, row in enumerate(rows) if i not in drop]
        return rows_to_block(rows)


def range_error(row: tuple[int, int, int, int, int, int, int]) -> str:
    """What is out of range in a parsed row ('' if nothing): a bad field must not wrap silently into the
    request's fixed-width columns."""
    _, _, key_size, value_size, ttl, count, time = row
    if not 0 <= key_size <= MAX_KEY_SIZE:
        return f"key size {key_size} outside [0, {MAX_KEY_SIZE}]"
    if not 0 <= value_size <= _MAX_VALUE:
        return f"value size {value_size} outside [0, {_MAX_VALUE}]"
    if not -_MAX_TTL <= ttl <= _MAX_TTL:
        return f"ttl {ttl} outside the 32-bit range"
    if count < 1:
        return f"op_count {count} < 1"
    if not 0 <= time <= MAX_TIME:
        return f"timestamp {time} outside [0, {MAX_TIME}] seconds"
    return ""


def rows_to_block(rows: list[tuple[int, int, int, int, int, int, int]]) -> np.ndarray:
    """(op, key, key_size, value_size, ttl, count, time) rows -> requests, each row repeated `count` times."""
    if not rows:
        return np.empty(0, dtype=REQUEST_DTYPE)
    cols = list(zip(*rows))
    out = np.empty(len(rows), dtype=REQUEST_DTYPE)
    for name, col in zip(("op", "key", "key_size", "value_size", "ttl"), cols):
        out[name] = np.array(col, dtype=REQUEST_DTYPE[name])
    out["time"] = np.array(cols[6], dtype=REQUEST_DTYPE["time"])
    counts = np.array(cols[5], dtype=np.int64)
    return out if (counts == 1).all() else np.repeat(out, counts)
