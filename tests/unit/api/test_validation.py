"""validate_request against the real botocore models of SageMaker and Application Auto Scaling."""

from __future__ import annotations

import copy
import json
from typing import Any

import botocore.session
import pytest
from botocore.model import OperationModel, ServiceModel
from botocore.serialize import create_serializer

from modelhost.api.validation import MAX_SHOWN_VIOLATIONS, validate_request
from modelhost.errors import ValidationError

_SESSION = botocore.session.get_session()
SAGEMAKER = _SESSION.get_service_model("sagemaker")
AUTOSCALING = _SESSION.get_service_model("application-autoscaling")

NAME_PATTERN = "[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"


def op(name: str, service: Any = SAGEMAKER) -> Any:
    return service.operation_model(name)


def error_for(operation: str, params: object, service: Any = SAGEMAKER) -> str:
    with pytest.raises(ValidationError) as caught:
        validate_request(op(operation, service), params)
    return caught.value.message


def endpoint_config(**overrides: Any) -> dict[str, Any]:
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "my-model",
        "InitialInstanceCount": 2,
        "InstanceType": "ml.m5.large",
        "InitialVariantWeight": 1.0,
    }
    return {"EndpointConfigName": "cfg-1", "ProductionVariants": [variant], **overrides}


def full_create_model() -> dict[str, Any]:
    return {
        "ModelName": "my-model",
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "PrimaryContainer": {
            "Image": "sklearn:1.3",
            "ModelDataUrl": "s3://bucket/models/model.tar.gz",
            "Mode": "SingleModel",
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "LOG_LEVEL": "debug\nwith newline"},
        },
        "Tags": [{"Key": "team", "Value": "ml platform"}],
        "EnableNetworkIsolation": False,
    }


# -- valid requests ---------------------------------------------------------------------------------------


def test_valid_full_create_model_passes_and_is_left_untouched() -> None:
    params = full_create_model()
    before = copy.deepcopy(params)
    validate_request(op("CreateModel"), params)
    assert params == before


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("CreateEndpointConfig", endpoint_config()),
        ("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "cfg-1"}),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ep",
                "DesiredWeightsAndCapacities": [{"VariantName": "v1", "DesiredWeight": 0}],
            },
        ),
        ("ListEndpoints", {}),
        (
            "ListEndpoints",
            {
                "SortBy": "CreationTime",
                "SortOrder": "Descending",
                "StatusEquals": "InService",
                "MaxResults": 100,
            },
        ),
    ],
)
def test_valid_requests_pass(operation: str, params: dict[str, Any]) -> None:
    validate_request(op(operation), params)


def test_what_botocore_itself_serializes_passes() -> None:
    operation = op("CreateEndpointConfig")
    request = create_serializer("json").serialize_to_request(endpoint_config(), operation)
    validate_request(operation, json.loads(request["body"]))


@pytest.mark.parametrize("when", [1700000000, 1700000000.25, "2024-01-02T03:04:05Z", "2024-01-02"])
def test_timestamps_as_epoch_numbers_or_iso_strings_pass(when: object) -> None:
    validate_request(op("ListEndpoints"), {"CreationTimeAfter": when})


def test_explicit_null_for_optional_member_counts_as_absent() -> None:
    validate_request(op("ListEndpoints"), {"NextToken": None})


def test_autoscaling_register_scalable_target_passes() -> None:
    params = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/ep/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "MinCapacity": 1,
        "MaxCapacity": 4,
        "SuspendedState": {"DynamicScalingInSuspended": True},
        "Tags": {"team": "ml"},
    }
    validate_request(op("RegisterScalableTarget", AUTOSCALING), params)


# -- the body itself -------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, [], "x", 3])
def test_body_must_be_a_json_object(body: object) -> None:
    assert error_for("ListEndpoints", body) == "Request body must be a JSON object"


# -- strings ---------------------------------------------------------------------------------------------


def test_pattern_violation_uses_aws_wording() -> None:
    message = error_for("CreateEndpoint", {"EndpointName": "bad name!", "EndpointConfigName": "cfg"})
    assert message == (
        "1 validation error detected: Value 'bad name!' at 'endpointName' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {NAME_PATTERN}"
    )


def test_pattern_must_match_the_whole_value() -> None:
    # re.match would accept the valid prefix "ok"; AWS (Java matches()) does not.
    message = error_for("CreateEndpoint", {"EndpointName": "ok_", "EndpointConfigName": "cfg"})
    assert "at 'endpointName'" in message


