"""Running the whole notebook headless in a test: papermill commands, failures shown, a kill mid-way."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from notebook_module import NOTEBOOK_PATH


def run_checked(command: list[str], env: dict | None = None) -> None:
    """Run `command` in the repository; on failure show the end of its output."""
    result = subprocess.run(command, cwd=NOTEBOOK_PATH.parent, capture_output=True, text=True, env=env)
    if result.returncode:
        pytest.fail(f"{command[2]} exited with {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")


def papermill_command(executed: str, output_dir: str, cache_dir: str, train_steps: int, **overrides) -> list[str]:
    """The notebook at cpu-tiny size as run `tiny`, checkpointing every 2 steps, with `overrides` of Config."""
    overrides = yaml.safe_dump({"cache_dir": cache_dir, "checkpoint_every": 2, "eval_every": 4, **overrides},
                               default_flow_style=True)
    return [sys.executable, "-m", "papermill", str(NOTEBOOK_PATH), executed, "-p", "preset", "cpu-tiny",
            "-p", "train_steps", str(train_steps), "-p", "output_dir", output_dir, "-p", "run_name", "tiny",
            "-y", f"config_overrides: {overrides}", "--no-progress-bar"]


def kill_after_steps(command: list[str], metrics_path, steps: int, env: dict | None = None) -> int:
    """Start `command`, kill it once `metrics_path` holds `steps` records, and wait until nothing it started
    runs; returns how many records there are then. Its kernel runs in a session of its own (jupyter_client
    starts it so) and would otherwise live on for a moment, long enough to write one more step."""
    process = subprocess.Popen(command, cwd=NOTEBOOK_PATH.parent, start_new_session=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics_path.exists() or len(metrics_path.read_text().splitlines()) < steps):
        time.sleep(0.05)
    started = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    for group in {process_group(p.pid) for p in started} - {None}:
        os.killpg(group, signal.SIGKILL)  # each process group, the kernel's with its workers (vLLM's) in it
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, f"still running after SIGKILL: {alive}"
    process.wait()
    return len(metrics_path.read_text().splitlines())


def process_group(pid: int) -> int | None:
    """The process group of `pid`, None once it has ended."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
