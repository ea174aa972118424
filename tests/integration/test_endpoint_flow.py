"""The core flow through boto3: model → config → endpoint → waiter → predictions → delete."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.live_server import ROLE, LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, iris_rows


def test_issue_flow_two_instances(server: LiveServer, iris_url: str, name: str) -> None:
    sm, rt = server.sm, server.rt
    sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url}
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 2,
            }
        ],
    )
    arn = sm.create_endpoint(EndpointName=name, EndpointConfigName=name)["EndpointArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:000000000000:endpoint/{name.lower()}"
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] in ("Creating", "InService")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )

    resp = rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="5.1,3.5,1.4,0.2")
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    got = json.loads(resp["Body"].read())
    assert got == iris_model().predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist()

    rows = iris_rows()
    resp = rt.invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Accept="application/json",
        Body=json.dumps(rows.tolist()),
    )
    assert resp["ContentType"].startswith("application/json")
    assert json.loads(resp["Body"].read()) == iris_model().predict(rows).tolist()

    d = sm.describe_endpoint(EndpointName=name)
    assert d["EndpointStatus"] == "InService"
    assert isinstance(d["CreationTime"], dt.datetime)
    (v,) = d["ProductionVariants"]
    assert (v["VariantName"], v["CurrentInstanceCount"], v["DesiredInstanceCount"]) == ("AllTraffic", 2, 2)
    assert (v["CurrentWeight"], v["DesiredWeight"]) == (1.0, 1.0)
    assert v["DeployedImages"][0]["SpecifiedImage"] == "sklearn"
    assert len(worker_pids(server.data_dir)) >= 2

    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    with pytest.raises(ClientError) as err:
        sm.describe_endpoint(EndpointName=name)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "Could not find endpoint" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="5.1,3.5,1.4,0.2")
    assert err.value.response["Error"]["Code"] == "ValidationError"


def test_describe_model_and_config_round_trip(server: LiveServer, iris_url: str, name: str) -> None:
    sm = server.sm
    env = {"SAGEMAKER_PROGRAM": "inference.py"}
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": "sklearn", "ModelDataUrl": iris_url, "Environment": env},
        Tags=[{"Key": "team", "Value": "ml"}],
    )
    m = sm.describe_model(ModelName=name)
    assert m["ModelName"] == name and m["PrimaryContainer"]["Environment"] == env
    assert m["ExecutionRoleArn"] == ROLE
    assert m["ModelArn"].endswith(f":model/{name.lower()}")
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "A",
                "ModelName": name,
                "InstanceType": "ml.c5.large",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 0.5,
            }
        ],
    )
    c = sm.describe_endpoint_config(EndpointConfigName=name)
    assert c["ProductionVariants"][0]["InitialVariantWeight"] == 0.5
    assert c["ProductionVariants"][0]["InstanceType"] == "ml.c5.large"
    assert sm.list_tags(ResourceArn=m["ModelArn"])["Tags"] == [{"Key": "team", "Value": "ml"}]
    sm.delete_endpoint_config(EndpointConfigName=name)
    sm.delete_model(ModelName=name)
    for call, kw in (
        (sm.describe_model, {"ModelName": name}),
        (sm.describe_endpoint_config, {"EndpointConfigName": name}),
    ):
        with pytest.raises(ClientError) as err:
            call(**kw)
        assert err.value.response["Error"]["Code"] == "ValidationException"


def test_endpoint_survives_deleting_its_model_and_config(
    server: LiveServer, iris_url: str, name: str
) -> None:
    server.deploy(name, iris_url)
    server.sm.delete_endpoint_config(EndpointConfigName=name + "-cfg")
    server.sm.delete_model(ModelName=name)
    resp = server.rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="5.1,3.5,1.4,0.2")
    assert json.loads(resp["Body"].read()) == [0]
    server.sm.delete_endpoint(EndpointName=name)
    wait_until(
        lambda: not any(e["EndpointName"] == name for e in server.sm.list_endpoints()["Endpoints"]),
        60,
        "the endpoint to go",
    )
