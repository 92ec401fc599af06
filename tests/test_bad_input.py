"""
Bad input, one test per kind of bad file or flag: every failure is a DataError / CheckpointError / argparse
error whose message names the culprit (file, row, key, video, flag), and every skip is counted in one line that
names a few of the skipped ids. Built on copies of the tiny built-in world.

    python -m pytest -q tests/test_bad_input.py
"""
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import tokens
import data
import evaluate
import finetune
import readers
import train
import video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--text_epochs", "0",  # no text stage (tests/test_train.py tests it)
         "--layers", "1", "--hidden", "32", "--heads", "2", "--batch_videos", "2", "--clips_per_video", "2",
         "--eval_every", "0", "--eval_batches", "1", "--log_every", "1"]


def copy(tiny_world, tmp_path, name):
    """A private copy of one dataset of the tiny world (plus its tokenizer files): -> the world directory."""
    root = tmp_path / "w"
    shutil.copytree(os.path.join(tiny_world, name), root / name)
    for f in ("tokenizer.json", "vocab.txt"):
        shutil.copy(os.path.join(tiny_world, f), root / f)
    return root


def load_json(path):
    with open(path) as f:
        return json.load(f)


def dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f)


@pytest.fixture(scope="module")
def run_dir(tiny_world, tmp_path_factory):
    """One pre-training run of 2 steps on the tiny world: OUT with ckpt.pt, model/, cache/."""
    out = str(tmp_path_factory.mktemp("pre") / "run")
    train.main(["--data", tiny_world, "--out", out, "--max_steps", "2"] + SMALL)
    return out


# ----------------------------------------------------------------------------- HowTo100M captions

def test_truncated_caption_json_names_file_line_and_column(tiny_world, tmp_path):
    root = copy(tiny_world, tmp_path, "howto100m")
    path = root / "howto100m" / "raw_caption.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(readers.DataError, match=r"raw_caption.json: not valid JSON .* line 1 column \d+"):
        readers.read_captions(str(path))
    path.write_text("\x00\x01 not json at all")
    with pytest.raises(readers.DataError, match="raw_caption.json: not valid JSON"):
        data.PretrainData(str(root), tokens.load_tokenizer(str(root)))


def test_null_asr_fields_are_counted_skips_naming_the_video(tiny_world, tmp_path, capsys):
    root = copy(tiny_world, tmp_path, "howto100m")
    path = root / "howto100m" / "raw_caption.json"
    caps = load_json(path)
    (a, b) = sorted(caps)[:2]
    caps[a]["start"][0] = None
    caps[b]["text"][1] = None
    dump_json(caps, path)
    c = data.token_cache(str(path), tokens.load_tokenizer(str(root)))
    counts = dict(zip(c["skipped_names"].tolist(), c["skipped"].tolist()))
    assert counts["ASR clips with a missing or non-numeric time"] == 1
    assert counts["ASR clips whose text is not a string"] == 1  # never the word "None"
    ids = tokens.load_tokenizer(str(root)).encode("none", add_special_tokens=False).ids
    assert not ids or not np.isin(c["ids"], ids).any()
    data.PretrainData(str(root), tokens.load_tokenizer(str(root)))
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("howto100m/train")][0]
    assert f"1 ASR clips with a missing or non-numeric time (e.g. {a})" in line
    assert f"1 ASR clips whose text is not a string (e.g. {b})" in line


def test_mmpt_raw_caption_pkl_with_json_string_values(tiny_world, tmp_path):
    root = copy(tiny_world, tmp_path, "howto100m")
    js = root / "howto100m" / "raw_caption.json"
    caps = load_json(js)
    with open(root / "howto100m" / "raw_caption.pkl", "wb") as f:  # as MMPT's pipeline writes it
        pickle.dump({vid: json.dumps(c) for vid, c in caps.items()}, f)
    os.remove(js)
    assert readers.read_captions(str(root / "howto100m" / "raw_caption.pkl")) == caps
    d = data.PretrainData(str(root), tokens.load_tokenizer(str(root)))
    assert d.num_videos > 0
    with open(root / "howto100m" / "raw_caption.pkl", "wb") as f:
        pickle.dump({"v0": "{not json"}, f)
    with pytest.raises(readers.DataError, match="raw_caption.pkl: video 'v0': value is a string but not JSON"):
        readers.read_captions(str(root / "howto100m" / "raw_caption.pkl"))


