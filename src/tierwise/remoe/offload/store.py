"""ExpertStore: every routed expert of a model written once to one file, read back one expert at a time.

Layout of a store folder (documented in docs/offload.md):

    index.json    format, fingerprint, model_type, moe_layers, num_experts, dtype, fields, record sizes, crc32c per record
    experts.bin   records in (MoE layer, expert) order; record r starts at r * record_stride

A record holds one expert's slice of every fused expert tensor (`gate_up_proj[e]`, `down_proj[e]`, and biases where an
architecture has them), each field at a 64-byte aligned offset. `record_stride` is the record rounded up to 4096
bytes, so every record can be read with one aligned O_DIRECT pread into a page-aligned buffer.

Page cache: reads use O_DIRECT, so every miss really reaches the device and the OS page cache cannot act as a
hidden second expert cache. On filesystems without O_DIRECT (tmpfs, some overlays) the store falls back to a plain
pread followed by posix_fadvise(POSIX_FADV_DONTNEED) on the record, which drops it from the page cache again;
`io_mode` says which one is in use.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import crc32c
import torch
import xxhash

from tierwise.common.errors import TierwiseError

FORMAT = "tierwise-expert-store/1"
BLOCK = 4096
FIELD_ALIGN = 64
INDEX_NAME = "index.json"
DATA_NAME = "experts.bin"


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class Field:
    """One per-expert tensor inside a record: the parameter name, its per-expert shape and where it sits."""

    name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def expert_params(experts: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The fused parameters of an experts module that hold one slice per routed expert (leading dim = E)."""
    num_experts = experts.num_experts
    params = {n: p for n, p in experts.named_parameters(recurse=False) if p.dim() >= 2 and p.shape[0] == num_experts}
    if not params:
        raise TierwiseError(f"{type(experts).__name__} has no fused per-expert parameters to offload")
    return params


