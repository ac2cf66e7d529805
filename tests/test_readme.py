"""Every command in README.md's shell blocks, run as written (or checked offline where it needs a Modal account),
at the smallest size that exercises it. A README edit that breaks a command fails here.

Substitutions, the only departures from the text:
- papermill runs of the notebook get `-p preset cpu-tiny -p train_steps 2` appended (and keep the run folder
  the command names), so that they take seconds; they run in a scratch folder holding the notebook and a link
  to this checkout's `.venv`, so paths such as `.venv/bin/python` and `results/...` work as written;
- `python3 -m venv .venv && .venv/bin/pip install -r ...` and the test command are what `.ci/run` runs before
  and as the tests, which is checked word for word;
- the full benchmark is the `--size cpu-tiny` smoke run of tests/test_benchmarks.py;
- `tensorboard --logdir DIR` gets `--inspect`, which reads the run's event files and exits instead of serving;
- `modal run modal_app.py ...` calls the launcher's entrypoint here with the same options, Modal's remote call
  replaced by a recording (everything up to the GPU container runs); `modal setup`, `modal secret create`,
  `modal volume ...` and `modal app logs` need a Modal account: their names are checked against modal_app.py.
"""
import inspect
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modal_app  # noqa: E402

SETUP = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
SMALL = " -p preset cpu-tiny -p train_steps 2"


