"""Control-plane operations through boto3: listing, pagination, tags, updates, and every error shape."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from tests.fixtures.live_server import ROLE, LiveServer


def _code(err: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    e = err.value.response["Error"]
    return e["Code"], e["Message"]


def _raw(server: LiveServer, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        server.url + "/",
        data=body,
        method="POST",
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_list_models_filters_sorting_and_pagination(server: LiveServer, iris_url: str, name: str) -> None:
    names = [f"{name}-m{i}" for i in range(7)]
    for n in names:
        server.sm.create_model(
            ModelName=n,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url},
        )
        time.sleep(0.002)  # distinct creation times for the sort
    got = server.sm.list_models(NameContains=name, SortBy="Name", SortOrder="Ascending")["Models"]
    assert [m["ModelName"] for m in got] == names  # defaults to 10 a page
    pages = list(
        server.sm.get_paginator("list_models").paginate(
            NameContains=name, SortBy="CreationTime", SortOrder="Descending", PaginationConfig={"PageSize": 3}
        )
    )
    assert [len(p["Models"]) for p in pages] == [3, 3, 1]
    assert [m["ModelName"] for p in pages for m in p["Models"]] == names[::-1]
    middle = server.sm.describe_model(ModelName=names[3])["CreationTime"]
    after = server.sm.list_models(
        NameContains=name, CreationTimeAfter=middle, SortBy="Name", SortOrder="Ascending"
    )["Models"]
    assert [m["ModelName"] for m in after] == names[4:]
    with pytest.raises(ClientError) as err:
        server.sm.list_models(NextToken="garbage!")
    assert _code(err)[0] == "ValidationException"


def test_list_endpoints_status_filter(server: LiveServer, iris_url: str, name: str) -> None:
    server.deploy(name, iris_url)
    found = server.sm.list_endpoints(StatusEquals="InService", NameContains=name)["Endpoints"]
    assert [e["EndpointName"] for e in found] == [name]
    assert found[0]["EndpointStatus"] == "InService"
    assert server.sm.list_endpoints(StatusEquals="Failed", NameContains=name)["Endpoints"] == []
    configs = server.sm.list_endpoint_configs(NameContains=name)["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == [name + "-cfg"]


def test_tags(server: LiveServer, iris_url: str, name: str) -> None:
    arn = server.sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url}
    )["ModelArn"]
    server.sm.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}])
    server.sm.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "3"}])
    assert server.sm.list_tags(ResourceArn=arn)["Tags"] == [
        {"Key": "a", "Value": "3"},
        {"Key": "b", "Value": "2"},
    ]
    server.sm.delete_tags(ResourceArn=arn, TagKeys=["a"])
    assert server.sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]
    with pytest.raises(ClientError) as err:
        server.sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert _code(err)[0] == "ResourceLimitExceeded"
    with pytest.raises(ClientError) as err:
        server.sm.list_tags(ResourceArn=arn.replace(name.lower(), "missing"))
    assert _code(err)[0] == "ValidationException"


def test_duplicate_and_missing_resources(server: LiveServer, iris_url: str, name: str) -> None:
    sm = server.sm
    sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url}
    )
    with pytest.raises(ClientError) as err:
        sm.create_model(
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url},
        )
    code, msg = _code(err)
    assert code == "ValidationException" and "Cannot create already existing model" in msg
    with pytest.raises(ClientError) as err:
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "v",
                    "ModelName": "missing-model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
    assert _code(err) == (
        "ValidationException",
        'Could not find model "arn:aws:sagemaker:us-east-1:000000000000:model/missing-model".',
    )
    with pytest.raises(ClientError) as err:
        sm.create_endpoint(EndpointName=name, EndpointConfigName="missing-config")
    assert _code(err) == ("ValidationException", 'Could not find endpoint configuration "missing-config".')
    for call, kw in (
        (sm.delete_endpoint, {"EndpointName": "missing"}),
        (sm.update_endpoint, {"EndpointName": "missing", "EndpointConfigName": "x"}),
        (sm.delete_model, {"ModelName": "missing"}),
    ):
        with pytest.raises(ClientError) as err:
            call(**kw)
        assert _code(err)[0] == "ValidationException"


def test_model_data_must_exist_and_image_must_be_known(server: LiveServer, iris_url: str, name: str) -> None:
    with pytest.raises(ClientError) as err:
        server.sm.create_model(
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "sklearn", "ModelDataUrl": "s3://models/nothing-here/model.tar.gz"},
        )
    code, msg = _code(err)
    assert code == "ValidationException" and "s3://models/nothing-here/model.tar.gz" in msg
    with pytest.raises(ClientError) as err:
        server.sm.create_model(
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "my-registry/some-image:1", "ModelDataUrl": iris_url},
        )
    code, msg = _code(err)
    assert code == "ValidationException" and "sklearn" in msg
    sklearn_uri = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    server.sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": sklearn_uri, "ModelDataUrl": iris_url},
    )


def test_validation_names_the_field(server: LiveServer, name: str) -> None:
    status, body = _raw(
        server,
        "SageMaker.CreateEndpoint",
        json.dumps({"EndpointName": "bad_name!", "EndpointConfigName": "x"}).encode(),
    )
    assert status == 400 and body["__type"] == "ValidationException"
    assert "'bad_name!' at 'endpointName'" in body["message"]
    status, body = _raw(
        server,
        "SageMaker.CreateEndpointConfig",
        json.dumps(
            {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {
                        "VariantName": "v",
                        "ModelName": "m",
                        "InstanceType": "ml.not.real",
                        "InitialInstanceCount": "2",
                    }
                ],
            }
        ).encode(),
    )
    assert status == 400
    assert "productionVariants.1.member.instanceType" in body["message"]
    assert "productionVariants.1.member.initialInstanceCount" in body["message"]
    status, body = _raw(server, "SageMaker.CreateModel", json.dumps({"ExecutionRoleArn": ROLE}).encode())
    assert status == 400 and "modelName" in body["message"] and "null" in body["message"]
    status, body = _raw(server, "SageMaker.CreateModel", b"{not json")
    assert status == 400 and "not valid JSON" in body["message"]
    status, body = _raw(server, "SageMaker.ListEndpoints", json.dumps({"SortBy": "Size"}).encode())
    assert status == 400 and "enum" in body["message"]


def test_unimplemented_and_unknown_operations(server: LiveServer) -> None:
    status, body = _raw(server, "SageMaker.CreateTrainingJob", b"{}")
    assert status == 501 and body["__type"] == "NotImplemented"
    assert "CreateTrainingJob" in body["message"]
    status, body = _raw(server, "SageMaker.MakeCoffee", b"{}")
    assert status == 400 and "MakeCoffee" in body["message"]
    with pytest.raises(ClientError) as err:
        server.sm.list_training_jobs()
    assert _code(err)[0] == "NotImplemented"


def test_boto3_client_side_validation_still_applies(server: LiveServer) -> None:
    with pytest.raises(ParamValidationError):
        server.sm.create_endpoint(EndpointName="x")


def test_placement_refuses_what_cannot_run(server: LiveServer, iris_url: str, name: str) -> None:
    sm = server.sm
    server.model_and_config(name, name, iris_url, count=50, instance_type="ml.m5.24xlarge", variant="v")
    with pytest.raises(ClientError) as err:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    code, msg = _code(err)
    assert code == "ResourceLimitExceeded" and "4800 vCPUs" in msg and "free" in msg
    sm.create_endpoint_config(
        EndpointConfigName=name + "-gpu",
        ProductionVariants=[
            {"VariantName": "v", "ModelName": name, "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1}
        ],
    )
    with pytest.raises(ClientError) as err:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name + "-gpu")
    code, msg = _code(err)
    assert code == "ResourceLimitExceeded" and "1 GPUs" in msg
    with pytest.raises(ClientError) as err:
        sm.describe_endpoint(EndpointName=name)
    assert _code(err)[0] == "ValidationException"


def test_update_only_when_in_service(server: LiveServer, iris_url: str, name: str) -> None:
    sm = server.sm
    server.deploy(name, iris_url, wait=False)
    if sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating":
        with pytest.raises(ClientError) as err:
            sm.update_endpoint(EndpointName=name, EndpointConfigName=name + "-cfg")
        assert "wait until it is InService" in _code(err)[1]
    server.wait_in_service(name)
    with pytest.raises(ClientError) as err:
        sm.update_endpoint_weights_and_capacities(
            EndpointName=name,
            DesiredWeightsAndCapacities=[{"VariantName": "Nope", "DesiredInstanceCount": 2}],
        )
    assert "Nope" in _code(err)[1]
