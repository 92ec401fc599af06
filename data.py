"""Data: the pre-training clip sampler (sec. 5.1), its token cache, and the batches every model reads.

Implements the pre-training data of the paper (sec. 5.1, docs/method.md §4): from each HowTo100M video, 32 clip
pairs per visit; a clip is a random ASR caption extended with neighbouring captions (left or right at random) until a
target length L ~ U{8..64} text tokens is reached or the span reaches 256 s; its video is the seconds
floor(start)..ceil(end), at most the FIRST 32 of them. The dataset files are parsed by readers.py and the video
side (S3D features, raw frames) is read by video.py; every layout is the one of docs/data_formats.md.

Commands (the built-in world has its own: python world.py --out data/world):
    python data.py pack --features DIR/howto100m/feats --out DIR/howto100m/feats_packed
    python data.py stats DIR                                  # a few lines per dataset found
    python data.py bench DIR --workers 0 1 2                  # clips/s of the pre-training loader
"""
import argparse, glob, hashlib, math, os, time

import numpy as np
import torch

from common import cli
from readers import _carve, _dataset_dir, load_coin, load_crosstask, load_mc, load_retrieval, read_captions
from tokens import load_tokenizer
from video import FEAT_DIM, Counts, DataError, VideoStore, _need, _report, open_features, pack

MAX_VIDEO = 32     # seconds of video per example
MAX_TEXT = 61      # content word pieces per example (96 - 32 - 3)
MAX_SPAN = 256.0   # seconds: stop extending a pre-training clip once its captions span this much


# ----------------------------------------------------------------------------- pre-training clips (sec. 5.1)
# PretrainData draws the clips; FramePretrainData the same clips as raw frames; token_cache tokenises once.

def _howto_paths(data_dir, features=None):
    """-> (howto100m dir, caption file, feature dir): packed shards preferred over `feats/` (docs/data_formats.md)."""
    d = _dataset_dir(data_dir, "howto100m")
    caps = next((p for p in (os.path.join(d, n) for n in ("raw_caption.json", "raw_caption.pkl", "caption.json"))
                 if os.path.exists(p)), os.path.join(d, "raw_caption.json"))
    feats = features or next((p for p in (os.path.join(d, "feats_packed"), os.path.join(d, "feats"))
                              if os.path.isdir(p)), os.path.join(d, "feats"))
    return d, caps, feats


