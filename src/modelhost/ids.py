"""Typed identifiers and the ARNs SageMaker derives from resource names."""

from __future__ import annotations

import secrets
from typing import NewType

ModelName = NewType("ModelName", str)
EndpointConfigName = NewType("EndpointConfigName", str)
EndpointName = NewType("EndpointName", str)
VariantName = NewType("VariantName", str)
InstanceId = NewType("InstanceId", str)


def new_instance_id() -> InstanceId:
    return InstanceId("i-" + secrets.token_hex(8))


def arn(region: str, account: str, kind: str, name: str) -> str:
    """SageMaker lower-cases resource names inside ARNs (``arn:aws:sagemaker:...:endpoint/iris``)."""
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"


def log_stream_arn(region: str, account: str, endpoint: str, stream: str) -> str:
    return (
        f"arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{endpoint}:log-stream:{stream}"
    )
