"""The PyTorch runtime: loads TorchScript and runs it on tensors, as SageMaker's PyTorch container does.

Chosen by the worker for ``--runtime pytorch``. Only this module imports torch. Eager models (a state_dict
or a pickled module) load through the user's ``model_fn``; every other default here works with them too.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from modelhost.errors import ArtifactError
from modelhost.runtimes import artifacts, codecs
from modelhost.runtimes.runtime import RuntimeResources

# The SageMaker PyTorch toolkit looks for model.pt; model.pth is the other common spelling.
MODEL_FILE_NAMES = ("model.pt", "model.pth")
_MODEL_SUFFIXES = (".pt", ".pth")
_LISTED_KEYS_MAX = 4
# Numbers in text bodies carry no precision; floats become float32, as the toolkit's FloatTensor does.
# Integers stay int64 so that token ids and indices reach embeddings unchanged.
_TEXT_MEDIA_TYPES = frozenset({codecs.JSON, codecs.CSV, codecs.JSONLINES, codecs.X_JSONLINES})
# Last lines of torch errors that mean "this input does not fit the model", not "the model is broken".
_INPUT_MISMATCH_PHRASES = (
    "shapes cannot be multiplied",
    "size mismatch",
    "must match the size of tensor",
    "dimension out of range",
    "must have the same dtype",
    "expected scalar type",
    "expected both inputs",
    "expected a value of type",
    "expected input",
    "expected 2d",
    "expected 3d",
    "expected 4d",
    "is invalid for input of size",
    "must be equal to input_size",
    "index out of range in self",
)


class InputMismatch(codecs.CodecError):
    """The request decoded, but the model cannot take a tensor of that shape or dtype."""


# --- loading -----------------------------------------------------------------------------------


def find_model_file(model_dir: Path) -> Path:
    """The artifact to load: ``model.pt``, ``model.pth``, else the only ``*.pt``/``*.pth`` file."""
    return artifacts.find_model_file(
        model_dir,
        MODEL_FILE_NAMES,
        _MODEL_SUFFIXES,
        "a TorchScript model.pt, model.pth or a single *.pt/*.pth file",
    )


def _is_torchscript(path: Path) -> bool:
    # torch.jit.save writes a zip whose record holds constants.pkl and code/; torch.save's zip has neither.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in archive.namelist())


def _describe_saved(path: Path) -> str:
    """What a file that is not TorchScript holds, read without running any code from it."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        kind = "a torch.save archive" if zipfile.is_zipfile(path) else "not a torch.save archive"
        return f"{kind} that does not load as weights only (a pickled module or other object?)"
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        keys = [str(key) for key in list(loaded)[:_LISTED_KEYS_MAX]]
        more = ", ..." if len(loaded) > _LISTED_KEYS_MAX else ""
        return f"a state_dict of {len(loaded)} tensors ({', '.join(keys)}{more})"
    return f"a torch.save file holding a {type(loaded).__name__}"


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """``path`` as a TorchScript module on ``device`` in eval mode; ``ArtifactError`` for anything else."""
    if not _is_torchscript(path):
        raise ArtifactError(
            f"{path.name} is not a TorchScript model: found {_describe_saved(path)}. Save the model with "
            "torch.jit.save(torch.jit.script(model), 'model.pt'), or define model_fn in code/inference.py "
            "that builds the module and loads the weights (SageMaker's PyTorch containers from 1.6 on "
            "require one for eager models)"
        )
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but is the format SageMaker's default model_fn loads.
            warnings.simplefilter("ignore", DeprecationWarning)
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=device
            )
    except Exception as exc:
        raise ArtifactError(
            f"Could not load {path.name} as TorchScript: {type(exc).__name__}: {_last_line(str(exc))}. Save "
            f"it with a torch version compatible with this worker's ({torch.__version__}), or define "
            "model_fn in code/inference.py"
        ) from exc
    module.eval()
    return module


# --- tensors in and out -------------------------------------------------------------------------


def as_tensor(array: np.ndarray, *, from_text: bool) -> torch.Tensor:
    """A CPU tensor for a decoded body; ``CodecError`` for values no tensor can hold."""
    if array.dtype.kind not in "biufc":
        raise codecs.CodecError(
            f"Expected numbers (nested lists of equal length) for a tensor, got values of dtype {array.dtype}"
        )
    if from_text and array.dtype.kind == "f":
        array = array.astype(np.float32)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable:
        array = array.copy()  # np.load over a buffer is read-only; torch wants to own writable memory
    try:
        return torch.from_numpy(array)
    except TypeError as exc:
        raise codecs.CodecError(f"A tensor cannot hold {array.dtype} values: {exc}") from exc


