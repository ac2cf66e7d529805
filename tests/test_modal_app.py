"""Tests for modal_app.py.

The Modal objects must build offline (no token, no network) with the intended settings, and the body
of the remote function must run anywhere: here it runs the real notebook on the cpu-tiny preset
through papermill, with a temporary folder standing in for the Volume, then runs again with more
steps and must resume from the checkpoint instead of starting over.
"""
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import warnings

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modal  # noqa: E402

import modal_app  # noqa: E402

# A cpu-tiny run cut further down: the launcher is under test here, not learning.
FAST_OVERRIDES = dict(max_new_tokens=16, test_prompts_per_task=4, eval_prompts_per_task=4,
                      multiplication_eval_levels=["3x1"], num_ref_samples=2, pass_k=1)
FAST_TASKS = ["multiplication"]


# ----------------------------------------------------------------------------- Modal objects


def test_import_builds_modal_objects_offline_without_a_token(tmp_path):
    """A fresh interpreter with no Modal config or token imports the module and leaves no files behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path / "home"), MODAL_CONFIG_PATH=str(tmp_path / "home" / ".modal.toml"),
               PYTHONPATH=str(ROOT))
    (tmp_path / "home").mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    code = ("import modal, modal_app as m\n"
            "assert isinstance(m.app, modal.App) and isinstance(m.image, modal.Image)\n"
            "assert isinstance(m.runs_volume, modal.Volume) and isinstance(m.cache_volume, modal.Volume)\n"
            "assert isinstance(m.train, modal.Function)\n"
            "assert isinstance(m.main, modal.app.LocalEntrypoint)\n"
            "print('built', m.app.name)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "built tinyzero-astarpo" in result.stdout
    assert list(work.iterdir()) == [], "importing modal_app must not write files"
    assert not (tmp_path / "home" / ".modal.toml").exists()


def test_function_settings():
    """GPU, timeout, retries, volumes and (no) required secrets, as Modal recorded them locally."""
    info = modal_app.train.info()  # answered from the local definition, no network
    assert info.gpus == [("H100", 1)]
    assert info.timeout == modal_app.TIMEOUT_SECONDS
    assert 6 * 3600 <= info.timeout <= 24 * 3600
    assert info.max_retries == modal_app.MAX_RETRIES >= 1
    assert {path: mount.name for path, mount in info.volumes.items()} == {
        modal_app.RUNS_ROOT: "tinyzero-astarpo-runs", modal_app.CACHE_ROOT: "tinyzero-astarpo-cache"}
    assert info.secrets == [], "the Hugging Face secret must be optional, added per run"
    assert modal_app.RETRIES.max_retries == modal_app.MAX_RETRIES
    assert modal_app.runs_volume is not modal_app.cache_volume


def test_image_installs_the_vllm_stack_and_the_package_beside_the_notebook(nb):
    assert f"transformers=={modal_app.PINNED_TRANSFORMERS}\n" in (ROOT / "requirements.txt").read_text()
    assert "\nvllm==0.32.0\n" in (ROOT / "requirements-vllm.txt").read_text()
    assert (ROOT / modal_app.PACKAGE_NAME / "vllm_engine.py").exists()
    qwen = sorted(name for name in modal_app.known_presets() if name.startswith("qwen"))
    assert len(qwen) == 3 and all(nb.PRESETS[name]["rollout_engine"] == "vllm" for name in qwen)


def test_gpu_request_strings():
    assert modal_app.gpu_request("H100", 1) == "H100"
    assert modal_app.gpu_request("H100", 4) == "H100:4"
    assert modal_app.gpu_request("A100-80GB:2", 2) == "A100-80GB:2"
    with pytest.raises(ValueError, match="give the count once"):
        modal_app.gpu_request("H100:2", 4)


def test_with_options_sets_the_gpu_count():
    """The local entrypoint picks the GPU count per run with Function.with_options (offline here)."""
    variant = modal_app.train.with_options(gpu=modal_app.gpu_request("H100", 2), timeout=3600, memory=1024)
    assert isinstance(variant, modal.Function)
    try:  # the options live on private attributes; skip rather than guess if their layout changes
        from modal._utils.async_utils import synchronizer
        options = synchronizer._translate_in(variant)._options
        gpu_config, timeout = options.resources.gpu_config, options.timeout_secs
    except (ImportError, AttributeError) as error:
        pytest.skip(f"modal {modal.__version__} keeps Function options elsewhere ({error!r})")
    assert (gpu_config.gpu_type, gpu_config.count, timeout) == ("H100", 2, 3600)


def test_preset_names_are_read_from_the_notebook():
    assert {"cpu-tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"} <= modal_app.known_presets()
    assert modal_app.known_presets("/nonexistent/notebook.ipynb") == set()


def test_tracker_names_are_read_from_the_notebook_and_reach_its_config(nb):
    assert modal_app.known_trackers() == set(nb.TRACKER_PACKAGES) == {"tensorboard", "wandb", "trackio"}
    assert modal_app.known_trackers("/nonexistent/notebook.ipynb") == set()
    parameters = modal_app.notebook_parameters("cpu-tiny", None, 0, "r", "/runs", None, None, {"seed": 1}, ["wandb"])
    assert parameters["config_overrides"] == {"seed": 1, "report_to": ["wandb"]}
    assert "report_to" not in modal_app.notebook_parameters("cpu-tiny", None, 0, "r", "/runs", None, None, None)[
        "config_overrides"]


@pytest.mark.parametrize("arguments,message", [(dict(preset="qwen2.5-7b"), "not one of the notebook's presets"),
                                               (dict(gpus=0), "--gpus"), (dict(steps=0), "--steps"),
                                               (dict(timeout_hours=30), "24"),
                                               (dict(overrides="[1]"), "JSON object"),
                                               (dict(run_name="a/b"), "plain folder name"),
                                               (dict(gpu="H100:2", gpus=4), "give the count once"),
                                               (dict(report_to="tensorboard,mlflow"), "not one of the notebook's trackers")])
def test_entrypoint_rejects_bad_arguments_before_starting_anything(arguments, message):
    entrypoint = getattr(getattr(modal_app.main, "info", None), "raw_f", None)
    if entrypoint is None:
        pytest.skip(f"modal {modal.__version__} keeps the entrypoint's function elsewhere")
    with pytest.raises(SystemExit, match=message):
        entrypoint(**arguments)


def test_periodic_committer_commits_periodically_and_on_failure():
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with modal_app.PeriodicCommitter(lambda: calls.append(time.time()), every=0.02):
            time.sleep(0.2)
            raise RuntimeError("boom")
    assert len(calls) >= 3  # several periodic commits and the final one
    assert not any(t.name == "volume-commit" and t.is_alive() for t in threading.enumerate())

    def failing_commit():
        raise OSError("volume unavailable")

    with modal_app.PeriodicCommitter(failing_commit, every=0.01) as committer:
        time.sleep(0.05)
    assert committer.commits == 0  # errors were reported, not raised


class FakeVolume:
    def __init__(self, fails: bool):
        self.fails, self.commits = fails, 0

    def commit(self):
        if self.fails:
            raise OSError("reload failed: open files")
        self.commits += 1


def test_each_volume_commits_in_its_own_try():
    """A failing commit of the runs Volume does not skip the cache Volume's; the failure is still raised."""
    runs, cache = FakeVolume(fails=True), FakeVolume(fails=False)
    with pytest.raises(RuntimeError, match="runs: OSError"):
        modal_app.commit_volumes({"runs": runs, "cache": cache})
    assert cache.commits == 1
    modal_app.commit_volumes({"runs": FakeVolume(False), "cache": cache})
    assert cache.commits == 2


