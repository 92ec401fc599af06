"""Readers of the real datasets' files, and the downstream loaders built on them (docs/data_formats.md).

Each read_* parses one file of a public release exactly as it ships (quirks included, see docs/data_formats.md):
HowTo100M `raw_caption.json` (the pre-training ASR, sec. 5.1), MSR-VTT (JSFusion test csv, MSRVTT_data.json,
the 9k / 7k train lists, the MC test csv), YouCook2 / COIN (`database` json), CrossTask (task cards, video lists,
per-video step csv). Each load_* turns a dataset directory into records plus the video store they index
(video.py), for the downstream tasks of sec. 4.1 - 4.5 (docs/method.md §5). The built-in world (world.py)
writes the same layouts. `python data.py stats DIR` prints what these loaders find.

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
"""
import json, math, os, zlib

import numpy as np

from video import Counts, DataError, VideoStore, _load_pickle, _need, _report, open_features


# ----------------------------------------------------------------------------- file readers (docs/data_formats.md)
# One function per file of a release; each checks the structure it relies on and raises DataError naming the file,
# row or key otherwise. They return plain dicts / lists; the load_* functions below pick splits and videos.

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


def read_captions(path):
    """HowTo100M `raw_caption.json` (or a pickle of the same dict) -> {vid: {"start", "end", "text"}}.
    MMPT's `raw_caption.pkl` holds each video's dict as a JSON string: those are decoded too."""
    caps = _load_pickle(path) if path.endswith((".pkl", ".pickle")) else _load_json(path)  # {vid: {...}}
    if not isinstance(caps, dict):
        raise DataError(f"{path}: expected a dict {{video_id: {{start, end, text}}}}, got {type(caps).__name__}")
    for vid, c in caps.items():
        if isinstance(c, (str, bytes)):  # the MMPT pickle's JSON-string values
            try:
                c = caps[vid] = json.loads(c)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: video {vid!r}: value is a string but not JSON: {e.msg}") from None
        if not isinstance(c, dict) or not all(isinstance(c.get(k), (list, tuple)) for k in ("start", "end", "text")):
            got = sorted(c) if isinstance(c, dict) else type(c).__name__
            raise DataError(f"{path}: video {vid!r}: expected lists under 'start', 'end', 'text', got {got}")
        n = {k: len(c.get(k, ())) for k in ("start", "end", "text")}  # one start, end and text per ASR clip
        if len(set(n.values())) != 1:
            raise DataError(f"{path}: video {vid!r}: caption lists of unequal length {n}")
    return caps


def read_howto_csv(path):
    """`HowTo100M_v1.csv` (header video_id,category_1,category_2,rank,task_id) -> {vid: row dict}."""
    with open(_need(path)) as f:
        head = f.readline().strip().split(",")
        if head[:1] != ["video_id"]:
            raise DataError(f"{path}: header must start with video_id, got {head}")
        return {r[0]: dict(zip(head[1:], r[1:])) for r in (l.rstrip("\n").split(",") for l in f) if r[0]}  # by vid


def read_id_list(path):
    """MSRVTT_train.9k.csv / 7k.csv: header `video_id`, one id per row."""
    with open(_need(path)) as f:
        lines = [l.strip() for l in f if l.strip()]
    if not lines or lines[0].split(",")[0] != "video_id":
        raise DataError(f"{path}: expected header 'video_id'")
    return [l.split(",")[0] for l in lines[1:]]  # e.g. ["video0", "video1", ...]


def read_jsfusion(path):
    """MSRVTT_JSFUSION_test.csv: `key,vid_key,video_id,sentence` (no quoting; the sentence may hold commas)."""
    with open(_need(path)) as f:
        head = f.readline().strip().split(",")
        if head != ["key", "vid_key", "video_id", "sentence"]:
            raise DataError(f"{path}: header must be key,vid_key,video_id,sentence, got {head}")
        rows = []
        for i, l in enumerate(f):
            r = l.rstrip("\r\n").split(",", 3)  # split at the first 3 commas only: the rest is the sentence
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
    sents = {}  # 20 captions per video in the release
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
        out.append({"video_id": "video" + key[3:], "candidates": cands, "answer": ans})  # msr7 -> video7
    return out


