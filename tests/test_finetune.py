"""
finetune.py and evaluate.py's runners: every task fine-tunes a tiny model on the tiny world and is evaluated on
test; retrieval through separate passes equals the joint isolated pass; bad checkpoints and data are refused
with clear messages.

    python -m pytest -q tests/test_finetune.py
"""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import checkpoint
import tokens
import data
import evaluate
import finetune
import readers
import probes
import train
import vlm


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pre") / "run")
    train.main(["--data", tiny_world, "--out", out, "--max_steps", "2", "--text_epochs", "0", "--layers", "1",
                "--hidden", "32", "--heads", "2", "--batch_videos", "2", "--clips_per_video", "4", "--eval_every", "0",
                "--eval_batches", "1"])
    return os.path.join(out, "model")


def cfg_for(tiny_world, pretrained, tmp_path, **kw):
    return dataclasses.replace(finetune.FinetuneConfig(), data=tiny_world, init=pretrained, out=str(tmp_path),
                               epochs=1, batch_size=8, **kw)


EXPECTED = {"retrieval": {"R1", "R5", "R10", "MedR"}, "qa": {"acc"}, "segmentation": {"acc", "acc_no_bg",
            "all_background"}, "localization": {"recall"},
            "captioning": {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}}


@pytest.mark.parametrize("task", finetune.TASKS)
def test_every_task_finetunes_and_evaluates(task, tiny_world, pretrained, tmp_path):
    cfg = cfg_for(tiny_world, pretrained, tmp_path)
    result = finetune.run(cfg, task, (False, 0, 1, "cpu"), verbose=False)
    assert EXPECTED[task] <= set(result)
    name = {"retrieval": "retrieval-youcook2"}.get(task, task)
    assert os.path.exists(tmp_path / name / "best.pt")
    log = [json.loads(line) for line in open(tmp_path / name / "log.jsonl")]
    assert len(log) == 1 and np.isfinite(log[0]["loss"]) and "val" in log[0]
    with open(tmp_path / name / "test.json") as f:
        assert json.load(f) == result
    # the best checkpoint reloads for evaluate.py and gives the same numbers
    model = checkpoint.load_finetuned(str(tmp_path / name / "best.pt"), task=task)
    tok = tokens.load_tokenizer(pretrained)
    again = evaluate.run_task(task, model, tiny_world, "test", tok, dataset="youcook2")
    for k, v in result.items():
        if v is not None and not np.isnan(v):
            assert again[k] == pytest.approx(v, abs=1e-6), k


def test_scratch_row_uses_the_same_architecture_with_new_weights(tiny_world, pretrained, tmp_path, monkeypatch):
    seen = []
    real = vlm.TaskModel

    def spy(model, num_classes=0):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, num_classes)

    monkeypatch.setattr(finetune, "TaskModel", spy)
    for scratch in (False, True):
        cfg = cfg_for(tiny_world, pretrained, tmp_path / str(scratch), scratch=scratch)
        finetune.run(cfg, "qa", (False, 0, 1, "cpu"), verbose=False)
    assert os.path.exists(tmp_path / "True" / "qa-scratch" / "best.pt")
    base = checkpoint.load_model(pretrained).state_dict()
    assert set(seen[1]) == set(base) and all(seen[1][k].shape == base[k].shape for k in base)
    assert all(torch.equal(seen[0][k], base[k]) for k in base)  # pre-trained row starts from the checkpoint
    assert not torch.equal(seen[1]["bert.wte.weight"], base["bert.wte.weight"])  # scratch row does not


