"""`make run`: start modelhost on its embedded defaults with an example scikit-learn model deployed.

Builds the example artifact (an iris classifier) into the data dir, starts `modelhost serve`, deploys the
`iris` endpoint through boto3 exactly as a user would, prints ready-to-paste examples, and keeps serving
until Ctrl-C.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import boto3
import joblib
from botocore.exceptions import ClientError
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HOST = os.environ.get("MODELHOST_HOST", "127.0.0.1")
PORT = int(os.environ.get("MODELHOST_PORT", "8080"))
DATA_DIR = Path(os.environ.get("MODELHOST_DATA_DIR", "modelhost-data"))
URL = f"http://{HOST}:{PORT}"
ARTIFACT = "s3://models/iris/model.tar.gz"


def build_artifact() -> None:
    dest = DATA_DIR / "buckets" / "models" / "iris" / "model.tar.gz"
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    buf = io.BytesIO()
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), buf)
    with tarfile.open(dest, "w:gz") as tar:
        info = tarfile.TarInfo("model.joblib")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    print(f"built example artifact {ARTIFACT} -> {dest}")


def wait_for_server(proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"modelhost serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(URL + "/ping", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"modelhost did not answer on {URL} within 60 s")


def deploy() -> None:
    kw = dict(endpoint_url=URL, region_name="us-east-1", aws_access_key_id="any", aws_secret_access_key="any")
    sm = boto3.client("sagemaker", **kw)
    try:
        status = sm.describe_endpoint(EndpointName="iris")["EndpointStatus"]
        print(f"endpoint iris already exists ({status})")
    except ClientError:
        sm.create_model(
            ModelName="iris",
            ExecutionRoleArn="arn:aws:iam::000000000000:role/any",
            PrimaryContainer={"Image": "sklearn", "ModelDataUrl": ARTIFACT},
        )
        sm.create_endpoint_config(
            EndpointConfigName="iris-cfg",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "iris",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 2,
                }
            ],
        )
        sm.create_endpoint(EndpointName="iris", EndpointConfigName="iris-cfg")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName="iris", WaiterConfig={"Delay": 1, "MaxAttempts": 300}
    )


def main() -> int:
    # SIGTERM (a supervisor, `timeout`) must stop the server too: turn it into SystemExit so `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    build_artifact()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelhost",
            "serve",
            "--host",
            HOST,
            "--port",
            str(PORT),
            "--data-dir",
            str(DATA_DIR),
        ]
    )
    try:
        wait_for_server(proc)
        deploy()
        print(
            f"""
modelhost is serving on {URL} with the example endpoint `iris` (2 instances) InService.

  curl -s -X POST {URL}/endpoints/iris/invocations -H 'Content-Type: text/csv' --data '5.1,3.5,1.4,0.2'

  python - <<'PY'
  import boto3
  rt = boto3.client("sagemaker-runtime", endpoint_url="{URL}", region_name="us-east-1",
                    aws_access_key_id="any", aws_secret_access_key="any")
  resp = rt.invoke_endpoint(EndpointName="iris", ContentType="text/csv", Body="5.1,3.5,1.4,0.2")
  print(resp["Body"].read())
  PY

  .venv/bin/modelhost endpoints list        .venv/bin/modelhost logs iris --follow

Press Ctrl-C to stop.""",
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
