from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from modelhost.errors import ArtifactError
from modelhost.runtimes import codecs
from modelhost.runtimes.pytorch import InputMismatch, PytorchRuntime, find_model_file
from modelhost.runtimes.registry import load_runtime
from modelhost.runtimes.runtime import RuntimeResources

# torch.jit.script/save are deprecated upstream, yet TorchScript is what SageMaker's default model_fn loads.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RUNTIME = PytorchRuntime()
ROWS = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], dtype=np.float32)


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


class _TwoHeads(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(dim=1), x * 2


class _Named(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": x * 2}


class _Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 100):
            raise ValueError("too large")
        return x


class _Recorder(torch.nn.Module):
    """An eager module that remembers how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.grad_enabled: bool | None = None
        self.inference_mode: bool | None = None
        self.training_when_called: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled = torch.is_grad_enabled()
        self.inference_mode = torch.is_inference_mode_enabled()
        self.training_when_called = self.training
        return x * self.scale


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def scripted(tmp_path: Path) -> torch.jit.ScriptModule:
    model = RUNTIME.model_fn(str(_script(_mlp(), tmp_path / "model.pt").parent))
    assert isinstance(model, torch.jit.ScriptModule)
    return model


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_name_and_registry() -> None:
    assert RUNTIME.name == "pytorch"
    assert load_runtime("pytorch").name == "pytorch"


def test_model_fn_loads_torchscript_in_eval_mode(scripted: torch.jit.ScriptModule) -> None:
    assert not scripted.training
    with torch.no_grad():
        want = _mlp()(torch.from_numpy(ROWS))
    torch.testing.assert_close(scripted(torch.from_numpy(ROWS)), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["model.pth", "weights.pt", "net.pth"])
def test_model_fn_finds_other_names(tmp_path: Path, name: str) -> None:
    _script(_mlp(), tmp_path / name)
    (tmp_path / "README.md").write_text("hi")
    assert isinstance(RUNTIME.model_fn(str(tmp_path)), torch.jit.ScriptModule)


def test_conventional_names_win_over_other_candidates(tmp_path: Path) -> None:
    (tmp_path / "other.pt").write_bytes(b"x")
    (tmp_path / "model.pth").write_bytes(b"x")
    assert find_model_file(tmp_path).name == "model.pth"


def test_missing_model_file_says_what_was_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "code").mkdir()
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message == (
        f"No model file found in {tmp_path}: expected a TorchScript model.pt, model.pth or a single "
        "*.pt/*.pth file, or define model_fn in code/inference.py (found: code/, weights.bin)"
    )


def test_several_candidates_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "b.pth").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"several candidates: a\.pt, b\.pth"):
        find_model_file(tmp_path)


def test_a_state_dict_is_refused_with_what_was_found(tmp_path: Path) -> None:
    torch.save(_mlp().state_dict(), tmp_path / "model.pth")
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    message = caught.value.message
    assert message.startswith(
        "model.pth is not a TorchScript model: found a state_dict of 4 tensors (0.weight, 0.bias, "
        "2.weight, 2.bias). Save the model with torch.jit.save(torch.jit.script(model), 'model.pt'), or "
        "define model_fn in code/inference.py"
    )
    assert "1.6" in message


def test_a_pickled_module_is_refused_without_unpickling_it(tmp_path: Path) -> None:
    torch.save(_mlp(), tmp_path / "model.pt")
    with pytest.raises(ArtifactError) as caught:
        RUNTIME.model_fn(str(tmp_path))
    assert caught.value.message.startswith(
        "model.pt is not a TorchScript model: found a torch.save archive that does not load as weights only "
        "(a pickled module or other object?)"
    )
    assert "define model_fn in code/inference.py" in caught.value.message


def test_a_file_that_is_no_torch_file_at_all(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match=r"found not a torch\.save archive"):
        RUNTIME.model_fn(str(tmp_path))


def test_json_floats_become_float32_and_ints_int64() -> None:
    floats = RUNTIME.input_fn(b"[[1.5, 2.0], [3.0, 4.25]]", "application/json")
    assert isinstance(floats, torch.Tensor)
    assert floats.dtype == torch.float32
    torch.testing.assert_close(floats, torch.tensor([[1.5, 2.0], [3.0, 4.25]]))
    ints = RUNTIME.input_fn('{"instances": [[1, 2, 3]]}', "application/json; charset=utf-8")
    assert isinstance(ints, torch.Tensor)
    assert ints.dtype == torch.int64
    assert ints.tolist() == [[1, 2, 3]]


def test_csv_becomes_a_float32_matrix() -> None:
    tensor = RUNTIME.input_fn(b"1,2,3\n4,5,6.5\n", "text/csv")
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == torch.float32
    assert tensor.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8, np.dtype(">f4")])
def test_npy_keeps_its_dtype(dtype: np.dtype[np.generic]) -> None:
    array = np.arange(6).reshape(2, 3).astype(dtype)
    tensor = RUNTIME.input_fn(_npy(array), "application/x-npy")
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), array)
    assert tensor.numpy().dtype == np.dtype(dtype).newbyteorder("=")


def test_non_numeric_input_is_refused() -> None:
    with pytest.raises(codecs.CodecError, match="Expected numbers"):
        RUNTIME.input_fn(b'[["a", "b"]]', "application/json")


def test_unknown_content_type_is_refused() -> None:
    with pytest.raises(codecs.UnsupportedContentType):
        RUNTIME.input_fn(b"\x89PNG", "image/png")


def test_predict_matches_the_model_and_returns_numpy(scripted: torch.jit.ScriptModule) -> None:
    got = RUNTIME.predict_fn(RUNTIME.input_fn(json.dumps(ROWS.tolist()), "application/json"), scripted)
    assert isinstance(got, np.ndarray)
    with torch.no_grad():
        want = _mlp()(torch.from_numpy(ROWS)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_predict_runs_in_inference_mode_and_eval() -> None:
    model = _Recorder().train()
    got = RUNTIME.predict_fn(torch.ones(2, 3), model)
    assert model.inference_mode is True
    assert model.grad_enabled is False
    assert model.training_when_called is False
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, np.ones((2, 3), dtype=np.float32))


def test_predict_takes_joined_numpy_rows() -> None:
    # A batch reaches predict_fn as np.concatenate of batch_rows' arrays.
    got = RUNTIME.predict_fn(np.full((3, 2), 2.0, dtype=np.float32), _Recorder())
    np.testing.assert_array_equal(got, np.full((3, 2), 2.0, dtype=np.float32))


def test_tuple_and_dict_outputs_become_numpy_structures(tmp_path: Path) -> None:
    two = RUNTIME.model_fn(str(_script(_TwoHeads(), tmp_path / "model.pt").parent))
    total, double = RUNTIME.predict_fn(torch.from_numpy(ROWS), two)  # type: ignore[misc]
    np.testing.assert_allclose(total, ROWS.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(double, ROWS * 2)
    named = torch.jit.script(_Named())
    assert RUNTIME.predict_fn(torch.from_numpy(ROWS), named).keys() == {"double"}  # type: ignore[attr-defined]


def test_a_shape_error_names_the_shape_and_the_signature(scripted: torch.jit.ScriptModule) -> None:
    with pytest.raises(InputMismatch) as caught:
        RUNTIME.predict_fn(RUNTIME.input_fn(b"[[1.0, 2.0, 3.0]]", "application/json"), scripted)
    assert caught.value.message == (
        "The model cannot take the input it was given, a float32 tensor of shape (1, 3): mat1 and mat2 "
        "shapes cannot be multiplied (1x3 and 4x8). The model's signature is forward(Tensor input) -> "
        "Tensor. Send input of the shape and dtype the model was built for"
    )
    assert isinstance(caught.value, codecs.CodecError)


def test_integer_json_for_a_float_model_says_how_to_fix_it(scripted: torch.jit.ScriptModule) -> None:
    with pytest.raises(InputMismatch, match=r"int64 tensor of shape \(1, 4\).*write floats \(1\.0\)"):
        RUNTIME.predict_fn(RUNTIME.input_fn(b"[[1, 2, 3, 4]]", "application/json"), scripted)


def test_an_eager_shape_error_has_no_signature() -> None:
    with pytest.raises(InputMismatch) as caught:
        RUNTIME.predict_fn(torch.ones(1, 3), _mlp())
    assert "float32 tensor of shape (1, 3): mat1 and mat2 shapes cannot be multiplied" in caught.value.message
    assert "signature" not in caught.value.message


def test_other_torchscript_failures_keep_only_the_error_line() -> None:
    model = torch.jit.script(_Raises())
    with pytest.raises(RuntimeError) as caught:
        RUNTIME.predict_fn(torch.full((1, 2), 100.0), model)
    assert str(caught.value) == "the TorchScript model failed: ValueError: too large"


def test_output_fn_encodes_json_npy_and_csv() -> None:
    prediction = np.array([[0.25, 1.5]], dtype=np.float32)
    body, content_type = RUNTIME.output_fn(prediction, "application/json")
    assert (body, content_type) == (b"[[0.25,1.5]]", "application/json")
    body, content_type = RUNTIME.output_fn(prediction, "application/x-npy")
    assert content_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), prediction)
    assert RUNTIME.output_fn(prediction, "text/csv") == (b"0.25,1.5\n", "text/csv")


def test_output_fn_takes_tensors_from_a_user_predict_fn() -> None:
    body, _ = RUNTIME.output_fn(torch.tensor([1.0, 2.0], requires_grad=True) * 2, "application/json")
    assert body == b"[2.0,4.0]"


def test_structured_outputs_go_to_json_but_not_to_npy_or_csv() -> None:
    outputs = (np.array([1.0], dtype=np.float32), np.array([[2, 3]]))
    assert RUNTIME.output_fn(outputs, "application/json") == (b"[[1.0],[[2,3]]]", "application/json")
    assert RUNTIME.output_fn({"a": np.array([1])}, "application/json")[0] == b'{"a":[1]}'
    with pytest.raises(codecs.UnsupportedAccept, match="tuple of 2 outputs, which text/csv cannot hold"):
        RUNTIME.output_fn(outputs, "text/csv")


def test_batch_rows_for_a_model_typed_to_return_one_tensor(scripted: torch.jit.ScriptModule) -> None:
    data = RUNTIME.input_fn(b"[[1.0, 2.0, 3.0, 4.0]]", "application/json")
    rows = RUNTIME.batch_rows(data, scripted)
    assert rows is not None
    np.testing.assert_array_equal(rows, np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    assert RUNTIME.batch_rows(torch.tensor(1.0), scripted) is None


def test_multi_output_models_never_batch(tmp_path: Path) -> None:
    two = RUNTIME.model_fn(str(_script(_TwoHeads(), tmp_path / "model.pt").parent))
    assert RUNTIME.batch_rows(torch.ones(2, 4), two) is None


def test_eager_models_batch_once_they_returned_one_tensor() -> None:
    runtime = PytorchRuntime()
    model = _Recorder()
    assert runtime.batch_rows(torch.ones(2, 3), model) is None
    runtime.predict_fn(torch.ones(1, 3), model)
    rows = runtime.batch_rows(torch.ones(2, 3), model)
    assert rows is not None and rows.shape == (2, 3)


def test_threads_and_device_follow_the_resources(restore_threads: None) -> None:
    runtime = PytorchRuntime(RuntimeResources(vcpus=3, gpu_ids=(0,)))
    assert torch.get_num_threads() == 3
    want = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(runtime.device) == want
    assert str(PytorchRuntime(RuntimeResources(vcpus=1)).device) == "cpu"


def test_warm_up_needs_no_input(scripted: torch.jit.ScriptModule) -> None:
    assert RUNTIME.warm_up(scripted) is None
