"""tools/base_model_modes.py runs on a tiny base model and reports consistent figures."""
import json
import pathlib
import subprocess
import sys

TOOL = pathlib.Path(__file__).resolve().parent.parent / "tools" / "base_model_modes.py"


def test_base_model_modes_reports_each_task(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL), "--preset", "cpu-tiny", "--samples", "2",
                             "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for task in ("countdown", "multiplication"):
        figures = report[task]
        assert figures["problems"] == 16
        for name, value in figures.items():
            assert 0.0 <= value <= 1.0 or name == "problems"
        sampled_accuracy = figures["correct_mass_reasoning"] + figures["correct_mass_direct"]
        mixed = (figures["sampled_reasoning_share"] * figures["sampled_reasoning_accuracy"]
                 + (1 - figures["sampled_reasoning_share"]) * figures["sampled_direct_accuracy"])
        assert abs(sampled_accuracy - mixed) < 1e-9