def test_max_length_reports_length_and_skips_the_pattern() -> None:
    message = error_for("CreateEndpoint", {"EndpointName": "a" * 64, "EndpointConfigName": "cfg"})
    assert message.startswith("1 validation error detected: ")
    assert message.endswith(
        "at 'endpointName' failed to satisfy constraint: Member must have length less than or equal to 63"
    )


def test_min_length() -> None:
    message = error_for(
        "CreateEndpoint",
        {"EndpointName": "ep", "EndpointConfigName": "cfg", "Tags": [{"Key": "", "Value": "v"}]},
    )
    assert (
        "Value '' at 'tags.1.member.key' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1" in message
    )


def test_uncompilable_java_pattern_is_skipped_not_fatal() -> None:
    # Tag keys use \p{L}, which Python's re cannot compile; only the length is checked.
    validate_request(
        op("CreateEndpoint"),
        {"EndpointName": "ep", "EndpointConfigName": "cfg", "Tags": [{"Key": "ключ", "Value": "значение"}]},
    )


@pytest.mark.parametrize(
    ("member", "value", "path", "allowed"),
    [
        ("SortBy", "Size", "sortBy", "[Name, CreationTime, Status]"),
        ("SortOrder", "ascending", "sortOrder", "[Ascending, Descending]"),
        (
            "StatusEquals",
            "Running",
            "statusEquals",
            "[OutOfService, Creating, Updating, SystemUpdating, "
            "RollingBack, InService, Deleting, Failed, UpdateRollbackFailed]",
        ),
    ],
)
def test_enum_violation(member: str, value: str, path: str, allowed: str) -> None:
    assert error_for("ListEndpoints", {member: value}) == (
        f"1 validation error detected: Value '{value}' at '{path}' failed to satisfy constraint: "
        f"Member must satisfy enum value set: {allowed}"
    )


# -- numbers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (0, "Member must have value greater than or equal to 1"),
        (101, "Member must have value less than or equal to 100"),
    ],
)
def test_integer_range(value: int, rule: str) -> None:
    message = error_for("ListEndpoints", {"MaxResults": value})
    assert message == (
        f"1 validation error detected: Value {value} at 'maxResults' failed to satisfy constraint: {rule}"
    )


def test_integer_without_model_bounds_is_limited_to_java_int() -> None:
    params = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/ep/variant/v",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "MaxCapacity": 2**31,
    }
    message = error_for("RegisterScalableTarget", params, AUTOSCALING)
    assert "Member must have value less than or equal to 2147483647" in message


def test_float_minimum_and_int_accepted_for_float() -> None:
    params = {
        "EndpointName": "ep",
        "DesiredWeightsAndCapacities": [{"VariantName": "v", "DesiredWeight": -1}],
    }
    message = error_for("UpdateEndpointWeightsAndCapacities", params)
    assert message == (
        "1 validation error detected: Value -1 at 'desiredWeightsAndCapacities.1.member.desiredWeight' "
        "failed to satisfy constraint: Member must have value greater than or equal to 0"
    )


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (True, "Member must be a number"),
        ("0.5", "Member must be a number"),
        (float("nan"), "Member must be a finite number"),
    ],
)
def test_float_bad_types(value: object, rule: str) -> None:
    params = {
        "EndpointName": "ep",
        "DesiredWeightsAndCapacities": [{"VariantName": "v", "DesiredWeight": value}],
    }
    assert error_for("UpdateEndpointWeightsAndCapacities", params).endswith(rule)


# -- types -----------------------------------------------------------------------------------------------


def test_string_where_integer_expected() -> None:
    params = endpoint_config()
    params["ProductionVariants"][0]["InitialInstanceCount"] = "abc"
    assert error_for("CreateEndpointConfig", params) == (
        "1 validation error detected: Value 'abc' at 'productionVariants.1.member.initialInstanceCount' "
        "failed to satisfy constraint: Member must be an integer"
    )


@pytest.mark.parametrize("value", [True, False, 1.0])
def test_bool_and_float_are_not_integers(value: object) -> None:
    assert error_for("ListEndpoints", {"MaxResults": value}).endswith("Member must be an integer")


def test_bool_shown_as_json_literal() -> None:
    assert "Value true at 'maxResults'" in error_for("ListEndpoints", {"MaxResults": True})


@pytest.mark.parametrize("value", [1, "true", 0])
def test_boolean_must_be_bool(value: object) -> None:
    params = full_create_model() | {"EnableNetworkIsolation": value}
    assert error_for("CreateModel", params).endswith(
        "at 'enableNetworkIsolation' failed to satisfy constraint: Member must be a boolean"
    )


