"""Live trackers (`report_to`): TensorBoard, wandb (offline) and Trackio get every step, the evaluations,
the config and the plots; a killed and resumed run continues the same tracker run, each step logged once."""
import json
import os
import struct

import pytest

from notebook_runs import kill_after_steps, papermill_command, run_checked
from tinyzero import checkpoints

TRAIN_STEPS = 8
TRACKERS = ["tensorboard", "wandb", "trackio"]


def test_unknown_or_missing_trackers_fail_at_once(nb):
    with pytest.raises(ValueError, match="report_to"):
        nb.make_config("cpu-tiny", report_to=["mlflow"])
    with pytest.raises(ImportError, match="pip install no_such_tracker_package"):
        nb.require_installed("report_to", "wandb", "no_such_tracker_package")
    with pytest.raises(ValueError, match="tracker_project"):
        nb.make_config("cpu-tiny", report_to=["tensorboard"], tracker_project="")
    assert nb.make_config("cpu-tiny", report_to=["tensorboard"]).report_to == ("tensorboard",)


def test_changing_trackers_does_not_block_a_resume(nb):
    saved = json.loads(json.dumps(nb.dataclasses.asdict(nb.make_config("cpu-tiny"))))
    assert checkpoints.config_differences(saved, nb.make_config("cpu-tiny", report_to=["tensorboard"])) == []


def test_evaluation_reports_become_named_scalars(nb):
    report = {"countdown": {"problems": 16, "greedy_accuracy": 0.25, "pass@2": 0.5, "greedy_texts": ["x"],
                            "by_level": {"3x9": 0.25, "3x20": 0.125}}}
    assert nb.evaluation_scalars("base", report) == {
        "base/countdown/problems": 16, "base/countdown/greedy_accuracy": 0.25, "base/countdown/pass@2": 0.5,
        "base/countdown/greedy_accuracy_3x9": 0.25, "base/countdown/greedy_accuracy_3x20": 0.125}


def wandb_records(path):
    """The protobuf records of a wandb `.wandb` file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2
    data, position, pending, block = path.read_bytes(), 7, b"", 32768  # 7 bytes of file header
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A cpu-tiny run with every tracker, killed after 3 steps and resumed to the end."""
    root = tmp_path_factory.mktemp("trackers")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", TRACKIO_DIR=str(root / "trackio"))
    command = papermill_command(str(root / "executed.ipynb"), str(root / "results"), str(root / "cache"),
                                TRAIN_STEPS, report_to=TRACKERS)
    run_dir = root / "results" / "tiny"
    steps_before = kill_after_steps(command, run_dir / "metrics.jsonl", 3, env=env)
    assert 3 <= steps_before < TRAIN_STEPS and (run_dir / "checkpoint.pt").exists()
    run_checked(command, env=env)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == list(range(1, TRAIN_STEPS + 1))
    return {"root": root, "run_dir": run_dir, "metrics": metrics, "steps_before": steps_before,
            "run_id": json.loads((run_dir / "trackers.json").read_text())["run_id"]}


def test_tensorboard_holds_every_step_once(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tracked_run["run_dir"] / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rewards = events.Scalars("reward")
    assert [e.step for e in rewards] == list(range(1, TRAIN_STEPS + 1))
    assert [e.value for e in rewards] == pytest.approx([r["reward"] for r in tracked_run["metrics"]], rel=1e-6)
    assert [e.step for e in events.Scalars("accuracy/countdown")] == list(range(1, TRAIN_STEPS + 1))
    assert [e.step for e in events.Scalars("eval_greedy_accuracy/multiplication")] == [4, 8]
    assert [e.step for e in events.Scalars("base/countdown/greedy_accuracy")] == [0]
    assert [e.step for e in events.Scalars("trained/countdown/pass@2")] == [TRAIN_STEPS]
    assert [e.step for e in events.Images("training_curves")] == [TRAIN_STEPS]
    assert [e.step for e in events.Images("vstar_histogram")] == [0]
    assert "config/text_summary" in events.Tags()["tensors"]


def wandb_history(folder) -> tuple[list, list, set]:
    """Run records, history steps and history keys of one offline wandb run folder."""
    (log,) = folder.glob("run-*.wandb")
    runs, steps, keys = [], [], set()
    for record in wandb_records(log):
        if record.WhichOneof("record_type") == "run":
            runs.append((record.run.run_id, record.run.project))
        elif record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            steps.append(items["_step"])
            keys |= set(items)
    return runs, steps, keys


def test_wandb_offline_run_is_resumed_under_one_id(tracked_run):
    killed, resumed = sorted((tracked_run["run_dir"] / "wandb").glob("offline-run-*"))
    assert killed.name.endswith("-" + tracked_run["run_id"]) and resumed.name.endswith("-" + tracked_run["run_id"])
    runs, steps, keys = wandb_history(resumed)
    assert runs == [(tracked_run["run_id"], "tinyzero-astarpo")]
    assert steps == list(range(0, TRAIN_STEPS + 1)), "the resumed attempt holds every step once"
    assert {"reward", "accuracy/multiplication", "base/countdown/greedy_accuracy", "trained/countdown/pass@2",
            "eval_greedy_accuracy/countdown"} <= keys
    assert any(key.startswith("training_curves/") for key in keys) and any(k.startswith("vstar_histogram/") for k in keys)
    _, killed_steps, _ = wandb_history(killed)  # wandb writes in batches: a kill may leave less than was logged
    assert killed_steps == list(range(len(killed_steps))) and len(killed_steps) <= tracked_run["steps_before"] + 1


def test_trackio_run_is_resumed_by_name(tracked_run):
    os.environ["TRACKIO_DIR"] = str(tracked_run["root"] / "trackio")
    from trackio.sqlite_storage import SQLiteStorage
    name = f"tiny-{tracked_run['run_id']}"
    assert SQLiteStorage.get_runs("tinyzero-astarpo") == [name]
    logs = SQLiteStorage.get_logs("tinyzero-astarpo", name)
    training = [log["step"] for log in logs if "reward" in log]
    assert training == list(range(1, TRAIN_STEPS + 1))
    assert [log["step"] for log in logs if "base/multiplication/greedy_accuracy" in log] == [0]
    assert [log["step"] for log in logs if "trained/multiplication/greedy_accuracy" in log] == [TRAIN_STEPS]
