"""
train.py: a one-step smoke test, bit-identical resume, checkpoints that survive a kill during the write,
non-finite steps skipped and counted, and 2-process gloo DDP on CPU (gradients averaged, ranks equal, equal to
one process on the concatenated batch), and a worker killed under `torchrun --max-restarts` resuming by itself.

    python -m pytest -q tests/test_train.py
"""
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tokenizers import Tokenizer

from conftest import ddp_vs_one_process

import checkpoint
import common
import engine
import tokens
import train
import vlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--text_epochs", "0",  # no text stage (tests/test_train.py tests it)
         "--layers", "1", "--hidden", "32", "--heads", "2", "--batch_videos", "2", "--clips_per_video", "4",
         "--log_every", "1", "--eval_every", "0", "--eval_batches", "1", "--warmup", "2", "--lr", "1e-3"]


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out):
    return torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=False)["model"]


def test_one_step_smoke(tiny_world, tmp_path):
    out = str(tmp_path / "run")
    assert train.main(["--data", tiny_world, "--out", out, "--max_steps", "1"] + SMALL) == 1
    log = read_log(out)
    assert len(log) == 1 and log[0]["step"] == 1 and torch.isfinite(torch.tensor(log[0]["loss"]))
    assert {"loss", "lr", "clips_per_s", "val_loss"} <= set(log[0])
    model = checkpoint.load_model(os.path.join(out, "model"))  # the final model directory loads
    assert model.config.hidden_size == 32
    # one format: ckpt.pt holds the weights, the config and the tokenizer, so it is usable on its own
    ck = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=False)
    assert {"model", "model_config", "tokenizer", "optimizer", "step"} <= set(ck)
    assert Tokenizer.from_str(ck["tokenizer"]).get_vocab() == tokens.load_tokenizer(tiny_world).get_vocab()
    lone = tmp_path / "lone.pt"  # a copy with nothing beside it: the tokenizer comes from the file itself
    lone.write_bytes(open(os.path.join(out, "ckpt.pt"), "rb").read())
    tok = checkpoint.trained_tokenizer(str(lone), str(tmp_path / "no-such-data"))
    assert tok.get_vocab() == tokens.load_tokenizer(tiny_world).get_vocab()


def test_resume_is_bit_identical(tiny_world, tmp_path):
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    args = ["--data", tiny_world, "--max_steps", "6"] + SMALL
    train.main(args + ["--out", straight])
    train.main(args + ["--out", resumed, "--stop_after", "3"])
    assert read_log(resumed)[-1]["step"] == 3
    train.main(args + ["--out", resumed, "--resume"])
    la, lb = read_log(straight), read_log(resumed)
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]  # exactly equal, not close
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and the check can fail: a different seed gives different weights
    other = str(tmp_path / "c")
    train.main(["--data", tiny_world, "--max_steps", "6", "--seed", "1", "--out", other] + SMALL)
    assert not all(torch.equal(wa[k], weights(other)[k]) for k in wa)
    # across the switch from the text stage (14 steps) to L_VLM, stopped at the last text step
    straight, resumed = str(tmp_path / "d"), str(tmp_path / "e")
    args = ["--data", tiny_world, "--max_steps", "2"] + SMALL[2:] + ["--text_epochs", "1"]
    train.main(args + ["--out", straight])
    train.main(args + ["--out", resumed, "--stop_after", "14"])
    train.main(args + ["--out", resumed, "--resume"])
    assert [r["loss"] for r in read_log(straight)] == [r["loss"] for r in read_log(resumed)]
    assert all(torch.equal(a, b) for a, b in zip(weights(straight).values(), weights(resumed).values()))


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
import train
big = {{"model": torch.randn(4_000_000), "step": 0}}
i = 0
while True:
    i += 1
    big["step"] = i
    checkpoint.atomic_save(big, {path!r})