@pytest.mark.parametrize("value", [True, "yesterday", [1], float("inf")])
def test_bad_timestamps(value: object) -> None:
    assert "Member must be a timestamp" in error_for("ListEndpoints", {"CreationTimeAfter": value})


def test_non_string_where_string_expected() -> None:
    assert error_for("ListEndpoints", {"NameContains": 5}).endswith(
        "at 'nameContains' failed to satisfy constraint: Member must be a string"
    )


def test_structure_list_and_map_type_errors() -> None:
    params = full_create_model() | {"PrimaryContainer": [], "Tags": {"a": "b"}}
    message = error_for("CreateModel", params)
    assert message.startswith("2 validation errors detected: ")
    assert "at 'primaryContainer' failed to satisfy constraint: Member must be a JSON object" in message
    assert "at 'tags' failed to satisfy constraint: Member must be a list" in message

    params = full_create_model()
    params["PrimaryContainer"]["Environment"] = ["A=1"]
    assert error_for("CreateModel", params).endswith(
        "at 'primaryContainer.environment' failed to satisfy constraint: Member must be a JSON object"
    )


# -- required and unknown members ------------------------------------------------------------------------


def test_missing_and_null_required_members() -> None:
    assert error_for("CreateEndpoint", {"EndpointName": "ep"}) == (
        "1 validation error detected: Value null at 'endpointConfigName' failed to satisfy constraint: "
        "Member must not be null"
    )
    message = error_for("CreateEndpoint", {"EndpointName": None, "EndpointConfigName": None})
    assert message.startswith("2 validation errors detected: ")


def test_missing_required_member_in_nested_list_item() -> None:
    params = endpoint_config()
    del params["ProductionVariants"][0]["VariantName"]
    assert error_for("CreateEndpointConfig", params).endswith(
        "Value null at 'productionVariants.1.member.variantName' failed to satisfy constraint: "
        "Member must not be null"
    )


def test_null_list_item_is_rejected() -> None:
    params = endpoint_config(ProductionVariants=[None])
    assert error_for("CreateEndpointConfig", params).endswith(
        "Value null at 'productionVariants.1.member' failed to satisfy constraint: Member must not be null"
    )


def test_unknown_nested_member_names_it_and_where() -> None:
    params = endpoint_config()
    params["ProductionVariants"][0]["Foo"] = 1
    message = error_for("CreateEndpointConfig", params)
    assert message.startswith(
        "1 validation error detected: Unknown member 'Foo' at 'productionVariants.1.member' ("
    )
    assert "VariantName" in message


def test_unknown_top_level_member_suggests_the_close_name() -> None:
    message = error_for("CreateEndpoint", {"endpointName": "ep", "EndpointConfigName": "cfg"})
    assert "Unknown member 'endpointName' (did you mean 'EndpointName'?)" in message
    assert "Value null at 'endpointName' failed to satisfy constraint: Member must not be null" in message


def test_operation_without_input_rejects_any_member() -> None:
    no_input = OperationModel({"name": "Ping", "http": {}}, SAGEMAKER)
    validate_request(no_input, {})
    with pytest.raises(ValidationError, match="Unknown member 'x'"):
        validate_request(no_input, {"x": 1})


# -- lists and maps --------------------------------------------------------------------------------------


def test_nested_list_path_is_one_based() -> None:
    second = dict(endpoint_config()["ProductionVariants"][0], VariantName="bad name!")
    params = endpoint_config(ProductionVariants=[endpoint_config()["ProductionVariants"][0], second])
    assert error_for("CreateEndpointConfig", params) == (
        "1 validation error detected: Value 'bad name!' at 'productionVariants.2.member.variantName' "
        f"failed to satisfy constraint: Member must satisfy regular expression pattern: {NAME_PATTERN}"
    )


def test_list_count_limits() -> None:
    message = error_for("CreateEndpointConfig", endpoint_config(ProductionVariants=[]))
    assert message.endswith(
        "at 'productionVariants' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1"
    )
    variant = endpoint_config()["ProductionVariants"][0]
    message = error_for("CreateEndpointConfig", endpoint_config(ProductionVariants=[variant] * 11))
    assert message.startswith("1 validation error detected: ")
    assert message.endswith("Member must have length less than or equal to 10")


def test_map_key_pattern() -> None:
    params = full_create_model()
    params["PrimaryContainer"]["Environment"] = {"1BAD-KEY": "v", "GOOD": "v"}
    assert error_for("CreateModel", params) == (
        "1 validation error detected: Value '1BAD-KEY' at 'primaryContainer.environment' failed to satisfy "
        "constraint: Map keys must satisfy constraint: "
        "[Member must satisfy regular expression pattern: [a-zA-Z_][a-zA-Z0-9_]*]"
    )


