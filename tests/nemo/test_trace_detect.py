"""Trace format told by content, not by name; oracleGeneral records validated; `--format` forcing and refusal."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import zstandard
from typer.testing import CliRunner

from tierwise.cli import app
from tierwise.common.errors import TierwiseError
from tierwise.nemo.traces import detect_format, open_trace, write_trace
from tierwise.nemo.traces.oracle import ORACLE_DTYPE, next_access

TWITTER = "".join(f"{t},k{t % 7},4,{100 + t},1,{'get' if t % 3 else 'set'},0\n" for t in range(50))
METAKV = "key,op,size,op_count,key_size\n" + "".join(f"k{i},GET,{10 + i},1,4\n" for i in range(20))


def oracle_records(n: int = 40) -> np.ndarray:
    recs = np.zeros(n, dtype=ORACLE_DTYPE)
    recs["timestamp"] = 1000 + np.arange(n) // 3
    recs["obj_id"] = np.arange(n) % 11
    recs["obj_size"] = 100 + np.arange(n)
    recs["next_access_vtime"] = next_access(recs["obj_id"])
    return recs


def read_all(reader) -> np.ndarray:
    return np.concatenate(list(reader))


# ---- detection by content ----------------------------------------------------------------------------------------
def test_oracle_named_csv_is_oracle(tmp_path):
    recs = oracle_records()
    p = tmp_path / "x.csv"
    p.write_bytes(recs.tobytes())
    assert detect_format(p) == "oracle"
    a = read_all(open_trace(p))
    assert a["key"].tolist() == recs["obj_id"].tolist() and a["time"].tolist() == recs["timestamp"].tolist()


def test_twitter_named_bin_is_twitter(tmp_path):
    p = tmp_path / "x.bin"
    p.write_text(TWITTER)
    assert detect_format(p) == "twitter"
    r = open_trace(p)
    assert len(read_all(r)) == 50 and r.format == "twitter"


@pytest.mark.parametrize("name", ["x.bin", "x.oracleGeneral", "x.req"])
def test_metakv_named_otherwise_is_metakv(tmp_path, name):
    p = tmp_path / name
    p.write_text(METAKV)
    assert detect_format(p) == "metakv" and len(read_all(open_trace(p))) == 20


def _misnamed_copy(tmp_path, requests: int, seed: int, written_as: str, copied_as: str):
    """A synthetic trace written under a name that says its format, and a copy of the bytes under `copied_as`."""
    src = read_all(open_trace(f"synth:twitter-merged:{requests}:{seed}"))
    real = tmp_path / written_as
    write_trace(real, [src])
    copy = tmp_path / copied_as
    copy.write_bytes(real.read_bytes())
    return src, real, copy


def test_request_file_named_csv_is_requests(tmp_path):
    src, _, p = _misnamed_copy(tmp_path, 500, 1, "t.req", "t.csv")
    assert detect_format(p) == "requests" and np.array_equal(read_all(open_trace(p)), src)


@pytest.mark.parametrize("kind", ["zst", "gz"])
def test_compressed_text_told_by_magic_not_suffix(tmp_path, kind):
    data = TWITTER.encode()
    p = tmp_path / "trace.bin"  # no .zst / .gz in the name
    p.write_bytes(zstandard.ZstdCompressor().compress(data) if kind == "zst" else gzip.compress(data))
    assert detect_format(p) == "twitter" and len(read_all(open_trace(p))) == 50


def test_written_oracle_detected_whatever_the_name(tmp_path):
    src, p, q = _misnamed_copy(tmp_path, 3000, 2, "t.oracleGeneral.bin", "plain")
    assert detect_format(p) == detect_format(q) == "oracle"
    assert read_all(open_trace(q))["key"].tolist() == src["key"].tolist()


@pytest.mark.parametrize("payload", [bytes(np.random.default_rng(3).integers(0, 256, 24 * 50, dtype=np.uint8)),
                                     b"hello, world\nthis is not a trace\n", b""])
def test_unrecognised_file_named_bin_is_refused(tmp_path, payload):
    p = tmp_path / "x.bin"
    p.write_bytes(payload)
    with pytest.raises(TierwiseError, match="cannot tell the format of .*x.bin.*--format") as e:
        open_trace(p)
    if len(payload) == 24 * 50:
        assert "oracleGeneral (record " in str(e.value) and " at byte " in str(e.value)  # the record that failed
    else:
        assert "first line" in str(e.value)


# ---- oracleGeneral records validated as they are read ------------------------------------------------------------
@pytest.mark.parametrize("field, index, value, why", [
    ("obj_size", 20, 0, "object size 0"),
    ("timestamp", 21, 5, "timestamp 5 is before the previous record's"),
    ("next_access_vtime", 22, 3, "next_access_vtime 3"),
])
def test_corrupt_oracle_record_refused_with_offset(tmp_path, field, index, value, why):
    recs = oracle_records()
    recs[field][index] = value
    p = tmp_path / "x.bin"
    p.write_bytes(recs.tobytes())
    assert detect_format(p) == "oracle"  # one bad record among 40 still reads as oracleGeneral...
    with pytest.raises(TierwiseError, match=rf"x.bin:byte {index * 24}: {why}.*skip_bad=True"):
        list(open_trace(p))  # ...and the reader names it
    with pytest.raises(TierwiseError, match=rf"x.bin:byte {index * 24}: "):
        list(open_trace(p, format="oracle", chunk_size=7))  # across chunk boundaries too
    r = open_trace(p, skip_bad=True)
    a = read_all(r)
    assert r.bad_lines == 1 and len(a) == 39 and f"byte {index * 24}" in r.bad_examples[0]


def test_mostly_corrupt_oracle_not_detected_but_forced_names_first_bad_record(tmp_path):
    recs = oracle_records(10)
    recs["timestamp"] = recs["timestamp"][::-1].copy()  # decreasing throughout
    p = tmp_path / "x.oracleGeneral.bin"
    p.write_bytes(recs.tobytes())
    with pytest.raises(TierwiseError, match=r"not libCacheSim oracleGeneral \(record \d+ at byte \d+: timestamp"):
        open_trace(p)
    first_bad = int(np.flatnonzero(np.diff(recs["timestamp"].astype(int)) < 0)[0]) + 1
    with pytest.raises(TierwiseError, match=rf"x.oracleGeneral.bin:byte {first_bad * 24}: timestamp"):
        list(open_trace(p, format="oracle"))


def test_truncated_oracle_tail_refused_with_offset(tmp_path):
    recs = oracle_records(5)
    p = tmp_path / "cut.bin"
    p.write_bytes(recs.tobytes() + b"\x01\x02\x03")
    assert detect_format(p) == "oracle"
    with pytest.raises(TierwiseError, match=r"cut.bin:byte 120: .*truncated last record"):
        list(open_trace(p))
    r = open_trace(p, skip_bad=True)
    assert len(read_all(r)) == 5 and r.bad_lines == 1


def test_oracle_never_marker_int64_max_accepted(tmp_path):
    recs = oracle_records(4)
    recs["obj_id"] = [1, 2, 3, 4]
    recs["next_access_vtime"] = [-1, np.iinfo(np.int64).max, -1, np.iinfo(np.int64).max]
    p = tmp_path / "x.bin"
    p.write_bytes(recs.tobytes())
    r = open_trace(p)
    assert len(read_all(r)) == 4 and r.bad_lines == 0


# ---- forcing a format ---------------------------------------------------------------------------------------------
def test_forced_format_reads_and_refuses_what_does_not_fit(tmp_path):
    tw = tmp_path / "t.dat"
    tw.write_text(TWITTER)
    assert open_trace(tw, format="twitter").format == "twitter"
    with pytest.raises(TierwiseError, match=r"t.dat:1: not a Meta KV trace header"):
        list(open_trace(tw, format="metakv"))
    with pytest.raises(TierwiseError, match=r"t.dat:byte \d+: "):
        list(open_trace(tw, format="oracle"))
    with pytest.raises(TierwiseError, match=r"t.dat:byte 0: not a requests trace"):
        list(open_trace(tw, format="requests"))
    orc = tmp_path / "o.csv"
    orc.write_bytes(oracle_records().tobytes())
    with pytest.raises(TierwiseError, match=r"o.csv:1: "):
        list(open_trace(orc, format="twitter"))
    with pytest.raises(TierwiseError, match="unknown trace format 'parquet'"):
        open_trace(orc, format="parquet")


def test_format_prefix_spec(tmp_path):
    p = tmp_path / "t.dat"
    p.write_text(TWITTER)
    assert open_trace(f"twitter:{p}").format == "twitter"
    with pytest.raises(TierwiseError, match=r"t.dat:byte \d+: "):
        list(open_trace(f"oracle:{p}"))
    with pytest.raises(TierwiseError, match="formats apply to trace files only"):
        open_trace("synth:twitter-merged:100", format="oracle")


# ---- the CLI: --format everywhere, and errors name only flags that exist -----------------------------------------
@pytest.mark.parametrize("command", [["trace", "stats"], ["replay"], ["bench"]])
def test_every_trace_command_has_format(command):
    r = CliRunner().invoke(app, ["nemo", *command, "--help"], terminal_width=200)
    assert r.exit_code == 0 and "--format" in r.output


def test_cli_unrecognised_trace_error_names_format_flag(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(np.random.default_rng(5).integers(0, 256, 24 * 30, dtype=np.uint8)))
    runner = CliRunner()
    for args in (["trace", "stats", str(p)], ["replay", "--trace", str(p), "--flash-mb", "4", "--zone-kb", "256"],
                 ["bench", "--trace", str(p), "--engines", "log"]):
        r = runner.invoke(app, ["nemo", *args])
        assert r.exit_code != 0 and isinstance(r.exception, TierwiseError), (args, r.output)
        assert "--format" in str(r.exception) and "x.bin" in str(r.exception)
    r = runner.invoke(app, ["nemo", "bench", "--trace", str(p), "--format", "parquet"])
    assert isinstance(r.exception, TierwiseError) and "unknown trace format" in str(r.exception)


def test_cli_format_forces_and_bad_record_names_skip_bad(tmp_path):
    recs = oracle_records()
    good = tmp_path / "o.csv"  # an oracleGeneral file with a misleading name
    good.write_bytes(recs.tobytes())
    runner = CliRunner()
    r = runner.invoke(app, ["nemo", "trace", "stats", str(good), "--format", "oracle", "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    recs["obj_size"][30] = 0
    bad = tmp_path / "bad.bin"
    bad.write_bytes(recs.tobytes())
    for args in (["trace", "stats", str(bad)], ["replay", "--trace", str(bad), "--flash-mb", "4", "--zone-kb", "256"]):
        r = runner.invoke(app, ["nemo", *args])
        assert isinstance(r.exception, TierwiseError), r.output
        assert "bad.bin:byte 720: object size 0" in str(r.exception) and "--skip-bad" in str(r.exception)
    r = runner.invoke(app, ["nemo", "trace", "stats", str(bad), "--skip-bad", "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    # the library's own message names no CLI flag (bench has no --skip-bad)
    with pytest.raises(TierwiseError) as e:
        list(open_trace(bad))
    assert "--skip-bad" not in str(e.value) and "skip_bad=True" in str(e.value)
