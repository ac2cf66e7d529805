"""Run TinyZero_AstarPO.ipynb on Modal GPUs.

    modal run modal_app.py --preset qwen2.5-0.5b --gpu H100 --steps 200
    modal run --detach modal_app.py --preset qwen2.5-3b --gpu H100 --gpus 2 --steps 200 --run-name qwen3b-2gpu
    modal run modal_app.py --preset qwen2.5-3b --gpu H200 --steps 200          # 3B fits one 141 GB H200

One GPU: papermill executes the notebook with the given parameters and saves the executed copy
(outputs included) as `executed.ipynb` in the run folder, cell by cell as it goes. Several GPUs:
papermill only injects the parameters, nbconvert turns that notebook into a script, and `torchrun`
starts one process per GPU; the notebook's own code splits the work and only rank 0 writes files.

Everything a run writes lands on the Volume `tinyzero-astarpo-runs`, in `<run_name>/`. The Volume
is committed every few minutes and when the function ends (also when it fails), so an interrupted
run keeps its checkpoint. Modal retries a failed or preempted attempt, and the notebook resumes from
`<run_name>/checkpoint.pt` by itself; an attempt that ran out of GPU memory is not retried (it would
run out again), and the message says how to resume with a smaller `micro_batch_size`. Model weights (Hugging Face cache), stage 0 base models and V*
estimates live on a second Volume, `tinyzero-astarpo-cache`, so they are computed or downloaded once.

Importing this module only builds Modal objects; it needs neither a network nor a Modal token.
`run_notebook` is the whole body of the remote function and runs anywhere (the tests call it with a
temporary folder standing in for the Volume).
"""
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import modal

APP_NAME = "tinyzero-astarpo"
RUNS_VOLUME_NAME = "tinyzero-astarpo-runs"
CACHE_VOLUME_NAME = "tinyzero-astarpo-cache"
RUNS_ROOT = "/runs"  # where the runs Volume is mounted in the container
CACHE_ROOT = "/cache"  # where the cache Volume is mounted in the container
HF_SECRET_NAME = "huggingface"  # an optional Modal secret holding HF_TOKEN
WANDB_SECRET_NAME = "wandb"  # an optional Modal secret holding WANDB_API_KEY, attached for --report-to wandb

DEFAULT_GPU = "H100"
TIMEOUT_SECONDS = 12 * 60 * 60  # per attempt; Modal allows up to 24 h
MAX_RETRIES = 3  # further attempts after a failure or timeout; each one resumes from the checkpoint
RETRIES = modal.Retries(max_retries=MAX_RETRIES, backoff_coefficient=2.0, initial_delay=10.0, max_delay=60.0)
CPU_CORES = 8.0
MEMORY_MIB = 64 * 1024  # host memory for one GPU; rank 0 gathers the full training state on the CPU to checkpoint
MEMORY_MIB_PER_EXTRA_GPU = 32 * 1024
COMMIT_EVERY_SECONDS = 5 * 60

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOK_NAME = "TinyZero_AstarPO.ipynb"
PACKAGE_NAME = "tinyzero"  # the package beside the notebook that it imports (the vLLM rollout engine)
PINNED_TRANSFORMERS = "5.23.0"  # requirements.txt's transformers (a test checks they agree)
NOTEBOOK = HERE / NOTEBOOK_NAME  # in the container this module and the notebook both sit in /root
REMOTE_DIR = "/root"

# Files the launcher adds to a run folder next to the notebook's own outputs.
EXECUTED_NOTEBOOK = "executed.ipynb"
PREVIOUS_EXECUTED_NOTEBOOK = "executed.previous.ipynb"
PREPARED_NOTEBOOK = "prepared.ipynb"
TORCHRUN_SCRIPT = "train_script.py"
TORCHRUN_LOG = "torchrun.log"

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_requirements(str(HERE / "requirements.txt"))
    .pip_install_from_requirements(str(HERE / "requirements-trackers.txt"))
    .pip_install_from_requirements(str(HERE / "requirements-vllm.txt"))  # the Qwen presets sample with vLLM
    .pip_install(f"transformers=={PINNED_TRANSFORMERS}")  # vllm 0.32 asks for < 5.20; the notebook runs on this one
    .env({"HF_HOME": f"{CACHE_ROOT}/huggingface", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
          "TRACKIO_DIR": f"{RUNS_ROOT}/trackio"})
    .add_local_file(str(NOTEBOOK), f"{REMOTE_DIR}/{NOTEBOOK_NAME}")
    .add_local_dir(str(HERE / PACKAGE_NAME), f"{REMOTE_DIR}/{PACKAGE_NAME}", ignore=["**/__pycache__"])
)
runs_volume = modal.Volume.from_name(RUNS_VOLUME_NAME, create_if_missing=True)
cache_volume = modal.Volume.from_name(CACHE_VOLUME_NAME, create_if_missing=True)
app = modal.App(APP_NAME, image=image)


