"""`NpzSource`: one NumPy .npz file per split, read by chunk."""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
import zlib

import numpy as np

from pipeline.core.stage import PipelineError
from pipeline.data.sources.base import SourceDefaults


@dataclasses.dataclass(frozen=True)
class NpyMember:
    """Where an array lies in an .npz file.

    Attributes:
      path: the .npz file.
      key: the array's name (`x`, `y`).
      dtype: its numpy dtype string.
      shape: its shape.
      stored: True if the member is uncompressed (`np.savez`): its data is then
        memory-mapped at `offset`, a byte offset in the .npz file. False for a
        compressed member (`np.savez_compressed`): `offset` is then the data's
        offset in the decompressed member, reached by decompressing up to it.
      offset: see `stored`.
    """

    path: str
    key: str
    dtype: str
    shape: tuple[int, ...]
    stored: bool
    offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize


def read_npz_member(path: str, key: str) -> NpyMember:
    """Finds and checks the header of array `key` in an .npz file (reads no data).

    Raises:
      PipelineError: naming the file for a file that is not a zip, a missing array, an
        object or Fortran-ordered array, or a member shorter than its header says.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(f"{key}.npy")
            except KeyError:
                names = sorted(n.removesuffix(".npy") for n in zf.namelist())
                raise PipelineError(
                    f"{path} holds no array {key!r} (it holds {', '.join(names) or 'none'})"
                ) from None
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise PipelineError(f"{path}: {key}.npy has .npy format {version}")
                header_len = f.tell()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise PipelineError(f"{path}: cannot read array {key!r}: {e}") from e
    if dtype.hasobject:
        raise PipelineError(f"{path}: array {key!r} holds Python objects ({dtype})")
    if fortran and len(shape) > 1:
        raise PipelineError(
            f"{path}: array {key!r} is Fortran-ordered; save np.ascontiguousarray({key})"
        )
    if len(shape) < 1:
        raise PipelineError(f"{path}: array {key!r} is a scalar")
    member = NpyMember(
        path=path,
        key=key,
        dtype=dtype.str,
        shape=tuple(int(d) for d in shape),
        stored=info.compress_type == zipfile.ZIP_STORED,
        offset=header_len,
    )
    expected = header_len + member.shape[0] * member.row_bytes
    if info.file_size < expected:
        raise PipelineError(
            f"{path}: array {key!r} is truncated: {info.file_size} bytes, its header "
            f"implies {expected}"
        )
    if member.stored:
        member = dataclasses.replace(member, offset=_zip_data_start(path, info) + header_len)
    return member


def _zip_data_start(path: str, info: zipfile.ZipInfo) -> int:
    """Byte offset in the zip file of a member's (stored) data."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fixed = f.read(30)
    if len(fixed) < 30 or fixed[:4] != b"PK\x03\x04":
        raise PipelineError(f"{path}: bad zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", fixed[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_npz_chunk(member: NpyMember, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of an .npz array, holding only the chunk in memory.

    A stored member is memory-mapped; a compressed one is decompressed up to `stop`
    (so a chunk near the end of a big compressed array costs a pass over the data
    before it: prefer `np.savez` to `np.savez_compressed` for big arrays).
    """
    if not 0 <= start <= stop <= member.shape[0]:
        raise ValueError(f"chunk [{start}, {stop}) outside [0, {member.shape[0]})")
    shape = (stop - start, *member.shape[1:])
    dtype = np.dtype(member.dtype)
    if stop == start:
        return np.zeros(shape, dtype)
    try:
        if member.stored:
            mapped = np.memmap(
                member.path,
                dtype=dtype,
                mode="r",
                offset=member.offset + start * member.row_bytes,
                shape=shape,
            )
            out = np.array(mapped)
            del mapped
            return out
        with zipfile.ZipFile(member.path) as zf, zf.open(f"{member.key}.npy") as f:
            f.seek(member.offset + start * member.row_bytes)
            data = f.read((stop - start) * member.row_bytes)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise PipelineError(f"{member.path}: cannot read {member.key}[{start}:{stop}]: {e}") from e
    if len(data) < (stop - start) * member.row_bytes:
        raise PipelineError(f"{member.path}: array {member.key!r} ends before row {stop}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


@dataclasses.dataclass(frozen=True)
class NpzSource(SourceDefaults):
    """One .npz file per split: `x` uint8 [N, H, W] or [N, H, W, C], `y` int [N].

    Arrays are read by chunk: memory-mapped if saved with `np.savez`, decompressed
    as a stream if saved with `np.savez_compressed` (slower for late chunks).

    Attributes:
      directory: holds the files (config.data.data_dir).
      files: (split, file stem) pairs: split `s` is `<directory>/<stem>.npz`.
    """

    directory: str
    files: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))

    @property
    def description(self) -> str:
        return self.directory

    def path(self, split: str) -> str:
        return os.path.join(self.directory, dict(self.files)[split] + ".npz")

    def _members(self, split: str) -> tuple[NpyMember, NpyMember]:
        path = self.path(split)
        if not os.path.isfile(path):
            raise PipelineError(f"{path} does not exist (the {split} split of the npz source)")
        x, y = read_npz_member(path, "x"), read_npz_member(path, "y")
        if np.dtype(x.dtype) != np.uint8 or len(x.shape) not in (3, 4):
            raise PipelineError(
                f"{path}: x is {np.dtype(x.dtype)} {x.shape}; expected uint8 [N, H, W] or "
                "[N, H, W, C]"
            )
        if np.dtype(y.dtype).kind not in "iu" or len(y.shape) != 1:
            raise PipelineError(
                f"{path}: y is {np.dtype(y.dtype)} {y.shape}; expected integer labels [N]"
            )
        if x.shape[0] != y.shape[0]:
            raise PipelineError(f"{path} holds {x.shape[0]} images (x) but {y.shape[0]} labels (y)")
        return x, y

    def check(self) -> None:
        for split, _ in self.files:
            self._members(split)

    def num_examples(self, split: str) -> int:
        return self._members(split)[1].shape[0]

    def image_shape(self, split: str) -> tuple[int, ...]:
        shape = self._members(split)[0].shape[1:]
        return shape if len(shape) == 3 else (*shape, 1)

    def labels_origin(self, split: str) -> str:
        return f"{self.path(split)} (y)"

    def read_labels(self, split: str, start: int, stop: int) -> np.ndarray:
        return read_npz_chunk(self._members(split)[1], start, stop).astype(np.int64)

    def read(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Examples [start, stop): (uint8 [n, H, W, C] images, int64 [n] labels)."""
        x, y = self._members(split)
        images = read_npz_chunk(x, start, stop)
        if images.ndim == 3:
            images = images[..., np.newaxis]
        return images, read_npz_chunk(y, start, stop).astype(np.int64)