class PretrainData(torch.utils.data.Dataset):
    """HowTo100M clip pairs (sec. 5.1). An item is one (epoch, video index): clips_per_video clips drawn with an RNG
    seeded by (seed, epoch, video index), so batches do not depend on the number of workers. Per video: its caption
    range `cap_off` (V, 2) into the flat `start`, `end` (s) and `tok_off` (token offsets into the flat `ids`)."""

    def __init__(self, data_dir, tokenizer, split="train", clips_per_video=32, min_text=8, max_text=64, seed=0,
                 features=None, val_frac=0.05, cache_dir=None):
        d, cap_path, feat_dir = _howto_paths(data_dir, features)
        self.K, self.min_text, self.max_text, self.seed = clips_per_video, min_text, max_text, seed
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0  # 0 when the vocabulary has no [PAD]
        c, self.store = token_cache(cap_path, tokenizer, cache_dir), self.open_store(feat_dir)  # flat arrays
        counts = Counts(zip(c["skipped_names"].tolist(), c["skipped"].tolist()))
        for kv in c["skipped_ids"].tolist() if "skipped_ids" in c else []:
            counts.examples.setdefault(kv.split("\t")[0], []).append(kv.split("\t", 1)[1])
        counts.update({"videos without features, skipped": 0, "videos without usable ASR, skipped": 0,
                       "ASR clips starting after the features end, skipped": 0,
                       "ASR clips ran past the features, clipped": 0})
        keep_cap = np.zeros(len(c["start"]), dtype=bool)  # (n captions,): usable ASR clips of kept videos
        vids, lengths, n_caps = [], [], []
        for i, vid in enumerate(c["vids"].tolist()):
            a, b = c["cap_off"][i], c["cap_off"][i + 1]  # this video's captions a..b-1
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
        sel = train if split == "train" else val  # indices into the kept videos
        self.vids, self.lengths = [vids[i] for i in sel], np.array([lengths[i] for i in sel])  # (V,) seconds
        self.cap_off = np.stack([cap_off[sel], cap_off[np.array(sel) + 1]], 1)  # (V, 2) caption range per video
        self.report = _report(f"howto100m/{split}", counts)
        self.num_videos, self._loaders = len(self.vids), {}

    open_store = staticmethod(open_features)  # FramePretrainData reads video files instead

    def __len__(self):
        return self.num_videos

    def __getstate__(self):  # workers started with "spawn" get the data, not the cached DataLoaders
        return {k: v for k, v in self.__dict__.items() if k != "_loaders"} | {"_loaders": {}}

    def spans(self, v, epoch):
        """The clips of video v in epoch: (first caption, last caption, target L, video start s, video end e).
        Sec. 5.1: start at a random caption and add the left or right neighbour until L tokens or 256 s."""
        rng = np.random.default_rng([self.seed, epoch, 1, v])
        a, b = self.cap_off[v]
        n, T, K = b - a, int(self.lengths[v]), self.K
        st, en = self.start[a:b].tolist(), np.minimum(self.end[a:b], T).tolist()
        cs = (self.tok_off[a : b + 1] - self.tok_off[a]).tolist()  # prefix sums of token counts
        centre, L = rng.integers(0, n, K).tolist(), rng.integers(self.min_text, self.max_text + 1, K).tolist()
        right = (rng.random((K, self.max_text)) < 0.5).tolist()  # each step adds >= 1 token: <= max_text steps
        out = []
        for k in range(K):
            i = j = centre[k]  # the span is captions i..j (local indices)
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
        return video, vlen, text, tlen, n_trunc  # vlen, tlen (K,): real lengths before padding

    @staticmethod
    def collate(items):  # items of K clips -> B = items x K pairs, padded to the batch's longest video / text
        B, Tv = sum(len(x[1]) for x in items), max(x[0].shape[1] for x in items)
        vlen, tlen = (torch.from_numpy(np.concatenate([x[i] for x in items])) for i in (1, 3))  # (B,) each
        Lt = max(1, int(tlen.max()))
        video, k = torch.zeros(B, Tv, FEAT_DIM), 0  # (B, Tv, 512)
        for x in items:
            video[k : k + len(x[0]), : x[0].shape[1]] = torch.from_numpy(x[0])
            k += len(x[0])
        text = torch.from_numpy(np.concatenate([x[2][:, :Lt] for x in items]))  # (B, Lt)
        return {"video": video, "video_mask": torch.arange(Tv) < vlen[:, None], "text_ids": text,
                "text_mask": torch.arange(Lt) < tlen[:, None], "n_truncated": torch.tensor(sum(x[4] for x in items))}

    def batches_per_epoch(self, batch_videos, world_size=1):  # the same number on every rank
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