def readme_commands() -> list[str]:
    """The commands of README's ```bash blocks, continuation lines joined, comment lines dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = " ".join(command.split())
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


COMMANDS = readme_commands()


def without_comment(command: str) -> str:
    return shlex.split(command, comments=True)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch folder laid out as a clone: the notebook, the launcher, `results/`, and a link to this checkout's
    virtual environment."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("TinyZero_AstarPO.ipynb", "modal_app.py", "requirements.txt"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "tinyzero", folder / "tinyzero", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "results").mkdir()  # a clone has it: the committed results live there
    venv = ROOT / ".venv"
    (folder / ".venv").symlink_to(venv if venv.exists() else pathlib.Path(sys.prefix), target_is_directory=True)
    return folder


def run_in(folder: pathlib.Path, command: str, timeout: int = 300) -> str:
    return run_together_in(folder, [command], timeout)[0]


def run_together_in(folder: pathlib.Path, commands: list[str], timeout: int = 300) -> list[str]:
    """Run `commands` at the same time in `folder` (each on one thread: they share this machine's cores) and
    return what each printed; any that fails fails the test."""
    env = dict(os.environ, PATH=f"{folder / '.venv' / 'bin'}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    logs = [tempfile.TemporaryFile("w+") for _ in commands]  # not pipes: a full pipe would stall a command
    started = [subprocess.Popen(["bash", "-c", command], cwd=folder, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=env) for command, log in zip(commands, logs)]
    printed = []
    try:
        for command, process, log in zip(commands, started, logs):
            process.wait(timeout=timeout)
            log.seek(0)
            printed.append(log.read())
            assert process.returncode == 0, f"README command failed: {command}\n{printed[-1][-3000:]}"
    finally:  # one failed or timed out: the others stop too, rather than run on beside the next tests
        for process, log in zip(started, logs):
            process.kill()
            process.wait()
            log.close()
    return printed


def small(command: str) -> str:
    """A papermill command at cpu-tiny size, writing to the folder it names."""
    if " -p run_name " not in command:
        command += " -p run_name cpu-seed0"  # the preset's default folder, as README's text says
    return command + SMALL


def test_every_readme_command_has_a_check():
    handled = [c for c in COMMANDS if handler(c) is not None]
    assert handled == COMMANDS, f"README commands no test runs: {[c for c in COMMANDS if handler(c) is None]}"
    assert len(COMMANDS) >= 15


def handler(command: str):
    """Which check covers `command` (None: none does)."""
    program = command.split()[0]
    if command.startswith(SETUP):
        return "setup"
    if "-m papermill" in command:
        return "papermill"
    if program in ("modal", "pip", "tensorboard") or "benchmarks/run_benchmarks.py" in command:
        return program if "benchmarks" not in command else "benchmark"
    if program.endswith("jupyter") or program.endswith("torchrun"):
        return "torchrun recipe"
    if program == ".venv/bin/pip":
        return "installed by the test command"
    return None


def test_setup_and_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    setups = [c for c in COMMANDS if c.startswith(SETUP)]
    assert len(setups) == 2, "README has exactly two set-up commands: the CPU default's run and the tests"
    run, tests = setups if "papermill" in setups[0] else setups[::-1]
    assert tests in ci, ".ci/run must run README's test command exactly"
    run_venv, run_install = run.split(" && ")[:2]
    tests_venv, tests_install = tests.split(" && ")[:2]
    assert run_venv == tests_venv and tests_install.startswith(run_install)  # CI installs what the run needs, and more


def test_other_installs_are_part_of_the_test_command_that_ci_runs():
    """An install README shows on its own (vLLM's CPU build) is one CI makes: the tests run with it."""
    tests = next(c for c in COMMANDS if c.startswith(SETUP) and "pytest" in c)
    installs = [c for c in COMMANDS if handler(c) == "installed by the test command"]
    assert installs and all(f" && {c} && " in tests for c in installs)


def test_the_first_command_runs_the_notebook_and_writes_a_small_readable_notebook(sandbox):
    command = next(c for c in COMMANDS if c.startswith(SETUP) and "papermill" in c)
    printed = run_in(sandbox, small(command.split(" && ", 2)[2]))
    assert "IProgress not found" not in printed, "ipywidgets missing: Jupyter would fall back to text bars"
    executed = sandbox / "results" / "cpu-seed0.executed.ipynb"
    assert (sandbox / "results" / "cpu-seed0" / "summary.json").exists()
    notebook = nbformat.read(str(executed), as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert executed.stat().st_size < 1_000_000, "the executed notebook should open and read easily"
    assert len(outputs) < 60, f"{len(outputs)} outputs: progress bars must not write fragments"
    assert not any("Figure(" in o.get("text", "") for o in outputs)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), \
        "in a Jupyter kernel the progress bars are widgets"


def test_the_other_notebook_commands_run_as_written(sandbox):
    """The tracker example (then TensorBoard reads what it logged) and the settings example."""
    commands = [c for c in COMMANDS if "-m papermill" in c and not c.startswith(SETUP) and "--prepare-only" not in c]
    assert len(commands) >= 2
    run_together_in(sandbox, [small(command) for command in commands])  # they write different run folders
    for command in (c for c in COMMANDS if c.startswith("tensorboard ")):
        printed = run_in(sandbox, command + " --inspect")
        assert "eval_greedy_accuracy" in printed or "reward" in printed, printed[-2000:]
    assert (sandbox / "results" / "lr" / "summary.json").exists()


def test_the_torchrun_recipe_runs_as_written(sandbox):
    recipe = [c for c in COMMANDS if "--prepare-only" in c or handler(c) == "torchrun recipe"]
    assert [c.split()[0].rsplit("/", 1)[-1] for c in recipe] == ["python", "jupyter", "torchrun"]
    for command in recipe:
        printed = run_in(sandbox, command)
    assert "Figure(" not in printed, "a script prints no figure reprs"
    summary = json.loads((sandbox / "results" / "cpu-tiny-seed0" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_the_benchmark_command_is_the_smoke_run_at_full_size():
    import test_benchmarks
    command = next(c for c in COMMANDS if "benchmarks/run_benchmarks.py" in c)
    install, run = command.split(" && ")
    assert install == ".venv/bin/pip install -r requirements-bench.txt"
    assert "-r requirements-bench.txt" in (ROOT / "requirements-dev.txt").read_text()  # CI installs it
    assert run == ".venv/bin/python benchmarks/run_benchmarks.py"
    assert test_benchmarks.SMOKE_ARGUMENTS[:2] == ["--size", "cpu-tiny"]  # the same script, smallest size


def entrypoint_options(arguments: list[str]) -> dict:
    """`modal run modal_app.py --name value ...` as keyword arguments of the launcher's entrypoint."""
    entrypoint = modal_app.main.info.raw_f
    types = {name: parameter.annotation for name, parameter in inspect.signature(entrypoint).parameters.items()}
    options = {}
    for flag, value in zip(arguments[::2], arguments[1::2]):
        name = flag.removeprefix("--").replace("-", "_")
        assert name in types, f"modal_app.py has no option {flag}"
        kind = types[name]
        options[name] = int(value) if kind in (int, "int", "int | None") or "int" in str(kind) else \
            float(value) if "float" in str(kind) else value
    return options


def test_modal_commands_reach_the_remote_call_with_their_options(monkeypatch):
    calls = []

    class RecordingFunction:
        def with_options(self, **options):
            calls.append({"options": options})
            return self

        def remote(self, preset, **kwargs):
            calls[-1].update(preset=preset, **kwargs)
            return {"summary": {"steps": 1}, "run_name": kwargs["run_name"]}

    monkeypatch.setattr(modal_app, "train", RecordingFunction())
    monkeypatch.setattr(modal_app, "optional_secrets", lambda *args: [])
    runs = [c for c in COMMANDS if c.startswith("modal run")]
    assert len(runs) >= 4
    for command in runs:
        words = without_comment(command)
        words = [w for w in words if w != "--detach"]
        assert words[:3] == ["modal", "run", "modal_app.py"]
        modal_app.main.info.raw_f(**entrypoint_options(words[3:]))
    assert len(calls) == len(runs)
    assert any(call["gpus"] == 2 for call in calls) and any(call["config_overrides"] for call in calls)


def test_modal_account_commands_name_the_launchers_objects():
    for command in (c for c in COMMANDS if c.startswith("modal ") and not c.startswith("modal run")):
        words = without_comment(command)
        if words[1] == "volume":
            assert words[3] == modal_app.RUNS_VOLUME_NAME
        elif words[1] == "app":
            assert words[-1] == modal_app.APP_NAME
        elif words[1] == "secret":
            assert words[3] in (modal_app.HF_SECRET_NAME, modal_app.WANDB_SECRET_NAME)
        else:
            assert words[1] == "setup"


def test_pip_commands_install_pinned_requirements():
    for command in (c for c in COMMANDS if c.startswith("pip ")):
        words = without_comment(command)
        assert words[:2] == ["pip", "install"]
        for package in words[2:]:
            assert re.search(rf"^{package}==", (ROOT / "requirements.txt").read_text(), flags=re.M), package


def readme_setting(text: str):
    """A value as README's settings table writes it: a number, `a string`, off/on, none or (), else None (prose)."""
    text = text.strip()
    words = {"off": False, "on": True, "none": (), "()": ()}
    if text in words:
        return words[text]
    if re.fullmatch(r"`[^`]+`", text):
        return text.strip("`")
    try:
        return float(text)
    except ValueError:
        return None


def test_the_settings_table_gives_the_cpu_presets_values(nb):
    config = nb.make_config("cpu")
    section = (ROOT / "README.md").read_text().split("## Settings that matter", 1)[1].split("\n## ", 1)[0]
    checked = 0
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        names, cpu_values = row.split("|")[1:3]
        names = re.findall(r"`([a-z0-9_]+)`", names)
        values = [readme_setting(v) for v in cpu_values.split(",")] if len(names) > 1 else [readme_setting(cpu_values)]
        for name, value in zip(names, values):
            if value is None or not hasattr(config, name):
                continue
            actual = getattr(config, name)
            assert (actual == value if not isinstance(value, float) else float(actual) == pytest.approx(value)), \
                f"README's settings table says {name} = {value!r} for cpu; the preset has {actual!r}"
            checked += 1
    assert checked >= 20
