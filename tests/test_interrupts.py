"""
Interrupts and first multi-process runs: SIGTERM in `experiments.py` stops within one step, saves,
exits non-zero and writes no results table; a fine-tuning stopped inside an epoch resumes to the same weights;
two torchrun agents ("two nodes" on one filesystem) on a fresh run build the world and the token cache once.

    python -m pytest -q tests/test_interrupts.py
"""
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import finetune
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--text_epochs", "0",  # no text stage (tests/test_train.py tests it)
         "--layers", "1", "--hidden", "32", "--heads", "2", "--batch_videos", "2", "--clips_per_video", "2",
         "--eval_every", "0", "--eval_batches", "1", "--log_every", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pre") / "run")
    train.main(["--data", tiny_world, "--out", out, "--max_steps", "1"] + SMALL)
    return os.path.join(out, "model")


def test_sigterm_in_finetune_all_stops_saves_and_writes_no_table(pretrained, tiny_world, tmp_path):
    out = tmp_path / "ft"
    cmd = [sys.executable, os.path.join(ROOT, "experiments.py"), "--init", pretrained, "--data",
           tiny_world, "--out", str(out), "--batch_size", "2", "--epochs", "50"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "retrieval-msrvtt" / "log.jsonl"  # opened just before the first step
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stopped = [l for l in stdout.splitlines() if l.startswith("stopped:")]
    assert len(stopped) == 2, stdout[-3000:]
    assert "retrieval-msrvtt/ckpt.pt saved" in stopped[0] and "continue with --resume" in stopped[0]
    assert "results.md / results.json not written" in stopped[1] and "missing: pretrained/retrieval-msrvtt" in \
        stopped[1] and "scratch/captioning" in stopped[1]
    assert sorted(os.listdir(out)) == ["retrieval-msrvtt"]  # no further task ran, no table
    assert not (out / "retrieval-msrvtt" / "test.json").exists()  # stopped before the end of its 50 epochs
    assert torch.load(out / "retrieval-msrvtt" / "ckpt.pt", weights_only=False)["epoch"] < 49


def test_sigterm_in_train_saves_at_the_next_step_and_exits_non_zero(tiny_world, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--data", tiny_world, "--out", str(out),
           "--max_steps", "100000"] + SMALL
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while (not log.exists() or not log.read_text()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    step = torch.load(out / "ckpt.pt", weights_only=False)["step"]
    assert f"stopped: checkpoint saved at step {step}" in stdout and 1 <= step < 100000


def test_finetune_stopped_inside_an_epoch_resumes_to_the_same_weights(pretrained, tiny_world, stop_and_resume):
    cfg = dataclasses.replace(finetune.FinetuneConfig(), data=tiny_world, init=pretrained, epochs=1, batch_size=4)
    a, b, _ = stop_and_resume(cfg, "qa", "qa")
    assert a["step"] == b["step"] > 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_two_torchrun_agents_first_run_on_a_fresh_world(tmp_path):
    """`--nnodes=2 --nproc_per_node=1` twice on one machine: the world (missing --data) and the token cache are
    built once, by global rank 0, while the other rank waits; nothing is written into the data directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world, out = str(tmp_path / "world"), str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=fresh{os.getpid()}", "--rdzv_conf=join_timeout=60", os.path.join(ROOT, "train.py"), "--data", world,
           "--synth_size", "tiny", "--out", out, "--max_steps", "2"] + SMALL
    logs = [(open(tmp_path / f"agent{i}.out", "w+"), open(tmp_path / f"agent{i}.err", "w+")) for i in range(2)]
    agents = [subprocess.Popen(cmd, env=ENV, stdout=o, stderr=e, text=True, start_new_session=True) for o, e in logs]
    deadline = time.time() + 150
    while time.time() < deadline and any(a.poll() is None for a in agents):
        time.sleep(0.1)
    for a in agents:  # a hang must not hold the suite: end both agents' process groups
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    results = []
    for o, e in logs:
        o.seek(0), e.seek(0)
        results.append((o.read(), e.read()))
    for a, (so, se) in zip(agents, results):
        assert a.returncode == 0, (a.returncode, so[-2000:], se[-3000:])
    stdout = "".join(so for so, _ in results)
    assert stdout.count("building the built-in world") == 1 and "2 process(es)" in stdout
    assert [f for f in os.listdir(tmp_path) if ".tmp" in f] == []
    cache = os.listdir(os.path.join(out, "cache"))
    assert len(cache) == 1 and cache[0].startswith("tokens-") and cache[0].endswith(".npz")
    assert not [f for _, _, fs in os.walk(world) for f in fs if f.startswith("tokens-")]
