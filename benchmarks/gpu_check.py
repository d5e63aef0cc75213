"""The first thing to run on a GPU: every GPU code path once, in under 8 minutes on one H100/H200, into one JSON and
one markdown summary.

    make gpu-check                  # = the next line, with build/gpu-deps (pytest, from `make gpu-deps`) on PYTHONPATH
    PYTHONPATH=. python benchmarks/gpu_check.py --out benchmarks/results/gpu-check
    PYTHONPATH=. python benchmarks/gpu_check.py --tiny --out /tmp/gpu-check        # the same steps, small, on the CPU
    python benchmarks/gpu_check.py --summary benchmarks/results/gpu-check/gpu_check.json --readme README.md

Steps, each in a child process with its own time limit (a failure, crash or hang is recorded, and the next step runs):

  environment  torch, CUDA, the device, NCCL, cuDNN and the packages present
  pytest       the `gpu`-marked tests, tests/test_gpu.py (needs pytest: `make gpu-deps`)
  train_step   train_step.py --preset celeba64 --batch 64 --modes fast reference compile: images/s, peak memory, MFU
  encode       encode.py, celeba64, bf16: DBAE's latent vs DiffAE's inversion at T_inv = 100
  sample       sample.py, celeba64, bf16: Euler at 20 and 100 steps
  fit          short_fit.py: 1,000 bf16 steps at batch 64 on 64-px shapes; the loss must fall; images/s over time
  ddp          ddp_step.py: one step through DDP in a one-process NCCL group (SyncBatchNorm) vs the plain step

--tiny runs them with the tiny preset on the CPU (gloo for DDP; the compile mode is left to
tests/test_cuda_paths_on_cpu.py, as inductor takes minutes on a small CPU) in under two minutes. In full mode every
step needs CUDA and fails, saying so, without it. Writes <out>/gpu_check.json and <out>/gpu_check.md (per step: status
passed / failed / skipped with a one-line reason, seconds, key numbers, the tail of its output); each step's log and
JSON go to --work (default <out>/steps). Exits 1 when a step failed. --readme rewrites the README's GPU table from the
summary (a full-mode one only).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from gpu_check_report import junit_counts, markdown, numbers, rewrite_readme

log = logging.getLogger("benchmarks.gpu_check")

ROOT = Path(__file__).resolve().parents[1]
MISSING_PYTEST = ("pytest is not importable: run `make gpu-deps` (pip install --target build/gpu-deps pytest) and put "
                  "build/gpu-deps on PYTHONPATH, as `make gpu-check` does")
PACKAGES = ("numpy", "scipy", "scikit-image", "scikit-learn", "pyyaml", "pyarrow", "matplotlib", "tqdm", "pillow",
            "torchvision", "triton", "pytest")

# Arguments of each script in full mode (celeba64 on CUDA) and in --tiny mode (the tiny preset on the CPU).
ARGS: dict[str, dict[str, list[str]]] = {
    "train_step": {"full": ["--preset", "celeba64", "--batch", "64", "--modes", "fast", "reference", "compile"],
                   "tiny": ["--preset", "tiny", "--batch", "4", "--modes", "fast", "reference", "--steps", "2",
                            "--warmup", "1"]},
    "encode": {"full": ["--preset", "celeba64", "--batch", "64", "--t-inv", "100", "--dtype", "bf16", "--repeats", "2"],
               "tiny": ["--preset", "tiny", "--batch", "2", "--t-inv", "4", "--dtype", "bf16", "--repeats", "1",
                        "--warmup", "0"]},
    "sample": {"full": ["--preset", "celeba64", "--batch", "64", "--steps", "20", "100", "--samplers", "euler",
                        "--dtype", "bf16", "--repeats", "2"],
               "tiny": ["--preset", "tiny", "--batch", "2", "--steps", "2", "4", "--samplers", "euler", "--dtype",
                        "bf16", "--repeats", "1", "--warmup", "0"]},
    "fit": {"full": ["--preset", "celeba64", "--batch", "64", "--steps", "1000", "--precision", "bf16",
                     "--num-workers", "6"],
            # fp32 here: CPUs without native bf16 emulate it ~10x slower (test_cuda_paths_on_cpu runs bf16 training)
            "tiny": ["--preset", "tiny", "--batch", "8", "--steps", "40", "--precision", "fp32", "--optimizer",
                     "adamw", "--lr", "5e-4"]},
    "ddp": {"full": ["--preset", "celeba64", "--batch", "16"], "tiny": ["--preset", "tiny", "--batch", "2"]},
}
# Seconds each step may take, (full, tiny): full mode sums to 450 s (8 minutes less the start-up); the tiny limits
# only catch hangs, as a CPU shared with other work can be slower than two idle cores twentyfold.
TIMEOUT_S = {"environment": (15, 300), "pytest": (60, 300), "train_step": (160, 300), "encode": (40, 300),
             "sample": (40, 300), "fit": (100, 300), "ddp": (35, 300)}
SCRIPTS = {"train_step": "train_step", "encode": "encode", "sample": "sample", "fit": "short_fit", "ddp": "ddp_step"}


class Skip(Exception):
    """The step does not apply on this machine (the reason is recorded); not a failure."""


@dataclass(frozen=True)
class Step:
    name: str
    command: str  # the command line that repeats the step alone
    timeout_s: float
    run: Callable[[Path], None]  # in the child process, given the step's directory: raises to fail, Skip to skip


def pytest_available() -> bool:
    return importlib.util.find_spec("pytest") is not None


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
                           "the full check needs a GPU; --tiny runs on the CPU")


def environment() -> dict:
    """What the steps run on."""
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": cuda, "device": props.name if props else None,
        "capability": f"sm_{props.major}{props.minor}" if props else None,
        "memory_gib": props.total_memory / 2 ** 30 if props else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gloo": torch.distributed.is_gloo_available(), "nccl_available": torch.distributed.is_nccl_available(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "packages": packages,
    }


def run_environment(directory: Path, tiny: bool) -> None:
    (directory / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
    if not tiny:
        require_cuda()


def run_pytest(directory: Path, tiny: bool) -> None:
    if not tiny:
        require_cuda()
    if not pytest_available():
        raise RuntimeError(MISSING_PYTEST)
    import pytest
    os.chdir(ROOT)
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # a GPU image's own plugins may not match build/gpu-deps' pytest
    junit = directory / "junit.xml"
    code = int(pytest.main(["-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests/test_gpu.py"]))
    counts = junit_counts(junit) if junit.exists() else {}
    ran = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "errors", "skipped")) if counts else "no report"
    if code != 0:
        raise RuntimeError(f"pytest exited with {code}: {ran}")
    if counts.get("passed", 0) == 0:
        if tiny:
            raise Skip(f"no CUDA here: the {counts.get('skipped', 0)} gpu tests skipped")
        raise RuntimeError(f"no gpu test ran: {ran}")


def run_script(name: str, directory: Path, tiny: bool) -> None:
    """Run the step's benchmark script, in this process, as its command line would."""
    if not tiny:
        require_cuda()
    module = importlib.import_module(SCRIPTS[name])  # here, in the child: the parent stays small
    argv = [*ARGS[name]["tiny" if tiny else "full"], "--device", "cpu" if tiny else "cuda", "--out", str(directory)]
    sys.argv = [f"benchmarks/{SCRIPTS[name]}.py", *argv]  # the command line its JSON records
    code = module.main(argv)
    if code:
        raise RuntimeError(_failure(name, directory) or f"{sys.argv[0]} exited with {code}")


