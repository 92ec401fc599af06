"""Data: readers for the real VLM data formats, downstream loaders and the pre-training clip sampler.

Implements the pre-training data of the paper (sec. 5.1, docs/method.md §4): from each HowTo100M video, 32 clip
pairs per visit; a clip is a random ASR caption extended with neighbouring captions (left or right at random) until a
target length L ~ U{8..64} text tokens is reached or the span reaches 256 s; its video is the seconds
floor(start)..ceil(end), at most the FIRST 32 of them. Every file layout (and its quirks) is the one of the
public releases, see docs/data_formats.md; the built-in world (world.py) writes the same layouts.

Commands:
    python data.py synth --out DIR --seed 0 --size tiny      # write the built-in world (world.py)
    python data.py pack --features DIR/howto100m/feats --out DIR/howto100m/feats_packed
    python data.py stats DIR                                  # a few lines per dataset found
    python data.py bench DIR --workers 0 1 2                  # clips/s of the pre-training loader

Bad input (nothing is dropped silently; every skip is counted and printed in one line that names a few ids):
    error: wrong feature dim, not 2-D, non-float / truncated / unreadable .npy, NaN or inf features (on read);
           caption lists of unequal length; downstream segment with start > end or negative time, or empty text;
           a split / list file naming no video that has features; missing files; bad MC answer; bad step index;
           a JSON / pickle file that does not parse (file, line, column); a missing key (`database`, `subset`,
           `annotation(s)`, `segment`, `sentence`); a COIN step id that is not an integer >= 1 (0 = background);
           a CSV row with too few fields (file, row). All are DataError, printed by the commands as one line.
    skip:  listed video without a feature file, or with a 0-second one; ASR clip with empty / non-string text,
           a null or non-numeric time, start > end or negative time (HowTo100M ASR is noisy, one bad clip must
           not stop a run); ASR clip starting after the features end; annotations for videos not in the
           dataset's lists; stray files in crosstask/annotations/; empty MSR-VTT captions.
    clip:  times past the end of the features are clipped to T and counted.
Derived files (the token cache) are written only where the caller says (train.py: OUT/cache), never beside the data.
"""
import argparse, glob, hashlib, json, math, os, pickle, time, zlib

import numpy as np
import torch
import torch.nn.functional as F

from common import cli
from tokens import load_tokenizer

FEAT_DIM = 512     # S3D feature size
MAX_VIDEO = 32     # seconds of video per example
MAX_TEXT = 61      # content word pieces per example (96 - 32 - 3)
MAX_SPAN = 256.0   # seconds: stop extending a pre-training clip once its captions span this much


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file and the row / key / video."""


class Counts(dict):
    """Skip / clip counts {reason: n}; `.examples` keeps the first few ids skipped for each reason."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.examples = {}

    def skip(self, reason, vid, n=1):
        self[reason] = self.get(reason, 0) + n
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3 and vid not in ex:
            ex.append(vid)


def _report(name, counts):
    """Print one line for non-zero skip / clip counts, naming a few skipped ids; return the dict (store.report)."""
    bad = {k: v for k, v in counts.items() if v}
    ex = getattr(counts, "examples", {})
    if bad:
        print(f"{name}: " + ", ".join(f"{v} {k}" + (f" (e.g. {', '.join(map(str, ex[k]))})" if ex.get(k) else "")
                                      for k, v in bad.items()))
    return counts


# ----------------------------------------------------------------------------- features

def _check_feat(a, where):
    if a.ndim != 2 or a.shape[1] != FEAT_DIM:
        raise DataError(f"{where}: features must be (T, {FEAT_DIM}), got shape {a.shape}")
    if a.dtype.kind != "f":
        raise DataError(f"{where}: features must be a float array, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise DataError(f"{where}: features contain NaN or inf")
    return a


class NpyStore:
    """A directory of `<vid>.npy` files, each (T, 512); read lazily with mmap_mode="r"."""

    def __init__(self, root):
        self.root = root
        self.ids = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".npy"))
        self._ids = set(self.ids)

    def __contains__(self, vid):
        return vid in self._ids

    def _open(self, vid):
        path = os.path.join(self.root, vid + ".npy")
        if vid not in self._ids:
            raise KeyError(f"{path}: no feature file for video {vid!r}")
        try:
            return np.load(path, mmap_mode="r"), path
        except Exception as e:  # truncated file, not an .npy, pickled objects, ...
            raise DataError(f"{path}: cannot read features of video {vid!r}: {e}") from None

    def __getitem__(self, vid):
        a, path = self._open(vid)
        return _check_feat(a, path)  # (T, 512) np.memmap

    def length(self, vid):
        a, path = self._open(vid)
        if a.ndim != 2:
            raise DataError(f"{path}: features must be (T, {FEAT_DIM}), got shape {a.shape}")
        return a.shape[0]


class ShardStore:
    """Packed shards: `{split}_meta.pkl` {k: [vid, ...]}, `{split}_{k}_data.npy` (sum T, 512),
    `{split}_{k}_starts.npy` int64 offsets (one per video plus the end). Shards are memory-mapped on first use."""

    def __init__(self, root):
        self.root, self.where, self._open = root, {}, {}
        for meta in sorted(glob.glob(os.path.join(root, "*_meta.pkl"))):
            split = os.path.basename(meta)[: -len("_meta.pkl")]
            shards = _load_pickle(meta)
            if not isinstance(shards, dict):
                raise DataError(f"{meta}: expected a dict {{shard: [video_id, ...]}}, got {type(shards).__name__}")
            for k, vids in shards.items():
                for i, vid in enumerate(vids):
                    self.where[vid] = (f"{split}_{k}", i)
        self.ids = sorted(self.where)

    def __contains__(self, vid):
        return vid in self.where

    def _shard(self, name):
        if name not in self._open:
            base = os.path.join(self.root, name)
            try:
                data = np.load(base + "_data.npy", mmap_mode="r")
                starts = np.load(base + "_starts.npy")
            except Exception as e:
                raise DataError(f"{base}_data.npy / _starts.npy: cannot read shard: {e}") from None
            if starts.ndim != 1 or starts[-1] != data.shape[0]:
                raise DataError(f"{base}_starts.npy: last offset {starts[-1]} != rows of _data.npy {data.shape[0]}")
            self._open[name] = (data, starts)
        return self._open[name]

    def _span(self, vid):
        if vid not in self.where:
            raise KeyError(f"{self.root}: no features for video {vid!r} in any *_meta.pkl")
        name, i = self.where[vid]
        data, starts = self._shard(name)
        return data, int(starts[i]), int(starts[i + 1]), name

    def __getitem__(self, vid):
        data, s, e, name = self._span(vid)
        return _check_feat(data[s:e], f"{self.root}/{name}_data.npy (video {vid!r})")  # (T, 512) memmap

    def length(self, vid):
        _, s, e, _ = self._span(vid)
        return e - s


