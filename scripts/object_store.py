"""An S3-protocol object store on loopback (moto's standalone server, from PyPI): what the tests
and the local team topology use as "the bucket", spoken to with the same clients (s3fs, boto3)
as a real one. Nothing leaves the machine."""
from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scripts.airflow_services import free_port, spawn_service, stop_service

# moto accepts any key; these are never real credentials.
ACCESS_KEY, SECRET_KEY, REGION = "planner-local", "planner-local-secret", "us-east-1"


@dataclass
class S3Server:
    root: Path
    port: int = field(default_factory=free_port)
    process: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """What a process needs to reach this store through s3fs, boto3 or MLflow."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": self.url, "MLFLOW_S3_ENDPOINT_URL": self.url}

    def start(self, timeout: float = 60) -> S3Server:
        import os

        self.root.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = spawn_service(command, {**os.environ, "MOTO_CALL_RESET_API": "false"},
                                     self.root / "s3-server.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the S3 server exited: see {self.root / 's3-server.log'}")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"the S3 server did not answer at {self.url} within {timeout}s")

    def create_bucket(self, name: str) -> str:
        import boto3

        env = self.client_env()
        boto3.client("s3", endpoint_url=self.url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=REGION).create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.process is not None:
            stop_service(self.process)
        self.process = None