# ----------------------------------------------------------------------------- features

def test_npy_truncated_after_header_names_the_video(tiny_world, tmp_path):
    root = copy(tiny_world, tmp_path, "youcook2")
    feats = root / "youcook2" / "feats"
    vid = sorted(f[:-4] for f in os.listdir(feats))[0]
    raw = (feats / f"{vid}.npy").read_bytes()
    (feats / f"{vid}.npy").write_bytes(raw[:128])  # the 128-byte header alone
    with pytest.raises(readers.DataError, match=f"{vid}.npy: cannot read features of video '{vid}'"):
        video.open_features(str(feats)).length(vid)
    with pytest.raises(readers.DataError, match=f"video '{vid}'"):
        for split in ("train", "val", "test"):
            readers.load_retrieval(str(root), "youcook2", split)


@pytest.mark.parametrize("name", ["youcook2", "coin", "crosstask"])
def test_zero_second_feature_file_is_a_counted_skip(name, tiny_world, tmp_path, capsys):
    root = copy(tiny_world, tmp_path, name)
    feats = root / name / "feats"
    for vid in sorted(f[:-4] for f in os.listdir(feats)):
        np.save(feats / f"{vid}.npy", np.zeros((0, 512), np.float32))
        break
    recs = []
    for split in ("train", "val", "test"):
        if name == "youcook2":
            recs += readers.load_captioning(str(root), split)[0]
        elif name == "coin":
            recs += readers.load_coin(str(root), split)[0]
        else:
            recs += readers.load_crosstask(str(root), split)[0]
    out = capsys.readouterr().out
    assert f"1 videos with 0-second features, skipped (e.g. {vid})" in out
    assert vid not in {r["video_id"] for r in recs}
    assert all(r["start"] <= r["end"] for r in recs if "start" in r)
    assert all(len(r["labels"]) > 0 for r in recs if "labels" in r)


# ----------------------------------------------------------------------------- MSR-VTT

def test_jsfusion_short_row_is_an_error_empty_caption_a_counted_skip(tiny_world, tmp_path, capsys):
    root = copy(tiny_world, tmp_path, "msrvtt")
    path = root / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
    lines = path.read_text().splitlines()
    key = lines[2].split(",")[0]
    path.write_text("\n".join(lines[:2] + [",".join(lines[2].split(",")[:3]) + ", "] + lines[3:]) + "\n")
    recs, _ = readers.load_retrieval(str(root), "msrvtt", "test")
    assert len(recs) == len(lines) - 2 and all(r["texts"][0].strip() for r in recs)
    assert f"1 test rows with an empty sentence, skipped (e.g. {key})" in capsys.readouterr().out
    path.write_text("\n".join(lines[:3] + ["ret9,msr9"] + lines[3:]) + "\n")
    with pytest.raises(readers.DataError, match=r"MSRVTT_JSFUSION_test.csv: row 4: expected key,vid_key,video_id"):
        readers.load_retrieval(str(root), "msrvtt", "test")


# ----------------------------------------------------------------------------- YouCook2 / COIN / CrossTask

def test_database_and_annotation_keys_are_named(tiny_world, tmp_path):
    root = copy(tiny_world, tmp_path, "coin")
    shutil.copytree(os.path.join(tiny_world, "youcook2"), root / "youcook2")
    yc = root / "youcook2" / "youcookii_annotations_trainval.json"
    dump_json({"version": 1, "results": {}}, yc)
    with pytest.raises(readers.DataError, match="youcookii_annotations_trainval.json: expected a top-level key 'database'"):
        readers.load_captioning(str(root), "train")
    coin = root / "coin" / "COIN.json"
    db = load_json(coin)
    vid = sorted(db["database"])[0]
    db["database"][vid]["annotations"] = db["database"][vid].pop("annotation")
    dump_json(db, coin)
    with pytest.raises(readers.DataError, match=f"COIN.json: video '{vid}': expected keys 'subset' and 'annotation'"):
        readers.load_coin(str(root), "train")


@pytest.mark.parametrize("bad", ["abc", "0", "-3"])
def test_coin_bad_step_id_names_file_video_and_id(bad, tiny_world, tmp_path):
    root = copy(tiny_world, tmp_path, "coin")
    coin = root / "coin" / "COIN.json"
    db = load_json(coin)
    vid = sorted(db["database"])[1]
    db["database"][vid]["annotation"][0]["id"] = bad
    dump_json(db, coin)
    with pytest.raises(readers.DataError, match=f"COIN.json: video '{vid}': step id '{bad}' is not an integer >= 1"):
        readers.load_coin(str(root), "test")


