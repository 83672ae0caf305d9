"""Registering a large model directory against copying it, and a rerun that finds the version.

    python -m bench.registration [--megabytes 500] [--rounds 5]
    python -m bench.registration --from-object-store [--megabytes 500] [--rounds 3]

Builds a DistilBERT-style model of about the given size from a config (random weights, no
hub), saves it as the trainer does (weights, tokenizer, recipe catalogue, manifest,
`_SUCCESS`), then in the same run and on the same filesystem times:
- `shutil.copytree` of the directory (the baseline: registration must at least copy it once);
- `registry.register` into a fresh MLflow store (goal <= 1.5x the copy); medians of --rounds
  rounds, each on a new directory, alternating which goes first, each after os.sync();
- the same registration again, which finds the version (goal < 1 s);
- verification (manifest sha256s, load and score) on its own, for information.

With --from-object-store, the team's case: an S3-protocol server on loopback (moto's, as
bench/object_storage.py starts it) holds the storage root and MLflow's artifacts, and an MLflow
tracking server (SQLite store, artifacts written by the client straight to the bucket, as
`make team-lifecycle` runs it) is the registry. Per round, on a new model directory published to
the bucket as the trainer publishes it, alternating which goes first, it times:
- the baseline: a raw download of the published files (s3fs `get_file`, the client registration
  reads with) plus a raw upload of the same bytes to a fresh prefix (boto3 `upload_file`, the
  client MLflow's S3 artifact repository writes with);
- `registry.register_uri` of the `s3://` model directory (a download to scratch, then the pyfunc
  model logged to the server, the version, its tags and alias): goal <= 1.5x the baseline.
Each round's objects are deleted afterwards (moto keeps them in memory).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def build_model_dir(directory: Path, megabytes: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from include.core import names
    from include.training import modeling
    from include.training.cli import write_manifest

    tokenizer = modeling.train_tokenizer(["workflow weekly mode autopilot size 2 pantry rice",
                                          "cuisine thai tags quick ingredients rice tofu"])
    layers = max(1, round(megabytes * 1e6 / 4 / (12 * 768 * 768 + 13 * 768)))  # ~ parameters per layer, fp32
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=768, n_layers=layers, n_heads=12, hidden_dim=3072,
                              max_position_embeddings=modeling.MAX_LENGTH, num_labels=2,
                              pad_token_id=tokenizer.pad_token_id)
    model = DistilBertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    pq.write_table(pa.table({"recipe_id": ["r1"], "cuisine": ["thai"], "prep_time": [20], "cost": [4.5],
                             "ingredients": ['["rice"]'], "tags": ['["quick"]']}), directory / names.MODEL_RECIPES_FILE)
    write_manifest(directory, {"training_run_id": directory.name, "mlflow_run_id": "", "dataset_version": "2026-11-23",
                               "dataset_uri": "", "final_metrics": {}})
    (directory / names.SUCCESS_MARKER).write_text("")


def size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def raw_download_upload(fs, client, bucket: str, published_uri: str, scratch: Path, target_prefix: str) -> float:
    """The baseline: every published file down to a local scratch directory, then the same bytes
    up to `target_prefix` of the bucket; the scratch copy is removed (outside the timing)."""
    started = time.perf_counter()
    base = published_uri.removeprefix("s3://").rstrip("/")
    files = []
    for remote in sorted(fs.find(base)):
        local = scratch / remote[len(base) + 1:]
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
        files.append(local)
    for local in files:
        client.upload_file(str(local), bucket, f"{target_prefix}/{local.relative_to(scratch).as_posix()}")
    elapsed = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return elapsed


def delete_prefix(client, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def from_object_store(args) -> int:
    """Registration of a model directory on object storage into an MLflow server whose artifacts
    are in the same store, against a raw download plus a raw upload of the same bytes."""
    from scripts.airflow_services import MlflowServer
    from scripts.object_store import S3Server

    bucket = "planner-bench"
    work = Path(tempfile.mkdtemp(prefix="bench-registration-s3-", dir=os.environ.get("BENCH_TMP")))
    server = S3Server(work / "s3").start()
    mlflow_server = None
    try:
        os.environ.update(server.client_env())
        server.create_bucket(bucket)
        mlflow_server = MlflowServer(work / "mlflow", artifact_root=f"s3://{bucket}/mlflow",
                                     env=server.client_env()).start(timeout=180)
        os.environ.update({"MLFLOW_TRACKING_URI": mlflow_server.url,
                           "PLANNER_STORAGE_ROOT": f"s3://{bucket}/planner",
                           "PLANNER_MLFLOW_ARTIFACT_ROOT": f"s3://{bucket}/mlflow"})
        from include.core import storage
        from include.registration.registry import _ensure_registered_model, register_uri, registry_client

        client = server.client()
        fs, _ = storage.filesystem(f"s3://{bucket}/x")
        _ensure_registered_model(registry_client())

        def published_model(name: str, megabytes: int) -> tuple[str, float]:
            staging = work / "staging" / name
            build_model_dir(staging, megabytes)
            size = size_mb(staging)
            uri = storage.join(storage.models_root(), name)
            storage.publish_dir(staging, uri)
            return uri, size

        # Fixed cost: a 1 MB model, twice (the first in a process also pays MLflow's package scan).
        tiny, _ = published_model("planner_acceptance-v20261123_000001", 1)
        started = time.perf_counter()
        register_uri(tiny)
        first_tiny_s = time.perf_counter() - started
        tiny, _ = published_model("planner_acceptance-v20261123_000002", 1)
        started = time.perf_counter()
        register_uri(tiny)
        fixed_s = time.perf_counter() - started

        raws, registrations = [], []
        for round_ in range(args.rounds):
            name = f"planner_acceptance-v20261123_2000{round_:02d}"
            uri, size = published_model(name, args.megabytes)
            if round_ == 0:
                print(f"model directory: {size:.0f} MB published at {uri} ({storage.resolve(uri)})", flush=True)
            steps = ["raw", "register"] if round_ % 2 == 0 else ["register", "raw"]
            for step in steps:
                if step == "raw":
                    raws.append(raw_download_upload(fs, client, bucket, storage.resolve(uri),
                                                    work / f"raw-{round_}", f"raw/{round_}"))
                else:
                    started = time.perf_counter()
                    registration = register_uri(uri)
                    registrations.append(time.perf_counter() - started)
                    assert registration.created, registration
            print(f"  round {round_ + 1}: raw download+upload {raws[-1]:.2f} s, register_uri "
                  f"{registrations[-1]:.2f} s ({registrations[-1] / raws[-1]:.2f}x)", flush=True)
            for prefix in (f"raw/{round_}", f"planner/models/{name}"):
                delete_prefix(client, bucket, prefix)

        raw_s, register_s = statistics.median(raws), statistics.median(registrations)
        ratios = [r / b for r, b in zip(registrations, raws)]
        print(f"rounds: {args.rounds}; raw download+upload {', '.join(f'{b:.2f}' for b in raws)} s; "
              f"register_uri {', '.join(f'{r:.2f}' for r in registrations)} s; "
              f"ratio per round {', '.join(f'{q:.2f}' for q in ratios)} (median {statistics.median(ratios):.2f}x)")
        print(f"raw download + upload (baseline): {raw_s:6.2f} s   (median, {size:.0f} MB)")
        print(f"register_uri from s3:// (new):    {register_s:6.2f} s   (median) ratio {register_s / raw_s:.2f}x   "
              f"(goal <= 1.5x)")
        print(f"  of which fixed cost:            {fixed_s:6.2f} s   (a 1 MB model; the first in a process: "
              f"{first_tiny_s:.2f} s)")
        print(f"  size-dependent part:            {register_s - fixed_s:6.2f} s   ratio "
              f"{(register_s - fixed_s) / raw_s:.2f}x the baseline")
    finally:
        if mlflow_server is not None:
            mlflow_server.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (3 with --from-object-store)")
    parser.add_argument("--from-object-store", action="store_true",
                        help="the model on an S3-protocol store, registered into an MLflow server (see above)")
    args = parser.parse_args(argv)
    if args.from_object_store:
        args.rounds = args.rounds or 3
        return from_object_store(args)
    args.rounds = args.rounds or 5

    work = Path(tempfile.mkdtemp(prefix="bench-registration-", dir=os.environ.get("BENCH_TMP")))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["PLANNER_MLFLOW_ARTIFACT_ROOT"] = str(work / "mlflow-artifacts")
    from include.registration.artifacts import artifact_problems, load_problems
    from include.registration.registry import _ensure_registered_model, register, registry_client

    # An existing registry: create the store's tables first (a fresh SQLite store's migrations
    # take seconds that no real registration pays).
    _ensure_registered_model(registry_client())

    # Fixed cost first, on a tiny model in this fresh process (an Airflow task is one): MLflow's
    # scan of installed packages for the requirements check, store writes, the pyfunc files.
    tiny_dir = work / "models" / "planner_acceptance-v20261123_000001"
    build_model_dir(tiny_dir, 1)
    started = time.perf_counter()
    register(tiny_dir)
    first_tiny_s = time.perf_counter() - started
    tiny_again = work / "models" / "planner_acceptance-v20261123_000002"
    build_model_dir(tiny_again, 1)
    started = time.perf_counter()
    register(tiny_again)
    fixed_s = time.perf_counter() - started

    # Each round: a new model directory (a new training run), copied and registered in turn,
    # alternating which goes first, each after os.sync(): both start with no dirty pages queued
    # for writeback, which otherwise throttle whichever write comes second.
    copies, registrations = [], []
    profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    for round_ in range(args.rounds):
        model_dir = work / "models" / f"planner_acceptance-v20261123_1000{round_:02d}"
        build_model_dir(model_dir, args.megabytes)
        if round_ == 0:
            print(f"model directory: {size_mb(model_dir):.0f} MB in {model_dir}")
            problems = artifact_problems(model_dir) + load_problems(model_dir)
            assert not problems, problems
        steps = ["copy", "register"] if round_ % 2 == 0 else ["register", "copy"]
        for step in steps:
            os.sync()
            started = time.perf_counter()
            if step == "copy":
                shutil.copytree(model_dir, work / f"copy-{round_}")
                copies.append(time.perf_counter() - started)
            else:
                if profile and round_ == 0:
                    profile.enable()
                first = register(model_dir)
                registrations.append(time.perf_counter() - started)
                if profile and round_ == 0:
                    profile.disable()
                    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
        shutil.rmtree(work / f"copy-{round_}")

    started = time.perf_counter()
    problems = artifact_problems(model_dir) + load_problems(model_dir)
    verify_s = time.perf_counter() - started
    assert not problems, problems
    started = time.perf_counter()
    again = register(model_dir)
    rerun_s = time.perf_counter() - started
    assert first.created and not again.created and again.version == first.version

    copy_s, register_s = statistics.median(copies), statistics.median(registrations)
    ratios = [r / c for r, c in zip(registrations, copies)]
    print(f"rounds: {args.rounds}; copytree {', '.join(f'{c:.2f}' for c in copies)} s; "
          f"register {', '.join(f'{r:.2f}' for r in registrations)} s; "
          f"ratio per round {', '.join(f'{q:.2f}' for q in ratios)} (median {statistics.median(ratios):.2f}x)")
    print(f"copytree (baseline):      {copy_s:6.2f} s   (median)")
    print(f"register (new version):   {register_s:6.2f} s   (median) ratio {register_s / copy_s:.2f}x   (goal <= 1.5x)")
    print(f"  of which fixed cost:     {fixed_s:6.2f} s   (a 1 MB model; the first in a process: {first_tiny_s:.2f} s)")
    print(f"  size-dependent part:     {register_s - fixed_s:6.2f} s   ratio {(register_s - fixed_s) / copy_s:.2f}x "
          f"the copy")
    print(f"register again (found):   {rerun_s:6.2f} s   (goal < 1 s)")
    print(f"verify (sha256 + load):   {verify_s:6.2f} s   (for information; a separate task)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
