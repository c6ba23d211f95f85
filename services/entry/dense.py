"""The dense network: the built-in numpy MLP or an ONNX graph (optional ``onnx`` extra).

Both take the [batch, input_width] float32 matrix from pooling and return [batch, output_width] float32.
Loading validates every shape against the serving spec so a bad export fails at load time, not per
request. ``predict`` is pure computation and safe to call from several threads.

``DenseModel`` is what the entry awaits per request (``score``); ``LocalDenseModel`` computes in
process, ``entry.remote_dense.RemoteDense`` calls a dense server (dense_alone). The dense server
(``monolith_serving.dense``) runs the same local networks via ``load_dense_network``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.serving_spec import DenseBackend, DenseSpec, LayerSpec, ServingSpec

Float32Array = npt.NDArray[np.float32]


def _sigmoid(x: Float32Array) -> Float32Array:
    # Written via tanh so large |x| never overflows exp.
    result: Float32Array = (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(np.float32, copy=False)
    return result


def _relu(x: Float32Array) -> Float32Array:
    result: Float32Array = np.maximum(x, np.float32(0))
    return result


def _tanh(x: Float32Array) -> Float32Array:
    result: Float32Array = np.tanh(x)
    return result


def _linear(x: Float32Array) -> Float32Array:
    return x


ACTIVATION_FUNCTIONS: dict[str, Callable[[Float32Array], Float32Array]] = {
    "linear": _linear,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
}


class DenseModel(abc.ABC):
    input_width: int
    output_width: int  # -1 when not known before the first answer (remote)

    @abc.abstractmethod
    async def score(self, x: Float32Array, *, version: int, timeout_s: float) -> Float32Array:
        """[batch, input_width] -> [batch, output_width], float32; ``version`` is the entry version
        (a remote network is pinned to it), ``timeout_s`` what is left of the request's deadline."""


class LocalDenseModel(DenseModel):
    """A network computed in this process; ``score`` ignores version and deadline."""

    @abc.abstractmethod
    def predict(self, x: Float32Array) -> Float32Array:
        """[batch, input_width] -> [batch, output_width], float32."""

    async def score(self, x: Float32Array, *, version: int, timeout_s: float) -> Float32Array:
        return self.predict(x)


class NumpyMlp(LocalDenseModel):
    """``x @ W + b`` then the activation, layer by layer."""

    def __init__(self, layers: list[tuple[Float32Array, Float32Array, str]]) -> None:
        if not layers:
            raise InvalidArgumentError("the numpy MLP needs at least one layer")
        self._layers = [(w, b, ACTIVATION_FUNCTIONS[act]) for w, b, act in layers]
        self.input_width = int(layers[0][0].shape[0])
        self.output_width = int(layers[-1][0].shape[1])

    def predict(self, x: Float32Array) -> Float32Array:
        h = x
        for weight, bias, activation in self._layers:
            h = activation(h @ weight + bias)
        return h


def export_file(version_dir: Path, name: str, field: str) -> Path:
    """``version_dir / name`` once ``name`` (the serving spec's ``field``) is known to stay inside the version folder.

    An absolute path, ``..`` or a symlink leading out is refused (InvalidArgumentError naming the field and the
    path): the export would read files it does not own, which a P2P copy of the version would not carry either."""
    if Path(name).is_absolute():
        raise InvalidArgumentError(
            f"{field} {name!r}: an absolute path; dense files are named relative to the version folder {version_dir}"
        )
    path = version_dir / name
    root = version_dir.resolve()
    if root not in path.resolve().parents:
        raise InvalidArgumentError(f"{field} {name!r}: resolves outside the version folder {version_dir}")
    return path


