"""`planner-train-ddp`: planner-train with one process per GPU, keeping its exit codes.

    planner-train-ddp [--nproc-per-node=N] -- <planner-train options>    (the pod, N GPUs)
    planner-train-ddp <planner-train options>                            (Databricks: every GPU of the node)

torchrun reports any failed worker as exit 1, so a refused input (planner-train's exit 2, "bad
input, do not retry") or a busy run (exit 3, "another trainer holds the lease, retry later")
would read as an ordinary failure. This launcher runs torch's own elastic launcher
(`torch.distributed.run.run`, what `torchrun --standalone` runs: the same rendezvous, worker
environment, signal handling and stopping of the other workers when one fails) with the workers
`python -m include.training.cli ...`, and exits with the workers' code when every failed worker
exited with the same one of those two codes (the workers the launcher itself stopped with SIGTERM
aside); otherwise with torchrun's: 0, or 1 on any failure (a crash, a signal, a mix of codes).

Launcher options come before `--`; without `--` every argument is planner-train's, and the
launcher starts one process per visible CUDA device. With one process (one GPU, or none) it runs
planner-train in this process, as `planner-train` would.
"""
from __future__ import annotations

import argparse
import signal
import sys

TRAINER_MODULE = "include.training.cli"
PRESERVED_EXIT_CODES = {2: "bad input", 3: "busy"}  # planner-train's codes the DAG acts on
STOPPED_BY_THE_LAUNCHER = {-signal.SIGTERM, 128 + signal.SIGTERM}  # the workers it stops once one has failed


def parse(argv: list[str]) -> tuple[int, list[str]]:
    """(processes, planner-train's argv)."""
    if "--" not in argv:
        return default_processes(), argv
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="planner-train-ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc", default="gpu",
                        help="training processes: a number, or 'gpu' (one per visible CUDA device, at least one)")
    options = parser.parse_args(argv[:split])
    if options.nproc == "gpu":
        return default_processes(), argv[split + 1:]
    try:
        processes = int(options.nproc)
    except ValueError:
        parser.error(f"--nproc-per-node must be a number or 'gpu', not {options.nproc!r}")
    if processes < 1:
        parser.error("--nproc-per-node must be >= 1")
    return processes, argv[split + 1:]


def default_processes(cuda_devices: int | None = None) -> int:
    """One process per visible CUDA device, one when there is none."""
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return max(1, cuda_devices)


def exit_code(worker_codes: list[int]) -> int:
    """The launcher's exit code from the failed workers' codes (torchrun would say 1 for any).

    When one worker fails, torch's launcher stops the others with SIGTERM, and reports them too
    (-15, or 143 from planner-train's own SIGTERM handler): those are consequences, not causes. The
    code is kept when every other failure carries it; none (the pod itself was stopped), or
    a mix (a crash beside a refusal), is 1."""
    causes = {code for code in worker_codes if code not in STOPPED_BY_THE_LAUNCHER}
    if len(causes) == 1 and (code := causes.pop()) in PRESERVED_EXIT_CODES:
        return code
    return 1


def torchrun_args(processes: int, trainer_argv: list[str]) -> argparse.Namespace:
    """torchrun's own parse of `--standalone --nproc-per-node=N -m include.training.cli <argv>`."""
    from torch.distributed.run import get_args_parser

    return get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "--module", TRAINER_MODULE,
                                         *trainer_argv])


def main(argv: list[str] | None = None) -> int:
    processes, trainer_argv = parse(sys.argv[1:] if argv is None else list(argv))
    if processes == 1:
        from include.training.cli import main as train

        return train(trainer_argv)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    try:
        run(torchrun_args(processes, trainer_argv))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        code = exit_code(codes)
        print(f"planner-train-ddp: {exc}", file=sys.stderr)  # torch's table of the failed workers
        print(f"planner-train-ddp: workers exited with {sorted(set(codes))}: exit {code}"
              + (f" ({PRESERVED_EXIT_CODES[code]})" if code in PRESERVED_EXIT_CODES else ""), file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