"""


def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.atomic_save({"model": torch.zeros(3), "step": 0}, path)
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, path=path)])
        time.sleep(delay + 2.0)  # import time plus part of a write of 16 MB
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = torch.load(path, map_location="cpu", weights_only=False)  # never a half-written file
        assert "model" in ck and isinstance(ck["step"], int)


def test_non_finite_steps_are_skipped_and_counted(tiny_world, tmp_path, monkeypatch, capsys):
    import losses
    real = losses.pretrain_loss
    calls = {"n": 0}

    def flaky(model, batch, gen, **kw):
        loss, stats = real(model, batch, gen, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), stats

    monkeypatch.setattr(train, "pretrain_loss", flaky)
    out = str(tmp_path / "nan")
    train.main(["--data", tiny_world, "--out", out, "--max_steps", "3"] + SMALL)
    log = read_log(out)
    assert [r["skipped"] for r in log] == [0, 1, 1]
    assert all(torch.isfinite(v).all() for v in weights(out).values())

    # every step non-finite: the run stops with a message naming the step and what to try
    monkeypatch.setattr(train, "pretrain_loss", lambda m, b, g, **kw: (real(m, b, g, **kw)[0] * float("nan"), {}))
    out2 = str(tmp_path / "nan2")
    step = train.main(["--data", tiny_world, "--out", out2, "--max_steps", "10", "--max_bad_steps", "3"] + SMALL)
    assert step == 3
    msg = capsys.readouterr().out
    assert "3 non-finite steps in a row (last at step 3)" in msg and "--lr" in msg


# ---- DDP: 2 processes, gloo, CPU ----------------------------------------------------------------------------

def _tiny_model():
    torch.manual_seed(0)
    cfg = vlm.VLMConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        cls_token_id=2, sep_token_id=3, mask_token_id=4, pad_token_id=0)
    return vlm.VLM(cfg)


def _batch():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(4, 5, 512, generator=g)
    video_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return {"video": video * video_mask[..., None], "video_mask": video_mask}


def _loss(m, b):  # a mean over examples, so two halves averaged == the whole batch
    return m.encode_video(b["video"], b["video_mask"]).pow(2).sum(-1).mean(), {}


def test_ddp_two_processes_average_gradients(tmp_path):
    w0, w1, start, single = ddp_vs_one_process(tmp_path, _tiny_model, _loss, _batch,
                                               functools.partial(torch.optim.Adam, lr=1e-2))
    moved = [k for k in single if not torch.equal(single[k], start[k])]
    assert "video_mlp.0.weight" in " ".join(moved) or len(moved) > 3  # the step did move the weights
    for k in single:
        assert torch.equal(w0[k], w1[k]), k  # ranks agree exactly
        torch.testing.assert_close(w0[k], single[k], rtol=1e-5, atol=1e-6)


def test_torchrun_two_processes_end_to_end(tiny_world, tmp_path):
    out = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--data", tiny_world, "--out", out, "--max_steps", "2"] + SMALL
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    assert "2 process(es)" in res.stdout


def test_torchrun_restarts_a_killed_worker_and_resumes(tiny_world, tmp_path):
    """`torchrun --max-restarts 1`: SIGKILL one worker mid-run; the restarted workers resume from ckpt.pt by
    themselves and end with the same weights as a run that was never interrupted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    steps = ["--max_steps", "300", "--ckpt_every", "10", "--log_every", "1"]

    def torchrun(out):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--max-restarts=1", os.path.join(ROOT, "train.py"), "--data", tiny_world, "--out", out] + SMALL + steps
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    straight = str(tmp_path / "straight")
    res = torchrun(straight)
    assert res.wait(timeout=300) == 0, res.stderr.read()[-3000:]

    out = str(tmp_path / "killed")
    proc = torchrun(out)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a checkpoint exists and a few more steps are done
        log = read_log(out) if os.path.exists(os.path.join(out, "log.jsonl")) else []
        if log and log[-1]["step"] >= 15:
            break
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    killed_at = read_log(out)[-1]["step"]
    assert killed_at < 300
    os.kill(int(workers[-1]), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    resumed = [line for line in stdout.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1, stdout[-3000:]
    resumed_step = int(resumed[0].rsplit(" ", 1)[1])
    assert 10 <= resumed_step <= killed_at + 10 and resumed_step % 10 == 0
    assert read_log(out)[-1]["step"] == 300
    a, b = weights(straight), weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lr_schedule_by_hand(tiny_world, tmp_path):
    # warm-up 4 to lr 1.0, 10 steps: linear decay hits 0 at the last step; constant holds the peak
    linear = [engine.lr_at(s, 1.0, 4, 10) for s in range(10)]
    assert linear == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    constant = [engine.lr_at(s, 1.0, 4, 10, "constant") for s in range(10)]
    assert constant == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 7)
    # train.py logs the schedule it used
    out = str(tmp_path / "c")
    args = ["--data", tiny_world, "--out", out, "--max_steps", "4", "--decay", "constant"] + SMALL
    train.main(args)
    assert [r["lr"] for r in read_log(out)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    with pytest.raises(SystemExit, match="--decay 'cosine'"):
        train.main(args[:-len(SMALL)] + ["--decay", "cosine"] + SMALL)


def test_text_stage_comes_first_with_its_own_lr(tiny_world, tmp_path):
    # --text_epochs 1: one epoch (14 steps of 2 videos) of text alone at --text_lr, then --max_steps of L_VLM
    # with a fresh warm-up to --lr; the log shows which loss each step took (the text stage masks no video)
    out = str(tmp_path / "t")
    args = ["--data", tiny_world, "--out", out, "--max_steps", "3"] + SMALL[2:] + ["--text_epochs", "1",
                                                                                  "--text_lr", "4e-3"]
    assert train.main(args) == 17
    log = read_log(out)
    assert [r["lr"] for r in log] == pytest.approx([2e-3] + [4e-3] * 13 + [5e-4, 1e-3, 1e-3])
    assert [r["n_masked_video"] + r["n_negatives"] for r in log[:14]] == [0] * 14
    assert all(r["n_negatives"] > 0 for r in log[14:]) and all(r["n_masked_text"] > 0 for r in log)
    # from scratch the stage is on by default (34 epochs), off from a checkpoint and for All-in-One
    assert common.parse_config(train.TrainConfig, [], train.PRESETS).text_epochs == -1
    with pytest.raises(SystemExit, match="--text_epochs 2: the text stage is for --model vlm"):
        train.main(args[:-4] + ["--model", "allinone", "--text_epochs", "2"])
    with pytest.raises(SystemExit, match="nothing to train"):
        train.main(["--data", tiny_world, "--out", str(tmp_path / "n"), "--epochs", "0"] + SMALL)


def test_presets_set_defaults_and_flags_win():
    cfg = common.parse_config(train.TrainConfig, ["--preset", "small", "--hidden", "64"], train.PRESETS)
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.decay, cfg.max_steps) == (2, 64, 2, "constant", 1500)
    assert common.parse_config(train.TrainConfig, [], train.PRESETS).decay == "constant"
    assert common.parse_config(train.TrainConfig, ["--preset", "paper"], train.PRESETS).decay == "linear"
    with pytest.raises(SystemExit, match="--preset 'big'"):
        common.parse_config(train.TrainConfig, ["--preset", "big"], train.PRESETS)


def test_dropout_flag_reaches_the_scratch_model(tiny_world, capsys):
    cfg = common.parse_config(train.TrainConfig, ["--dropout", "0.2"], train.PRESETS)
    model, _ = train.build_model(cfg, tiny_world)
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.2
    with pytest.raises(SystemExit):
        common.parse_config(train.TrainConfig, ["--dropout", "1.5"], train.PRESETS)
    assert "--dropout must be a number >= 0 and <= 1, got 1.5" in capsys.readouterr().err
