"""Live trackers for a run (`Config.report_to`): TensorBoard, Weights & Biases and Trackio get what metrics.jsonl
gets, as it is written, on rank 0. A resumed run continues the same tracker run: wandb and Trackio reopen it by the id
kept in `run_dir/trackers.json`, TensorBoard writes on in `run_dir/tensorboard/`; the records up to the checkpoint are
sent again, and each tracker keeps only the steps it does not hold yet."""
import dataclasses
import json
import os
import secrets

from matplotlib.image import imread

from tinyzero.files import write_json_atomically

TRACKER_STATE_FILE = "trackers.json"


def tracker_run_id(run_dir: str) -> str:
    """The id under which trackers know the run in `run_dir`: made on first use, then read back."""
    path = os.path.join(run_dir, TRACKER_STATE_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["run_id"]
    run_id = secrets.token_hex(4)
    write_json_atomically(path, {"run_id": run_id})
    return run_id


class TensorBoardTracker:
    """Scalars, text and images in `run_dir/tensorboard/` (torch's SummaryWriter). Every start marks what
    earlier attempts wrote as replaced (purge_step=0), and the run's records are logged again."""

    def __init__(self, config: "Config", run_dir: str, run_id: str):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=0)
        self.writer.add_text("config", "    " + json.dumps(dataclasses.asdict(config), indent=1).replace("\n", "\n    "))

    def log(self, values: dict, step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_images(self, paths: dict, step: int) -> None:
        for name, path in paths.items():
            self.writer.add_image(name, imread(path)[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run with the id from trackers.json, resumed when it exists."""

    def __init__(self, config: "Config", run_dir: str, run_id: str):
        import wandb
        self.wandb = wandb
        self.run = wandb.init(project=config.tracker_project, name=config.run_name, id=run_id, resume="allow",
                              dir=run_dir, config=dataclasses.asdict(config))

    def log(self, values: dict, step: int) -> None:
        if step >= self.run.step:  # a resumed run already holds the steps before its last one
            self.run.log(values, step=step)

    def log_images(self, paths: dict, step: int) -> None:
        self.log({name: self.wandb.Image(path) for name, path in paths.items()}, step)

    def finish(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A Trackio run named after the run and its id, resumed when it exists."""

    def __init__(self, config: "Config", run_dir: str, run_id: str):
        import trackio
        self.trackio = trackio
        name = f"{config.run_name}-{run_id}"
        self.run = trackio.init(project=config.tracker_project, name=name, resume="allow",
                                config=dataclasses.asdict(config), embed=False)
        held = trackio.SQLiteStorage.get_max_step_for_run(config.tracker_project, name)
        self.logged_through = -1 if held is None else held  # the last step a resumed run holds

    def log(self, values: dict, step: int) -> None:
        if step > self.logged_through:
            self.run.log(values, step=step)

    def log_images(self, paths: dict, step: int) -> None:
        self.log({name: self.trackio.Image(path) for name, path in paths.items()}, step)

    def finish(self) -> None:
        self.run.finish()


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def evaluation_scalars(name: str, report: dict) -> dict:
    """`<name>/<task>/<figure>` for every number of an evaluation report, levels as `greedy_accuracy_<level>`."""
    values = {}
    for task, figures in report.items():
        for key, value in figures.items():
            if key == "by_level":
                values.update({f"{name}/{task}/greedy_accuracy_{level}": v for level, v in value.items()})
            elif isinstance(value, (int, float)):
                values[f"{name}/{task}/{key}"] = value
    return values


class Trackers:
    """The trackers of `config.report_to` on rank 0; on other ranks (or with none) every call does nothing.
    A resumed run logs its earlier steps again, and each tracker keeps only what it does not hold yet."""

    def __init__(self, config: "Config", run_dir: str, rank: int):
        names = config.report_to if rank == 0 else ()
        run_id = tracker_run_id(run_dir) if names else None
        self.trackers = [TRACKER_CLASSES[name](config, run_dir, run_id) for name in names]

    def log(self, record: dict, step: int) -> None:
        """The numbers of `record` (a metrics record or any flat dict), its `step` key left out."""
        values = {name: float(value) for name, value in record.items()
                  if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        for tracker in self.trackers:
            tracker.log(values, step)

    def log_evaluation(self, name: str, report: dict, step: int) -> None:
        self.log(evaluation_scalars(name, report), step)

    def log_images(self, paths: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log_images(paths, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