# ----------------------------------------------------------------------------- the body


def log(message: str) -> None:
    print(f"[tinyzero] {message}", flush=True)


def default_run_name(preset: str, seed: int) -> str:
    """The notebook's own default run name, so the launcher knows the folder in advance."""
    return f"{preset}-seed{seed}"


def last_logged_step(metrics_path: pathlib.Path) -> int | None:
    """The step of the last complete record in metrics.jsonl, or None."""
    if not metrics_path.exists():
        return None
    step = None
    for line in metrics_path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            break
    return step


class PeriodicCommitter:
    """Calls `commit` every `every` seconds in a background thread, and once more on exit.

    A failing commit is reported and does not stop the run. The final commit runs whether the body
    succeeded or raised, so partial outputs (checkpoint, metrics, executed notebook) are kept.
    """

    def __init__(self, commit, every: float):
        self.commit, self.every = commit, every
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="volume-commit", daemon=True)
        self.commits = 0

    def commit_once(self, reason: str) -> None:
        if self.commit is None:
            return
        try:
            self.commit()
            self.commits += 1
        except Exception as error:  # a failed commit must not kill a training run
            log(f"volume commit ({reason}) failed: {error!r}")

    def loop(self) -> None:
        while not self.stopping.wait(self.every):
            self.commit_once("periodic")

    def __enter__(self):
        if self.commit is not None and self.every > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        self.commit_once("final")
        return False


def notebook_parameters(preset: str, steps: int | None, seed: int, run_name: str, output_dir: str,
                        cache_dir: str | None, tasks: list[str] | None, config_overrides: dict | None,
                        report_to: list[str] | None = None) -> dict:
    """The values for the notebook's `parameters` cell."""
    overrides = dict(config_overrides or {})
    if cache_dir is not None:
        overrides.setdefault("cache_dir", cache_dir)
    if report_to:
        overrides["report_to"] = list(report_to)
    parameters = dict(preset=preset, seed=seed, train_steps=steps, output_dir=output_dir, run_name=run_name,
                      config_overrides=overrides)
    if tasks:
        parameters["tasks"] = list(tasks)
    return parameters


MAGIC_CALLS = ("get_ipython().run_line_magic(", "get_ipython().run_cell_magic(", "get_ipython().system(",
               "get_ipython().getoutput(")  # what nbconvert turns %magics, %%magics and !commands into


def uses_magics(script: str) -> bool:
    """True when an exported script calls IPython magics (which plain Python under torchrun cannot run)."""
    return any(call in script for call in MAGIC_CALLS)


def export_script(notebook_path: pathlib.Path, script_path: pathlib.Path) -> None:
    """Write the notebook's code cells as a plain Python script (nbconvert's Python exporter)."""
    import nbformat
    from nbconvert import PythonExporter

    source, _ = PythonExporter().from_notebook_node(nbformat.read(str(notebook_path), as_version=4))
    if uses_magics(source):
        raise RuntimeError(f"{notebook_path} uses IPython magics, which a torchrun script cannot run")
    script_path.write_text(source)