def to_numpy(value: object) -> object:
    """Tensors anywhere in ``value`` (tuples, lists, dicts) as CPU numpy arrays; other values unchanged."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.numpy()
    if isinstance(value, tuple | list):
        return type(value)(to_numpy(item) for item in value)
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    return value


def _to_device(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, np.ndarray):
        return as_tensor(value, from_text=False).to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


def _last_line(message: str) -> str:
    # TorchScript errors carry both tracebacks before the actual error on the last line.
    lines = [line for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else message
    return last.removeprefix("builtins.").removeprefix("RuntimeError: ")


def _describe_input(data: object) -> str:
    if isinstance(data, torch.Tensor):
        return f"a {str(data.dtype).removeprefix('torch.')} tensor of shape {tuple(data.shape)}"
    return f"a {type(data).__name__}"


def forward_signature(model: object) -> str | None:
    """``forward(Tensor input) -> Tensor`` for a TorchScript module; None for eager code."""
    forward = getattr(model, "forward", None)
    schema = getattr(forward, "schema", None)
    if not isinstance(model, torch.jit.ScriptModule) or schema is None:
        return None
    arguments = ", ".join(f"{argument.type} {argument.name}" for argument in schema.arguments[1:])
    returns = ", ".join(str(result.type) for result in schema.returns)
    return f"forward({arguments}) -> {returns}"


def _mismatch_message(exc: Exception, data: object, model: object) -> str | None:
    reason = _last_line(str(exc))
    lowered = reason.lower()
    if not any(phrase in lowered for phrase in _INPUT_MISMATCH_PHRASES):
        return None
    message = f"The model cannot take the input it was given, {_describe_input(data)}: {reason}."
    signature = forward_signature(model)
    if signature is not None:
        message += f" The model's signature is {signature}."
    dtype_error = "dtype" in lowered or "scalar type" in lowered
    if isinstance(data, torch.Tensor) and not data.is_floating_point() and dtype_error:
        message += " JSON integers decode as int64: write floats (1.0) for a model with float weights."
    return message + " Send input of the shape and dtype the model was built for"


def _returns_one_tensor(model: object) -> bool | None:
    """Whether ``forward`` returns a single tensor, from a TorchScript signature; None when unknown."""
    if not isinstance(model, torch.jit.ScriptModule):
        return None
    schema = getattr(getattr(model, "forward", None), "schema", None)
    if schema is None:
        return None
    return len(schema.returns) == 1 and str(schema.returns[0].type) == "Tensor"


class PytorchRuntime:
    """Defaults of SageMaker's PyTorch container: TorchScript model_fn, tensor codecs, inference mode."""

    def __init__(self, resources: RuntimeResources | None = None) -> None:
        resources = resources or RuntimeResources()
        use_gpu = bool(resources.gpu_ids) and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{resources.gpu_ids[0]}" if use_gpu else "cpu")
        # One prediction's intra-op threads; the worker already runs one handler thread per vCPU.
        torch.set_num_threads(resources.threads)
        # Whether an eager model's forward returned one tensor, learned from its predictions: only such
        # outputs split back into rows, so only they may batch (a tuple would split by output, not row).
        self._tensor_output: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()

    @property
    def name(self) -> str:
        return "pytorch"

    @property
    def default_accept(self) -> str:
        return codecs.JSON  # SageMaker's PyTorch container answers JSON

    def model_fn(self, model_dir: str) -> object:
        return load_torchscript(find_model_file(Path(model_dir)), self.device)

    def input_fn(self, input_data: bytes | str, content_type: str) -> object:
        array = codecs.decode(input_data, content_type)
        # A CPU tensor: predict_fn moves it, so that batching can join requests' rows as numpy arrays.
        return as_tensor(array, from_text=codecs.media_type(content_type) in _TEXT_MEDIA_TYPES)

    def predict_fn(self, data: object, model: object) -> object:
        if not callable(model):
            raise TypeError(
                f"the model ({type(model).__name__}) is not callable; return a torch.nn.Module from model_fn "
                "or define predict_fn in code/inference.py"
            )
        if isinstance(model, torch.nn.Module) and model.training:
            model.eval()  # the toolkit's default predict_fn does the same for models from a user model_fn
        with torch.inference_mode():
            inputs = _to_device(data, self._model_device(model))
            try:
                output = model(inputs)
            # torch.jit.Error (a raise inside TorchScript code) is no RuntimeError.
            except (RuntimeError, torch.jit.Error) as exc:
                message = _mismatch_message(exc, inputs, model)
                if message is not None:
                    raise InputMismatch(message) from exc
                if "TorchScript interpreter" in str(exc):
                    # The full TorchScript traceback is logged with the cause; the client gets its last line.
                    raise RuntimeError(f"the TorchScript model failed: {_last_line(str(exc))}") from exc
                raise
        self._remember_output(model, output)
        return to_numpy(output)

    def batch_rows(self, data: object, model: object) -> np.ndarray | None:
        if not self._splits_by_row(model):
            return None
        if isinstance(data, torch.Tensor) and data.ndim >= 1 and data.device.type == "cpu":
            return data.numpy()
        if isinstance(data, np.ndarray) and data.ndim >= 1:
            return data
        return None

    def output_fn(self, prediction: object, accept: str) -> tuple[bytes, str]:
        prediction = to_numpy(prediction)
        media = codecs.negotiate_accept(accept)
        if media in (codecs.NPY, codecs.CSV) and isinstance(prediction, tuple | dict):
            raise codecs.UnsupportedAccept(
                f"The model returned a {type(prediction).__name__} of {len(prediction)} outputs, which "
                f"{media} cannot hold; ask for application/json or define output_fn in code/inference.py"
            )
        return codecs.encode(prediction, accept)

    def accept_media_type(self, accept: str) -> str:
        return codecs.negotiate_accept(accept)

    def warm_up(self, model: object) -> None:
        """Nothing: a TorchScript module does not say what input shape it takes, so no generic request fits.

        Define ``model_warmup_fn(model_dir, model)`` in ``code/inference.py`` to run an example input; the
        worker calls it before this.
        """
        return None

    def _model_device(self, model: object) -> torch.device:
        if isinstance(model, torch.nn.Module):
            for parameter in model.parameters():
                return parameter.device
            for buffer in model.buffers():
                return buffer.device
        return self.device

    def _remember_output(self, model: object, output: object) -> None:
        if _returns_one_tensor(model) is not None:
            return
        with contextlib.suppress(TypeError):  # not weak-referenceable: it never batches
            self._tensor_output[model] = isinstance(output, torch.Tensor)

    def _splits_by_row(self, model: object) -> bool:
        known = _returns_one_tensor(model)
        if known is not None:
            return known
        try:
            return self._tensor_output.get(model, False)
        except TypeError:
            return False
