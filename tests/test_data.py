"""Tests for data.py, readers.py and video.py: every reader on small files written here in the real layouts
(docs/data_formats.md), packing, lazy features, the tokenisation cache, the pre-training sampler's invariants,
and every bad-input case.

Run: python -m pytest -q tests/test_data.py
"""
import json, os, pickle

import numpy as np
import pytest
import torch

import data
import readers
import video

torch.set_num_threads(1)
WORDS = [f"w{i}" for i in range(40)]


def make_tok(words=WORDS, lower=False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def feats(d, vid, T, seed=0, dtype=np.float16):
    os.makedirs(d, exist_ok=True)
    a = np.random.default_rng(seed).standard_normal((T, 512)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    np.save(os.path.join(d, f"{vid}.npy"), a.astype(dtype))
    return a.astype(dtype)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- features

def test_npy_store_lazy_and_clip(tmp_path):
    a = feats(tmp_path / "f", "v1", 10)
    store = video.open_features(str(tmp_path / "f"))
    assert store.ids == ["v1"] and "v1" in store and "v2" not in store
    x = store["v1"]
    assert isinstance(x, np.memmap) and x.dtype == np.float16 and np.array_equal(x, a)
    c = data.clip_features(x, 2.5, 5.2)                  # floor(2.5)=2 .. ceil(5.2)=6
    assert c.dtype == np.float32 and c.shape == (4, 512) and np.allclose(c, a[2:6].astype(np.float32))
    assert data.clip_features(x, 0, 100, max_len=4).shape == (4, 512)   # first 4 seconds
    assert data.clip_features(x, 8, 30).shape == (2, 512)               # clipped to T
    assert data.clip_features(x, None, None).shape == (10, 512)


def test_pack_round_trip(tmp_path):
    src = tmp_path / "feats"
    arrs = {f"v{i}": feats(src, f"v{i}", 3 + i, seed=i) for i in range(5)}
    video.pack(str(src), str(tmp_path / "packed"), split="train", videos_per_shard=2)
    names = sorted(os.listdir(tmp_path / "packed"))
    assert "train_meta.pkl" in names and "train_2_data.npy" in names and not any("tmp" in n for n in names)
    with open(tmp_path / "packed" / "train_meta.pkl", "rb") as f:
        assert pickle.load(f) == {0: ["v0", "v1"], 1: ["v2", "v3"], 2: ["v4"]}
    starts = np.load(tmp_path / "packed" / "train_0_starts.npy")
    assert starts.dtype == np.int64 and starts.tolist() == [0, 3, 7]
    store = video.open_features(str(tmp_path / "packed"))
    assert isinstance(store, video.ShardStore) and store.ids == sorted(arrs)
    for v, a in arrs.items():
        x = store[v]
        assert isinstance(x, np.memmap) and x.dtype == a.dtype and np.array_equal(x, a) and store.length(v) == len(a)


def test_bad_features(tmp_path):
    d = tmp_path / "f"
    feats(d, "ok", 4)
    np.save(d / "dim.npy", np.zeros((4, 256), np.float16))
    np.save(d / "nan.npy", np.full((4, 512), np.nan, np.float32))
    np.save(d / "inf.npy", np.full((4, 512), np.inf, np.float16))
    np.save(d / "str.npy", np.array([["a"] * 512] * 2))
    write(str(d / "text.npy"), "not a numpy file")
    raw = open(d / "ok.npy", "rb").read()
    open(d / "trunc.npy", "wb").write(raw[: len(raw) // 2])
    store = video.open_features(str(d))
    for vid, msg in [("dim", "shape"), ("nan", "NaN"), ("inf", "NaN or inf"), ("str", "float"),
                     ("text", "cannot read"), ("trunc", "cannot read")]:
        with pytest.raises(ValueError, match=msg) as e:
            store[vid]
        assert f"{vid}.npy" in str(e.value)
    with pytest.raises(KeyError, match="missing"):
        store["missing"]
    with pytest.raises(FileNotFoundError):
        video.open_features(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- downstream readers

def test_msrvtt(tmp_path, capsys):
    d = tmp_path / "msrvtt"
    for i in range(12):
        feats(d / "feats", f"video{i}", 5 + i, seed=i)
    write(str(d / "MSRVTT_train.9k.csv"), "video_id\n" + "".join(f"video{i}\n" for i in range(10)) + "video99\n")
    write(str(d / "MSRVTT_JSFUSION_test.csv"),
          "key,vid_key,video_id,sentence\nret0,msr10,video10,a man, a dog\nret1,msr11,video11,a cat\n")
    js = {"info": {}, "videos": [{"category": 1, "url": "u", "video_id": f"video{i}", "start time": 1.5,
                                  "end time": 9.25, "split": "train", "id": i} for i in range(12)],
          "sentences": [{"caption": f"caption {j} of {i}", "video_id": f"video{i}", "sen_id": 3 * i + j}
                        for i in range(12) for j in range(3)]}
    write(str(d / "MSRVTT_data.json"), json.dumps(js))
    write(str(d / "MSR_MC_test.csv"), "key\tvid_key\ta1\ta2\ta3\ta4\ta5\tanswer\n"
          "mc0\tmsr10\tx\ty\tz\tu\tv\t0\nmc1\tmsr11\tx\ty\tz\tu\tv\t4\n")
    videos, sents = readers.read_msrvtt_json(str(d / "MSRVTT_data.json"))
    assert videos["video3"]["start"] == 1.5 and videos["video3"]["end"] == 9.25   # "start time" quirk
    tr, store = readers.load_retrieval(str(tmp_path), "msrvtt", "train")
    va, _ = readers.load_retrieval(str(d), "msrvtt", "val")               # dataset dir works too
    assert "1 videos without features" in capsys.readouterr().out and store.report["videos without features, skipped"] == 1
    assert len(tr) + len(va) == 10 and len(va) == 1 and not {r["video_id"] for r in tr} & {va[0]["video_id"]}
    assert all(len(r["texts"]) == 3 and r["start"] is None for r in tr) and len(va[0]["texts"]) == 1
    te, _ = readers.load_retrieval(str(tmp_path), "msrvtt", "test")
    assert [(r["video_id"], r["texts"]) for r in te] == [("video10", ["a man, a dog"]), ("video11", ["a cat"])]
    mc, _ = readers.load_mc(str(tmp_path))
    assert [(r["video_id"], r["answer"], r["candidates"][0]) for r in mc] == [("video10", 0, "x"), ("video11", 4, "x")]
    write(str(d / "MSR_MC_test.csv"), "key\tvid_key\ta1\ta2\ta3\ta4\ta5\tanswer\nmc0\tmsr10\tx\ty\tz\tu\tv\t5\n")
    with pytest.raises(ValueError, match="MSR_MC_test.csv: row 2"):
        readers.load_mc(str(tmp_path))
    write(str(d / "MSRVTT_JSFUSION_test.csv"), "key,vid_key,video_id,sentence\nret0,msr77,video77,a\n")
    with pytest.raises(ValueError, match="MSRVTT_JSFUSION_test.csv: names no video"):
        readers.load_retrieval(str(tmp_path), "msrvtt", "test")


def youcook_db(ids):
    return {"database": {v: {"duration": 20.0, "subset": sub, "recipe_type": "113", "video_url": "u",
                             "annotations": [{"segment": [1, 4], "id": 0, "sentence": f"cut {v}"},
                                             {"segment": [5, 30], "id": 1, "sentence": "fry it"}]}
                         for v, sub in ids}}


def test_youcook2(tmp_path, capsys):
    d = tmp_path / "youcook2"
    ids = [("-ab_c", "training"), ("_x-y_z", "training"), ("abc", "training"), ("q_1", "validation")]
    for i, (v, _) in enumerate(ids):
        feats(d / "feats", v, 12, seed=i)
    write(str(d / "youcookii_annotations_trainval.json"), json.dumps(youcook_db(ids)))
    te, store = readers.load_captioning(str(tmp_path), "test")
    assert [r["clip_id"] for r in te] == ["q_1_0", "q_1_1"] and readers.split_clip_id("q_1_1") == ("q_1", 1)
    assert readers.split_clip_id("_x-y_z_12") == ("_x-y_z", 12) and te[1]["end"] == 12   # 30 clipped to T = 12
    assert store.report["segments ran past the features, clipped"] == 1 and "1 segments ran past" in capsys.readouterr().out
    tr, _ = readers.load_retrieval(str(tmp_path), "youcook2", "train")
    va, _ = readers.load_retrieval(str(tmp_path), "youcook2", "val")
    assert len(tr) == 4 and len(va) == 2 and tr[0]["texts"] == [f"cut {tr[0]['video_id']}"] and tr[0]["start"] == 1
    for bad, msg in [({"segment": [5, 2]}, "start after end"), ({"segment": [-1, 2]}, "negative"),
                     ({"sentence": " "}, "empty sentence")]:
        db = youcook_db(ids)
        db["database"]["q_1"]["annotations"][0].update(bad)
        write(str(d / "youcookii_annotations_trainval.json"), json.dumps(db))
        with pytest.raises(ValueError, match=msg) as e:
            readers.load_captioning(str(tmp_path), "test")
        assert "'q_1'" in str(e.value)


def test_coin(tmp_path):
    d = tmp_path / "coin"
    db = {"database": {v: {"duration": 10.0, "class": "c", "video_url": "u", "start": 0.0, "end": 10.0,
                           "annotation": [{"id": "7", "segment": [1.5, 3.2], "label": "a"},
                                          {"id": "12", "segment": [6.0, 99.0], "label": "b"}],
                           "subset": sub, "recipe_type": 3}
                       for v, sub in [("a", "training"), ("b", "training"), ("c", "testing"), ("nofeat", "testing")]}}
    write(str(d / "COIN.json"), json.dumps(db))
    for v in "abc":
        feats(d / "feats", v, 10)
    recs, store, K = readers.load_coin(str(tmp_path), "test")
    assert K == 13 and [r["video_id"] for r in recs] == ["c"]
    assert recs[0]["labels"].tolist() == [0, 7, 7, 7, 0, 0, 12, 12, 12, 12]
    assert store.report["videos without features, skipped"] == 1 and store.report["segments ran past the features, clipped"] == 1
    tr, va = readers.load_coin(str(tmp_path), "train")[0], readers.load_coin(str(tmp_path), "val")[0]
    assert sorted(r["video_id"] for r in tr + va) == ["a", "b"] and len(va) == 1
    with pytest.raises(ValueError, match="unknown split"):
        readers.load_coin(str(tmp_path), "validation")


def test_crosstask(tmp_path):
    d = tmp_path / "crosstask"
    write(str(d / "tasks_primary.txt"), "113766\nMake Jello Shots\nhttp://www.wikihow.com/x\n3\npour water,stir,pour alcohol\n\n"
          "200\nMake Tea\nhttp://w\n2\nboil,pour\n\n")
    vids = {"113766": ["_uAZw6L_R5g", "a1", "a2", "a3", "a4"], "200": ["t1", "-t2"]}
    write(str(d / "videos.csv"), "".join(f"{t},{v},http://y\n" for t, vs in vids.items() for v in vs))
    write(str(d / "videos_val.csv"), "113766,a4,http://y\n")
    for t, vs in vids.items():
        for i, v in enumerate(vs):
            feats(d / "feats", v, 20, seed=i)
            write(str(d / "annotations" / f"{t}_{v}.csv"), "1,1.5,3.2\n2,10.0,12.0\n" + ("3,18.5,25.0\n" if t == "113766" else ""))
    write(str(d / "annotations" / "113766_unknown.csv"), "1,1,2\n")
    tr, tasks, store = readers.load_crosstask(str(tmp_path), "train", n_train=2)
    assert tasks["113766"] == {"name": "Make Jello Shots", "steps": ["pour water", "stir", "pour alcohol"]}
    assert store.report["annotations for unknown videos, skipped"] == 1
    assert sorted(r["task"] for r in tr) == ["113766", "113766", "200", "200"]
    va = readers.load_crosstask(str(tmp_path), "val", n_train=2)[0]
    te = readers.load_crosstask(str(tmp_path), "test", n_train=2)[0]
    split = lambda rs: {r["video_id"] for r in rs}
    assert split(va) == {"a4"} and len(te) == 2 and not (split(tr) & split(te)) and "a4" not in split(tr) | split(te)
    assert [r["video_id"] for r in tr] == [r["video_id"] for r in readers.load_crosstask(str(tmp_path), "train", n_train=2)[0]]
    r = next(r for r in tr + va + te if r["video_id"] == "_uAZw6L_R5g")         # leading-underscore video id
    y = r["labels"]
    assert y.shape == (20, 3) and y.dtype == np.float32
    assert np.flatnonzero(y[:, 0]).tolist() == [1, 2, 3] and np.flatnonzero(y[:, 1]).tolist() == [10, 11]
    assert np.flatnonzero(y[:, 2]).tolist() == [18, 19]                              # 25 s clipped to T = 20
    with pytest.raises(ValueError, match="crosstask/test names no video"):   # default n_train=30 takes them all
        readers.load_crosstask(str(tmp_path), "test")
    write(str(d / "annotations" / "200_t1.csv"), "3,1,2\n")
    with pytest.raises(ValueError, match="200_t1.csv: step 3 outside"):
        for s in ("train", "test"):
            readers.load_crosstask(str(tmp_path), s, n_train=2)


def test_howto_readers(tmp_path):
    caps = {"v": {"start": [0.0, 2.5], "end": [3.0, 5.0], "text": ["a b", "c"]}}
    write(str(tmp_path / "c.json"), json.dumps(caps))
    with open(tmp_path / "c.pkl", "wb") as f:
        pickle.dump(caps, f)
    assert readers.read_captions(str(tmp_path / "c.json")) == caps == readers.read_captions(str(tmp_path / "c.pkl"))
    write(str(tmp_path / "HowTo100M_v1.csv"), "video_id,category_1,category_2,rank,task_id\nv,Food,Cook,3,120\n")
    assert readers.read_howto_csv(str(tmp_path / "HowTo100M_v1.csv"))["v"]["task_id"] == "120"
    caps["v"]["end"] = [3.0]
    write(str(tmp_path / "c.json"), json.dumps(caps))
    with pytest.raises(ValueError, match="video 'v': caption lists of unequal length"):
        readers.read_captions(str(tmp_path / "c.json"))


# ----------------------------------------------------------------------------- text

def test_encode_collate():
    tok = make_tok()
    ids, n = data.encode_texts(tok, ["w1 w2", " ".join(["w3"] * 70)], max_len=61)
    assert ids[0] == [6, 7] and len(ids[1]) == 61 and n == 1
    b = data.collate_pairs([np.ones((3, 512), np.float16), np.ones((5, 512))], ids)
    assert b["video"].shape == (2, 5, 512) and b["video"].dtype == torch.float32
    assert b["video_mask"].tolist()[0] == [True] * 3 + [False] * 2 and b["video"][0, 3:].abs().sum() == 0
    assert b["text_ids"].shape == (2, 61) and b["text_ids"][0, 2:].eq(0).all() and b["text_mask"][0].sum() == 2


def howto_world(root, n_videos=12, T=300, gap=3.0, seed=0, extra=None):
    rng = np.random.default_rng(seed)
    caps = {}
    for v in range(n_videos):
        feats(root / "howto100m" / "feats", f"v{v}", T, seed=v)
        st = np.arange(0, T + 40, gap)   # last captions run past the features
        caps[f"v{v}"] = {"start": st.tolist(), "end": (st + gap + 0.7).tolist(),
                         "text": [" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in st]}
    caps.update(extra or {})
    write(str(root / "howto100m" / "raw_caption.json"), json.dumps(caps))
    return caps


def test_token_cache_keyed_by_tokenizer(tmp_path):
    howto_world(tmp_path, n_videos=2, T=20)
    path, cache = str(tmp_path / "howto100m" / "raw_caption.json"), tmp_path / "cache"
    t1, t2 = make_tok(), make_tok(list(reversed(WORDS)))
    c1 = data.token_cache(path, t1, str(cache))
    assert len([f for f in os.listdir(cache) if f.startswith("tokens-")]) == 1
    c1b = data.token_cache(path, t1, str(cache))    # from the cache
    assert np.array_equal(c1["ids"], c1b["ids"])
    c2 = data.token_cache(path, t2, str(cache))
    assert len([f for f in os.listdir(cache) if f.startswith("tokens-") and f.endswith(".npz")]) == 2
    assert not [f for f in os.listdir(tmp_path / "howto100m") if f.startswith("tokens-")]  # never in the dataset
    assert not np.array_equal(c1["ids"], c2["ids"]) and np.array_equal(c1["tok_off"], c2["tok_off"])
    caps = json.load(open(path))
    first = t1.encode(caps["v0"]["text"][0], add_special_tokens=False).ids
    assert c1["ids"][: len(first)].tolist() == first


# ----------------------------------------------------------------------------- pre-training sampler

@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    bad = {"bad": {"start": [0.0, 5.0, -1.0, 2.0], "end": [1.0, 2.0, 3.0, 3.0], "text": ["w1", "w2", "w3", " "]},
           "nofeat": {"start": [0.0], "end": [1.0], "text": ["w1"]},
           "late": {"start": [50.0], "end": [60.0], "text": ["w1 w2"]}}
    caps = howto_world(root, extra=bad)
    caps["long"] = {"start": [0.0, 200.0, 400.0], "end": [200.0, 400.0, 600.0], "text": ["w1", "w2", "w3"]}
    feats(root / "howto100m" / "feats", "bad", 10), feats(root / "howto100m" / "feats", "late", 10)
    feats(root / "howto100m" / "feats", "long", 700)
    write(str(root / "howto100m" / "raw_caption.json"), json.dumps(caps))
    return root, caps, data.PretrainData(str(root), make_tok(), min_text=8, max_text=64, seed=3)


def test_pretrain_counts_and_split(pre, tmp_path):
    root, caps, ds = pre
    r = ds.report
    assert r["videos without features, skipped"] == 1 and r["ASR clips with negative time"] == 1
    assert r["ASR clips with start after end"] == 1 and r["ASR clips with empty text"] == 1
    assert r["ASR clips starting after the features end, skipped"] >= 12 and r["ASR clips ran past the features, clipped"] >= 12
    assert r["videos without usable ASR, skipped"] == 1          # "late": its only clip starts after T = 10
    val = data.PretrainData(str(root), make_tok(), split="val", seed=99)
    assert val.num_videos == 1 and val.vids[0] not in ds.vids and ds.num_videos == 13


def test_pretrain_spans(pre):
    root, caps, ds = pre
    for v in range(ds.num_videos):
        T, (a, b) = int(ds.lengths[v]), ds.cap_off[v]
        sp = ds.spans(v, epoch=0)
        assert len(sp) == 32 and sp == ds.spans(v, epoch=0) and sp != ds.spans(v, epoch=1)
        for i, j, L, s, e in sp:
            assert a <= i <= j < b and 8 <= L <= 64
            n = ds.tok_off[j + 1] - ds.tok_off[i]
            span = min(ds.end[j], T) - ds.start[i]
            inner = ds.end[j - 1] - ds.start[i] if j > i else 0
            inner2 = min(ds.end[j], T) - ds.start[i + 1] if j > i else 0
            assert n >= L or span >= 256 or (i, j) == (a, b - 1)  # stopped for a reason
            assert min(inner, inner2) < 256                         # 256 s cap: only the last clip may cross it
            assert s == int(np.floor(ds.start[i])) and 1 <= e - s <= 32 and e <= T
            assert e == min(int(np.ceil(min(ds.end[j], T))), s + 32, T) or e == s + 1
    long = ds.vids.index("long")
    assert all(e - s <= 32 for *_, s, e in ds.spans(long, 0))


def test_pretrain_items_and_batches(pre):
    root, caps, ds = pre
    video, vlen, text, tlen, n_trunc = ds[(0, 2)]
    feat = ds.store[ds.vids[2]]
    for k, (i, j, L, s, e) in enumerate(ds.spans(2, 0)):
        assert vlen[k] == e - s and np.array_equal(video[k, : e - s], feat[s:e].astype(np.float32))
        full = ds.ids[ds.tok_off[i] : ds.tok_off[j + 1]]
        assert tlen[k] == min(len(full), 61) and np.array_equal(text[k, : tlen[k]], full[:61])
    assert n_trunc == sum(ds.tok_off[j + 1] - ds.tok_off[i] > 61 for i, j, *_ in ds.spans(2, 0))
    b0 = list(ds.loader(2, epoch=1, num_workers=0))
    b = b0[0]
    assert b["video"].shape[0] == 64 and b["video"].dtype == torch.float32 and b["text_ids"].shape[1] <= 61
    assert b["video"].shape[1] <= 32 and b["video_mask"].sum(1).ge(1).all() and b["text_mask"].sum(1).ge(1).all()
    m = b["text_mask"].long()
    assert (m[:, :-1] >= m[:, 1:]).all() and b["text_ids"][~b["text_mask"]].eq(0).all()  # prefix masks, pad 0
    assert b["video"][~b["video_mask"]].abs().sum() == 0
    assert len(b0) == ds.batches_per_epoch(2) == 7
    b2 = list(ds.loader(2, epoch=1, num_workers=2))        # independent of the number of workers
    assert all(torch.equal(x[k], y[k]) for x, y in zip(b0, b2) for k in x) and len(b2) == len(b0)
    b3 = list(ds.loader(2, epoch=1, start_batch=4))        # resume
    assert all(torch.equal(x["text_ids"], y["text_ids"]) for x, y in zip(b0[4:], b3)) and len(b3) == 3
    ds._loaders.clear()


def test_rank_sharding(pre):
    root, caps, ds = pre
    per = [ds.batches(2, epoch=5, rank=r, world_size=3) for r in range(3)]
    vids = [[v for b in p for _, v in b] for p in per]
    assert len({len(p) for p in per}) == 1 and all(len(v) == 13 // 3 for v in vids)
    assert len(set(sum(vids, []))) == sum(map(len, vids))   # disjoint
    assert vids[0] != [v for b in ds.batches(2, epoch=6, rank=0, world_size=3) for _, v in b]
    assert ds.batches(2, epoch=5, rank=1, world_size=3, start_batch=1) == per[1][1:]


def test_commands(pre, tmp_path, monkeypatch, capsys):
    root, caps, ds = pre
    with pytest.raises(SystemExit):  # the world has its own command (python world.py), not data.py synth
        data.main(["synth", "--out", str(tmp_path / "w")])
    src = tmp_path / "f"
    feats(src, "a", 3), feats(src, "b", 4)
    data.main(["pack", "--features", str(src), "--out", str(tmp_path / "p"), "--split", "val"])
    assert video.open_features(str(tmp_path / "p")).ids == ["a", "b"]
    data.main(["stats", str(root)])
    data.main(["stats", str(root / "howto100m")])
    out = capsys.readouterr().out.splitlines()
    assert out[-4] == out[-2] and out[-2].startswith("howto100m: 15 videos") and "ASR clips" in out[-1]
    with pytest.raises(SystemExit):
        data.main(["bench", "--help"])
