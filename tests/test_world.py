"""Tests of the built-in synthetic world (world.py): it builds, is byte-identical per seed, and
every file is a valid example of the real formats in docs/data_formats.md, parsed here with json / csv / numpy only
(not with data.py). Run: python -m pytest -q tests/test_world.py
"""
import csv
import difflib
import glob
import hashlib
import json
import os
import re

import numpy as np
import pytest

import world


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny world for seeds 0, 0 (again) and 1."""
    out = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        d = str(tmp_path_factory.mktemp(name))
        world.synth(d, seed=seed, size="tiny")
        out[name] = d
    return out


def _hashes(d):
    files = sorted(p for p in glob.glob(f"{d}/**/*", recursive=True) if os.path.isfile(p))
    return {os.path.relpath(p, d): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}


def _rows(path, sep=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=sep))


def test_same_seed_same_bytes_other_seed_differs(built):
    a, b, c = _hashes(built["a"]), _hashes(built["b"]), _hashes(built["c"])
    assert len(a) > 200 and a == b
    for name in ["tokenizer.json", "howto100m/raw_caption.json", "msrvtt/feats/video0.npy", "world.json"]:
        assert a[name] != c[name], name
    summary = json.load(open(f"{built['a']}/world.json"))
    assert summary["seed"] == 0 and summary["size"] == "tiny" and summary["counts"]["howto100m"] == 30


def test_rebuild_in_place_and_refuse_foreign_dir(built, tmp_path):
    d = str(tmp_path / "w")
    world.synth(d, seed=0, size="tiny")
    world.synth(d, seed=0, size="tiny")  # a second build over a world replaces it
    assert _hashes(d) == _hashes(built["a"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="world.json"):
        world.synth(str(tmp_path / "other"), size="tiny")


def test_features_are_unit_norm_float16(built):
    paths = glob.glob(f"{built['a']}/*/feats/*.npy")
    assert len(paths) == 30 + 90 + 12 + 32 + 102
    for p in paths:
        x = np.load(p)
        assert x.dtype == np.float16 and x.ndim == 2 and x.shape[1] == 512 and x.shape[0] >= 5, p
        assert np.allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1.0, atol=2e-3), p


def test_howto100m_files(built):
    d = f"{built['a']}/howto100m"
    caps = json.load(open(f"{d}/raw_caption.json"))
    rows = _rows(f"{d}/HowTo100M_v1.csv")
    assert rows[0] == ["video_id", "category_1", "category_2", "rank", "task_id"]
    assert sorted(r[0] for r in rows[1:]) == sorted(caps)
    overlaps = 0
    for vid, c in caps.items():
        T = np.load(f"{d}/feats/{vid}.npy").shape[0]
        assert sorted(c) == ["end", "start", "text"] and len(c["start"]) == len(c["end"]) == len(c["text"]) > 3
        assert all(0 <= s < e <= T for s, e in zip(c["start"], c["end"])), vid
        assert all(t == t.lower() and t.strip() for t in c["text"])
        overlaps += sum(e > s2 for e, s2 in zip(c["end"], c["start"][1:]))
    assert overlaps > 100  # consecutive ASR clips overlap a little
    ids = list(caps)
    assert any(v[0] in "-_" for v in ids) and any("_" in v[1:] for v in ids)


def test_msrvtt_files(built):
    d = f"{built['a']}/msrvtt"
    train = _rows(f"{d}/MSRVTT_train.9k.csv")
    assert train[0] == ["video_id"] and all(re.fullmatch(r"video\d+", r[0]) for r in train[1:])
    test = _rows(f"{d}/MSRVTT_JSFUSION_test.csv")
    assert test[0] == ["key", "vid_key", "video_id", "sentence"] and len(test) == 51
    assert '"' not in open(f"{d}/MSRVTT_JSFUSION_test.csv").read()  # no quoting
    data = json.load(open(f"{d}/MSRVTT_data.json"))
    assert set(data) == {"info", "videos", "sentences"}
    for v in data["videos"]:
        assert {"category", "url", "video_id", "start time", "end time", "split", "id"} <= set(v)
        T = np.load(f"{d}/feats/{v['video_id']}.npy").shape[0]
        assert 10 <= T <= 30 and abs(v["end time"] - v["start time"] - T) < 0.02
    caps = {}
    for s in data["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    assert len({s["sen_id"] for s in data["sentences"]}) == len(data["sentences"])
    assert all(len(c) == 20 for c in caps.values()) and len(caps) == 90
    for key, vid_key, vid, sent in test[1:]:
        assert vid_key == "msr" + vid[5:] and sent in caps[vid]
    mc = _rows(f"{d}/MSR_MC_test.csv", sep="\t")
    assert mc[0] == ["key", "vid_key", "a1", "a2", "a3", "a4", "a5", "answer"] and len(mc) == 51
    answers = []
    for row in mc[1:]:
        assert os.path.exists(f"{d}/feats/video{row[1][3:]}.npy")
        cands, ans = row[2:7], int(row[7])
        answers.append(ans)
        assert len(set(cands)) == 5 and 0 <= ans <= 4
        close = [c for i, c in enumerate(cands) if i != ans and
                 difflib.SequenceMatcher(None, c.split(), cands[ans].split()).ratio() > 0.6]
        assert len(close) >= 3, row  # hard distractors: one slot changed
    assert len(set(answers)) == 5  # the answer is not always in the same place


def test_youcook2_coin_files(built):
    d = built["a"]
    db = json.load(open(f"{d}/youcook2/youcookii_annotations_trainval.json"))["database"]
    past = 0
    assert {v["subset"] for v in db.values()} == {"training", "validation"}
    for vid, v in db.items():
        T = np.load(f"{d}/youcook2/feats/{vid}.npy").shape[0]
        assert isinstance(v["recipe_type"], str) and isinstance(v["duration"], float) and v["video_url"].endswith(vid)
        for k, a in enumerate(v["annotations"]):
            assert a["id"] == k and all(type(x) is int for x in a["segment"]) and a["segment"][0] < a["segment"][1]
            assert a["sentence"] and a["sentence"] == a["sentence"].lower()
        past += v["annotations"][-1]["segment"][1] > T
    db = json.load(open(f"{d}/coin/COIN.json"))["database"]
    assert {v["subset"] for v in db.values()} == {"training", "testing"}
    labels = {}
    for vid, v in db.items():
        T = np.load(f"{d}/coin/feats/{vid}.npy").shape[0]
        assert {"duration", "class", "video_url", "start", "end", "annotation", "subset", "recipe_type"} <= set(v)
        for a in v["annotation"]:
            assert isinstance(a["id"], str) and a["id"].isdigit() and int(a["id"]) >= 1
            assert a["segment"][0] < a["segment"][1] and labels.setdefault(a["id"], a["label"]) == a["label"]
        past += v["annotation"][-1]["segment"][1] > T
    assert past >= 1  # quirk: some segments run past the features
    ids = list(db)  # YouTube-like ids: split "<vid>_<clip>" at the LAST underscore
    weird = [v for v in ids if "_" in v[1:]][0]
    assert f"{weird}_3".rsplit("_", 1) == [weird, "3"]


def test_crosstask_files(built):
    d = f"{built['a']}/crosstask"
    text = open(f"{d}/tasks_primary.txt").read()
    assert text.endswith("\n\n")
    lines = text.split("\n")[:-1]
    assert len(lines) % 6 == 0
    tasks = {}
    for i in range(0, len(lines), 6):
        tid, name, url, n, steps, empty = lines[i:i + 6]
        assert tid.isdigit() and url.startswith("http") and empty == "" and int(n) == len(steps.split(","))
        tasks[tid] = steps.split(",")
    videos, val = _rows(f"{d}/videos.csv"), _rows(f"{d}/videos_val.csv")
    assert all(len(r) == 3 and r[0] in tasks for r in videos) and len(videos) == 3 * 34
    assert {tuple(r) for r in val} <= {tuple(r) for r in videos} and len(val) == 3 * 2
    names = os.listdir(f"{d}/annotations")
    assert sorted(names) == sorted(f"{t}_{v}.csv" for t, v, _ in videos)
    assert any(n.split("_", 1)[1].startswith("_") for n in names)  # the task id is before the FIRST underscore
    for t, v, _ in videos:
        T = np.load(f"{d}/feats/{v}.npy").shape[0]
        for step, s, e in _rows(f"{d}/annotations/{t}_{v}.csv"):
            assert 1 <= int(step) <= len(tasks[t]) and 0 <= float(s) < float(e) <= T + 1e-6


def test_held_out_words_need_pretraining(built):
    """Some test-caption words never occur in downstream training captions but do occur in the narration."""
    d = built["a"]
    data = json.load(open(f"{d}/msrvtt/MSRVTT_data.json"))
    train_ids = {r[0] for r in _rows(f"{d}/msrvtt/MSRVTT_train.9k.csv")[1:]}
    train = [s["caption"] for s in data["sentences"] if s["video_id"] in train_ids]
    test = [r[3] for r in _rows(f"{d}/msrvtt/MSRVTT_JSFUSION_test.csv")[1:]]
    yc = json.load(open(f"{d}/youcook2/youcookii_annotations_trainval.json"))["database"].values()
    train += [a["sentence"] for v in yc if v["subset"] == "training" for a in v["annotations"]]
    test += [a["sentence"] for v in yc if v["subset"] == "validation" for a in v["annotations"]]
    seen = {w for c in train for w in c.split()}
    narr = {w for c in json.load(open(f"{d}/howto100m/raw_caption.json")).values() for t in c["text"]
            for w in t.split()}
    novel = {w for c in test for w in c.split()} - seen
    assert len(novel & narr) >= 5, novel
    share = np.mean([any(w in novel for w in c.split()) for c in test])
    assert 0.2 < share < 0.9, share  # a sizeable share of test captions, not all of them


def test_tokenizer(built):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(f"{built['a']}/tokenizer.json")
    assert [tok.token_to_id(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]] == [0, 1, 2, 3, 4]
    vocab = open(f"{built['a']}/vocab.txt").read().split("\n")[:-1]
    assert vocab == [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    caps = json.load(open(f"{built['a']}/howto100m/raw_caption.json"))
    enc = tok.encode(" ".join(next(iter(caps.values()))["text"]).upper())  # lower-cases
    assert enc.ids[0] == 2 and enc.ids[-1] == 3 and 1 not in enc.ids
    assert tok.decode(tok.encode("Now chop the onion").ids) == "now chop the onion"
    assert tok.encode("[MASK] the onion", add_special_tokens=False).ids[0] == 4
