"""Two processes under torchrun (gloo, vLLM's CPU build), one vLLM engine each beside the FSDP policy."""
import os
import re
import subprocess
import sys

from notebook_module import NOTEBOOK_PATH


def test_each_rank_samples_with_its_own_engine_and_gets_the_full_weights(tmp_path_factory):
    cache_dir = tmp_path_factory.getbasetemp() / "vllm-cache"  # test_vllm_engine.py's base model, when it ran first
    script = NOTEBOOK_PATH.parent / "tests" / "vllm_two_ranks.py"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(NOTEBOOK_PATH.parent / "tests"), str(NOTEBOOK_PATH.parent)]))
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), str(cache_dir)],
                            cwd=NOTEBOOK_PATH.parent, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lines = sorted(re.findall(r"rank (\d): synced (\w+), changed (\w+), gap (\S+), sync", output))
    assert [(rank, synced, changed) for rank, synced, changed, _ in lines] == [("0", "True", "True"), ("1", "True", "True")]
    assert all(float(gap) < 1e-3 for *_, gap in lines)