def run_torchrun(script_path: pathlib.Path, nproc: int, cwd: pathlib.Path, log_path: pathlib.Path) -> None:
    """`torchrun --standalone --nproc_per_node=nproc script`, its output streamed to stdout and `log_path`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script_path)]
    log(f"launching: {' '.join(command)}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    append_to_log(log_path, f"===== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
    process = subprocess.Popen(command, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in process.stdout:
        sys.stdout.write(line)
        append_to_log(log_path, line)  # opened and closed per line: a Volume commit never meets an open file
    returncode = process.wait()
    if returncode:
        raise RuntimeError(f"torchrun exited with status {returncode}; see {log_path}")


def append_to_log(log_path: pathlib.Path, text: str) -> None:
    """Append `text` to the log, holding the file open only for the write."""
    with open(log_path, "a") as log_file:
        log_file.write(text)


OUT_OF_MEMORY_MARKERS = ("OutOfMemoryError", "CUDA out of memory")


def ran_out_of_memory(error: BaseException, run_dir: pathlib.Path) -> bool:
    """True when the failed attempt ran out of GPU memory (said by the error, or by the torchrun log)."""
    text = f"{type(error).__name__}: {error}"
    log_path = run_dir / TORCHRUN_LOG
    if log_path.exists():
        text += log_path.read_text(errors="replace")[-20_000:]
    return any(marker in text for marker in OUT_OF_MEMORY_MARKERS)


def run_notebook(preset: str, steps: int | None = None, seed: int = 0, run_name: str | None = None, gpus: int = 1,
                 volume_root: str = RUNS_ROOT, cache_dir: str | None = None, tasks: list[str] | None = None,
                 config_overrides: dict | None = None, commit=None, commit_every: float = COMMIT_EVERY_SECONDS,
                 notebook: str | os.PathLike = NOTEBOOK, report_to: list[str] | None = None) -> dict:
    """Run the notebook once (or resume it) into `<volume_root>/<run_name>/`.

    `commit` (e.g. `volume.commit`) is called every `commit_every` seconds and once at the end, also
    when the run fails. Returns the run folder, whether it resumed, and the run's summary.json.
    """
    if gpus < 1:
        raise ValueError(f"gpus={gpus} must be at least 1")
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be at least 1 (or None for the preset's number)")
    run_name = run_name or default_run_name(preset, seed)
    if not run_name or os.sep in run_name or run_name.startswith("."):
        raise ValueError(f"run_name={run_name!r} must be a plain folder name")
    notebook = pathlib.Path(notebook).resolve()
    output_dir = pathlib.Path(volume_root).resolve()
    run_dir = output_dir / run_name
    run_dir.mkdir(parents=True, exist_ok=True)

    # An attempt stopped in the middle of an atomic write leaves its staging file behind (a checkpoint's can be
    # tens of GB); no other attempt is running now, so they can go.
    for stale in sorted(p for p in run_dir.rglob("*") if p.is_file() and (".tmp-" in p.name or ".partial-" in p.name)):
        log(f"removing {stale}, left unfinished by an earlier attempt")
        stale.unlink()
    checkpoint = run_dir / "checkpoint.pt"
    resumed = checkpoint.exists()
    if resumed:
        last = last_logged_step(run_dir / "metrics.jsonl")
        log(f"RESUMING run '{run_name}': found {checkpoint} (metrics.jsonl reaches step {last}); the notebook "
            f"continues from the checkpoint instead of starting over")
    else:
        log(f"starting run '{run_name}' from scratch in {run_dir}")
    if gpus > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() < gpus:
            raise RuntimeError(f"asked for {gpus} GPUs but only {torch.cuda.device_count()} are visible")

    parameters = notebook_parameters(preset, steps, seed, run_name, str(output_dir), cache_dir, tasks,
                                     config_overrides, report_to)
    # the notebook runs in the run folder and imports the package that sits beside it (a kernel and torchrun's
    # processes inherit the path)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(notebook.parent), os.environ.get("PYTHONPATH")]))
    log(f"parameters: {json.dumps(parameters)}")
    import papermill

    started = time.time()
    with PeriodicCommitter(commit, commit_every):
        if gpus == 1:
            executed = run_dir / EXECUTED_NOTEBOOK
            if executed.exists():  # keep the previous attempt's outputs for a post-mortem
                os.replace(executed, run_dir / PREVIOUS_EXECUTED_NOTEBOOK)
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, kernel_name="python3",
                                       progress_bar=False, request_save_on_cell_execute=True,
                                       stdout_file=sys.stdout, stderr_file=sys.stderr, cwd=str(run_dir))
        else:
            prepared = run_dir / PREPARED_NOTEBOOK
            papermill.execute_notebook(str(notebook), str(prepared), parameters=parameters, prepare_only=True,
                                       kernel_name="python3", progress_bar=False)
            export_script(prepared, run_dir / TORCHRUN_SCRIPT)
            run_torchrun(run_dir / TORCHRUN_SCRIPT, gpus, run_dir, run_dir / TORCHRUN_LOG)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    log(f"run '{run_name}' finished in {time.time() - started:.0f} s; results in {run_dir}")
    return {"run_name": run_name, "run_dir": str(run_dir), "resumed": resumed, "summary": summary}


# ----------------------------------------------------------------------------- Modal wiring


def commit_volumes(volumes: dict | None = None) -> None:
    """Persist both Volumes (results and caches), each in its own try, so that one failing commit does not skip
    the other; then raise the failures, if any, together."""
    failures = []
    for name, volume in (volumes or {RUNS_VOLUME_NAME: runs_volume, CACHE_VOLUME_NAME: cache_volume}).items():
        try:
            volume.commit()
        except Exception as error:
            failures.append(f"{name}: {error!r}")
    if failures:
        raise RuntimeError("volume commit failed for " + "; ".join(failures))


@app.function(gpu=DEFAULT_GPU, timeout=TIMEOUT_SECONDS, retries=RETRIES, cpu=CPU_CORES, memory=MEMORY_MIB,
              volumes={RUNS_ROOT: runs_volume, CACHE_ROOT: cache_volume})
def train(preset: str, steps: int | None = None, seed: int = 0, run_name: str | None = None, gpus: int = 1,
          tasks: list[str] | None = None, config_overrides: dict | None = None,
          report_to: list[str] | None = None) -> dict:
    """One attempt at the run on Modal; a retry resumes it from the checkpoint on the Volume. An attempt that ran out
    of GPU memory returns its error instead of raising it, so that Modal does not retry what would fail again."""
    return run_or_report_out_of_memory(preset, steps=steps, seed=seed, run_name=run_name, gpus=gpus,
                                       volume_root=RUNS_ROOT, cache_dir=f"{CACHE_ROOT}/tinyzero", tasks=tasks,
                                       config_overrides=config_overrides, commit=commit_volumes, report_to=report_to)


def run_or_report_out_of_memory(preset: str, **options) -> dict:
    """`run_notebook`, except that running out of GPU memory comes back as {"out_of_memory": message} (not retried)
    instead of an exception (retried)."""
    run_name = options.get("run_name") or default_run_name(preset, options.get("seed", 0))
    try:
        return run_notebook(preset, **{**options, "run_name": run_name})
    except Exception as error:
        if not ran_out_of_memory(error, pathlib.Path(options.get("volume_root", RUNS_ROOT)).resolve() / run_name):
            raise
        message = (f"run '{run_name}' ran out of GPU memory ({type(error).__name__}); not retried. Resume it from its "
                   f"last checkpoint with a smaller micro_batch_size, e.g. --run-name {run_name} --overrides "
                   f"'{{\"micro_batch_size\": 2}}', or use more or larger GPUs (docs/memory.md)")
        log(message)
        return {"run_name": run_name, "out_of_memory": message, "summary": None}


def notebook_code_cell(marker: str, notebook_path: str | os.PathLike = NOTEBOOK) -> str | None:
    """The source of the notebook's code cell with a line starting with `marker`, from that line on (None if
    there is none)."""
    try:
        cells = json.loads(pathlib.Path(notebook_path).read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for cell in cells:
        source = "".join(cell.get("source", []))
        if cell.get("cell_type") == "code" and "\n" + marker in "\n" + source:
            return source[source.index(marker):]
    return None


def known_presets(notebook_path: str | os.PathLike = NOTEBOOK) -> set[str]:
    """Preset names read from the notebook's `PRESETS = {...}` cell (empty if the cell can't be found).

    Checked locally before a run, so that a typo fails at once instead of after a GPU container starts
    (and is retried)."""
    import re

    body = notebook_code_cell("PRESETS = {", notebook_path)
    return set(re.findall(r'^\s*"([\w.\-]+)":\s*dict\(', body, flags=re.MULTILINE)) if body else set()


def known_trackers(notebook_path: str | os.PathLike = NOTEBOOK) -> set[str]:
    """Tracker names of `--report-to`, read from the notebook's `TRACKER_PACKAGES = {...}` line."""
    import re

    body = notebook_code_cell("TRACKER_PACKAGES = {", notebook_path)
    return set(re.findall(r'"([\w-]+)":', body.split("}", 1)[0])) if body else set()


