"""Files a run writes and reads again: each is written beside its place and renamed into it, so that a kill never
leaves half a file."""
import contextlib
import json
import os


@contextlib.contextmanager
def replaced_atomically(path: str):
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without an error."""
    staging = f"{path}.tmp-{os.getpid()}"
    yield staging
    os.replace(staging, path)


def write_json_atomically(path: str, payload) -> None:
    """Write JSON to a temporary file and rename it into place."""
    with replaced_atomically(path) as staging, open(staging, "w") as f:
        json.dump(payload, f)
