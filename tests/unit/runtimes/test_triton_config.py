from __future__ import annotations

import json

import numpy as np
import pytest

from modelhost.runtimes import protobuf_text
from modelhost.runtimes.protobuf_text import Message, Scalar, TextFormatError
from modelhost.runtimes.triton_config import (
    ConfigError,
    DynamicBatching,
    InstanceGroup,
    VersionPolicy,
    config_from_json,
    parse_config,
)

# Shapes seen in real repositories: lists of messages with and without colons, trailing commas, comments,
# enum names, maps, nested policies written compactly.
BERT = """
# A BERT model exported to ONNX, served on a GPU.
name: "bert"
platform: "onnxruntime_onnx"
version_policy: {all{}}
max_batch_size: 192
dynamic_batching {
  preferred_batch_size: [ 1,2,4,8,16,32,64,128,192]
  max_queue_delay_microseconds: 30000
}
input [
  {
    name: "input_ids"
    data_type: TYPE_INT64
    dims: [ 512 ]
  },
  {
    name: "input_mask"
    data_type: TYPE_INT64
    dims: [ 512 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 112 ]
    label_filename: "labels.txt"
  }
]
instance_group [
  {
    count: 2
    kind: KIND_GPU
    gpus: [ 0, 1 ]
  }
]
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
"""

PYTHON = """
name: "preprocess"
backend: "python"
max_batch_size: 0
input { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }
input < name: "SIZE" data_type: TYPE_INT32 dims: 2 reshape: { shape: [ 1, 2 ] } optional: true >
output { name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }
parameters: { key: "EXECUTION_ENV_PATH", value: {string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz"}}
parameters [ { key: "mode" value { string_value: 'fast' "er" } } ];
instance_group [{ kind: KIND_CPU }]
version_policy: { specific: { versions: [1, 3] } }
model_warmup [
  {
    name: "sample"
    batch_size: 1
    inputs { key: "IMAGE" value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "image.raw" } }
    inputs { key: "SIZE" value: { data_type: TYPE_INT32 dims: [ 2 ] random_data: true } }
    count: 3
  }
]
"""


def _error(text: str, name: str = "m") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, name)
    return caught.value.message


# --- the text format -------------------------------------------------------------------------------


def test_text_format_tree_keeps_order_repeats_and_lines() -> None:
    root = protobuf_text.parse('a: 1\nb { c: "x" c: "y" }\nd: [2, -3.5, 0x10, inf, ENUM]\n')
    assert root.names() == ["a", "b", "d"]
    (b,) = root.values("b")
    assert isinstance(b, Message) and b.line == 2
    assert [v.value for v in b.values("c") if isinstance(v, Scalar)] == ["x", "y"]
    values = root.values("d")
    assert [(v.value, v.kind) for v in values if isinstance(v, Scalar)] == [
        (2, "int"),
        (-3.5, "float"),
        (16, "int"),
        (float("inf"), "float"),
        ("ENUM", "identifier"),
    ]
    assert all(v.line == 3 for v in values)


def test_text_format_strings_resolve_escapes_and_concatenate() -> None:
    root = protobuf_text.parse(r"""s: "tab\there \"q\" \x41\101 caf\303\251" t: 'one' "two" """)
    (s,) = root.values("s")
    (t,) = root.values("t")
    assert isinstance(s, Scalar) and s.value == 'tab\there "q" AA café'
    assert isinstance(t, Scalar) and t.value == "onetwo"


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ("a: ", (1, 4), "expected a value (a number, a quoted string or a name), found end of file"),
        ("a 1", (1, 3), "expected ':', '{' or '[' after field name 'a', found '1'"),
        ("a { b: 1", (1, 9), "expected a field name or '}', found end of file"),
        ("a: [1 2]", (1, 7), "expected ',' or ']' in a list, found '2'"),
        ('a: "open', (1, 4), "unexpected character '\"'"),
        ("\n\n  }", (3, 3), "expected a field name, found '}'"),
    ],
)
def test_text_format_errors_say_where(text: str, where: tuple[int, int], expected: str) -> None:
    with pytest.raises(TextFormatError) as caught:
        protobuf_text.parse(text)
    assert (caught.value.line, caught.value.column) == where
    assert str(caught.value) == f"line {where[0]}, column {where[1]}: {expected}"


