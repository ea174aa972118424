"""With MODELHOST_S3_ENDPOINT_URL set, models deploy from a real S3 API (SeaweedFS), archives and prefixes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from botocore.exceptions import ClientError

from tests.fixtures.live_server import ROLE, LiveServer, wait_until, worker_pids
from tests.fixtures.models import iris_model, write_artifact
from tests.fixtures.seaweed import SeaweedS3, running_seaweed


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("weed")) as weed:
        weed.client().create_bucket(Bucket="models")
        yield weed


@pytest.fixture(scope="module")
def s3_server(s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("mh-s3") / "data"
    srv = LiveServer(data, env={**s3.env(), "MODELHOST_S3_ENDPOINT_URL": s3.endpoint_url}).start()
    yield srv
    srv.stop()
    wait_until(lambda: not worker_pids(data), 30, "workers to exit")


def test_archive_from_s3(s3: SeaweedS3, s3_server: LiveServer, tmp_path: Path) -> None:
    tar = write_artifact(tmp_path / "model.tar.gz", iris_model())
    s3.client().upload_file(str(tar), "models", "iris/model.tar.gz")
    s3_server.deploy("s3-archive", "s3://models/iris/model.tar.gz")
    resp = s3_server.rt.invoke_endpoint(
        EndpointName="s3-archive", ContentType="text/csv", Body="5.1,3.5,1.4,0.2"
    )
    assert json.loads(resp["Body"].read()) == [0]
    # Nothing landed in the local bucket directory: the S3 API served it.
    assert not (s3_server.data_dir / "buckets").exists()


def test_uncompressed_prefix_from_s3(s3: SeaweedS3, s3_server: LiveServer) -> None:
    buf = io.BytesIO()
    joblib.dump(iris_model(), buf)
    s3.client().put_object(Bucket="models", Key="iris-prefix/model.joblib", Body=buf.getvalue())
    s3.client().put_object(
        Bucket="models",
        Key="iris-prefix/code/inference.py",
        Body=b"def output_fn(prediction, accept):\n    return 'class=%d' % prediction[0]\n",
    )
    sm = s3_server.sm
    sm.create_model(
        ModelName="s3-prefix",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": "sklearn",
            "ModelDataSource": {
                "S3DataSource": {
                    "S3Uri": "s3://models/iris-prefix/",
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            },
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName="s3-prefix",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "s3-prefix",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName="s3-prefix", EndpointConfigName="s3-prefix")
    s3_server.wait_in_service("s3-prefix")
    resp = s3_server.rt.invoke_endpoint(
        EndpointName="s3-prefix", ContentType="text/csv", Body="6.7,3.0,5.2,2.3"
    )
    assert resp["Body"].read() == b"class=2"


def test_missing_s3_object_is_refused_at_create_model(s3_server: LiveServer) -> None:
    with pytest.raises(ClientError) as err:
        s3_server.sm.create_model(
            ModelName="s3-missing",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "sklearn", "ModelDataUrl": "s3://models/absent/model.tar.gz"},
        )
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "s3://models/absent/model.tar.gz" in err.value.response["Error"]["Message"]