def _failure(name: str, directory: Path) -> str | None:
    """The one-line reason a script gave by its exit status."""
    n = numbers(name, directory)
    if name == "fit" and n:
        return f"the loss did not fall: {n['loss_first']:.4g} in the first interval, {n['loss_last']:.4g} in the last"
    if name == "ddp" and n:
        return (f"DDP's gradients differ from the plain step's by {n['grad_rel_diff']:.3g} of the largest "
                f"(tolerance {n['tolerance']:.3g})")
    return None


def make_steps(tiny: bool) -> list[Step]:
    mode = "tiny" if tiny else "full"
    python = "PYTHONPATH=. python"
    device = "cpu" if tiny else "cuda"
    steps = [Step("environment", f"{python} benchmarks/gpu_check.py --only environment --out /tmp/gpu-check"
                  + " --tiny" * tiny,
                  TIMEOUT_S["environment"][tiny], lambda d: run_environment(d, tiny)),
             Step("pytest", "python -m pytest -q -m gpu tests/test_gpu.py", TIMEOUT_S["pytest"][tiny],
                  lambda d: run_pytest(d, tiny))]
    for name, script in SCRIPTS.items():
        command = " ".join([python, f"benchmarks/{script}.py", *ARGS[name][mode], "--device", device])
        steps.append(Step(name, command, TIMEOUT_S[name][tiny], lambda d, n=name: run_script(n, d, tiny)))
    return steps


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (f"{type(err).__name__}: {text}" if text else type(err).__name__)[:400]


