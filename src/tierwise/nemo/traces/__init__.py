"""Key-value traces as one request stream: `open_trace(spec)` yields REQUEST_DTYPE chunks from a Twitter CSV,
a Meta KV CSV, a libCacheSim oracleGeneral file, a tierwise `.req` file, or the synthetic generator."""

from __future__ import annotations

from pathlib import Path

from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces.metakv import MetaKVReader, write_cachebench_csv
from tierwise.nemo.traces.native import MAGICS, RequestFileReader, write_requests
from tierwise.nemo.traces.oracle import OracleGeneralReader, write_oracle
from tierwise.nemo.traces.reader import DEFAULT_CHUNK, TraceReader, open_text
from tierwise.nemo.traces.request import REQUEST_DTYPE, Op, Request, iter_requests, key_bytes, keys_of
from tierwise.nemo.traces.stats import trace_stats, zipf_alpha
from tierwise.nemo.traces.synth import PROFILES, SyntheticTrace, parse_synth_spec
from tierwise.nemo.traces.twitter import TwitterReader

__all__ = ["DEFAULT_CHUNK", "FORMATS", "Op", "PROFILES", "REQUEST_DTYPE", "Request", "SyntheticTrace", "TraceReader",
           "detect_format", "iter_requests", "key_bytes", "keys_of", "open_trace", "trace_stats", "write_trace",
           "zipf_alpha"]

FORMATS = {"twitter": TwitterReader, "metakv": MetaKVReader, "oracle": OracleGeneralReader,
           "requests": RequestFileReader}


def detect_format(path: Path) -> str:
    """Guess a trace file's format from its name, magic or first line."""
    name = path.name.lower()
    if "oraclegeneral" in name or name.endswith(".bin"):
        return "oracle"
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGICS[0])) in MAGICS:
                return "requests"
        with open_text(path) as f:
            first = f.readline().strip()
    except (OSError, UnicodeError, ValueError) as e:
        raise TierwiseError(f"cannot read trace {path}: {e}") from None
    except TierwiseError:
        raise
    except Exception as e:  # zstd/gzip decoders raise their own error types on corrupt input
        raise TierwiseError(f"cannot read trace {path}: {e}") from None
    fields = [f.strip().lower() for f in first.split(",")]
    if {"key", "op"} <= set(fields) or {"fbid", "size"} <= set(fields):
        return "metakv"
    if len(fields) >= 7 and fields[0].isdigit():
        return "twitter"
    raise TierwiseError(f"cannot tell the format of {path} from its first line {first[:120]!r}; "
                        f"give the format ({', '.join(FORMATS)})")


def open_trace(spec: str | Path, *, format: str | None = None, chunk_size: int = DEFAULT_CHUNK,
               skip_bad: bool = False, **options) -> TraceReader:
    """A trace as an iterable of REQUEST_DTYPE chunks.

    `spec`: a file path (format detected from the name/content, or given: twitter, metakv, oracle, requests) or
    `synth:PROFILE[:REQUESTS[:SEED]]` (e.g. `synth:twitter-merged:1000000`). `options` go to the reader (e.g.
    `key_size` for oracleGeneral). Malformed lines raise TierwiseError with file and line, or with
    `skip_bad=True` are counted in the reader's `bad_lines`.
    """
    text = str(spec)
    if text.startswith("synth:"):
        profile, requests, seed = parse_synth_spec(text)
        return SyntheticTrace(profile, requests, seed, chunk_size=chunk_size, **options)
    path = Path(text)
    if not path.is_file():
        raise TierwiseError(f"trace file not found: {path}")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise TierwiseError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt](path, chunk_size=chunk_size, skip_bad=skip_bad, **options)


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