def read_database(path, ann_key=None):
    """YouCook2 / COIN json -> the `database` dict; each video must hold `subset` and a list under `ann_key`
    (YouCook2 "annotations", COIN "annotation") of dicts with a 2-number `segment`."""
    d = _load_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("database"), dict):
        got = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: expected a top-level key 'database' (a dict of videos), got {got}")
    for vid, x in d["database"].items() if ann_key else ():  # {vid: {"subset", ann_key: [{"segment", ...}]}}
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
        tid, name, _, n, steps = lines[i : i + 5]  # the url is not used
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
                    s, a, b = l.strip().split(",")  # e.g. "1,12.5,17.0"
                    rows.append((int(s), float(a), float(b)))
            except ValueError:
                raise DataError(f"{path}: line {i + 1}: expected step,start,end, got {l.strip()!r}") from None
    return rows


# ----------------------------------------------------------------------------- downstream loaders
# Each load_* returns records (dicts, one per video or segment) and the store (video.py) their video_id index;
# store.report holds the skip / clip counts, printed once as one line. Times are seconds of features (1 per s).

def _subset_split(db, test_subset, name, split):
    """A split's video ids of a YouCook2 / COIN database: train and val carved from its "training" subset (the
    released held-out subset, `test_subset`, is our test), in a fixed order."""
    train, val = _carve([v for v, x in db.items() if x["subset"] == "training"])
    vids = {"train": train, "val": val, "test": sorted(v for v, x in db.items() if x["subset"] == test_subset)}
    if split not in vids:
        raise DataError(f"{name}: unknown split {split!r} (train, val, test)")
    return vids[split]


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
    """The listed videos that have a non-empty feature file (the others counted); DataError when none has."""
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
    """The counts every loader reports, zero or not."""
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
    """YouCook2 segments of a split -> ([{"video_id", "clip_id", "start", "end", "text"}], store)."""
    d = _dataset_dir(data_dir, "youcook2")
    path = os.path.join(d, "youcookii_annotations_trainval.json")
    db, store, counts = read_database(path, "annotations"), open_features(os.path.join(d, "feats")), _counts()
    segs = []
    for vid in _keep(_subset_split(db, "validation", "youcook2", split), store, f"{path} ({split})", counts):
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
    if split == "test":  # the 1k-A test set: one caption per video, 1,000 rows in the release
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
        ids = dict(zip(("train", "val"), _carve(read_id_list(lst))))[split]  # the 10% val carve of the list
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
    recs = []
    for vid in _keep(_subset_split(db, "testing", "coin", split), store, f"{path} ({split})", counts):
        T = store.length(vid)
        labels = np.zeros(T, dtype=np.int64)  # (T,)
        for a in db[vid]["annotation"]:
            s, e = _segment(*a["segment"], f"{path}: video {vid!r} step {a['id']}", T, counts)
            s = min(int(math.floor(s)), T - 1)  # at least one second per segment
            labels[s : max(int(math.ceil(e)), s + 1)] = _step_id(a, f"{path}: video {vid!r}")
        recs.append({"video_id": vid, "labels": labels})
    store.report = _report(f"coin/{split}", counts)
    return recs, store, num_classes


def _crosstask_split(d, tasks, store, split, n_train, counts):
    """-> the (task, video) pairs of a CrossTask split that have features and an annotations/ csv; counts the rest.
    Only primary tasks (tasks_primary.txt) are used; videos.csv also lists the related ones."""
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
    pool = sorted({tv for tv in listed if tv[0] in tasks and tv not in val_set})  # train + test candidates
    train = []
    for task in sorted(tasks):
        cand = [tv for tv in pool if tv[0] == task and usable(tv)]
        perm = np.random.default_rng([0, zlib.crc32(task.encode())]).permutation(len(cand))  # fixed per task
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
    return keep


def load_crosstask(data_dir, split, n_train=30):
    """CrossTask primary tasks -> (records {"task", "video_id", "labels": float32 (T, K)}, tasks, store).
    val = videos_val.csv; train = n_train videos per task (fixed seed); test = the rest. Label [t, k] = 1 when
    second t lies in a segment of step k + 1 (steps are 1-based in the csv), as the CrossTask toolkit marks them."""
    d, counts = _dataset_dir(data_dir, "crosstask"), _counts()
    tasks, store = read_tasks(os.path.join(d, "tasks_primary.txt")), open_features(os.path.join(d, "feats"))
    ann_dir, recs = os.path.join(d, "annotations"), []
    for task, vid in _crosstask_split(d, tasks, store, split, n_train, counts):
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
            labels[s : max(int(math.ceil(e)), s + 1), step - 1] = 1.0  # seconds floor(s)..ceil(e), column k
        recs.append({"task": task, "video_id": vid, "labels": labels})
    store.report = _report(f"crosstask/{split}", counts)
    return recs, tasks, store


def load_captioning(data_dir, split):
    """YouCook2 captioning -> (records {"clip_id", "video_id", "start", "end", "text"}, store)."""
    return _youcook(data_dir, split)