def _load_npy(path: Path) -> Float32Array:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as error:
        raise NotFoundError(f"dense weight file {str(path)!r} does not exist") from error
    except IsADirectoryError as error:
        raise InvalidArgumentError(f"dense weight file {str(path)!r} is a directory") from error
    except ValueError as error:
        raise InvalidArgumentError(f"dense weight file {str(path)!r} is not a numpy array: {error}") from error
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidArgumentError(f"dense weight file {str(path)!r} holds {array.dtype}, not floats")
    result: Float32Array = array.astype(np.float32)
    return result


def load_numpy_mlp(spec: ServingSpec, version_dir: Path) -> NumpyMlp:
    return load_numpy_layers(spec.dense.layers, spec.input_width, version_dir)


def load_numpy_layers(specs: tuple[LayerSpec, ...], input_width: int, version_dir: Path) -> NumpyMlp:
    layers = []
    width = input_width
    for k, layer in enumerate(specs):
        weight = _load_npy(export_file(version_dir, layer.weight, f"dense.layers[{k}].weight"))
        bias = _load_npy(export_file(version_dir, layer.bias, f"dense.layers[{k}].bias"))
        if weight.ndim != 2 or weight.shape[0] != width:
            raise InvalidArgumentError(
                f"dense layer {k} ({layer.weight}): weight shape {list(weight.shape)} does not take "
                f"an input of width {width}"
            )
        if bias.shape != (weight.shape[1],):
            raise InvalidArgumentError(
                f"dense layer {k} ({layer.bias}): bias shape {list(bias.shape)}, expected [{weight.shape[1]}]"
            )
        layers.append((weight, bias, layer.activation))
        width = int(weight.shape[1])
    return NumpyMlp(layers)


class OnnxDense(LocalDenseModel):
    """An ONNX graph with one float input [batch, input_width] and its first output [batch, k]."""

    def __init__(self, path: Path, input_width: int) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise NotFoundError(f"{path} needs onnxruntime: pip install 'monolith-serving[onnx]'") from error
        options = onnxruntime.SessionOptions()
        # The event loop thread runs the graph; one intra-op thread keeps small batches cheap and
        # leaves the other cores to the gRPC threads.
        options.intra_op_num_threads = 1
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors for bad graphs
            raise InvalidArgumentError(f"cannot load ONNX dense graph {str(path)!r}: {error}") from error
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InvalidArgumentError(f"{path}: the ONNX graph must have exactly one input, has {len(inputs)}")
        shape = inputs[0].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != input_width):
            raise InvalidArgumentError(f"{path}: ONNX input shape {shape} does not take [batch, {input_width}]")
        self._input_name = str(inputs[0].name)
        self._output_name = str(self._session.get_outputs()[0].name)
        self.input_width = input_width
        out_shape = self._session.get_outputs()[0].shape
        last = out_shape[-1] if out_shape else 1
        self.output_width = int(last) if isinstance(last, int) else 1

    def predict(self, x: Float32Array) -> Float32Array:
        (result,) = self._session.run([self._output_name], {self._input_name: x})
        out: Float32Array = np.asarray(result, dtype=np.float32).reshape(len(x), -1)
        return out


def load_dense(spec: ServingSpec, version_dir: Path) -> LocalDenseModel:
    """The entry version's own network (a ``remote`` spec is wired by the entry, not loaded here)."""
    return load_dense_network(spec.dense, spec.input_width, version_dir)


def load_dense_network(dense: DenseSpec, input_width: int, version_dir: Path) -> LocalDenseModel:
    """A numpy or ONNX network whose files are relative to ``version_dir`` and must stay inside it."""
    if dense.backend is DenseBackend.NUMPY:
        return load_numpy_layers(dense.layers, input_width, version_dir)
    if dense.backend is DenseBackend.REMOTE:
        raise InvalidArgumentError(f"dense backend 'remote' ({dense.sub_model}) has no network to load here")
    path = export_file(version_dir, dense.file, "dense.file")
    if not path.is_file():
        raise NotFoundError(f"ONNX dense graph {str(path)!r} does not exist")
    return OnnxDense(path, input_width)