def gpu_request(gpu: str, gpus: int) -> str:
    """Modal's GPU string: "H100" for one, "H100:2" for two."""
    if ":" in gpu:
        kind, count = gpu.split(":", 1)
        if int(count) != gpus:
            raise ValueError(f"--gpu {gpu} asks for {count} GPUs but --gpus is {gpus}; give the count once")
        gpu = kind
    return gpu if gpus == 1 else f"{gpu}:{gpus}"


def optional_secrets(name: str, variable: str, purpose: str, without: str) -> list:
    """The named Modal secret if it exists, else `variable` from the local environment as a secret, else
    nothing (and `without` says what happens then)."""
    if name:
        secret = modal.Secret.from_name(name)
        try:
            secret.hydrate()
            log(f"using the Modal secret '{name}' for {purpose}")
            return [secret]
        except modal.exception.NotFoundError:
            pass
    if os.environ.get(variable):
        log(f"using {variable} from the local environment for {purpose}")
        return [modal.Secret.from_dict({variable: os.environ[variable]})]
    log(f"no {variable} (no Modal secret named '{name}', no local {variable}); {without}")
    return []


@app.local_entrypoint()
def main(preset: str = "qwen2.5-0.5b", gpu: str = DEFAULT_GPU, gpus: int = 1, steps: int | None = None,
         seed: int = 0, run_name: str = "", tasks: str = "", overrides: str = "", hf_secret: str = HF_SECRET_NAME,
         timeout_hours: float = TIMEOUT_SECONDS / 3600, report_to: str = "", wandb_secret: str = WANDB_SECRET_NAME):
    """Train `preset` with A*PO on Modal.

    --gpu: GPU type (H100, A100-80GB, L40S, ...); --gpus: how many (torchrun when > 1);
    --steps: A*PO steps (default: the preset's); --run-name: folder on the Volume (default <preset>-seed<seed>;
    re-using a name resumes that run); --tasks: comma-separated, of countdown, multiplication and frozenlake
    (default: countdown,multiplication); --overrides: JSON object of
    further Config fields; --hf-secret: Modal secret with HF_TOKEN ('' for none); --timeout-hours: per attempt;
    --report-to: comma-separated live trackers (tensorboard, wandb, trackio); --wandb-secret: Modal secret with
    WANDB_API_KEY, attached when --report-to names wandb ('' for none).
    """
    if gpus < 1:
        raise SystemExit("--gpus must be at least 1")
    if steps is not None and steps < 1:
        raise SystemExit("--steps must be at least 1")
    presets = known_presets()
    if presets and preset not in presets:
        raise SystemExit(f"--preset {preset!r} is not one of the notebook's presets: {sorted(presets)}")
    if not 0 < timeout_hours <= 24:
        raise SystemExit("--timeout-hours must lie in (0, 24]: Modal allows at most 24 hours per attempt")
    try:
        config_overrides = json.loads(overrides) if overrides else {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"--overrides is not valid JSON: {error}")
    if not isinstance(config_overrides, dict):
        raise SystemExit("--overrides must be a JSON object, e.g. '{\"learning_rate\": 2e-6}'")
    run_name = run_name or default_run_name(preset, seed)
    if "/" in run_name or run_name.startswith("."):
        raise SystemExit(f"--run-name {run_name!r} must be a plain folder name")
    trackers = [t.strip() for t in report_to.split(",") if t.strip()]
    unknown = sorted(set(trackers) - known_trackers())
    if unknown:
        raise SystemExit(f"--report-to {','.join(unknown)} is not one of the notebook's trackers: {sorted(known_trackers())}")
    try:
        gpu = gpu_request(gpu, gpus)
    except ValueError as error:
        raise SystemExit(str(error))
    options = dict(gpu=gpu, timeout=int(timeout_hours * 3600),
                   memory=MEMORY_MIB + MEMORY_MIB_PER_EXTRA_GPU * (gpus - 1))
    secrets = optional_secrets(hf_secret, "HF_TOKEN", "Hugging Face downloads", "downloading anonymously")
    if "wandb" in trackers:
        secrets += optional_secrets(wandb_secret, "WANDB_API_KEY", "Weights & Biases",
                                    "wandb will fail to log in; create it with: modal secret create wandb WANDB_API_KEY=...")
    if secrets:
        options["secrets"] = secrets
    log(f"run '{run_name}': preset {preset} on {options['gpu']}, steps {steps or 'as in the preset'}, seed {seed}")
    result = train.with_options(**options).remote(
        preset, steps=steps, seed=seed, run_name=run_name, gpus=gpus,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()] or None, config_overrides=config_overrides,
        report_to=trackers or None)
    if result.get("out_of_memory"):
        raise SystemExit(result["out_of_memory"])
    summary = result["summary"] or {}
    for key in ("steps", "stage_seconds", "peak_memory_mb", "greedy_accuracy_gain"):
        if key in summary:
            log(f"{key}: {json.dumps(summary[key])}")
    log(f"download the results with: modal volume get {RUNS_VOLUME_NAME} {run_name} ./results/")
