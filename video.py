"""Video inputs: the S3D feature stores every model reads, and raw video files for the frames model.

A video reaches the model in one of two forms (docs/data_formats.md, "Features" and "Videos"):
- S3D features, one 512-d vector per second (the paper's input, sec. 5.1): a directory of `<vid>.npy` (T, 512)
  files (NpyStore) or packed memory-mapped shards (ShardStore, written by `python data.py pack`);
  open_features picks the right one. Both are lazy: a video's array is mapped on first use, never all at once.
- raw frames (All-in-One, docs/allinone.md): `.mp4` / `.webm` / ... files read with PyAV (VideoStore,
  read_video), or the built-in world's `.npy` frame arrays when PyAV is absent.

DataError (a file that cannot be used) and Counts (skips, printed as one line) live here, at the bottom of the
module graph, because the stores raise DataError; readers.py and data.py import both from here. Nothing in this
file imports another module of this repository. No command of its own: `python data.py stats DIR` shows what the
stores find, `python data.py pack` calls pack.
"""
import glob, os, pickle

import numpy as np
import torch
import torch.nn.functional as F

FEAT_DIM = 512     # S3D feature size: one vector per second of video


# ----------------------------------------------------------------------------- errors and skip counts

class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file and the row / key / video."""


class Counts(dict):
    """Skip / clip counts {reason: n}; `.examples` keeps the first few ids skipped for each reason."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.examples = {}

    def skip(self, reason, vid, n=1):  # count n skips for `reason`, remembering `vid` among the first 3
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


def _need(path):
    """path, or FileNotFoundError naming it (the commands print it as one line)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    return path


def _load_pickle(path):
    """pickle.load that turns any failure into a DataError naming the file."""
    with open(_need(path), "rb") as f:
        try:
            return pickle.load(f)
        except Exception as e:  # truncated, not a pickle, a class that is not importable here
            raise DataError(f"{path}: cannot read pickle (truncated or not a pickle?): {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- S3D features (docs/data_formats.md)

def _check_feat(a, where):
    """a, if it is a finite float (T, 512) array; else DataError naming `where` (checked on every read)."""
    if a.ndim != 2 or a.shape[1] != FEAT_DIM:
        raise DataError(f"{where}: features must be (T, {FEAT_DIM}), got shape {a.shape}")
    if a.dtype.kind != "f":
        raise DataError(f"{where}: features must be a float array, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise DataError(f"{where}: features contain NaN or inf")
    return a


class NpyStore:
    """A directory of `<vid>.npy` files, each (T, 512); read lazily with mmap_mode="r". A store maps a video id
    to its (T, 512) array (`store[vid]`, checked on each read) and `length(vid)` = T seconds without reading it."""

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

    def length(self, vid):  # T, from the .npy header only
        a, path = self._open(vid)
        if a.ndim != 2:
            raise DataError(f"{path}: features must be (T, {FEAT_DIM}), got shape {a.shape}")
        return a.shape[0]


class ShardStore:
    """Packed shards: `{split}_meta.pkl` {k: [vid, ...]}, `{split}_{k}_data.npy` (sum T, 512),
    `{split}_{k}_starts.npy` int64 offsets (one per video plus the end). Shards are memory-mapped on first use."""

    def __init__(self, root):
        self.root, self.where, self._open = root, {}, {}  # where: {vid: (shard name, index in shard)}
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

    def _shard(self, name):  # -> (data (sum T, 512) memmap, starts (n + 1,)), opened once
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

    def _span(self, vid):  # -> (shard data, first row, end row, shard name) of one video
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


def pack(features, out, split="train", videos_per_shard=1000):
    """Stream a directory of `<vid>.npy` into packed shards; each file is written to a temp name and renamed,
    the meta pickle last, so a half-written directory is never detected as shards."""
    src = NpyStore(features)
    if not src.ids:
        raise DataError(f"{features}: no .npy feature files to pack")
    os.makedirs(out, exist_ok=True)
    dtype, meta = src[src.ids[0]].dtype, {}  # the first file's dtype for every shard; meta {k: [vid, ...]}
    for k, i0 in enumerate(range(0, len(src.ids), videos_per_shard)):
        vids = src.ids[i0 : i0 + videos_per_shard]
        lengths = [src.length(v) for v in vids]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n + 1,)
        base = os.path.join(out, f"{split}_{k}")
        tmp = base + "_data.tmp.npy"
        data = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(int(starts[-1]), FEAT_DIM))  # (sum T, 512)
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


# ----------------------------------------------------------------------------- raw frames (All-in-One)
# Video files are read with PyAV (an optional extra: requirements-video.txt), imported only when one is read.
# A clip of [start, end) seconds is cut into T equal segments; training takes a random time in each segment,
# evaluation its middle; each chosen frame's short side is resized to S and the centre S x S cropped (as
# MMPT's feature extractor did). The built-in world writes one frame a second, as .mp4 or, without PyAV, as a
# (n, S, S, 3) uint8 .npy (frame i covers second i).

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def _import_av(path):
    """The `av` module (PyAV), or an ImportError that says how to install it and names the file being read."""
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
    d = (end - start) / T  # segment length in seconds
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
        return resize_crop(a[[min(int(t), len(a) - 1) for t in times]], size)  # frame i covers second i
    av = _import_av(path)
    out, last = [], None  # out: (h, w, 3) uint8 frames, one per time; last: the latest decoded frame
    try:
        with av.open(path) as c:
            st = c.streams.video[0]
            if start > 0:  # to the key frame at or before `start`, then decode forward
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

    def length(self, vid):  # whole seconds (at least 1), as the feature stores count them
        if vid not in self._len:
            self._len[vid] = max(1, int(video_duration(self.paths[vid]) + 1e-6))
        return self._len[vid]

    def clip(self, vid, start, end, num_frames, size, train=False, rng=None):  # see read_video
        return read_video(self.paths[vid], num_frames, size, start, end, train, rng)  # (T, 3, S, S)

