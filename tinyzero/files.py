"""Files a run writes and reads again: JSON is replaced in one step, so that a kill never leaves half a file."""
import json
import os


def write_json_atomically(path: str, payload) -> None:
    """Write JSON to a temporary file and rename it into place."""
    staging = f"{path}.tmp-{os.getpid()}"
    with open(staging, "w") as f:
        json.dump(payload, f)
    os.replace(staging, path)