def test_map_value_constraints_and_count() -> None:
    params = full_create_model()
    params["PrimaryContainer"]["Environment"] = {"A": "x" * 1025}
    message = error_for("CreateModel", params)
    assert (
        "at 'primaryContainer.environment.A' failed to satisfy constraint: "
        "Member must have length less than or equal to 1024" in message
    )

    params["PrimaryContainer"]["Environment"] = {f"K{i}": "v" for i in range(101)}
    assert error_for("CreateModel", params).endswith(
        "at 'primaryContainer.environment' failed to satisfy constraint: "
        "Member must have length less than or equal to 100"
    )


def test_map_value_of_wrong_type() -> None:
    params = full_create_model()
    params["PrimaryContainer"]["Environment"] = {"A": 1, "B": None}
    message = error_for("CreateModel", params)
    assert (
        "Value 1 at 'primaryContainer.environment.A' failed to satisfy constraint: Member must be a string"
        in message
    )
    assert "Value null at 'primaryContainer.environment.B'" in message


# -- many errors, long values ----------------------------------------------------------------------------


def test_several_errors_are_all_reported() -> None:
    params = endpoint_config()
    params["ProductionVariants"][0]["VariantName"] = "bad name!"
    del params["EndpointConfigName"]
    message = error_for("CreateEndpointConfig", params)
    assert message == (
        "2 validation errors detected: Value 'bad name!' at 'productionVariants.1.member.variantName' failed "
        f"to satisfy constraint: Member must satisfy regular expression pattern: {NAME_PATTERN}; "
        "Value null at 'endpointConfigName' failed to satisfy constraint: Member must not be null"
    )


def test_many_errors_are_counted_but_only_some_shown() -> None:
    names = [{"VariantName": f"bad name {i}!"} for i in range(25)]
    params = {"EndpointName": "ep", "DesiredWeightsAndCapacities": names}
    message = error_for("UpdateEndpointWeightsAndCapacities", params)
    assert message.startswith("25 validation errors detected: ")
    assert message.count("failed to satisfy constraint") == MAX_SHOWN_VIOLATIONS
    assert message.endswith(f"; and {25 - MAX_SHOWN_VIOLATIONS} more")


def test_many_unknown_members_are_counted() -> None:
    params = {f"Unknown{i}": i for i in range(50)}
    message = error_for("ListEndpoints", params)
    assert message.startswith("50 validation errors detected: ")
    assert message.count("Unknown member") == MAX_SHOWN_VIOLATIONS


def test_huge_values_are_clipped_in_messages() -> None:
    blob = "x" * 6_000_000
    message = error_for("CreateEndpoint", {"EndpointName": blob, "EndpointConfigName": "cfg"})
    assert len(message) < 500
    assert "(6000000 chars)" in message

    message = error_for("ListEndpoints", {"NameContains": {"k": ["v" * 10_000] * 1000}})
    assert len(message) < 1000


# -- shapes the two services do not use yet --------------------------------------------------------------


def _tiny_operation() -> Any:
    model = {
        "metadata": {"protocol": "json", "apiVersion": "2024-01-01"},
        "operations": {"Put": {"name": "Put", "http": {}, "input": {"shape": "PutInput"}}},
        "shapes": {
            "PutInput": {
                "type": "structure",
                "members": {
                    "Data": {"shape": "Data"},
                    "Counts": {"shape": "Counts"},
                    "Doc": {"shape": "Doc"},
                },
            },
            "Data": {"type": "blob"},
            "Counts": {"type": "map", "key": {"shape": "Key"}, "value": {"shape": "Count"}},
            "Key": {"type": "string"},
            "Count": {"type": "long"},
            "Doc": {"type": "document"},
        },
    }
    return ServiceModel(model).operation_model("Put")


def test_blob_must_be_a_base64_string() -> None:
    validate_request(_tiny_operation(), {"Data": "aGVsbG8="})
    with pytest.raises(
        ValidationError, match="at 'data' failed to satisfy constraint: Member must be a base64"
    ):
        validate_request(_tiny_operation(), {"Data": 5})


def test_map_keys_must_be_strings_and_long_values_fit_java_long() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request(_tiny_operation(), {"Counts": {1: 2**63, "ok": 1}})
    assert caught.value.message.startswith("2 validation errors detected: ")
    assert "Map keys must satisfy constraint: [Member must be a string]" in caught.value.message
    assert "Member must have value less than or equal to 9223372036854775807" in caught.value.message


def test_types_we_cannot_check_are_accepted() -> None:
    validate_request(_tiny_operation(), {"Doc": {"anything": [1, "two"]}})
