"""planner-train-ddp's arguments and exit codes (tests/training/test_wheel.py runs it on two
processes, tests/training/test_checkpoints.py kills and resumes it)."""
from __future__ import annotations

import pytest

from include.training import launch
from include.training.backends import pod_command

TRAINER_ARGV = ["--dataset-uri=s3://b/datasets/planner/2026-11-23", "--lora=false", "--epochs", "2"]


def test_the_pods_command_gives_the_launcher_its_processes_and_the_trainer_its_options():
    command = pod_command(4)
    assert launch.parse([*command[1:], *TRAINER_ARGV]) == (4, TRAINER_ARGV)
    assert pod_command(1) == ["planner-train"] and pod_command(0) == ["planner-train"]


def test_without_a_separator_every_argument_is_the_trainers_and_every_gpu_gets_a_process():
    """Databricks' python_wheel_task passes named_parameters only (`--key=value`): the node's GPUs decide."""
    processes, argv = launch.parse(TRAINER_ARGV)
    assert argv == TRAINER_ARGV and processes == launch.default_processes()
    assert [launch.default_processes(n) for n in (0, 1, 8)] == [1, 1, 8]
    assert launch.parse(["--nproc-per-node=gpu", "--", *TRAINER_ARGV])[1] == TRAINER_ARGV


@pytest.mark.parametrize("bad", ["--nproc-per-node=0", "--nproc-per-node=many", "--epochs=2"])
def test_a_bad_launcher_option_is_a_usage_error(bad):
    with pytest.raises(SystemExit) as exited:
        launch.parse([bad, "--", *TRAINER_ARGV])
    assert exited.value.code == 2


@pytest.mark.parametrize(("codes", "expected"), [
    ([2], 2), ([2, 2], 2),     # every process refused the input: not retried
    ([2, -15], 2), ([143, 2], 2),  # one refused, the launcher stopped the other (SIGTERM: raw, or our handler's)
    ([3, 3], 3), ([3, -15], 3),  # busy: another live trainer holds the lease; retried
    ([1], 1), ([2, 1], 1), ([2, 3], 1), ([-9], 1), ([-9, 2], 1),  # a crash or a kill: torchrun's 1
    ([-15], 1), ([-15, 143], 1),  # the pod itself was stopped
])
def test_the_workers_exit_code_is_kept_only_when_the_failures_agree_on_a_refusal(codes, expected):
    assert launch.exit_code(codes) == expected