def model_fingerprint(config_json: str, experts_by_layer: dict[int, torch.nn.Module]) -> str:
    """A hash of the config and every routed expert's bytes: a store is reused only for identical experts."""
    h = xxhash.xxh3_128(config_json.encode())
    for layer, experts in experts_by_layer.items():
        for name, p in expert_params(experts).items():
            h.update(f"{layer}.{name}".encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ExpertStore:
    """Read-only view of a store folder; `write` creates one, `open` reopens it."""

    def __init__(self, directory: str | Path, *, io: str = "auto", verify: bool = True):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError as e:
            raise TierwiseError(f"no expert store at {self.directory} (missing {INDEX_NAME})") from e
        except json.JSONDecodeError as e:
            raise TierwiseError(f"corrupted expert store index {index_path}: {e}") from e
        if index.get("format") != FORMAT:
            raise TierwiseError(f"{index_path}: format {index.get('format')!r} is not {FORMAT!r}")
        self.index = index
        self.fingerprint: str = index["fingerprint"]
        self.moe_layers: tuple[int, ...] = tuple(index["moe_layers"])
        self.num_experts: int = index["num_experts"]
        self.dtype: torch.dtype = getattr(torch, index["dtype"])
        self.fields = [Field(f["name"], tuple(f["shape"]), f["offset"], f["nbytes"]) for f in index["fields"]]
        self.record_bytes: int = index["record_bytes"]
        self.record_stride: int = index["record_stride"]
        self._crc: list[int] = index["crc32c"]
        self._layer_pos = {layer: i for i, layer in enumerate(self.moe_layers)}
        self.verify = verify
        data = self.directory / DATA_NAME
        expected = self.record_stride * len(self.moe_layers) * self.num_experts
        if not data.is_file() or data.stat().st_size != expected:
            size = data.stat().st_size if data.is_file() else "missing"
            raise TierwiseError(f"expert store data {data} is {size} bytes, the index expects {expected}")
        self.fd, self.io_mode = _open_for_reads(data, io)
        self._buf = mmap.mmap(-1, self.record_stride)  # page-aligned, as O_DIRECT requires
        self._raw = torch.frombuffer(self._buf, dtype=torch.uint8)
        self.reads = 0
        self.bytes_read = 0
        self.read_seconds = 0.0

    # ---- writing -------------------------------------------------------------------------------------------------

    @classmethod
    def write(cls, directory: str | Path, experts_by_layer: dict[int, torch.nn.Module], *, fingerprint: str,
              model_type: str, **open_kwargs) -> "ExpertStore":
        """Write every routed expert of `experts_by_layer` (decoder-layer index -> fused experts module) once."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        layers = sorted(experts_by_layer)
        first = experts_by_layer[layers[0]]
        params = expert_params(first)
        dtypes = {p.dtype for p in params.values()}
        if len(dtypes) != 1:
            raise TierwiseError(f"expert tensors mix dtypes {sorted(map(str, dtypes))}; cannot store them as one record")
        fields, offset = [], 0
        for name, p in params.items():
            nbytes = p[0].numel() * p.element_size()
            fields.append(Field(name, tuple(p.shape[1:]), offset, nbytes))
            offset = _round_up(offset + nbytes, FIELD_ALIGN)
        record_bytes = fields[-1].offset + fields[-1].nbytes
        stride = _round_up(record_bytes, BLOCK)
        crcs = []
        tmp = directory / (DATA_NAME + ".tmp")
        record = bytearray(stride)
        with open(tmp, "wb") as f:
            for layer in layers:
                layer_params = expert_params(experts_by_layer[layer])
                for e in range(first.num_experts):
                    record[:] = bytes(stride)
                    for fld in fields:
                        chunk = layer_params[fld.name][e].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                        record[fld.offset:fld.offset + fld.nbytes] = chunk
                    crcs.append(crc32c.crc32c(bytes(record[:record_bytes])))
                    f.write(record)
            f.flush()
            os.fsync(f.fileno())
            # Start cold: the records must not linger in the page cache after writing.
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, directory / DATA_NAME)
        index = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "model_type": model_type,
            "moe_layers": layers,
            "num_experts": first.num_experts,
            "dtype": str(next(iter(dtypes))).removeprefix("torch."),
            "fields": [asdict(f) for f in fields],
            "record_bytes": record_bytes,
            "record_stride": stride,
            "crc32c": crcs,
        }
        (directory / INDEX_NAME).write_text(json.dumps(index))
        return cls(directory, **open_kwargs)

    @classmethod
    def open_or_write(cls, directory: str | Path, experts_by_layer: dict[int, torch.nn.Module], *, fingerprint: str,
                      model_type: str, **open_kwargs) -> "ExpertStore":
        """Reuse the store in `directory` if it holds exactly these experts, else (re)write it."""
        directory = Path(directory)
        if (directory / INDEX_NAME).is_file():
            try:
                store = cls(directory, **open_kwargs)
            except TierwiseError:
                store = None  # unreadable or truncated: rewrite below
            if store is not None and store.fingerprint == fingerprint:
                return store
            if store is not None:
                store.close()
        return cls.write(directory, experts_by_layer, fingerprint=fingerprint, model_type=model_type, **open_kwargs)

    # ---- reading -------------------------------------------------------------------------------------------------

    @property
    def expert_bytes(self) -> int:
        """Payload bytes of one expert (what a miss transfers; the aligned read is `record_stride`)."""
        return sum(f.nbytes for f in self.fields)

    def read_into(self, layer: int, expert: int, out: dict[str, torch.Tensor]) -> None:
        """Read one expert from the file and copy each field into `out[name]` (tensors of the field's shape)."""
        if layer not in self._layer_pos or not 0 <= expert < self.num_experts:
            raise TierwiseError(f"expert ({layer}, {expert}) is not in the store (layers {list(self.moe_layers)}, E={self.num_experts})")
        record = self._layer_pos[layer] * self.num_experts + expert
        offset = record * self.record_stride
        t0 = time.perf_counter()
        n = os.preadv(self.fd, [self._buf], offset)
        if self.io_mode == "fadvise-dontneed":
            os.posix_fadvise(self.fd, offset, self.record_stride, os.POSIX_FADV_DONTNEED)
        if n != self.record_stride:
            raise TierwiseError(f"short read of expert ({layer}, {expert}) from {self.directory}: {n} of {self.record_stride} bytes")
        if self.verify and crc32c.crc32c(self._buf[: self.record_bytes]) != self._crc[record]:
            raise TierwiseError(f"expert ({layer}, {expert}) in {self.directory / DATA_NAME} is corrupted (crc32c mismatch)")
        for f in self.fields:
            out[f.name].copy_(self._raw[f.offset:f.offset + f.nbytes].view(self.dtype).view(f.shape))
        self.read_seconds += time.perf_counter() - t0
        self.reads += 1
        self.bytes_read += self.record_stride

    def read(self, layer: int, expert: int) -> dict[str, torch.Tensor]:
        out = {f.name: torch.empty(f.shape, dtype=self.dtype) for f in self.fields}
        self.read_into(layer, expert, out)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            del self._raw
            self._buf.close()

    def __enter__(self) -> "ExpertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_for_reads(path: Path, io: str) -> tuple[int, str]:
    """Open with O_DIRECT when asked or possible; `auto` falls back to fadvise(DONTNEED) where O_DIRECT fails."""
    if io not in ("auto", "direct", "fadvise"):
        raise TierwiseError(f"unknown store io mode {io!r}; use auto, direct or fadvise")
    if io in ("auto", "direct") and hasattr(os, "O_DIRECT"):
        fd = -1
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            with mmap.mmap(-1, BLOCK) as probe:
                os.preadv(fd, [probe], 0)  # some filesystems accept the flag but fail the read
            return fd, "O_DIRECT"
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            if io == "direct":
                raise TierwiseError(f"O_DIRECT reads are not supported for {path}: {e}") from e
    return os.open(path, os.O_RDONLY), "fadvise-dontneed"