def open_features(path):
    """Auto-detect packed shards (`*_meta.pkl`) or a directory of `<vid>.npy`; return a lazy store."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: feature directory not found")
    return ShardStore(path) if glob.glob(os.path.join(path, "*_meta.pkl")) else NpyStore(path)


def clip_features(feat, start, end, max_len=MAX_VIDEO):
    """Seconds floor(start)..ceil(end) of feat clipped to T, the FIRST max_len of them -> float32 (k, 512)."""
    T = feat.shape[0]
    s = 0 if start is None else min(max(int(math.floor(start)), 0), T - 1)
    e = T if end is None else min(int(math.ceil(end)), T)
    e = min(max(e, s + 1), s + max_len)
    return np.asarray(feat[s:e], dtype=np.float32)  # (k, 512)


def pack(features, out, split="train", videos_per_shard=1000):
    """Stream a directory of `<vid>.npy` into packed shards; each file is written to a temp name and renamed,
    the meta pickle last, so a half-written directory is never detected as shards."""
    src = NpyStore(features)
    if not src.ids:
        raise DataError(f"{features}: no .npy feature files to pack")
    os.makedirs(out, exist_ok=True)
    dtype, meta = src[src.ids[0]].dtype, {}
    for k, i0 in enumerate(range(0, len(src.ids), videos_per_shard)):
        vids = src.ids[i0 : i0 + videos_per_shard]
        lengths = [src.length(v) for v in vids]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n + 1,)
        base = os.path.join(out, f"{split}_{k}")
        tmp = base + "_data.tmp.npy"
        data = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(int(starts[-1]), FEAT_DIM))
        for j, v in enumerate(vids):  # one video in RAM at a time
            data[starts[j] : starts[j + 1]] = src[v]
        data.flush()
        del data
        os.replace(tmp, base + "_data.npy")
        np.save(base + "_starts.tmp.npy", starts)
        os.replace(base + "_starts.tmp.npy", base + "_starts.npy")
        meta[k] = list(vids)
    with open(os.path.join(out, f"{split}_meta.tmp.pkl"), "wb") as f:
        pickle.dump(meta, f)
    os.replace(os.path.join(out, f"{split}_meta.tmp.pkl"), os.path.join(out, f"{split}_meta.pkl"))
    print(f"packed {len(src.ids)} videos into {len(meta)} shards in {out}")


# ----------------------------------------------------------------------------- file readers

def _need(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    return path


def _dataset_dir(data_dir, name):
    """Accept the world directory (with `name/` inside) or the dataset directory itself."""
    return os.path.join(data_dir, name) if os.path.isdir(os.path.join(data_dir, name)) else data_dir


def _load_json(path):
    """json.load that names the file, line and column of a syntax error (truncated or not JSON)."""
    with open(_need(path), "rb") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON (truncated?): {e.msg} at line {e.lineno} column {e.colno}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a JSON text file ({e.reason} at byte {e.start})") from None


def _load_pickle(path):
    with open(_need(path), "rb") as f:
        try:
            return pickle.load(f)
        except Exception as e:  # truncated, not a pickle, a class that is not importable here
            raise DataError(f"{path}: cannot read pickle (truncated or not a pickle?): {type(e).__name__}: {e}") from None


def read_captions(path):
    """HowTo100M `raw_caption.json` (or a pickle of the same dict) -> {vid: {"start", "end", "text"}}.
    MMPT's `raw_caption.pkl` holds each video's dict as a JSON string: those are decoded too."""
    caps = _load_pickle(path) if path.endswith((".pkl", ".pickle")) else _load_json(path)
    if not isinstance(caps, dict):
        raise DataError(f"{path}: expected a dict {{video_id: {{start, end, text}}}}, got {type(caps).__name__}")
    for vid, c in caps.items():
        if isinstance(c, (str, bytes)):
            try:
                c = caps[vid] = json.loads(c)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: video {vid!r}: value is a string but not JSON: {e.msg}") from None
        if not isinstance(c, dict) or not all(isinstance(c.get(k), (list, tuple)) for k in ("start", "end", "text")):
            got = sorted(c) if isinstance(c, dict) else type(c).__name__
            raise DataError(f"{path}: video {vid!r}: expected lists under 'start', 'end', 'text', got {got}")
        n = {k: len(c.get(k, ())) for k in ("start", "end", "text")}
        if len(set(n.values())) != 1:
            raise DataError(f"{path}: video {vid!r}: caption lists of unequal length {n}")
    return caps


def read_howto_csv(path):
    """`HowTo100M_v1.csv` (header video_id,category_1,category_2,rank,task_id) -> {vid: row dict}."""
    with open(_need(path)) as f:
        head = f.readline().strip().split(",")
        if head[:1] != ["video_id"]:
            raise DataError(f"{path}: header must start with video_id, got {head}")
        return {r[0]: dict(zip(head[1:], r[1:])) for r in (l.rstrip("\n").split(",") for l in f) if r[0]}


def read_id_list(path):
    """MSRVTT_train.9k.csv / 7k.csv: header `video_id`, one id per row."""
    with open(_need(path)) as f:
        lines = [l.strip() for l in f if l.strip()]
    if not lines or lines[0].split(",")[0] != "video_id":
        raise DataError(f"{path}: expected header 'video_id'")
    return [l.split(",")[0] for l in lines[1:]]


def read_jsfusion(path):
    """MSRVTT_JSFUSION_test.csv: `key,vid_key,video_id,sentence` (no quoting; the sentence may hold commas)."""
    with open(_need(path)) as f:
        head = f.readline().strip().split(",")
        if head != ["key", "vid_key", "video_id", "sentence"]:
            raise DataError(f"{path}: header must be key,vid_key,video_id,sentence, got {head}")
        rows = []
        for i, l in enumerate(f):
            r = l.rstrip("\r\n").split(",", 3)
            if not l.strip():
                continue
            if len(r) < 4 or not r[2].strip():
                raise DataError(f"{path}: row {i + 2}: expected key,vid_key,video_id,sentence, got {l.strip()!r}")
            rows.append(dict(zip(head, r)))
        return rows


def read_msrvtt_json(path):
    """MSRVTT_data.json -> (videos {vid: {"start", "end", "split"}}, sentences {vid: [caption, ...]}).
    Quirk: the keys are "start time" / "end time" with a space."""
    d = _load_json(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a JSON object with 'videos' and 'sentences', got {type(d).__name__}")
    for key, need in (("videos", ["video_id"]), ("sentences", ["video_id", "caption"])):
        for i, x in enumerate(d.get(key, [])):
            if not isinstance(x, dict) or any(k not in x for k in need):
                raise DataError(f"{path}: {key}[{i}]: expected a dict with keys {need}")
    videos = {v["video_id"]: {"start": v.get("start time"), "end": v.get("end time"), "split": v.get("split")}
              for v in d.get("videos", [])}
    sents = {}
    for s in d.get("sentences", []):
        sents.setdefault(s["video_id"], []).append(s["caption"])
    return videos, sents


def read_mc(path):
    """MSR_MC_test.csv: TAB-separated with header; vid_key msr<N> -> video<N>; answer 0-based."""
    with open(_need(path)) as f:
        head = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(head, l.rstrip("\n").split("\t"))) for l in f if l.strip()]
    out = []
    for i, r in enumerate(rows):
        try:
            cands, ans, key = [r[f"a{j}"] for j in range(1, 6)], int(r["answer"]), r["vid_key"]
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}: row {i + 2}: missing or bad field {e}") from None
        if not 0 <= ans < 5 or not all(c.strip() for c in cands) or not key.startswith("msr"):
            raise DataError(f"{path}: row {i + 2}: bad answer {ans} / empty candidate / vid_key {key!r}")
        out.append({"video_id": "video" + key[3:], "candidates": cands, "answer": ans})
    return out


def read_database(path, ann_key=None):
    """YouCook2 / COIN json -> the `database` dict; each video must hold `subset` and a list under `ann_key`
    (YouCook2 "annotations", COIN "annotation") of dicts with a 2-number `segment`."""
    d = _load_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("database"), dict):
        got = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: expected a top-level key 'database' (a dict of videos), got {got}")
    for vid, x in d["database"].items() if ann_key else ():
        where = f"{path}: video {vid!r}"
        if not isinstance(x, dict) or "subset" not in x or not isinstance(x.get(ann_key), list):
            got = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise DataError(f"{where}: expected keys 'subset' and {ann_key!r} (a list), got {got}")
        for j, a in enumerate(x[ann_key]):
            seg = a.get("segment") if isinstance(a, dict) else None
            if not (isinstance(seg, (list, tuple)) and len(seg) == 2 and
                    all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in seg)):
                raise DataError(f"{where}: {ann_key}[{j}]: expected 'segment': [start, end] in seconds, got {seg!r}")
    return d["database"]


def split_clip_id(clip_id):
    """YouCook2 `<vid>_<clip>` -> (vid, int clip); ids contain `_`, so split at the LAST underscore."""
    vid, clip = clip_id.rsplit("_", 1)
    return vid, int(clip)


def read_tasks(path):
    """CrossTask tasks_*.txt: cards of id / name / url / n_steps / comma-separated steps / empty line."""
    with open(_need(path)) as f:
        lines = [l.rstrip("\n").strip() for l in f]
    tasks, i = {}, 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        if i + 4 >= len(lines):
            raise DataError(f"{path}: line {i + 1}: incomplete task card")
        tid, name, _, n, steps = lines[i : i + 5]
        steps = steps.split(",")
        if not n.isdigit() or int(n) != len(steps):
            raise DataError(f"{path}: task {tid}: n_steps {n!r} but {len(steps)} steps listed")
        tasks[tid] = {"name": name, "steps": steps}
        i += 5
    return tasks


def read_crosstask_videos(path):
    """videos.csv / videos_val.csv: no header, `task_id,video_id,url` -> [(task, vid)]."""
    rows = []
    with open(_need(path)) as f:
        for i, l in enumerate(f):
            r = l.strip().split(",")
            if l.strip() and (len(r) < 2 or not r[0] or not r[1]):
                raise DataError(f"{path}: line {i + 1}: expected task_id,video_id,url, got {l.strip()!r}")
            if l.strip():
                rows.append((r[0], r[1]))
    return rows


def read_crosstask_annotation(path):
    """annotations/<task>_<vid>.csv: no header, `step,start,end` (step 1-based, float seconds)."""
    rows = []
    with open(_need(path)) as f:
        for i, l in enumerate(f):
            try:
                if l.strip():
                    s, a, b = l.strip().split(",")
                    rows.append((int(s), float(a), float(b)))
            except ValueError:
                raise DataError(f"{path}: line {i + 1}: expected step,start,end, got {l.strip()!r}") from None
    return rows


# ----------------------------------------------------------------------------- downstream loaders

def _carve(ids, frac=0.1, seed=0):
    """Fixed-seed validation carve: -> (train ids, val ids), sorted, val at least 1 when possible."""
    ids = sorted(set(ids))
    n_val = max(1, round(frac * len(ids))) if len(ids) > 1 else 0
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = {ids[i] for i in perm[:n_val]}
    return [v for v in ids if v not in val], [v for v in ids if v in val]


def _segment(s, e, where, T, counts):
    """Validate a downstream segment and clip it to T seconds (counted)."""
    if s < 0 or e < 0 or s > e:
        raise DataError(f"{where}: bad segment [{s}, {e}] (negative time or start after end)")
    if e > T:
        counts["segments ran past the features, clipped"] += 1
    return s, min(e, T)


def _keep(vids, store, where, counts):
    kept = []
    for v in vids:
        if v not in store:
            counts.skip("videos without features, skipped", v)
        elif store.length(v) == 0:  # a 0-second feature file: no clip can come from it
            counts.skip("videos with 0-second features, skipped", v)
        else:
            kept.append(v)
    if not kept:
        raise DataError(f"{where}: names no video that has features in {store.root}")
    return kept


def _counts():
    return Counts({"videos without features, skipped": 0, "segments ran past the features, clipped": 0,
                   "annotations for unknown videos, skipped": 0})


def _step_id(a, where):
    """A COIN step id: an integer >= 1 (0 is the background label, no step may use it)."""
    raw = a.get("id") if isinstance(a, dict) else None
    try:
        sid = int(str(raw).strip())
    except ValueError:
        sid = None
    if sid is None or sid < 1:
        raise DataError(f"{where}: step id {raw!r} is not an integer >= 1 (0 is the background label)")
    return sid


def _youcook(data_dir, split):
    d = _dataset_dir(data_dir, "youcook2")
    path = os.path.join(d, "youcookii_annotations_trainval.json")
    db, store, counts = read_database(path, "annotations"), open_features(os.path.join(d, "feats")), _counts()
    train, val = _carve([v for v, x in db.items() if x["subset"] == "training"])
    vids = {"train": train, "val": val, "test": sorted(v for v, x in db.items() if x["subset"] == "validation")}
    if split not in vids:
        raise DataError(f"youcook2: unknown split {split!r} (train, val, test)")
    segs = []
    for vid in _keep(vids[split], store, f"{path} ({split})", counts):
        T = store.length(vid)
        for a in db[vid]["annotations"]:
            where = f"{path}: video {vid!r} annotation {a.get('id')}"
            if not isinstance(a.get("sentence"), str) or not a["sentence"].strip():
                raise DataError(f"{where}: empty sentence or no 'sentence' key (got {a.get('sentence')!r})")
            s, e = _segment(*a["segment"], where, T, counts)
            segs.append({"video_id": vid, "clip_id": f"{vid}_{a['id']}", "start": s, "end": e,
                         "text": a["sentence"]})
    store.report = _report(f"youcook2/{split}", counts)
    return segs, store


def load_retrieval(data_dir, dataset="msrvtt", split="train", train_list="9k", videos=False):
    """-> (records {"video_id", "start", "end", "texts"}, store). MSR-VTT: train = the 9k (or 7k) list minus a
    fixed 10% val carve, all captions per video; val / test (JSFusion) one caption each. YouCook2: one record per
    segment; train / val carved from `training`, test = `validation`. videos=True: the store is msrvtt/videos
    (VideoStore, raw frames) instead of the features."""
    if dataset == "youcook2":
        segs, store = _youcook(data_dir, split)
        return [{"video_id": s["video_id"], "start": s["start"], "end": s["end"], "texts": [s["text"]]}
                for s in segs], store
    if dataset != "msrvtt":
        raise DataError(f"unknown retrieval dataset {dataset!r} (msrvtt, youcook2)")
    d, counts = _dataset_dir(data_dir, "msrvtt"), _counts()
    store = VideoStore(os.path.join(d, "videos")) if videos else open_features(os.path.join(d, "feats"))
    if split == "test":
        path = os.path.join(d, "MSRVTT_JSFUSION_test.csv")
        rows = read_jsfusion(path)
        for r in rows:
            if not r["sentence"].strip():
                counts.skip("test rows with an empty sentence, skipped", r["key"])
        rows = [r for r in rows if r["sentence"].strip()]
        kept = set(_keep([r["video_id"] for r in rows], store, path, counts))
        recs = [{"video_id": r["video_id"], "start": None, "end": None, "texts": [r["sentence"]]}
                for r in rows if r["video_id"] in kept]
    elif split in ("train", "val"):
        lst = os.path.join(d, f"MSRVTT_train.{train_list}.csv")
        _, sents = read_msrvtt_json(os.path.join(d, "MSRVTT_data.json"))
        for vid, caps in sents.items():
            for c in caps:
                if not isinstance(c, str) or not c.strip():
                    counts.skip("empty captions in MSRVTT_data.json, skipped", vid)
            sents[vid] = [c for c in caps if isinstance(c, str) and c.strip()]
        ids = dict(zip(("train", "val"), _carve(read_id_list(lst))))[split]
        recs = []
        for vid in _keep(ids, store, lst, counts):
            if not sents.get(vid):
                raise DataError(f"{d}/MSRVTT_data.json: no sentences for video {vid!r} listed in {lst}")
            texts = sents[vid] if split == "train" else sents[vid][:1]
            recs.append({"video_id": vid, "start": None, "end": None, "texts": texts})
    else:
        raise DataError(f"msrvtt: unknown split {split!r} (train, val, test)")
    store.report = _report(f"msrvtt/{split}", counts)
    return recs, store


def load_mc(data_dir, videos=False):
    """MSR-VTT multiple choice -> (records {"video_id", "candidates": [5 str], "answer": int}, store).
    videos=True: the store is msrvtt/videos (raw frames)."""
    d, counts = _dataset_dir(data_dir, "msrvtt"), _counts()
    path = os.path.join(d, "MSR_MC_test.csv")
    store = VideoStore(os.path.join(d, "videos")) if videos else open_features(os.path.join(d, "feats"))
    rows = read_mc(path)
    kept = set(_keep([r["video_id"] for r in rows], store, path, counts))
    store.report = _report("msrvtt/mc", counts)
    return [r for r in rows if r["video_id"] in kept], store


def load_coin(data_dir, split):
    """COIN -> (records {"video_id", "labels": int64 (T,)}, store, num_classes). Label 0 = background, the step
    id on seconds floor(start)..ceil(end). train / val carved from `training`, test = `testing`."""
    d, counts = _dataset_dir(data_dir, "coin"), _counts()
    path, store = os.path.join(d, "COIN.json"), open_features(os.path.join(d, "feats"))
    db = read_database(path, "annotation")
    num_classes = 1 + max((_step_id(a, f"{path}: video {v!r}") for v, x in db.items() for a in x["annotation"]),
                          default=0)
    train, val = _carve([v for v, x in db.items() if x["subset"] == "training"])
    vids = {"train": train, "val": val, "test": sorted(v for v, x in db.items() if x["subset"] == "testing")}
    if split not in vids:
        raise DataError(f"coin: unknown split {split!r} (train, val, test)")
    recs = []
    for vid in _keep(vids[split], store, f"{path} ({split})", counts):
        T = store.length(vid)
        labels = np.zeros(T, dtype=np.int64)  # (T,)
        for a in db[vid]["annotation"]:
            s, e = _segment(*a["segment"], f"{path}: video {vid!r} step {a['id']}", T, counts)
            s = min(int(math.floor(s)), T - 1)
            labels[s : max(int(math.ceil(e)), s + 1)] = _step_id(a, f"{path}: video {vid!r}")
        recs.append({"video_id": vid, "labels": labels})
    store.report = _report(f"coin/{split}", counts)
    return recs, store, num_classes


def load_crosstask(data_dir, split, n_train=30):
    """CrossTask primary tasks -> (records {"task", "video_id", "labels": float32 (T, K)}, tasks, store).
    val = videos_val.csv; train = n_train videos per task (fixed seed); test = the rest."""
    d, counts = _dataset_dir(data_dir, "crosstask"), _counts()
    tasks, store = read_tasks(os.path.join(d, "tasks_primary.txt")), open_features(os.path.join(d, "feats"))
    ann_dir = os.path.join(d, "annotations")
    listed = read_crosstask_videos(os.path.join(d, "videos.csv"))
    val = [tv for tv in read_crosstask_videos(os.path.join(d, "videos_val.csv")) if tv[0] in tasks]
    for tv in sorted(set(listed) - set(val)):
        if tv[0] not in tasks:  # videos.csv also lists the related (non-primary) tasks
            counts.skip("listed videos of tasks not in tasks_primary.txt, ignored", tv[1])
    known = set(listed) | set(val)
    for f in sorted(os.listdir(_need(ann_dir))):  # task id before the FIRST underscore (video ids may start with _)
        if not f.endswith(".csv") or "_" not in f[:-4]:
            counts.skip("files in annotations/ not named <task>_<video>.csv, ignored", f)
            continue
        task, vid = f[:-4].split("_", 1)
        if (task, vid) not in known:
            counts.skip("annotations for unknown videos, skipped", f)
    usable = lambda tv: tv[1] in store and os.path.exists(os.path.join(ann_dir, f"{tv[0]}_{tv[1]}.csv"))
    val_set = set(val)
    pool = sorted({tv for tv in listed if tv[0] in tasks and tv not in val_set})
    train = []
    for task in sorted(tasks):
        cand = [tv for tv in pool if tv[0] == task and usable(tv)]
        perm = np.random.default_rng([0, zlib.crc32(task.encode())]).permutation(len(cand))
        train += [cand[i] for i in sorted(perm[:n_train])]
    train_set = set(train)
    chosen = {"train": train, "val": sorted(val_set), "test": [tv for tv in pool if tv not in train_set]}
    if split not in chosen:
        raise DataError(f"crosstask: unknown split {split!r} (train, val, test)")
    keep = [tv for tv in chosen[split] if usable(tv)]
    for tv in chosen[split]:
        if not usable(tv):
            counts.skip("videos without features or annotations, skipped", tv[1])
        elif store.length(tv[1]) == 0:  # a 0-second feature file: no label can fall in it
            counts.skip("videos with 0-second features, skipped", tv[1])
    keep = [tv for tv in keep if store.length(tv[1]) > 0]
    if not keep:
        raise DataError(f"{d}: crosstask/{split} names no video with features and annotations")
    recs = []
    for task, vid in keep:
        path, T, K = os.path.join(ann_dir, f"{task}_{vid}.csv"), store.length(vid), len(tasks[task]["steps"])
        labels = np.zeros((T, K), dtype=np.float32)  # (T, K)
        for step, s, e in read_crosstask_annotation(path):
            if not 1 <= step <= K:
                raise DataError(f"{path}: step {step} outside 1..{K} of task {task}")
            s, e = _segment(s, e, path, T, counts)
            s = int(math.floor(s))
            if s >= T:  # the CrossTask toolkit's rule: a segment starting past the features marks no frame
                counts.skip("segments starting past the features, left empty", vid)
                continue
            labels[s : max(int(math.ceil(e)), s + 1), step - 1] = 1.0
        recs.append({"task": task, "video_id": vid, "labels": labels})
    store.report = _report(f"crosstask/{split}", counts)
    return recs, tasks, store


def load_captioning(data_dir, split):
    """YouCook2 captioning -> (records {"clip_id", "video_id", "start", "end", "text"}, store)."""
    return _youcook(data_dir, split)


# ----------------------------------------------------------------------------- text

def encode_texts(tokenizer, texts, max_len=MAX_TEXT):
    """-> (content ids per text, no [CLS]/[SEP], truncated to max_len; number truncated)."""
    ids = [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    n_trunc = sum(len(x) > max_len for x in ids)
    return [x[:max_len] for x in ids], n_trunc


def pad_texts(texts, pad_id=0):
    """Id lists -> ids (B, Lt) padded with pad_id to the longest, and the mask of real ids (B, Lt)."""
    Lt = max(1, max(len(t) for t in texts))
    text, tlen = torch.full((len(texts), Lt), pad_id, dtype=torch.long), torch.tensor([len(t) for t in texts])
    for i, t in enumerate(texts):
        text[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
    return text, torch.arange(Lt) < tlen[:, None]


def collate_pairs(videos, texts, pad_id=0):
    """Lists of (k_i, 512) arrays and id lists -> batch tensors (docs/method.md §1), padded to the batch maxima."""
    B, Tv = len(videos), max(1, max(len(v) for v in videos))
    video, vlen = torch.zeros(B, Tv, FEAT_DIM), torch.tensor([len(v) for v in videos])  # (B, Tv, 512)
    for i, v in enumerate(videos):
        video[i, : len(v)] = torch.from_numpy(np.asarray(v, dtype=np.float32))
    text, text_mask = pad_texts(texts, pad_id)  # (B, Lt)
    return {"video": video, "video_mask": torch.arange(Tv) < vlen[:, None],  # (B, Tv)
            "text_ids": text, "text_mask": text_mask}


def _asr_time(x):
    """An ASR start / end as a finite float, else None (null, a string, NaN)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def token_cache(caption_path, tokenizer, cache_dir=None):
    """Tokenise every ASR caption once. With cache_dir, cache as cache_dir/tokens-<hash>.npz, the hash covering
    the caption file's path, size and mtime and the tokenizer's JSON (another vocabulary never reuses a stale
    cache); never beside the captions (datasets may be read-only and shared). The file is written under a
    unique temp name and renamed, so processes building it at once never collide.
    -> dict vids, cap_off (nv+1), start, end (nc), tok_off (nc+1), ids (int32), skipped counts and ids."""
    st = os.stat(_need(caption_path))
    key = hashlib.sha1(f"v2|{os.path.abspath(caption_path)}|{tokenizer.to_str()}|{st.st_size}|{st.st_mtime_ns}"
                       .encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"tokens-{key}.npz") if cache_dir else None
    if path and os.path.exists(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    caps, vids, cap_off, start, end, texts = read_captions(caption_path), [], [0], [], [], []
    bad = Counts({"ASR clips with empty text": 0, "ASR clips with start after end": 0,
                  "ASR clips with negative time": 0, "ASR clips with a missing or non-numeric time": 0,
                  "ASR clips whose text is not a string": 0})
    for vid, c in caps.items():
        for s, e, t in zip(c["start"], c["end"], c["text"]):
            s, e = _asr_time(s), _asr_time(e)
            why = ("ASR clips with a missing or non-numeric time" if s is None or e is None else
                   "ASR clips with negative time" if s < 0 or e < 0 else "ASR clips with start after end"
                   if s > e else "ASR clips whose text is not a string" if not isinstance(t, str) else
                   "ASR clips with empty text" if not t.strip() else None)
            if why:
                bad.skip(why, vid)
                continue
            start.append(s), end.append(e), texts.append(t)
        vids.append(vid), cap_off.append(len(texts))
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []
    lens = np.array([len(x) for x in ids], dtype=np.int64)
    for i in np.flatnonzero(lens == 0):  # text that tokenises to nothing
        bad.skip("ASR clips with empty text", vids[np.searchsorted(cap_off, i, side="right") - 1])
    out = {"vids": np.array(vids, dtype=str), "cap_off": np.array(cap_off, dtype=np.int64),
           "start": np.array(start, dtype=np.float64), "end": np.array(end, dtype=np.float64),
           "tok_off": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
           "ids": np.fromiter((i for x in ids for i in x), dtype=np.int32, count=int(lens.sum())),
           "skipped": np.array([bad[k] for k in sorted(bad)]), "skipped_names": np.array(sorted(bad)),
           "skipped_ids": np.array([f"{k}\t{v}" for k in sorted(bad) for v in bad.examples.get(k, [])], dtype=str)}
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"  # unique: ranks on other nodes share the dir
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **out)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return out


