"""An S3-protocol object store on loopback (moto's standalone server, from PyPI): what the tests
and the local team topology use as "the bucket", spoken to with the same clients (s3fs, boto3)
as a real one. Nothing leaves the machine.

moto keeps its objects in memory. With `persist=True` the server's data outlives it, as a real
store's would: `save()` writes every bucket's objects under `<root>/data` (content files named by
ETag, so a save copies only what changed, and a manifest replaced in one rename), and `start()`
loads them back; `stop()` saves first."""
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
    persist: bool = False   # keep the buckets under <root>/data across restarts (see the module's doc)

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
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        else:
            raise TimeoutError(f"the S3 server did not answer at {self.url} within {timeout}s")
        if self.persist:
            try:
                self._load()
            except BaseException:
                self.stop(save=False)
                raise
        return self

    def client(self):
        import boto3

        env = self.client_env()
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=REGION)

    def create_bucket(self, name: str) -> str:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    # --- persistence (persist=True) --------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _manifest(self) -> dict:
        import json

        try:
            return json.loads((self.data_dir / "manifest.json").read_text())
        except FileNotFoundError:
            return {}

    def _load(self) -> None:
        """Put the saved buckets and objects back into the fresh (empty) server."""
        client = self.client()
        for bucket, objects in self._manifest().items():
            self.create_bucket(bucket)
            for key, etag in objects.items():
                with open(self.data_dir / "objects" / etag, "rb") as body:
                    client.put_object(Bucket=bucket, Key=key, Body=body)

    def save(self) -> int:
        """Write the server's buckets under `<root>/data`: objects not saved yet by ETag, then the
        manifest in one rename, then drop the files no object refers to. Returns the object count."""
        import json
        import os

        client, manifest = self.client(), {}
        objects_dir = self.data_dir / "objects"
        objects_dir.mkdir(parents=True, exist_ok=True)
        for bucket in (b["Name"] for b in client.list_buckets().get("Buckets", [])):
            manifest[bucket] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    etag = item["ETag"].strip('"').replace("/", "_")
                    target = objects_dir / etag
                    if not target.exists():
                        partial = target.with_suffix(".partial")
                        client.download_file(bucket, item["Key"], str(partial))
                        os.replace(partial, target)
                    manifest[bucket][item["Key"]] = etag
        partial = self.data_dir / "manifest.json.partial"
        partial.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(partial, self.data_dir / "manifest.json")
        referenced = {etag for objects in manifest.values() for etag in objects.values()}
        for path in objects_dir.iterdir():
            if path.name not in referenced:
                path.unlink()
        return sum(len(objects) for objects in manifest.values())

    def delete_bucket_contents(self, name: str) -> int:
        """Delete every object of a bucket (a clean state); returns how many."""
        client, count = self.client(), 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
                count += len(keys)
        return count

    def stop(self, save: bool = True) -> None:
        if self.process is not None:
            try:
                if save and self.persist and self.process.poll() is None:
                    self.save()
            finally:
                stop_service(self.process)
                self.process = None