class _BatchList(torch.utils.data.Sampler):  # the batches `loader` sets each epoch; the DataLoader persists
    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class FramePretrainData(PretrainData):
    """HowTo100M clip pairs with raw frames: PretrainData's clips (same captions, spans and order), each clip's
    video as T frames of its seconds read from DIR/howto100m/videos (or `videos`). Text: at most max_tokens word
    pieces (the first ones; truncations counted in the batch)."""

    def __init__(self, data_dir, tokenizer, split="train", clips_per_video=2, min_text=8, max_text=38, seed=0,
                 videos=None, num_frames=3, frame_size=224, max_tokens=38, cache_dir=None):
        videos = videos or os.path.join(_dataset_dir(data_dir, "howto100m"), "videos")
        if not os.path.isdir(videos):
            raise FileNotFoundError(f"{videos}: no video directory (the built-in world draws one with "
                                    f"python world.py --out {data_dir} --size default --video)")
        self.T, self.S, self.max_tokens, self.train = num_frames, frame_size, max_tokens, split == "train"
        super().__init__(data_dir, tokenizer, split, clips_per_video, min_text, max_text, seed, features=videos,
                         cache_dir=cache_dir)

    open_store = staticmethod(VideoStore)

    def __getitem__(self, item):
        epoch, v = item
        rng = np.random.default_rng([self.seed, epoch, 2, v])  # frame choice, independent of the spans' draws
        frames, text, tlen, n_trunc = [], np.full((self.K, self.max_tokens), self.pad_id, np.int64), [], 0
        for k, (i, j, _, s, e) in enumerate(self.spans(v, epoch)):
            frames.append(self.store.clip(self.vids[v], s, e, self.T, self.S, self.train, rng))  # (T, 3, S, S)
            t = self.ids[self.tok_off[i]: self.tok_off[j + 1]]  # captions i..j, as in PretrainData
            n_trunc += len(t) > self.max_tokens
            tlen.append(min(len(t), self.max_tokens))
            text[k, :tlen[-1]] = t[:self.max_tokens]
        return torch.stack(frames), text, np.array(tlen), n_trunc, v  # (K, T, 3, S, S) uint8

    @staticmethod
    def collate(items):
        tlen = torch.from_numpy(np.concatenate([x[2] for x in items]))  # (B,)
        Lt = max(1, int(tlen.max()))
        return {"frames": torch.cat([x[0] for x in items]),  # (B, T, 3, S, S) uint8
                "text_ids": torch.from_numpy(np.concatenate([x[1][:, :Lt] for x in items])),
                "text_mask": torch.arange(Lt) < tlen[:, None], "n_truncated": torch.tensor(sum(x[3] for x in items)),
                "video_index": torch.tensor([x[4] for x in items for _ in range(len(x[0]))])}  # (B,) for VTM pairs


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
    st = os.stat(_need(caption_path))  # nc = ASR clips kept, nv = videos; offsets index the flat arrays
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
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []  # no [CLS]
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


# ----------------------------------------------------------------------------- batches (docs/method.md §1)

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


def clip_features(feat, start, end, max_len=MAX_VIDEO):
    """Seconds floor(start)..ceil(end) of feat clipped to T, the FIRST max_len of them -> float32 (k, 512)."""
    T = feat.shape[0]
    s = 0 if start is None else min(max(int(math.floor(start)), 0), T - 1)
    e = T if end is None else min(int(math.ceil(end)), T)
    e = min(max(e, s + 1), s + max_len)
    return np.asarray(feat[s:e], dtype=np.float32)  # (k, 512)


# ----------------------------------------------------------------------------- commands

DATASETS = {"howto100m": "raw_caption.json", "msrvtt": "MSRVTT_data.json", "youcook2":
            "youcookii_annotations_trainval.json", "coin": "COIN.json", "crosstask": "tasks_primary.txt"}


def stats(root):
    """`python data.py stats DIR`: videos, hours and feature dim per dataset found, then its records per split."""
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


def bench(root, workers=(0, 1, 2), batch_videos=8, n_batches=20):
    """`python data.py bench DIR`: clips/s of the pre-training loader for each DataLoader worker count."""
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
    s = sub.add_parser("pack", help="pack a directory of <vid>.npy features into memory-mapped shards")
    s.add_argument("--features", required=True, help="directory of <vid>.npy (T, 512) files")
    s.add_argument("--out", required=True, help="output directory for {split}_meta.pkl and shards")
    s.add_argument("--split", default="train", help="split name used in the shard file names")
    s.add_argument("--videos_per_shard", type=int, default=1000, help="videos per shard file")
    sub.add_parser("stats", help="print a few lines per dataset found in DIR").add_argument(
        "dir", help="world directory or one dataset directory")
    s = sub.add_parser("bench", help="clips/s of the pre-training loader")
    s.add_argument("dir", help="directory with howto100m/ (or a howto100m dir) and tokenizer.json / vocab.txt")
    s.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to time")
    s.add_argument("--batch_videos", type=int, default=8, help="videos per batch (x32 clips)")
    s.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    a = p.parse_args(argv)
    if a.cmd == "pack":
        pack(a.features, a.out, a.split, a.videos_per_shard)
    elif a.cmd == "stats":
        stats(a.dir)
    else:
        bench(a.dir, a.workers, a.batch_videos, a.batches)


if __name__ == "__main__":
    cli(main, errors=(DataError,))