# ----------------------------------------------------------------------------- pre-training (sec. 5.1)

def _howto_paths(data_dir, features=None):
    d = _dataset_dir(data_dir, "howto100m")
    caps = next((p for p in (os.path.join(d, n) for n in ("raw_caption.json", "raw_caption.pkl", "caption.json"))
                 if os.path.exists(p)), os.path.join(d, "raw_caption.json"))
    feats = features or next((p for p in (os.path.join(d, "feats_packed"), os.path.join(d, "feats"))
                              if os.path.isdir(p)), os.path.join(d, "feats"))
    return d, caps, feats


class PretrainData(torch.utils.data.Dataset):
    """HowTo100M clip pairs. An item is one (epoch, video index): clips_per_video clips drawn with an RNG seeded by
    (seed, epoch, video index), so batches do not depend on the number of workers."""

    def __init__(self, data_dir, tokenizer, split="train", clips_per_video=32, min_text=8, max_text=64, seed=0,
                 features=None, val_frac=0.05, cache_dir=None):
        d, cap_path, feat_dir = _howto_paths(data_dir, features)
        self.K, self.min_text, self.max_text, self.seed = clips_per_video, min_text, max_text, seed
        pad = tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        c, self.store = token_cache(cap_path, tokenizer, cache_dir), self.open_store(feat_dir)
        counts = Counts(zip(c["skipped_names"].tolist(), c["skipped"].tolist()))
        for kv in c["skipped_ids"].tolist() if "skipped_ids" in c else []:
            counts.examples.setdefault(kv.split("\t")[0], []).append(kv.split("\t", 1)[1])
        counts.update({"videos without features, skipped": 0, "videos without usable ASR, skipped": 0,
                       "ASR clips starting after the features end, skipped": 0,
                       "ASR clips ran past the features, clipped": 0})
        keep_cap = np.zeros(len(c["start"]), dtype=bool)
        vids, lengths, n_caps = [], [], []
        for i, vid in enumerate(c["vids"].tolist()):
            a, b = c["cap_off"][i], c["cap_off"][i + 1]
            if vid not in self.store:
                counts.skip("videos without features, skipped", vid)
                continue
            T = self.store.length(vid)
            ok = (c["start"][a:b] < T) & (c["tok_off"][a + 1 : b + 1] > c["tok_off"][a:b])  # non-empty tokens
            counts["ASR clips starting after the features end, skipped"] += int((c["start"][a:b] >= T).sum())
            counts["ASR clips ran past the features, clipped"] += int((ok & (c["end"][a:b] > T)).sum())
            if not ok.any():
                counts.skip("videos without usable ASR, skipped", vid)
                continue
            keep_cap[a:b] = ok
            vids.append(vid), lengths.append(T), n_caps.append(int(ok.sum()))
        if len(vids) < 2:
            raise DataError(f"{cap_path}: need >= 2 videos with features in {feat_dir} and ASR, found {len(vids)}")
        n_tok = np.diff(c["tok_off"])
        self.ids = c["ids"][np.repeat(keep_cap, n_tok)]                         # kept tokens, flat
        self.tok_off = np.concatenate([[0], np.cumsum(n_tok[keep_cap])])        # prefix sums of token counts
        self.start, self.end = c["start"][keep_cap], c["end"][keep_cap]
        cap_off = np.concatenate([[0], np.cumsum(n_caps)])
        train, val = _carve(range(len(vids)), val_frac, seed=0)  # fixed held-out videos, whatever `seed`
        if split not in ("train", "val"):
            raise DataError(f"PretrainData: unknown split {split!r} (train, val)")
        sel = train if split == "train" else val
        self.vids = [vids[i] for i in sel]
        self.lengths = np.array([lengths[i] for i in sel])
        self.cap_off = np.stack([cap_off[sel], cap_off[np.array(sel) + 1]], 1)  # (V, 2) caption range per video
        self.report = _report(f"howto100m/{split}", counts)
        self.num_videos, self._loaders = len(self.vids), {}

    open_store = staticmethod(open_features)  # FramePretrainData reads video files instead

    def __len__(self):
        return self.num_videos

    def __getstate__(self):  # workers started with "spawn" get the data, not the cached DataLoaders
        return {k: v for k, v in self.__dict__.items() if k != "_loaders"} | {"_loaders": {}}

    def spans(self, v, epoch):
        """The clips of video v in epoch: (first caption, last caption, target L, video start s, video end e)."""
        rng = np.random.default_rng([self.seed, epoch, 1, v])
        a, b = self.cap_off[v]
        n, T, K = b - a, int(self.lengths[v]), self.K
        st, en = self.start[a:b].tolist(), np.minimum(self.end[a:b], T).tolist()
        cs = (self.tok_off[a : b + 1] - self.tok_off[a]).tolist()  # prefix sums of token counts
        centre, L = rng.integers(0, n, K).tolist(), rng.integers(self.min_text, self.max_text + 1, K).tolist()
        right = (rng.random((K, self.max_text)) < 0.5).tolist()  # each step adds >= 1 token: <= max_text steps
        out = []
        for k in range(K):
            i = j = centre[k]
            r, step = right[k], 0
            while cs[j + 1] - cs[i] < L[k] and en[j] - st[i] < MAX_SPAN and (i > 0 or j < n - 1):
                if (r[step] and j < n - 1) or i == 0:
                    j += 1
                else:
                    i -= 1
                step += 1
            s = min(int(st[i]), T - 1)                           # floor(start)
            e = min(max(math.ceil(en[j]), s + 1), T, s + MAX_VIDEO)  # ceil(end), clipped, the FIRST 32 s
            out.append((a + i, a + j, L[k], s, e))
        return out

    def __getitem__(self, item):
        epoch, v = item
        sp = self.spans(v, epoch)
        feat = self.store[self.vids[v]]                             # (T, 512) memmap
        vlen = np.array([e - s for _, _, _, s, e in sp])
        video = np.zeros((self.K, vlen.max(), FEAT_DIM), np.float32)  # (K, Tv, 512)
        text = np.full((self.K, MAX_TEXT), self.pad_id, np.int64)    # (K, 61)
        tlen, n_trunc = np.zeros(self.K, np.int64), 0
        for k, (i, j, _, s, e) in enumerate(sp):
            video[k, : e - s] = feat[s:e]
            t = self.ids[self.tok_off[i] : self.tok_off[j + 1]]  # concatenated captions i..j
            n_trunc += len(t) > MAX_TEXT
            tlen[k] = min(len(t), MAX_TEXT)
            text[k, : tlen[k]] = t[:MAX_TEXT]                      # keep the FIRST 61 pieces
        return video, vlen, text, tlen, n_trunc

    @staticmethod
    def collate(items):
        B, Tv = sum(len(x[1]) for x in items), max(x[0].shape[1] for x in items)
        vlen, tlen = (torch.from_numpy(np.concatenate([x[i] for x in items])) for i in (1, 3))
        Lt = max(1, int(tlen.max()))
        video, k = torch.zeros(B, Tv, FEAT_DIM), 0  # (B, Tv, 512)
        for x in items:
            video[k : k + len(x[0]), : x[0].shape[1]] = torch.from_numpy(x[0])
            k += len(x[0])
        text = torch.from_numpy(np.concatenate([x[2][:, :Lt] for x in items]))  # (B, Lt)
        return {"video": video, "video_mask": torch.arange(Tv) < vlen[:, None], "text_ids": text,
                "text_mask": torch.arange(Lt) < tlen[:, None], "n_truncated": torch.tensor(sum(x[4] for x in items))}

    def batches_per_epoch(self, batch_videos, world_size=1):
        per_rank = self.num_videos // world_size  # the remainder (< world_size videos) is dropped each epoch
        if per_rank == 0:
            raise DataError(f"PretrainData: {self.num_videos} videos cannot be split over {world_size} ranks")
        return math.ceil(per_rank / batch_videos)

    def batches(self, batch_videos, epoch, rank=0, world_size=1, start_batch=0):
        """Rank `rank`'s batches of (epoch, video) items: a disjoint slice of the epoch's shuffled order."""
        order = np.random.default_rng([self.seed, epoch, 0, 0]).permutation(self.num_videos)
        mine = order[rank : (self.num_videos // world_size) * world_size : world_size].tolist()
        nb = self.batches_per_epoch(batch_videos, world_size)
        return [[(epoch, v) for v in mine[b * batch_videos : (b + 1) * batch_videos]] for b in range(start_batch, nb)]

    def loader(self, batch_videos, epoch, rank=0, world_size=1, start_batch=0, num_workers=0):
        """-> torch DataLoader of batches (B = batch_videos * clips_per_video). Workers persist across
        epochs: the loader is cached and only its batch list changes."""
        key = (batch_videos, rank, world_size, num_workers)
        if key not in self._loaders:
            sampler = _BatchList()
            # its own generator: creating an iterator must not draw from the global torch RNG (which would
            # make a resumed run differ from an uninterrupted one); the clips have their own seeded RNG
            dl = torch.utils.data.DataLoader(self, batch_sampler=sampler, collate_fn=self.collate,
                                             num_workers=num_workers, persistent_workers=num_workers > 0,
                                             generator=torch.Generator().manual_seed(0))
            self._loaders[key] = (sampler, dl)
        sampler, dl = self._loaders[key]
        sampler.batches = self.batches(batch_videos, epoch, rank, world_size, start_batch)
        return dl


def time_loader(pd, batch_videos, num_workers, n_batches):
    """Clips/s of a PretrainData loader: -> (clips, seconds) over n_batches batches after an untimed first one
    (worker start-up), over as many epochs as needed."""
    n, seen, epoch, t0 = 0, -1, 0, None
    while seen < n_batches:
        for b in pd.loader(batch_videos, epoch=epoch, num_workers=num_workers):
            seen += 1
            if seen == 0:
                t0 = time.perf_counter()
            else:
                n += b["video"].shape[0]
            if seen == n_batches:
                break
        epoch += 1
    return n, time.perf_counter() - t0


class _BatchList(torch.utils.data.Sampler):
    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


# ----------------------------------------------------------------------------- raw frames (All-in-One)
# Video files are read with PyAV (an optional extra: requirements-video.txt), imported only when one is read.
# A clip of [start, end) seconds is cut into T equal segments; training takes a random time in each segment,
# evaluation its middle; each chosen frame's short side is resized to S and the centre S x S cropped (as
# MMPT's feature extractor did). The built-in world writes one frame a second, as .mp4 or, without PyAV, as a
# (n, S, S, 3) uint8 .npy (frame i covers second i).

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def _import_av(path):
    try:
        import av
    except ImportError:
        raise ImportError(f"{path}: reading video files needs PyAV, which is not installed: pip install av "
                          f"(or pip install -r requirements-video.txt)") from None
    return av


def sample_times(start, end, T, train, rng=None):
    """T times in [start, end): one per equal segment, random in training, the segment's middle otherwise."""
    if not end > start:
        raise ValueError(f"sample_times: empty clip [{start}, {end})")
    d = (end - start) / T
    u = rng.random(T) if train else np.full(T, 0.5)
    return (start + d * (np.arange(T) + u)).tolist()


def resize_crop(x, size):
    """uint8 (T, h, w, 3) -> uint8 tensor (T, 3, size, size): short side to `size` (bilinear), centre crop."""
    x = torch.as_tensor(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (T, 3, h, w)
    h, w = x.shape[2:]
    if min(h, w) != size:
        sh, sw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
        x = F.interpolate(x.float(), size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
        h, w = sh, sw
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, :, top:top + size, left:left + size].contiguous()


def video_duration(path):
    """Seconds of video in a file (.npy world frames: one a second)."""
    if path.endswith(".npy"):
        return float(np.load(path, mmap_mode="r").shape[0])
    av = _import_av(path)
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise ValueError(f"{path}: no video stream")
            st = c.streams.video[0]
            if st.duration and st.time_base:
                return float(st.duration * st.time_base)
            if c.duration:
                return c.duration / 1e6  # AV_TIME_BASE
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: cannot read video: {e}") from None
    raise ValueError(f"{path}: the container records no duration")


def read_video(path, num_frames=3, size=224, start=None, end=None, train=False, rng=None):
    """T = num_frames frames of [start, end) seconds of a video file -> uint8 tensor (T, 3, size, size).

    .mp4 / .webm / .mkv / ... via PyAV (decoded in one pass from the nearest key frame before `start`; only the
    chosen frames are converted), or a world .npy of (n, S, S, 3) frames. An unreadable, empty or corrupt file
    raises ValueError naming it; never a black frame."""
    start = 0.0 if start is None else float(start)
    end = video_duration(path) if end is None else float(end)
    times = sample_times(start, end, num_frames, train, rng)
    if path.endswith(".npy"):
        try:
            a = np.load(path, mmap_mode="r")
        except Exception as e:
            raise ValueError(f"{path}: cannot read frames: {e}") from None
        if a.ndim != 4 or a.shape[3] != 3 or a.dtype != np.uint8 or len(a) == 0:
            raise ValueError(f"{path}: frames must be non-empty uint8 (n, H, W, 3), got {a.dtype} {a.shape}")
        return resize_crop(a[[min(int(t), len(a) - 1) for t in times]], size)
    av = _import_av(path)
    out, last = [], None
    try:
        with av.open(path) as c:
            st = c.streams.video[0]
            if start > 0:
                c.seek(int(start / st.time_base), stream=st, backward=True)
            for i, f in enumerate(c.decode(st)):
                t = f.time if f.time is not None else i / float(st.average_rate or 1)
                while len(out) < num_frames and last is not None and t > times[len(out)]:
                    out.append(last.to_ndarray(format="rgb24"))  # the frame on screen at that time
                if len(out) == num_frames:
                    break
                last = f
            if last is None:
                raise ValueError(f"{path}: no frames decoded in [{start:.2f}, {end:.2f}) s")
            while len(out) < num_frames:  # times after the last decoded frame: that frame
                out.append(last.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: cannot decode video: {e}") from None
    return resize_crop(np.stack(out), size)


class VideoStore:
    """A directory of video files `<vid>.<ext>` (or world `<vid>.npy` frame arrays); lengths in whole seconds."""

    def __init__(self, root):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: video directory not found")
        self.root, self.paths, self._len = root, {}, {}
        for f in sorted(os.listdir(root)):
            vid, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTS + (".npy",):
                if vid in self.paths:
                    raise ValueError(f"{root}: two files for video {vid!r} ({os.path.basename(self.paths[vid])}, {f})")
                self.paths[vid] = os.path.join(root, f)
        self.ids = sorted(self.paths)

    def __contains__(self, vid):
        return vid in self.paths

    def length(self, vid):
        if vid not in self._len:
            self._len[vid] = max(1, int(video_duration(self.paths[vid]) + 1e-6))
        return self._len[vid]

    def clip(self, vid, start, end, num_frames, size, train=False, rng=None):
        return read_video(self.paths[vid], num_frames, size, start, end, train, rng)  # (T, 3, S, S)


class FramePretrainData(PretrainData):
    """HowTo100M clip pairs with raw frames: PretrainData's clips (same captions, spans and order), each clip's
    video as T frames of its seconds read from DIR/howto100m/videos (or `videos`). Text: at most max_tokens word
    pieces (the first ones; truncations counted in the batch)."""

    def __init__(self, data_dir, tokenizer, split="train", clips_per_video=2, min_text=8, max_text=38, seed=0,
                 videos=None, num_frames=3, frame_size=224, max_tokens=38, cache_dir=None):
        videos = videos or os.path.join(_dataset_dir(data_dir, "howto100m"), "videos")
        if not os.path.isdir(videos):
            raise FileNotFoundError(f"{videos}: no video directory (the built-in world draws one with "
                                    f"python data.py synth --out {data_dir} --size default --video)")
        self.T, self.S, self.max_tokens, self.train = num_frames, frame_size, max_tokens, split == "train"
        super().__init__(data_dir, tokenizer, split, clips_per_video, min_text, max_text, seed, features=videos,
                         cache_dir=cache_dir)

    open_store = staticmethod(VideoStore)

    def __getitem__(self, item):
        epoch, v = item
        rng = np.random.default_rng([self.seed, epoch, 2, v])  # frame choice, independent of the spans' draws
        frames, text, tlen, n_trunc = [], np.full((self.K, self.max_tokens), self.pad_id, np.int64), [], 0
        for k, (i, j, _, s, e) in enumerate(self.spans(v, epoch)):
            frames.append(self.store.clip(self.vids[v], s, e, self.T, self.S, self.train, rng))
            t = self.ids[self.tok_off[i]: self.tok_off[j + 1]]
            n_trunc += len(t) > self.max_tokens
            tlen.append(min(len(t), self.max_tokens))
            text[k, :tlen[-1]] = t[:self.max_tokens]
        return torch.stack(frames), text, np.array(tlen), n_trunc, v  # (K, T, 3, S, S) uint8

    @staticmethod
    def collate(items):
        tlen = torch.from_numpy(np.concatenate([x[2] for x in items]))
        Lt = max(1, int(tlen.max()))
        return {"frames": torch.cat([x[0] for x in items]),  # (B, T, 3, S, S) uint8
                "text_ids": torch.from_numpy(np.concatenate([x[1][:, :Lt] for x in items])),
                "text_mask": torch.arange(Lt) < tlen[:, None], "n_truncated": torch.tensor(sum(x[3] for x in items)),
                "video_index": torch.tensor([x[4] for x in items for _ in range(len(x[0]))])}  # (B,) for VTM pairs


# ----------------------------------------------------------------------------- commands

DATASETS = {"howto100m": "raw_caption.json", "msrvtt": "MSRVTT_data.json", "youcook2":
            "youcookii_annotations_trainval.json", "coin": "COIN.json", "crosstask": "tasks_primary.txt"}


def stats(root):
    found = {n: os.path.join(root, n) for n in DATASETS if os.path.isdir(os.path.join(root, n))}
    found = found or {n: root for n, f in DATASETS.items() if os.path.exists(os.path.join(root, f))}
    if not found:
        raise FileNotFoundError(f"{root}: no dataset found (looked for {', '.join(DATASETS)})")
    for name, d in found.items():
        feat_dir = _howto_paths(d)[2] if name == "howto100m" else os.path.join(d, "feats")
        store = open_features(feat_dir)
        T = [store.length(v) for v in store.ids]
        a = store[store.ids[0]] if store.ids else np.zeros((0, 0))
        print(f"{name}: {len(store.ids)} videos, {sum(T) / 3600:.2f} h, feature dim {a.shape[1]}, {a.dtype} "
              f"({type(store).__name__} {feat_dir})")
        if name == "howto100m":
            caps = read_captions(_howto_paths(d)[1])
            texts = [str(t) for c in caps.values() for t in c["text"]]
            try:  # word pieces with the tokenizer next to the data, else whitespace words
                n_tok, unit = sum(map(len, encode_texts(_tokenizer(d), texts, 10**9)[0])), "tokens"
            except (FileNotFoundError, OSError):
                n_tok, unit = sum(len(t.split()) for t in texts), "words"
            secs = sum(e - s for c in caps.values() for s, e in zip(c["start"], c["end"]))
            print(f"  {len(caps)} captioned videos, {len(texts)} ASR clips, {n_tok / max(secs, 1e-9):.2f} {unit}/s "
                  f"of ASR; pre-training split: {len(caps) - max(1, round(0.05 * len(caps)))} train / "
                  f"{max(1, round(0.05 * len(caps)))} val videos (before skips)")
        elif name == "crosstask":
            print("  " + ", ".join(f"{s} {len(load_crosstask(d, s)[0])}" for s in ("train", "val", "test")) + " videos")
        elif name == "coin":
            recs = {s: load_coin(d, s) for s in ("train", "val", "test")}
            print("  " + ", ".join(f"{s} {len(r[0])}" for s, r in recs.items()) + f" videos, {recs['test'][2]} classes")
        else:
            sp = {s: len(load_retrieval(d, name, s)[0]) for s in ("train", "val", "test")}
            print("  retrieval " + ", ".join(f"{s} {n}" for s, n in sp.items()) +
                  (f"; MC {len(load_mc(d)[0])}" if name == "msrvtt" else " records (one per segment)"))


def _tokenizer(root):
    """The tokenizer next to the data: in DIR itself, or in the directory above a features folder."""
    d = root if glob.glob(os.path.join(root, "tokenizer.json")) + glob.glob(os.path.join(root, "vocab.txt")) \
        else os.path.dirname(os.path.abspath(root))
    return load_tokenizer(d)


def bench(root, workers=(0, 1, 2), batch_videos=8, n_batches=20):
    torch.set_num_threads(1)
    data = PretrainData(root, _tokenizer(root))
    print(f"bench: {data.num_videos} videos, features {type(data.store).__name__} {data.store.root}")
    for w in workers:
        n, dt = time_loader(data, batch_videos, w, n_batches)
        print(f"workers={w}: {n / dt:.0f} clips/s ({n} clips in {dt:.2f} s, batch {batch_videos} videos)")
        data._loaders.clear()  # shut this setting's workers down before timing the next


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write the built-in synthetic world (world.py) in the real layouts")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0, help="world seed")
    s.add_argument("--size", default="tiny", choices=["tiny", "default"], help="world size")
    s.add_argument("--video", action="store_true", help="also draw video frames for the frames model (allinone.py)")
    s.add_argument("--video_pretrain", type=int, default=None, help="with --video: pre-training videos to draw")
    s = sub.add_parser("pack", help="pack a directory of <vid>.npy features into memory-mapped shards")
    s.add_argument("--features", required=True, help="directory of <vid>.npy (T, 512) files")
    s.add_argument("--out", required=True, help="output directory for {split}_meta.pkl and shards")
    s.add_argument("--split", default="train", help="split name used in the shard file names")
    s.add_argument("--videos_per_shard", type=int, default=1000, help="videos per shard file")
    s = sub.add_parser("stats", help="print a few lines per dataset found in DIR")
    s.add_argument("dir", help="world directory or one dataset directory")
    s = sub.add_parser("bench", help="clips/s of the pre-training loader")
    s.add_argument("dir", help="directory with howto100m/ (or a howto100m dir) and tokenizer.json / vocab.txt")
    s.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to time")
    s.add_argument("--batch_videos", type=int, default=8, help="videos per batch (x32 clips)")
    s.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    a = p.parse_args(argv)
    if a.cmd == "synth":
        import world
        video = dict(video=True, video_pretrain=a.video_pretrain) if a.video else {}
        world.synth(a.out, seed=a.seed, size=a.size, **video)
    elif a.cmd == "pack":
        pack(a.features, a.out, a.split, a.videos_per_shard)
    elif a.cmd == "stats":
        stats(a.dir)
    else:
        bench(a.dir, a.workers, a.batch_videos, a.batches)


if __name__ == "__main__":
    cli(main, errors=(DataError,))