def _child(step: Step, directory: Path) -> None:
    """The forked child: its own process group (so a time limit kills its loader workers too), output to the log."""
    code = 1
    try:
        os.setsid()
        fd = os.open(directory / "output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # the log, also where sys.stdout was replaced
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
        try:
            step.run(directory)
            status = {"status": "passed", "reason": None}
        except Skip as err:
            status = {"status": "skipped", "reason": str(err)}
        except BaseException as err:  # a step's SystemExit or KeyboardInterrupt is its failure too
            traceback.print_exc()
            status = {"status": "failed", "reason": _one_line(err)}
        (directory / "status.json").write_text(json.dumps(status))
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's exit code (negative: the signal that ended it), or None when it outlived `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def run_step(step: Step, work: Path) -> dict:
    """Run one step in a forked child with its time limit; the record of what happened."""
    directory = work / step.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()  # the parent never touches CUDA, so the child may
    if pid == 0:
        _child(step, directory)
    code = _wait(pid, step.timeout_s)
    if code is None:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    status_file = directory / "status.json"
    if code is None:
        status = {"status": "failed", "reason": f"timed out after {step.timeout_s:.0f} s (the step's limit)"}
    elif status_file.exists():
        status = json.loads(status_file.read_text())
    elif code < 0:
        status = {"status": "failed", "reason": f"killed by {signal.Signals(-code).name}"}
    else:
        status = {"status": "failed", "reason": f"exited with {code} without a report"}
    try:
        found = numbers(step.name, directory)
    except (OSError, ValueError, KeyError, TypeError) as err:  # a half-written file: keep the status
        found = {"error": _one_line(err)}
    return {"name": step.name, **status, "seconds": seconds, "timeout_s": step.timeout_s, "command": step.command,
            "numbers": found, "log": str(directory / "output.log"), "tail": _tail(directory / "output.log")}


def run_steps(steps: list[Step], work: Path) -> list[dict]:
    records = []
    for step in steps:
        log.info("%s ... (limit %.0f s)", step.name, step.timeout_s)
        record = run_step(step, work)
        log.info("%s: %s in %.1f s%s", step.name, record["status"], record["seconds"],
                 f" - {record['reason']}" if record["reason"] else "")
        records.append(record)
    return records


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def summarise(records: list[dict], mode: str, started: datetime.datetime, seconds: float) -> dict:
    counts = {s: sum(r["status"] == s for r in records) for s in ("passed", "failed", "skipped")}
    return {"check": "gpu_check", "mode": mode, "started": started.isoformat(timespec="seconds"), "seconds": seconds,
            "passed": counts["failed"] == 0, "counts": counts, "commit": _commit(),
            "command": " ".join(["python", *sys.argv]), "steps": records}


def write_summary(summary: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(markdown(summary))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--work", type=Path, default=None, help="directory for each step's log and JSON "
                        "(default: <out>/steps)")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset on the CPU, in under two minutes")
    parser.add_argument("--only", nargs="+", choices=["environment", "pytest", *SCRIPTS], default=None,
                        help="run these steps only")
    parser.add_argument("--readme", type=Path, default=None, help="rewrite this README's GPU table from the summary")
    parser.add_argument("--summary", type=Path, default=None,
                        help="with --readme: rewrite the README from this gpu_check.json instead of running")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.summary is not None:
        if args.readme is None:
            parser.error("--summary needs --readme")
        rewrite_readme(args.readme, json.loads(args.summary.read_text()))
        log.info("rewrote the GPU table of %s from %s", args.readme, args.summary)
        return 0
    if args.out is None:
        parser.error("--out is required (or --summary with --readme)")
    steps = [s for s in make_steps(args.tiny) if args.only is None or s.name in args.only]
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    records = run_steps(steps, args.work or args.out / "steps")
    summary = summarise(records, "tiny" if args.tiny else "full", started, time.perf_counter() - t0)
    json_path, md_path = write_summary(summary, args.out)
    log.info("%s", md_path.read_text())
    log.info("written: %s, %s", json_path, md_path)
    if args.readme is not None:
        if summary["mode"] == "full" and summary["counts"]["passed"] > 0:
            rewrite_readme(args.readme, summary)
            log.info("rewrote the GPU table of %s", args.readme)
        else:
            log.warning("%s left as it is: its GPU table takes a full-mode run with a passed step", args.readme)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