def test_retrieval_separate_passes_equal_joint_isolated_pass(tiny_world, pretrained):
    model = checkpoint.load_model(pretrained).eval()
    tok = tokens.load_tokenizer(pretrained)
    recs, store = readers.load_retrieval(tiny_world, "msrvtt", "test")
    recs = recs[:12]
    clips = [evaluate.record_clip(store, r) for r in recs]
    ids, _ = data.encode_texts(tok, [r["texts"][0] for r in recs])
    v = evaluate.encode_videos(model, clips, "cpu", evaluate.nullcontext())
    t = evaluate.encode_text_ids(model, ids, "cpu", evaluate.nullcontext())
    # joint pass with the isolated mask (Fig. 3), pooled by hand from the layout of docs/method.md §1
    b = data.collate_pairs(clips, ids)
    with torch.no_grad():
        h = model(b["video"], b["video_mask"], b["text_ids"], b["text_mask"], attention="isolated")
    vm = torch.zeros(len(recs), h.shape[1], dtype=torch.bool)
    tm = torch.zeros_like(vm)
    nv = b["video_mask"].sum(1)
    nt = b["text_mask"].sum(1)
    for i in range(len(recs)):
        vm[i, 1:1 + nv[i]] = True
        vm[i, 33] = True  # first [SEP]
        tm[i, 34:34 + nt[i] + 1] = True  # text + last [SEP]
    vj = (h * vm[..., None]).sum(1) / vm.sum(1, keepdim=True)
    tj = (h * tm[..., None]).sum(1) / tm.sum(1, keepdim=True)
    torch.testing.assert_close(t @ v.T, tj @ vj.T, rtol=1e-5, atol=1e-5)


def test_bad_checkpoints_and_data_are_refused(tiny_world, pretrained, tmp_path):
    cfg = cfg_for(tiny_world, pretrained, tmp_path)
    finetune.run(cfg, "qa", (False, 0, 1, "cpu"), verbose=False)
    best = str(tmp_path / "qa" / "best.pt")
    with pytest.raises(SystemExit, match="a qa checkpoint, but --task is captioning"):
        checkpoint.load_finetuned(best, task="captioning")
    with pytest.raises(SystemExit, match="not a fine-tuned checkpoint"):
        checkpoint.load_finetuned(os.path.join(os.path.dirname(pretrained), "ckpt.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        checkpoint.load_finetuned(str(tmp_path / "missing.pt"))
    # a segmentation checkpoint with the wrong number of classes for the data
    model = checkpoint.load_finetuned(best)
    model.head = torch.nn.Linear(model.vlm.config.hidden_size, 3)
    tok = tokens.load_tokenizer(pretrained)
    with pytest.raises(SystemExit, match="classes"):
        evaluate.run_task("segmentation", model, tiny_world, "test", tok)
    # a data directory missing a dataset's files
    with pytest.raises(Exception, match="nowhere.*not found"):
        evaluate.run_task("segmentation", model, str(tmp_path / "nowhere"), "test", tok)


def test_evaluate_command_line(tiny_world, pretrained, tmp_path, capsys):
    out = str(tmp_path / "zs.json")
    m = evaluate.main(["--task", "retrieval", "--zero_shot", "--ckpt", pretrained, "--data", tiny_world,
                       "--dataset", "msrvtt", "--out", out, "--show", "2"])
    printed = capsys.readouterr().out
    assert "paper 28.1" in printed and "query:" in printed
    with open(out) as f:
        assert json.load(f) == m
    with pytest.raises(SystemExit, match="zero_shot applies to retrieval and localization"):
        evaluate.main(["--task", "captioning", "--zero_shot", "--ckpt", pretrained, "--data", tiny_world])


def test_video_collapse_diagnostic_sees_a_shared_direction(tiny_world, pretrained):
    model = checkpoint.load_model(pretrained).eval()
    before = probes.video_collapse(model, tiny_world)
    with torch.no_grad():  # add one large direction to every video token: the collapse the README describes
        # a random direction (a constant one would be removed by the embedding LayerNorm's centring)
        direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        model.video_mlp.fc2.bias.add_(50.0 * direction)
    after = probes.video_collapse(model, tiny_world)
    assert after["mlp_mean_norm"] > 10 * before["mlp_mean_norm"]
    assert after["mlp_token_norm"] == pytest.approx(before["mlp_token_norm"], rel=1e-4)
    assert after["state_spread_in_clip"] < 0.5 * before["state_spread_in_clip"]