# --- the model configuration -----------------------------------------------------------------------


def test_realistic_onnx_config() -> None:
    config = parse_config(BERT, "bert")
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "bert",
        "onnxruntime_onnx",
        "onnxruntime",
        192,
    )
    assert [(s.name, s.data_type.wire_name, s.dims) for s in config.inputs] == [
        ("input_ids", "INT64", (512,)),
        ("input_mask", "INT64", (512,)),
    ]
    (output,) = config.outputs
    assert (output.data_type.numpy, output.dims, output.label_filename) == (np.float32, (112,), "labels.txt")
    assert config.dynamic_batching == DynamicBatching((1, 2, 4, 8, 16, 32, 64, 128, 192), 30000)
    assert config.instance_groups == (InstanceGroup("KIND_GPU", 2, (0, 1)),)
    assert config.version_policy == VersionPolicy("all")
    assert config.batched and config.max_batch_size_set


def test_realistic_python_config() -> None:
    config = parse_config(PYTHON, "preprocess")
    assert config.backend == "python" and not config.batched
    image, size = config.inputs
    assert (image.data_type.wire_name, image.data_type.numpy) == ("BYTES", np.object_)
    assert (size.dims, size.reshape, size.optional) == ((2,), (1, 2), True)
    assert config.outputs[0].dims == (3, -1, -1)
    assert config.parameters == {
        "EXECUTION_ENV_PATH": "$$TRITON_MODEL_DIRECTORY/env.tar.gz",
        "mode": "faster",
    }
    assert config.instance_groups == (InstanceGroup("KIND_CPU"),)
    assert config.version_policy == VersionPolicy("specific", versions=(1, 3))
    (warmup,) = config.model_warmup
    assert (warmup.name, warmup.batch_size, warmup.count) == ("sample", 1, 3)
    assert warmup.inputs["IMAGE"].source == "input_data_file"
    assert warmup.inputs["IMAGE"].input_data_file == "image.raw"
    assert (warmup.inputs["SIZE"].source, warmup.inputs["SIZE"].dims) == ("random_data", (2,))


def test_defaults_of_a_minimal_config() -> None:
    config = parse_config('platform: "onnxruntime_onnx"', "resnet")
    assert config.name == "resnet"
    assert (config.max_batch_size, config.max_batch_size_set, config.inputs, config.outputs) == (
        0,
        False,
        (),
        (),
    )
    assert config.version_policy == VersionPolicy("latest", num_versions=1)
    assert config.dynamic_batching is None
    assert config.model_warmup == ()


