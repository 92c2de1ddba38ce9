"""style_exp: config-driven neural style transfer experiments (Gatys et al.).

Importing the package makes ``import tensorflow`` skip Keras (see ``_LeanTensorFlow``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

# What TensorFlow imports at start-up only to register Keras's optimisers for SavedModel.
_KERAS_AT_STARTUP = "keras.src.optimizers"


class _LeanTensorFlow(importlib.abc.MetaPathFinder):
    """Keeps Keras out of ``import tensorflow``.

    TensorFlow's ``__init__`` imports all of Keras, and through it scikit-learn, pandas
    and matplotlib, to register Keras's optimisers for SavedModel files; this project
    never uses Keras or SavedModel. That import was half of the CPU time of
    ``import tensorflow`` (README, "Start-up"). While TensorFlow's ``__init__`` runs, the
    module is marked missing, an ``ImportError`` TensorFlow already handles; afterwards
    ``tf.keras`` and ``import keras`` load on first use as usual.
    """

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _WithoutKeras(spec.loader)
        return spec


class _WithoutKeras(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if _KERAS_AT_STARTUP in sys.modules:  # Keras is loaded already: nothing to save
            self.loader.exec_module(module)
            return
        sys.modules[_KERAS_AT_STARTUP] = None  # type: ignore[assignment]
        try:
            self.loader.exec_module(module)
        finally:
            if sys.modules.get(_KERAS_AT_STARTUP, 0) is None:
                del sys.modules[_KERAS_AT_STARTUP]

    def __getattr__(self, name: str) -> object:  # resource readers and the like
        return getattr(self.loader, name)


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _LeanTensorFlow())