def test_the_torchrun_log_is_open_only_while_a_line_is_written(tmp_path):
    """A Volume commit (which also reloads, and fails on open files) never meets the log held open."""
    script = tmp_path / "script.py"
    script.write_text("import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.5)\n")
    log_path = tmp_path / modal_app.TORCHRUN_LOG
    open_while_running = []

    def watch():
        while not done.is_set():
            open_while_running.append(any(os.path.realpath(f"/proc/self/fd/{fd}") == str(log_path)
                                          for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")))
            time.sleep(0.05)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        modal_app.run_torchrun(script, 1, tmp_path, log_path)
    finally:
        done.set()
        watcher.join()
    assert "line 2" in log_path.read_text() and len(open_while_running) > 10
    assert sum(open_while_running) <= 2, "the log stayed open between lines"


def test_out_of_memory_is_reported_not_retried(tmp_path, monkeypatch):
    """An attempt that ran out of GPU memory returns its message (Modal retries only what raises); other failures
    still raise."""
    def out_of_memory(preset, **options):
        raise RuntimeError("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(modal_app, "run_notebook", out_of_memory)
    result = modal_app.run_or_report_out_of_memory("qwen2.5-3b", run_name="q3", volume_root=str(tmp_path))
    assert "micro_batch_size" in result["out_of_memory"] and "--run-name q3" in result["out_of_memory"]

    def from_the_log(preset, **options):
        (tmp_path / "q3" / modal_app.TORCHRUN_LOG).write_text("torch.OutOfMemoryError: CUDA out of memory\n")
        raise RuntimeError("torchrun exited with status 1")

    (tmp_path / "q3").mkdir()
    monkeypatch.setattr(modal_app, "run_notebook", from_the_log)
    assert modal_app.run_or_report_out_of_memory("qwen2.5-3b", run_name="q3", volume_root=str(tmp_path))["out_of_memory"]
    (tmp_path / "q3" / modal_app.TORCHRUN_LOG).unlink()

    def other(preset, **options):
        raise RuntimeError("torchrun exited with status 1")

    monkeypatch.setattr(modal_app, "run_notebook", other)
    with pytest.raises(RuntimeError, match="status 1"):
        modal_app.run_or_report_out_of_memory("qwen2.5-3b", run_name="q3", volume_root=str(tmp_path))


def test_magics_are_found_in_an_exported_script():
    assert modal_app.uses_magics("x = 1\nget_ipython().run_line_magic('time', 'x')\n")
    assert modal_app.uses_magics("get_ipython().system('ls')\n")
    assert not modal_app.uses_magics("shell = IPython.get_ipython()\n")  # asking for the shell is no magic


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="gpus"):
        modal_app.run_notebook("cpu-tiny", gpus=0, volume_root=str(tmp_path))
    with pytest.raises(ValueError, match="run_name"):
        modal_app.run_notebook("cpu-tiny", run_name="a/b", volume_root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the body, run locally


def injected_parameters(notebook_path: pathlib.Path) -> str:
    notebook = nbformat.read(str(notebook_path), as_version=4)
    tags = [cell.metadata.get("tags", []) for cell in notebook.cells]
    assert any("parameters" in t for t in tags), "the notebook's parameters cell is gone"
    injected = [cell.source for cell in notebook.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1, "papermill should record exactly one injected-parameters cell"
    return injected[0]


def all_output_text(notebook_path: pathlib.Path) -> str:
    notebook = nbformat.read(str(notebook_path), as_version=4)
    return "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.fixture
def local_volumes(tmp_path, monkeypatch):
    """Temporary folders for both Volumes, and a commit that only counts."""
    commits = []
    monkeypatch.setattr(modal_app, "RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setattr(modal_app, "CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setattr(modal_app, "commit_volumes", lambda: commits.append(time.time()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "runs", tmp_path / "cache", commits


def run_locally(**kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*executing locally.*")  # Modal: no Volume mounted locally
        return modal_app.train.local("cpu-tiny", seed=0, run_name="smoke", tasks=FAST_TASKS,
                                     config_overrides=FAST_OVERRIDES, **kwargs)


def test_function_body_runs_the_notebook_and_resumes(local_volumes, capsys):
    runs, cache, commits = local_volumes
    run_dir = runs / "smoke"

    first = run_locally(steps=2)
    out = capsys.readouterr().out
    assert "starting run 'smoke' from scratch" in out and "RESUMING" not in out
    assert first["resumed"] is False and first["run_dir"] == str(run_dir)
    executed = run_dir / modal_app.EXECUTED_NOTEBOOK
    assert executed.exists()
    injected = injected_parameters(executed)
    for line in ('preset = "cpu-tiny"', "train_steps = 2", 'run_name = "smoke"', f'output_dir = "{runs}"',
                 f'"cache_dir": "{cache}/tinyzero"', "seed = 0"):
        assert line in injected, f"{line!r} not among the recorded parameters:\n{injected}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert first["summary"] == summary and summary["steps"] == 2
    assert (run_dir / "checkpoint.pt").exists() and (cache / "tinyzero" / "base_model").is_dir()
    assert len(commits) >= 1, "the Volume must be committed at the end"

    commits.clear()
    stale = run_dir / "checkpoint.pt.tmp-12345"  # as if an attempt was stopped while checkpointing
    stale.write_bytes(b"partial")
    second = run_locally(steps=4)
    out = capsys.readouterr().out
    assert not stale.exists() and f"removing {stale}" in out
    assert "RESUMING run 'smoke'" in out and "metrics.jsonl reaches step 2" in out
    assert second["resumed"] is True
    assert "resuming from step 2" in all_output_text(executed), "the notebook itself did not resume"
    assert "train_steps = 4" in injected_parameters(executed)
    assert (run_dir / modal_app.PREVIOUS_EXECUTED_NOTEBOOK).exists(), "the first attempt's notebook is kept"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], "steps must be neither lost nor repeated across the resume"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4
    assert len(commits) >= 1
