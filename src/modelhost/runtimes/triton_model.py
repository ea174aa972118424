"""One loaded Triton model: its config, its backend, and the checks and batching Triton does around a backend.

Built by ``triton_repository``; the Triton runtime calls ``conform`` on each decoded request (shapes and
types against config.pbtxt, as Triton's core checks them), ``infer`` on one or several requests (tensor
backends get compatible requests stacked along the batch axis, Python models get the list, as Triton's
dynamic batcher hands them over) and ``warm_up`` with config.pbtxt's ``model_warmup`` samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from modelhost.errors import ArtifactError
from modelhost.runtimes.codecs import CodecError
from modelhost.runtimes.triton_config import ModelConfig, ModelWarmup, TensorSpec
from modelhost.runtimes.triton_kserve import InferRequest, OutputTensor, RequestedOutput, deserialize_bytes
from modelhost.runtimes.triton_types import wire_type_of


class ModelReportedError(CodecError):
    """The model answered a request with an error (a Python model's ``TritonError``): 400, as Triton does."""


Outcome = Mapping[str, np.ndarray] | ModelReportedError


class Backend(Protocol):
    """Runs requests already checked against the config; one outcome per request, in order."""

    def execute(self, requests: Sequence[InferRequest]) -> list[Outcome]: ...


@dataclass(frozen=True, slots=True)
class InferResponse:
    """What one request gets: the outputs to send, or the model's error for it."""

    model_name: str
    model_version: str
    request_id: str
    outputs: tuple[OutputTensor, ...] = ()
    error: ModelReportedError | None = None


def _fail(model: str, problem: str) -> CodecError:
    return CodecError(f"Model {model!r}: {problem}")


def _dims_match(shape: Sequence[int], dims: Sequence[int]) -> bool:
    return len(shape) == len(dims) and all(want in (-1, got) for got, want in zip(shape, dims, strict=True))


def _reshaped(array: np.ndarray, leading: tuple[int, ...], shape: tuple[int, ...] | None) -> np.ndarray:
    return array if shape is None else array.reshape(leading + shape)


def stacked(
    requests: Sequence[InferRequest],
    batched: bool,
    run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
) -> list[Outcome]:
    """Run requests whose inputs concatenate (equal dtypes and shapes past the batch axis) in one call each.

    For tensor backends: a batch of requests becomes one model call per run of compatible neighbours, and
    every output is split back by each request's batch size.
    """
    if not batched:
        return [run(request.inputs) for request in requests]

    def signature(request: InferRequest) -> tuple[object, ...]:
        return tuple((name, a.dtype, a.shape[1:]) for name, a in request.inputs.items())

    outcomes: list[Outcome] = []
    for _, group_iter in itertools.groupby(requests, key=signature):
        group = list(group_iter)
        if len(group) == 1:
            outcomes.append(run(group[0].inputs))
            continue
        sizes = [len(next(iter(request.inputs.values()))) for request in group]
        feeds = {name: np.concatenate([r.inputs[name] for r in group]) for name in group[0].inputs}
        results = run(feeds)
        bounds = np.cumsum(sizes)[:-1]
        for name, array in results.items():
            if len(array) != sum(sizes):
                raise RuntimeError(
                    f"output {name!r} has {len(array)} rows for a batch of {sum(sizes)}: the model must keep "
                    "the batch axis first"
                )
        split = {name: np.split(array, bounds) for name, array in results.items()}
        outcomes.extend({name: parts[i] for name, parts in split.items()} for i in range(len(group)))
    return outcomes


class TritonModel:
    """A model of a Triton repository, ready to serve one version."""

    def __init__(self, config: ModelConfig, version: int, directory: Path, backend: Backend) -> None:
        self.config = config
        self.version = version
        self.directory = directory  # <repository>/<model name>
        self.backend = backend
        self._labels: dict[str, list[str]] = {}
        for spec in config.outputs:
            if spec.label_filename:
                path = directory / spec.label_filename
                if not path.is_file():
                    raise ArtifactError(
                        f"output {spec.name!r} names label_filename {spec.label_filename!r}, but {path} "
                        "is missing"
                    )
                self._labels[spec.name] = path.read_text(encoding="utf-8").splitlines()

    def describe_inputs(self) -> str:
        return ", ".join(spec.describe(self.config.batched) for spec in self.config.inputs)

    def batch_size(self, request: InferRequest) -> int:
        """Rows of a conformed request of a batching model (its inputs' shared first dimension)."""
        return len(next(iter(request.inputs.values()))) if request.inputs else 0

    def conform(self, request: InferRequest) -> InferRequest:
        """``request`` checked against the config, inputs in config order and reshaped for the backend."""
        config = self.config
        if not config.inputs:
            return request  # a Python model that declares no inputs takes what it is given
        unknown = [name for name in request.inputs if config.input(name) is None]
        if unknown:
            raise _fail(
                config.name, f"unexpected input {unknown[0]!r}; the inputs are {self.describe_inputs()}"
            )
        missing = [s.name for s in config.inputs if not s.optional and s.name not in request.inputs]
        if missing:
            raise _fail(config.name, f"missing input {missing[0]!r}; the inputs are {self.describe_inputs()}")
        batch: int | None = None
        inputs: dict[str, np.ndarray] = {}
        for spec in config.inputs:
            array = request.inputs.get(spec.name)
            if array is None:
                continue
            inputs[spec.name] = self._conform_input(spec, array)
            if config.batched:
                if batch is not None and array.shape[0] != batch:
                    raise _fail(
                        config.name, f"input {spec.name!r} has batch size {array.shape[0]}, not {batch}"
                    )
                batch = array.shape[0]
        for output in request.outputs:
            if config.outputs and config.output(output.name) is None:
                names = ", ".join(repr(s.name) for s in config.outputs)
                raise _fail(config.name, f"unexpected output {output.name!r}; the outputs are {names}")
        return replace(request, inputs=inputs)

    def _conform_input(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        config = self.config
        got = wire_type_of(array).wire_name
        if got != spec.data_type.wire_name:
            raise _fail(
                config.name,
                f"input {spec.name!r} has datatype {got}, but the model expects {spec.data_type.wire_name}",
            )
        dims = spec.dims
        if config.batched:
            if array.ndim < 1 or not 1 <= array.shape[0] <= config.max_batch_size:
                raise _fail(
                    config.name,
                    f"input {spec.name!r} has shape {list(array.shape)}: its first dimension is the batch "
                    f"size, from 1 to max_batch_size {config.max_batch_size}, followed by {list(dims)}",
                )
            if not _dims_match(array.shape[1:], dims):
                raise _fail(
                    config.name,
                    f"input {spec.name!r} has shape {list(array.shape)}, expected {[-1, *dims]} "
                    "(-1: any size)",
                )
            return _reshaped(array, array.shape[:1], spec.reshape)
        if not _dims_match(array.shape, dims):
            raise _fail(
                config.name, f"input {spec.name!r} has shape {list(array.shape)}, expected {list(dims)}"
            )
        return _reshaped(array, (), spec.reshape)

    def infer(self, requests: Sequence[InferRequest]) -> list[InferResponse]:
        """Run conformed requests together; one response each, in order."""
        outcomes = self.backend.execute(requests)
        if len(outcomes) != len(requests):
            raise RuntimeError(f"the backend answered {len(outcomes)} of {len(requests)} requests")
        version = str(self.version)
        responses = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, ModelReportedError):
                responses.append(InferResponse(self.config.name, version, request.id, error=outcome))
            else:
                outputs = tuple(self._outputs(request, outcome))
                responses.append(InferResponse(self.config.name, version, request.id, outputs))
        return responses

    def _outputs(self, request: InferRequest, produced: Mapping[str, np.ndarray]) -> list[OutputTensor]:
        config = self.config
        default = request.binary_outputs
        wanted = (
            request.outputs
            or tuple(RequestedOutput(spec.name, default) for spec in config.outputs)
            or tuple(RequestedOutput(name, default) for name in produced)
        )
        tensors = []
        for output in wanted:
            array = produced.get(output.name)
            if array is None:
                raise RuntimeError(
                    f"the model did not produce output {output.name!r} (it gave {', '.join(produced)})"
                )
            spec = config.output(output.name)
            if spec is not None and spec.reshape is not None:
                leading = array.shape[:1] if config.batched else ()
                array = array.reshape(leading + spec.dims)
            if output.classification:
                array = self._classes(output.name, array, output.classification)
            tensors.append(OutputTensor(output.name, array, output.binary))
        return tensors

    def _classes(self, name: str, scores: np.ndarray, count: int) -> np.ndarray:
        """Triton's classification extension: the top ``count`` classes as "score:index[:label]" strings."""
        rows = scores.reshape(len(scores), -1) if self.config.batched else scores.reshape(1, -1)
        labels = self._labels.get(name, [])
        top = np.argsort(-rows, axis=1, kind="stable")[:, :count]
        entries = [
            [f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in indices]
            for row, indices in zip(rows, top, strict=True)
        ]
        result = np.empty((len(entries), top.shape[1]), dtype=object)
        result[:] = [[entry.encode("utf-8") for entry in row] for row in entries]
        return result if self.config.batched else result[0]

    def warm_up(self) -> int:
        """Run config.pbtxt's ``model_warmup`` samples; returns how many ran. Failures are load failures."""
        for sample in self.config.model_warmup:
            requests = self._warmup_requests(sample)
            for _ in range(sample.count):
                try:
                    responses = self.infer([self.conform(request) for request in requests])
                except Exception as exc:
                    raise ArtifactError(
                        f"model_warmup {sample.name!r} of model {self.config.name!r} failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                errors = [r.error.message for r in responses if r.error is not None]
                if errors:
                    raise ArtifactError(
                        f"model_warmup {sample.name!r} of model {self.config.name!r} failed: {errors[0]}"
                    )
        return len(self.config.model_warmup)

    def _warmup_requests(self, sample: ModelWarmup) -> list[InferRequest]:
        """Triton sends ``batch_size`` requests of one sample each (a batching model) or one request."""
        rng = np.random.default_rng(0)
        inputs: dict[str, np.ndarray] = {}
        for name, spec in sample.inputs.items():
            shape = tuple(1 if dim == -1 else dim for dim in spec.dims)
            dtype = spec.data_type.numpy
            if dtype is None:
                raise ArtifactError(
                    f"model_warmup {sample.name!r}: {spec.data_type.wire_name} is not supported"
                )
            count = int(np.prod(shape, dtype=np.int64))
            if spec.source == "input_data_file":
                path = self.directory / "warmup" / spec.input_data_file
                if not path.is_file():
                    raise ArtifactError(
                        f"model_warmup {sample.name!r}: input {name!r} reads {path}, which is missing"
                    )
                raw = path.read_bytes()
                if dtype.kind == "O":
                    array = deserialize_bytes(raw, count)
                else:
                    array = np.frombuffer(
                        raw[: count * dtype.itemsize], dtype=dtype.newbyteorder("<")
                    ).astype(dtype)
                if array.size != count:
                    raise ArtifactError(
                        f"model_warmup {sample.name!r}: {path.name} holds too little data for input {name!r} "
                        f"of shape {list(shape)}"
                    )
            elif dtype.kind == "O":
                array = np.full(count, b"", dtype=object)
            elif spec.source == "random_data" and dtype.kind == "f":
                array = rng.random(count).astype(dtype)
            elif spec.source == "random_data":
                array = rng.integers(0, 2 if dtype.kind == "b" else 100, count).astype(dtype)
            else:
                array = np.zeros(count, dtype=dtype)
            inputs[name] = array.reshape(shape)
        if not self.config.batched:
            return [InferRequest(inputs)]
        one = InferRequest({name: array[np.newaxis] for name, array in inputs.items()})
        return [one] * sample.batch_size
