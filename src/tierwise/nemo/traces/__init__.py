"""Key-value traces as one request stream: `open_trace(spec)` yields REQUEST_DTYPE chunks from a Twitter CSV,
a Meta KV CSV, a libCacheSim oracleGeneral file, a tierwise `.req` file, or the synthetic generator."""

from __future__ import annotations

from pathlib import Path

from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces.metakv import MetaKVReader, write_cachebench_csv
from tierwise.nemo.traces.native import MAGICS, RequestFileReader, write_requests
from tierwise.nemo.traces.oracle import OracleGeneralReader, sniff_oracle, write_oracle
from tierwise.nemo.traces.reader import DEFAULT_CHUNK, TraceReader, compression, open_text
from tierwise.nemo.traces.request import REQUEST_DTYPE, Op, Request, iter_requests, key_bytes, keys_of
from tierwise.nemo.traces.stats import trace_stats, zipf_alpha
from tierwise.nemo.traces.synth import PROFILES, SyntheticTrace, parse_synth_spec
from tierwise.nemo.traces.twitter import TwitterReader

__all__ = ["DEFAULT_CHUNK", "FORMATS", "Op", "PROFILES", "REQUEST_DTYPE", "Request", "SyntheticTrace", "TraceReader",
           "detect_format", "iter_requests", "key_bytes", "keys_of", "open_trace", "trace_stats", "write_trace",
           "zipf_alpha"]

FORMATS = {"twitter": TwitterReader, "metakv": MetaKVReader, "oracle": OracleGeneralReader,
           "requests": RequestFileReader}


FORCE_HINT = ("force the format with --format FORMAT (Python: format=FORMAT; a bench/sweep trace: FORMAT:PATH), "
              f"FORMAT one of {', '.join(FORMATS)}")
_HEAD = 4096  # bytes looked at to tell text from binary
_MAX_LINE = 1 << 16  # longest first line read when sniffing a text trace


def _csv_format(first: str) -> str:
    """metakv / twitter from a CSV trace's first line, '' if it is neither."""
    fields = [f.strip().lower() for f in first.split(",")]
    if {"key", "op"} <= set(fields) or {"fbid", "size"} <= set(fields):
        return "metakv"
    if len(fields) >= 7 and fields[0].isdigit():
        return "twitter"
    return ""


def detect_format(path: Path) -> str:
    """A trace file's format from its content; the name is never trusted.

    In order: the tierwise `.req` magic -> requests; zstd/gzip magic -> the decompressed first line; text (no NUL
    byte in the first 4 KiB) whose first line is a Meta KV header (`key` and `op`, or `fbid` and `size`) ->
    metakv, or 7+ comma-separated fields starting with a number -> twitter (other text is refused); binary
    whose first 24-byte records are valid oracleGeneral (`sniff_oracle`) -> oracle. Anything else raises
    TierwiseError saying why and how to force the format.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError as e:
        raise TierwiseError(f"cannot read trace {path}: {e.strerror}") from None
    if head[:len(MAGICS[0])] in MAGICS:
        return "requests"
    packed = compression(path)
    first = ""
    if packed or b"\0" not in head:
        try:
            with open_text(path) as f:
                first = f.readline(_MAX_LINE).strip()
        except TierwiseError:
            raise
        except Exception as e:  # zstd/gzip decoders raise their own error types on corrupt input
            raise TierwiseError(f"cannot read trace {path}: {e}") from None
        fmt = _csv_format(first)
        if fmt:
            return fmt
        what = f"a {packed}-compressed file" if packed else "a text file (no NUL byte in its first 4 KiB, so " \
            "not oracleGeneral)" if size else "an empty file"
        raise TierwiseError(f"cannot tell the format of {path}: {what} whose first line {first[:120]!r} is neither a "
                            f"Meta KV header nor a Twitter CSV record; {FORCE_HINT}")
    why_not = sniff_oracle(path, size)
    if not why_not:
        return "oracle"
    raise TierwiseError(f"cannot tell the format of {path}: binary, but not a tierwise .req file (no magic) and not "
                        f"libCacheSim oracleGeneral ({why_not}); {FORCE_HINT}")


def open_trace(spec: str | Path, *, format: str | None = None, chunk_size: int = DEFAULT_CHUNK,
               skip_bad: bool = False, skip_hint: str | None = None, **options) -> TraceReader:
    """A trace as an iterable of REQUEST_DTYPE chunks.

    `spec`: a file path (format detected from the content, see `detect_format`, or forced by `format`: twitter,
    metakv, oracle, requests), `FORMAT:PATH` (the same as `format=FORMAT`, for places that take only a spec such
    as bench/sweep runs), or `synth:PROFILE[:REQUESTS[:SEED]]` (e.g. `synth:twitter-merged:1000000`). `options`
    go to the reader (e.g. `key_size` for oracleGeneral). A malformed line or record raises TierwiseError with
    file and line (or byte offset), or with `skip_bad=True` is counted in the reader's `bad_lines`; `skip_hint`
    is how that error tells the caller to skip (default "skip_bad=True"; the CLI passes "--skip-bad").
    """
    text = str(spec)
    if text.startswith("synth:"):
        if format:
            raise TierwiseError(f"a format ({format}) was given for {text}: formats apply to trace files only")
        profile, requests, seed = parse_synth_spec(text)
        return SyntheticTrace(profile, requests, seed, chunk_size=chunk_size, **options)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in FORMATS and not Path(text).exists():
        if format and format != prefix:
            raise TierwiseError(f"trace {text} says format {prefix} but {format} was given")
        format, text = prefix, rest
    if format is not None and format not in FORMATS:
        raise TierwiseError(f"unknown trace format {format!r}; expected one of {', '.join(FORMATS)}")
    path = Path(text)
    if not path.is_file():
        raise TierwiseError(f"trace file not found: {path}")
    fmt = format or detect_format(path)
    reader = FORMATS[fmt](path, chunk_size=chunk_size, skip_bad=skip_bad, **options)
    if skip_hint:
        reader.skip_hint = skip_hint
    return reader


def write_trace(path: str | Path, chunks) -> int:
    """Write requests to `path`, format from the name: `.csv` CacheBench CSV, `.bin`/`oracleGeneral` libCacheSim
    oracleGeneral, `.req` tierwise's lossless binary. Returns the number of requests."""
    name = str(path).lower()
    if name.endswith(".csv"):
        return write_cachebench_csv(path, chunks)
    if name.endswith(".bin") or "oraclegeneral" in name:
        return write_oracle(path, chunks)
    if name.endswith(".req"):
        return write_requests(path, chunks)
    raise TierwiseError(f"cannot tell the output format from {path}: use .csv (CacheBench), .bin/.oracleGeneral "
                        "(libCacheSim) or .req (tierwise binary)")