def test_version_policies_select_versions() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy("latest", num_versions=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy("all").select([3, 1]) == [1, 3]
    assert VersionPolicy("specific", versions=(1, 7)).select([1, 2]) == [1]
    latest = parse_config("version_policy: { latest: { num_versions: 2 } }", "m").version_policy
    assert latest == VersionPolicy("latest", num_versions=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_batch_size: -1", "config.pbtxt line 1: max_batch_size: must be at least 0, found -1"),
        ('max_batch_size: "8"', "config.pbtxt line 1: max_batch_size: expected a whole number, found '8'"),
        (
            "max_batch_size: 1\nmax_batch_size: 2",
            "config.pbtxt line 2: max_batch_size: written more than once",
        ),
        ("max_batch_sise: 8", "config.pbtxt line 1: max_batch_sise: unknown field; known fields here are"),
        (
            'input [ { name: "x" data_type: TYPE_FP23 dims: [1] } ]',
            "config.pbtxt line 1: input[0].data_type: expected one of TYPE_BOOL, ",
        ),
        ('input [ { name: "x" dims: [1] } ]', "config.pbtxt line 1: input[0].data_type: missing for 'x'"),
        ('output { name: "y" data_type: TYPE_FP32 }', "config.pbtxt line 1: output[0].dims: missing for 'y'"),
        (
            'input { name: "x" data_type: TYPE_FP32 dims: [0] }',
            "config.pbtxt line 1: input[0].dims: each dimension must be at least 1, or -1 for any size; "
            "found 0",
        ),
        (
            'input { name: "x" data_type: TYPE_FP32 dims: [4] reshape { shape: [3] } }',
            "config.pbtxt line 1: input[0].reshape: [3] holds 3 elements but dims [4] hold 4",
        ),
        (
            'input { name: "x" data_type: TYPE_FP32 dims: [1] }\n'
            'input { name: "x" data_type: TYPE_FP32 dims: [1] }',
            "config.pbtxt line 1: input: ['x'] named more than once",
        ),
        (
            "max_batch_size: 8\ndynamic_batching {\n  preferred_batch_size: [ 4, 16 ]\n}",
            "config.pbtxt line 3: dynamic_batching.preferred_batch_size: [16] exceed max_batch_size (8)",
        ),
        (
            "dynamic_batching { max_queue_delay_microseconds: -5 }",
            "config.pbtxt line 1: dynamic_batching.max_queue_delay_microseconds: must be at least 0, "
            "found -5",
        ),
        (
            "instance_group [ { kind: KIND_TPU } ]",
            "config.pbtxt line 1: instance_group[0].kind: expected one of",
        ),
        (
            "instance_group [ { count: 0 } ]",
            "config.pbtxt line 1: instance_group[0].count: must be at least 1",
        ),
        ("version_policy: { }", "config.pbtxt line 1: version_policy: give exactly one of latest"),
        (
            "version_policy: { specific: { } }",
            "config.pbtxt line 1: version_policy.specific.versions: missing: list the version directories",
        ),
        (
            'model_warmup [ { name: "w" inputs { key: "x" value { data_type: TYPE_FP32 dims: [1] } } } ]',
            "config.pbtxt line 1: model_warmup[0].inputs['x']: give exactly one of zero_data: true",
        ),
        (
            'max_batch_size: 2\nmodel_warmup [ { name: "w" batch_size: 4 } ]',
            "config.pbtxt line 2: model_warmup[0].batch_size: 4 exceeds the model's max_batch_size (2)",
        ),
        ('name: "other"', "config.pbtxt line 1: name: 'other' differs from the model's directory name 'm'"),
        ('platform: "caffe2_netdef"', "config.pbtxt line 1: platform: unknown platform 'caffe2_netdef'"),
        (
            'platform: "onnxruntime_onnx" backend: "python"',
            "config.pbtxt line 1: backend: 'python' contradicts platform 'onnxruntime_onnx'",
        ),
        (
            "sequence_batching { }",
            "config.pbtxt line 1: sequence_batching: stateful (sequence) models are not",
        ),
        (
            "model_transaction_policy { decoupled: true }",
            "config.pbtxt line 1: model_transaction_policy.decoupled: decoupled models",
        ),
        ("max_batch_size 8", "config.pbtxt does not parse: line 1, column 16: expected ':', '{' or '['"),
    ],
)
def test_errors_name_the_field_and_line(text: str, expected: str) -> None:
    assert _error(text).startswith(expected)


def test_json_form_round_trips_for_python_models() -> None:
    config = parse_config(PYTHON, "preprocess")
    as_json = config.to_json()
    # What model.py files read from args["model_config"].
    assert as_json["max_batch_size"] == 0
    assert as_json["input"][0] == {  # type: ignore[index]
        "name": "IMAGE",
        "data_type": "TYPE_STRING",
        "dims": [1],
        "is_shape_tensor": False,
        "format": "FORMAT_NONE",
        "optional": False,
        "allow_ragged_batch": False,
    }
    assert as_json["parameters"] == {
        "EXECUTION_ENV_PATH": {"string_value": "$$TRITON_MODEL_DIRECTORY/env.tar.gz"},
        "mode": {"string_value": "faster"},
    }
    json.dumps(as_json)  # plain JSON types only
    again = config_from_json(as_json, "preprocess", "auto-complete")
    assert (again.inputs, again.outputs, again.parameters) == (
        config.inputs,
        config.outputs,
        config.parameters,
    )
    assert again.instance_groups == config.instance_groups


def test_json_form_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_json(
            {"max_batch_size": 4, "input": [{"name": "x", "dims": [2]}]}, "m", "auto_complete_config"
        )
    assert caught.value.message.startswith(
        "auto_complete_config: line 0: input[0].data_type: missing for 'x'"
    )