def test_stray_file_in_crosstask_annotations_is_ignored_with_a_count(tiny_world, tmp_path, capsys):
    root = copy(tiny_world, tmp_path, "crosstask")
    (root / "crosstask" / "annotations" / "README.txt").write_text("notes\n")
    (root / "crosstask" / "annotations" / ".DS_Store").write_bytes(b"\0\1")
    recs, _, _ = readers.load_crosstask(str(root), "test")
    assert recs
    assert "2 files in annotations/ not named <task>_<video>.csv, ignored (e.g. .DS_Store, README.txt)" in \
        capsys.readouterr().out


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_checkpoint_is_named_everywhere(damage, run_dir, tiny_world, tmp_path):
    raw = open(os.path.join(run_dir, "ckpt.pt"), "rb").read()
    bad = {"garbage": b"this is not a checkpoint\n" * 40, "truncated": raw[: len(raw) // 2], "empty": b""}[damage]
    why = {"garbage": "not a PyTorch checkpoint", "truncated": "truncated", "empty": "an empty file"}[damage]
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(bad)
    with pytest.raises(checkpoint.CheckpointError, match=f"ckpt.pt: {why}"):  # --resume
        train.main(["--data", tiny_world, "--out", str(out), "--max_steps", "3", "--resume"] + SMALL)
    with pytest.raises(checkpoint.CheckpointError, match=f"ckpt.pt: {why}"):  # finetune --init
        finetune.run(finetune.FinetuneConfig(data=tiny_world, init=str(out / "ckpt.pt"), out=str(tmp_path / "ft"),
                                             epochs=1), "qa", (False, 0, 1, "cpu"), verbose=False)
    with pytest.raises(checkpoint.CheckpointError, match=f"best.pt: {why}"):  # evaluate --ckpt
        shutil.copy(out / "ckpt.pt", tmp_path / "best.pt")
        evaluate.main(["--task", "qa", "--ckpt", str(tmp_path / "best.pt"), "--data", tiny_world])
    model = tmp_path / "model"
    shutil.copytree(os.path.join(run_dir, "model"), model)
    (model / "model.pt").write_bytes(bad)
    with pytest.raises(checkpoint.CheckpointError, match=f"model.pt: {why}"):  # a model directory
        evaluate.main(["--task", "retrieval", "--zero_shot", "--ckpt", str(model), "--data", tiny_world])


def test_init_from_a_damaged_bert_directory(run_dir, tiny_world, tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    cfg = {"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 16, "max_position_embeddings": 64, "type_vocab_size": 2}
    dump_json(cfg, d / "config.json")
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(checkpoint.CheckpointError, match=f"--init {d}: cannot load"):
        train.build_model(train.TrainConfig(init=str(d)), tiny_world)
    model = tmp_path / "model"  # a model directory of this project goes through load_checkpoint
    shutil.copytree(os.path.join(run_dir, "model"), model)
    (model / "model.pt").write_bytes(open(os.path.join(run_dir, "model", "model.pt"), "rb").read()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match=f"{model}/model.pt: truncated"):
        train.build_model(train.TrainConfig(init=str(model)), tiny_world)


def test_resume_with_another_model_size_names_the_flag(run_dir, tiny_world, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(run_dir, "ckpt.pt"), out / "ckpt.pt")
    args = ["--data", tiny_world, "--out", str(out), "--max_steps", "3", "--resume"] + SMALL + ["--hidden", "48"]
    with pytest.raises(checkpoint.CheckpointError) as e:
        train.main(args)
    msg = str(e.value)
    assert msg.startswith(str(out / "ckpt.pt")) and "shape mismatches" in msg
    assert "--hidden 32 in the checkpoint vs 48 now" in msg and "--layers" not in msg
    assert msg.count(" vs ") < 12  # the first mismatches, not the whole list


def test_model_dir_without_tokenizer_and_another_vocabulary(run_dir, tiny_world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(os.path.join(run_dir, "model"), model)
    for f in ("tokenizer.json", "vocab.txt"):
        if (model / f).exists():
            os.remove(model / f)
    other = tmp_path / "other"
    other.mkdir()
    words = open(os.path.join(tiny_world, "vocab.txt")).read().split("\n")
    (other / "vocab.txt").write_text("\n".join(words[:-6]) + "\n")
    with pytest.raises(checkpoint.CheckpointError, match=f"{model}: has no tokenizer, and the one in {other} does not "
                                                    r"fit it .*vocab_size \d+ vs \d+"):
        checkpoint.trained_tokenizer(str(model), str(other), checkpoint.load_model(str(model)).config)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):  # the model's own config.json is read
        checkpoint.trained_tokenizer(str(model), str(other))
    tok = checkpoint.trained_tokenizer(str(model), tiny_world)  # the data's own tokenizer fits
    assert tok.get_vocab_size() == checkpoint.load_model(str(model)).config.vocab_size


def test_disk_full_during_checkpoint_write(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.atomic_save({"model": torch.ones(3), "step": 1}, path)

    def full(obj, f, *a, **kw):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoint.CheckpointError, match=f"{path}: could not write the checkpoint.*No space left"):
        checkpoint.atomic_save({"model": torch.zeros(3), "step": 2}, path)
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1


def test_failed_final_save_keeps_the_previous_model_dir(run_dir, tmp_path, monkeypatch):
    d = str(tmp_path / "model")
    shutil.copytree(os.path.join(run_dir, "model"), d)
    before = {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)}
    model = checkpoint.load_model(d)

    def full(self, out_dir, tokenizer=None):
        os.makedirs(out_dir, exist_ok=True)
        open(os.path.join(out_dir, "config.json"), "w").write("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_model_dir", full)
    with pytest.raises(checkpoint.CheckpointError, match=f"{d}: could not write the model"):
        checkpoint.save_model_dir(model, d)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)} == before
    monkeypatch.undo()
    with torch.no_grad():
        model.bert.wte.weight.add_(1.0)
    checkpoint.save_model_dir(model, d)  # a good save replaces it
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert torch.equal(checkpoint.load_model(d).bert.wte.weight, model.bert.wte.weight)


# ----------------------------------------------------------------------------- flags and caches

@pytest.mark.parametrize("script, flag, value, want", [
    ("train", "--batch_videos", "0", "an integer >= 1"), ("train", "--max_steps", "-1", "an integer >= 0"),
    ("train", "--epochs", "-1", "an integer >= 0"), ("train", "--lr", "-1", "a number > 0"),
    ("train", "--lr", "nan", "a number > 0"), ("train", "--mmm_prob", "1.5", "a number >= 0 and <= 1"),
    ("finetune", "--batch_size", "0", "an integer >= 1"), ("finetune", "--lr", "-1", "a number > 0"),
    ("finetune", "--epochs", "-1", "an integer >= 0"), ("finetune", "--batch_size", "x", "an integer, got 'x'")])
def test_flag_out_of_range_is_an_argparse_error(script, flag, value, want, capsys, monkeypatch):
    main = {"train": train.main, "finetune": finetune.main}[script]

    def parsed():  # the flag got through: stop before any data or training
        raise AssertionError(f"{flag} {value} was accepted")

    monkeypatch.setattr(train, "setup_distributed", parsed)
    monkeypatch.setattr(finetune, "setup_distributed", parsed)
    with pytest.raises(SystemExit) as e:
        main([flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {flag} must be {want}" in capsys.readouterr().err


def test_caches_go_under_out_and_the_dataset_is_never_written(run_dir, tiny_world):
    listing = lambda d: sorted((r, f, os.path.getmtime(os.path.join(r, f))) for r, _, fs in os.walk(d) for f in fs)
    before = listing(tiny_world)
    train.main(["--data", tiny_world, "--out", run_dir, "--max_steps", "3", "--resume"] + SMALL)
    assert listing(tiny_world) == before
    assert [f for f in os.listdir(os.path.join(run_dir, "cache")) if f.startswith("tokens-")]


def test_cli_prints_one_line_without_traceback(tiny_world, tmp_path):
    root = copy(tiny_world, tmp_path, "coin")
    coin = root / "coin" / "COIN.json"
    db = load_json(coin)
    vid = sorted(db["database"])[0]
    db["database"][vid]["annotation"][0]["id"] = "abc"
    dump_json(db, coin)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "stats", str(root)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {coin}: video '{vid}': step id 'abc' is not an integer >= 1 "
                                             "(0 is the background label)"]
