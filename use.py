"""Use a trained model on your own files: embeddings and search, captions, plots, export to Hugging Face BERT.

    python use.py embed     --ckpt out/pretrain/model --videos DIR --out emb/           # DIR/*.npy -> emb/
    python use.py search    --ckpt CKPT --videos DIR --query "cut the onion" --topk 5   # text -> videos
    python use.py search    --ckpt CKPT --videos DIR --queries FILE.csv --emb emb/       # + R@k if FILE names videos
    python use.py match     --ckpt CKPT --video FILE.npy --texts FILE.txt                # video -> texts
    python use.py caption   --ckpt out/finetune/captioning/best.pt --videos FILE_OR_DIR  # beam search (sec. 4.5)
    python use.py plot-log  out/pretrain/log.jsonl --out docs/loss.svg                   # loss curves
    python use.py attention --ckpt CKPT --video FILE.npy --text "..." --mask full --layer 1 --out a.svg  # Fig. 4
    python use.py export-hf --ckpt out/pretrain/model --out hf_dir/                      # transformers.BertModel
    python use.py figures                                                                # docs/*.svg again

CKPT is any checkpoint of this project: a model directory (checkpoint.save_model_dir), a pre-training ckpt.pt
or a fine-tuned best.pt. Videos are S3D feature files (T, 512) .npy for a VLM model (like the evaluation runners, a video longer
than 32 s is represented by its first 32 s, counted and said), and video files (.mp4, .webm, .mkv, ... read with
PyAV, or the world's .npy frame arrays) for an All-in-One frames model (embed, search and match; T frames from T
equal segments of the whole file). Embeddings and scores are
the ones the retrieval evaluation uses: pooled separate passes (footnote 2), dot products.
"""
import argparse
import csv
import json
import os

import numpy as np
import torch
from tqdm import tqdm

import bert
import checkpoint
import data
import plots
import video
from common import amp_setup
from evaluate import as_ranked, encode_text_ids
from masking import TEXT_START, layout
from tokens import load_tokenizer

FEATURE_EXTS = (".npy",)
FRAME_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

# ----------------------------------------------------------------------------------------------------------
# checkpoints and video files


def load_model(path, data_dir="data/world", tokenizer=""):
    """Any project checkpoint -> (VLM in eval mode, tokenizer, the fine-tuned task or None), through checkpoint.py's
    loaders."""
    if not os.path.exists(path):
        raise SystemExit(f"--ckpt {path}: no such file or directory")
    task, tok = None, None
    ck = {}
    if os.path.isfile(path):
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:
            raise SystemExit(f"--ckpt {path}: not a checkpoint of this project ({type(e).__name__}: {e})") from None
    if "task" in ck:  # a fine-tuned best.pt (finetune.py)
        tm = checkpoint.load_finetuned(path)
        model, task, tok = tm.vlm, ck["task"], getattr(tm, "tokenizer", None)
        model.cosine = tm.cosine  # fine-tuned on cosine logits (--temperature): embeddings are unit length
    else:
        model = checkpoint.load_model(path)
    if tokenizer:
        tok = load_tokenizer(tokenizer)
    elif tok is None:
        tok = checkpoint.trained_tokenizer(path, data_dir)
    if tok.get_vocab_size() != model.config.vocab_size:
        raise SystemExit(f"{path}: the tokenizer has {tok.get_vocab_size()} entries, the model's embeddings "
                         f"{model.config.vocab_size}: pass --tokenizer DIR")
    return model.eval(), tok, task


def video_input(model):
    """What a model reads as video: "features" (S3D .npy, VLM) or "frames" (video files, All-in-One)."""
    return "frames" if getattr(model.config, "model", "vlm") == "allinone" else "features"


def frame_spec(model):
    """(T frames a clip, frame size S) of a frames model; None for a features model."""
    return (model.config.num_frames, model.config.frame_size) if video_input(model) == "frames" else None


def read_video(path, kind, frames=None):
    """One video file -> what model.encode_video reads, keyed by file type. Features: float32 (T, 512).
    Frames (frames = (T, S)): uint8 (T, 3, S, S), the middle frame of T equal segments of the whole file."""
    ext = os.path.splitext(path)[1].lower()
    if kind == "frames":  # .mp4 / .webm / ... through PyAV, or a world .npy of (n, S, S, 3) frames
        return video.read_video(path, frames[0], frames[1])  # ValueError naming the file when unreadable
    if kind == "features" and ext in FEATURE_EXTS:
        try:
            a = np.load(path, mmap_mode="r")
        except Exception as e:  # truncated / not an .npy
            raise ValueError(f"{path}: unreadable .npy ({type(e).__name__}: {e})") from None
        return video._check_feat(a, path)
    if kind == "features" and ext in FRAME_EXTS:
        raise SystemExit(f"{path}: this checkpoint is a features model (S3D .npy, (T, 512)); "
                         f"{ext} needs a frames model")
    raise SystemExit(f"{path}: not a video file this model reads (expected {', '.join(FEATURE_EXTS)})")


def list_videos(path, kind):
    """A video file, or a folder's video files (sorted) -> list of paths. Other files are counted and said."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise SystemExit(f"--videos {path}: no such file or folder")
    names = sorted(os.listdir(path))
    exts = FEATURE_EXTS if kind == "features" else FRAME_EXTS + FEATURE_EXTS
    vids = [os.path.join(path, n) for n in names if n.lower().endswith(exts)]
    frames = [n for n in names if n.lower().endswith(FRAME_EXTS)]
    if frames and kind == "features":
        read_video(os.path.join(path, frames[0]), kind)  # the wrong kind of model: one clear line
    if len(vids) < len(names):
        print(f"{path}: {len(names) - len(vids)} files that are not {'/'.join(exts)} videos were ignored")
    if not vids:
        raise SystemExit(f"--videos {path}: no readable videos ({'/'.join(exts)} files) in this folder")
    return vids


def video_id(path):
    return os.path.splitext(os.path.basename(path))[0]


def clip_batches(paths, kind, batch_size, desc="videos", frames=None):
    """Yield (paths, clips) a batch at a time, with a progress bar: each video's first 32 s, as the evaluation
    runners use them. Unreadable files are skipped and named, longer videos counted, one line each at the end."""
    bad, longer, n = [], 0, 0
    for i in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=None):
        kept, clips = [], []
        for p in paths[i:i + batch_size]:
            try:
                feat = read_video(p, kind, frames)
            except ValueError as e:
                bad.append(str(e))
                continue
            if kind == "frames":  # (T, 3, S, S) uint8, sampled over the whole file
                kept.append(p)
                clips.append(feat)
                continue
            longer += len(feat) > data.MAX_VIDEO
            kept.append(p)
            clips.append(np.array(data.clip_features(feat, None, None)))  # (<= 32, 512), read into memory
        n += len(kept)
        if kept:
            yield kept, clips
    if bad:
        print(f"{len(bad)} unreadable videos skipped: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    if not n:
        raise SystemExit(f"no readable videos among {len(paths)} files" + (f" ({bad[0]})" if bad else ""))
    if longer:
        print(f"{longer} of {n} videos are longer than {data.MAX_VIDEO} s: their first {data.MAX_VIDEO} s "
              "are used (the model reads at most 32 video tokens)")


def one_clip(path, kind, frames=None):
    return next(clip_batches([path], kind, 1, frames=frames))[1][0]


# ----------------------------------------------------------------------------------------------------------
# embeddings (footnote 2: video and text through BERT separately, mean-pooled)


def setup_device():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, amp_setup("auto", device)[1]


@torch.no_grad()
def encode_clips(model, clips):
    """Clips (k_i, 512), or frames (T, 3, S, S) -> (N, H) float32 video embeddings (model.encode_video)."""
    device, ctx = setup_device()
    with ctx:
        if video_input(model) == "frames":
            v = model.to(device).encode_video(torch.stack(clips).to(device)).float().cpu()
        else:
            b = data.collate_pairs(clips, [[0]] * len(clips))
            v = model.to(device).encode_video(b["video"].to(device), b["video_mask"].to(device)).float().cpu()
    return as_ranked(model, v)[0]  # unit rows for a model fine-tuned on cosine, as the runners rank


def embed_videos(model, paths, batch_size=64):
    """Video files -> (the readable ones, their (N, H) embeddings), read and encoded a batch at a time."""
    kept, out = [], []
    for ps, clips in clip_batches(paths, video_input(model), batch_size, frames=frame_spec(model)):
        kept += ps
        out.append(encode_clips(model, clips))
    return kept, torch.cat(out)


def tokenize(tok, texts, max_len=data.MAX_TEXT):
    """Content word pieces per text; texts longer than the model reads are truncated, and each is named."""
    ids = [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    long = [i for i, x in enumerate(ids) if len(x) > max_len]
    for i in long[:5]:
        print(f"text {i + 1} has {len(ids[i])} word pieces, the model reads at most {max_len}: truncated to "
              f"{tok.decode(ids[i][:max_len])!r}")
    if len(long) > 5:
        print(f"... {len(long)} texts truncated in all")
    return [x[:max_len] for x in ids]


def embed_texts(model, tok, texts):
    """(N, H) float32 text embeddings (the evaluation runners' own text encoder)."""
    device, ctx = setup_device()
    n = model.config.max_text_len - 2 if video_input(model) == "frames" else data.MAX_TEXT  # [CLS], [SEP] added
    return as_ranked(model, encode_text_ids(model.to(device), tokenize(tok, texts, n), device, ctx))[0]


def save_embeddings(out, ids, emb, ckpt, videos, skipped=()):
    """OUT/embeddings.npy (N, H), OUT/ids.txt (one id a line) and OUT/meta.json (which checkpoint and videos)."""
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "embeddings.npy"), emb.numpy())
    with open(os.path.join(out, "ids.txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"ckpt": ckpt_stamp(ckpt)[0], "ckpt_mtime": ckpt_stamp(ckpt)[1], "videos": os.path.abspath(videos),
                   "count": len(ids), "dim": emb.shape[1], "skipped": sorted(skipped)}, f, indent=1)
    print(f"wrote {len(ids)} embeddings ({emb.shape[1]}-d) to {out}/embeddings.npy and {out}/ids.txt")


def ckpt_stamp(path):
    """(absolute path, modification time of the weights file) identifying a checkpoint's current weights."""
    files = [os.path.join(path, n) for n in ("model.pt", "ckpt.pt")] if os.path.isdir(path) else [path]
    return os.path.abspath(path), max((os.path.getmtime(f) for f in files if os.path.exists(f)), default=0.0)


def cached_embeddings(out, ckpt, ids):
    """The embeddings saved in `out` if they were made by this checkpoint for these video ids, else None."""
    try:
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
        saved = open(os.path.join(out, "ids.txt")).read().split("\n")[:-1]
        emb = np.load(os.path.join(out, "embeddings.npy"))
    except FileNotFoundError:
        return None
    if (meta["ckpt"], meta["ckpt_mtime"]) != ckpt_stamp(ckpt):
        print(f"{out}: made by another checkpoint ({meta['ckpt']}); computing again")
        return None
    if ids is not None and sorted(saved + meta.get("skipped", [])) != sorted(ids):  # unreadable files: skipped again
        print(f"{out}: made for other videos ({len(saved)} saved, {len(ids)} now); computing again")
        return None
    print(f"reusing {len(saved)} video embeddings from {out}")
    return saved, torch.from_numpy(emb)


def video_embeddings(a, model):
    """Video ids and embeddings for --videos, reusing --emb when it matches (and writing it when it does not)."""
    if not a.videos:  # the saved embeddings alone
        hit = cached_embeddings(a.emb, a.ckpt, None) if a.emb else None
        if hit is None:
            raise SystemExit("give --videos FOLDER, or --emb FOLDER written by `embed` with this --ckpt")
        return hit
    paths = list_videos(a.videos, video_input(model))
    ids = [video_id(p) for p in paths]
    if a.emb:
        hit = cached_embeddings(a.emb, a.ckpt, ids)
        if hit is not None:
            return hit
    kept, emb = embed_videos(model, paths, a.batch_size)
    a.skipped = sorted(set(ids) - {video_id(p) for p in kept})
    ids = [video_id(p) for p in kept]
    if a.emb:
        save_embeddings(a.emb, ids, emb, a.ckpt, a.videos, a.skipped)
    return ids, emb


# ----------------------------------------------------------------------------------------------------------
# search (text -> videos) and match (video -> texts)


def read_queries(path, flag="--queries"):
    """A .txt file (one text a line) or a .csv with a `sentence` / `text` / `query` column and optionally a
    `video_id` column (the right answer, as in MSR-VTT's test csv). -> (texts, video ids or None)."""
    if not os.path.exists(path):
        raise SystemExit(f"{flag} {path}: no such file")
    if not path.lower().endswith(".csv"):
        lines = [s.strip() for s in open(path, encoding="utf-8")]
        texts = [s for s in lines if s]
        if len(texts) < len(lines):
            print(f"{path}: {len(lines) - len(texts)} empty lines ignored")
        return texts, None
    rows = list(csv.DictReader(open(path, encoding="utf-8", newline="")))
    col = next((c for c in ("sentence", "text", "query") if rows and c in rows[0]), None)
    if col is None:
        raise SystemExit(f"{path}: needs a 'sentence', 'text' or 'query' column "
                         f"(header: {list(rows[0]) if rows else []})")
    for i, r in enumerate(rows):
        if not (r[col] or "").strip():
            raise SystemExit(f"{path}: row {i + 2} has an empty {col!r}")
    return [r[col] for r in rows], ([r["video_id"] for r in rows] if "video_id" in rows[0] else None)


def ranks_of(sim, gt):
    """1-based rank of each row's right column in the descending order of its scores (ties: lower index first)."""
    order = torch.argsort(sim, dim=1, descending=True, stable=True)  # (N_text, N_video)
    return (order == torch.as_tensor(gt)[:, None]).float().argmax(1) + 1


def search(a):
    model, tok, _ = load_model(a.ckpt, a.data, a.tokenizer)
    texts, answers = list(a.query), None
    if a.queries:
        more, answers = read_queries(a.queries)
        texts, answers = (more, answers) if not texts else (texts + more, None)
    if not texts:
        raise SystemExit("search: give --query TEXT (repeatable) or --queries FILE")
    ids, v = video_embeddings(a, model)
    if a.only_named:
        if answers is None:
            raise SystemExit("--only_named needs a --queries .csv with a video_id column")
        named = set(answers)
        keep = [i for i, x in enumerate(ids) if x in named]
        ids, v = [ids[i] for i in keep], v[keep]
    sim = embed_texts(model, tok, texts) @ v.T  # (N_text, N_video), as in evaluate.run_task
    top = sim.topk(min(a.topk, len(ids)), dim=1)
    for i, t in enumerate(texts[:a.show]):
        print(f"query: {t!r}")
        for s, j in zip(top.values[i].tolist(), top.indices[i].tolist()):
            print(f"  {ids[j]}  {s:.4f}" + ("  <- right" if answers and ids[j] == answers[i] else ""))
    if len(texts) > a.show:
        print(f"... {len(texts) - a.show} more queries not shown (--show)")
    if answers is None:
        return {"ids": ids, "top": top.indices.tolist()}
    where = {x: j for j, x in enumerate(ids)}
    missing = [(i, x) for i, x in enumerate(answers) if x not in where]
    if missing:
        raise SystemExit(f"{a.queries}: row {missing[0][0] + 2} names video {missing[0][1]!r}, which is not among "
                         f"the {len(ids)} videos ({len(missing)} such rows)")
    r = ranks_of(sim, [where[x] for x in answers]).numpy()
    m = {"R1": 100 * float((r <= 1).mean()), "R5": 100 * float((r <= 5).mean()),
         "R10": 100 * float((r <= 10).mean()), "MedR": float(np.median(r))}
    print(f"{len(texts)} queries, {len(ids)} videos: " + " ".join(f"{k} {x:.2f}" for k, x in m.items()))
    return m


def match(a):
    model, tok, _ = load_model(a.ckpt, a.data, a.tokenizer)
    clip = one_clip(a.video, video_input(model), frame_spec(model))
    texts, _ = read_queries(a.texts, "--texts")
    sim = (encode_clips(model, [clip]) @ embed_texts(model, tok, texts).T)[0]  # (N_text,)
    top = sim.topk(min(a.topk, len(texts)))
    print(f"video: {video_id(a.video)}")
    for s, j in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {s:9.4f}  {texts[j]}")
    return [texts[j] for j in top.indices.tolist()]


def embed(a):
    model, _, _ = load_model(a.ckpt, a.data, a.tokenizer)
    a.emb = ""
    ids, v = video_embeddings(a, model)
    save_embeddings(a.out, ids, v, a.ckpt, a.videos, a.skipped)
    return ids, v


# ----------------------------------------------------------------------------------------------------------
# captions (sec. 4.5: beam search with the key/value cache)


@torch.no_grad()
def features_only(model, ckpt, what):
    if video_input(model) != "features":
        raise SystemExit(f"--ckpt {ckpt}: a frames model (All-in-One) has no {what} here; use a VLM checkpoint")


def caption(a):
    model, tok, task = load_model(a.ckpt, a.data, a.tokenizer)
    features_only(model, a.ckpt, "captioning")
    if task != "captioning":
        print(f"note: {a.ckpt} is {'a ' + task + ' checkpoint, not' if task else 'not'} a fine-tuned captioning "
              "checkpoint; its captions come from the MLM head and may be poor (finetune.py --task captioning)")
    device, ctx = setup_device()
    model.to(device)
    out = {}
    for paths, clips in clip_batches(list_videos(a.videos, video_input(model)), video_input(model), a.batch_size,
                                     desc="captions"):
        b = data.collate_pairs(clips, [[0]] * len(clips))
        with ctx:
            gen = model.generate(b["video"].to(device), b["video_mask"].to(device), num_beams=a.beams,
                                 max_length=a.max_length)
        for p, ids in zip(paths, gen):
            out[video_id(p)] = tok.decode(ids)
            print(f"{video_id(p)}: {out[video_id(p)] or '(empty: the model ended the caption at once)'}")
    return out


# ----------------------------------------------------------------------------------------------------------
# attention maps (the paper's Fig. 4) through the explicit softmax path of bert.SelfAttention


@torch.no_grad()
def attention_maps(model, tok, video, text_ids, mask="full"):
    """One video (T, 512) and content ids -> (probs (layers, nh, n, n), token labels) over the n real tokens
    [CLS] v1..vn [SEP] t_1..t_m [SEP] of Eq. 2, under a Fig. 3 mask (full / isolated / caption)."""
    b = data.collate_pairs([video], [text_ids])
    attns = [layer.attn for layer in model.bert.layers]
    for at in attns:
        at.keep_probs = True
    try:
        model(b["video"], b["video_mask"], b["text_ids"], b["text_mask"], attention=mask)
        probs = torch.stack([at.probs[0] for at in attns])  # (layers, nh, T, T)
    finally:
        for at in attns:
            at.keep_probs, at.probs = False, None
    valid = layout(b["video_mask"], b["text_mask"])[0][0]  # (T,) real tokens
    probs = probs[:, :, valid][:, :, :, valid]  # (layers, nh, n, n)
    labels = (["[CLS]"] + [f"v{i + 1}" for i in range(len(video))] + ["[SEP]"]
              + [tok.id_to_token(t) for t in text_ids] + ["[SEP]"])
    return probs, labels


def attention(a):
    model, tok, _ = load_model(a.ckpt, a.data, a.tokenizer)
    features_only(model, a.ckpt, "Fig. 4 attention maps (its rows are per frame)")
    ids = tokenize(tok, [a.text])[0]
    probs, labels = attention_maps(model, tok, one_clip(a.video, video_input(model)), ids, a.mask)
    nl, nh = probs.shape[:2]
    if not 1 <= a.layer <= nl or not 0 <= a.head <= nh:
        raise SystemExit(f"--layer {a.layer} --head {a.head}: this model has layers 1..{nl} and heads 1..{nh} "
                         "(--head 0 = mean over heads)")
    p = probs[a.layer - 1].mean(0) if a.head == 0 else probs[a.layer - 1, a.head - 1]  # (n, n)
    which = "mean over heads" if a.head == 0 else f"head {a.head}"
    title = f"{a.mask} mask, layer {a.layer}, {which}: {video_id(a.video)} + {a.text!r}"
    plots.heatmap(p.tolist(), labels, labels, a.out, title=title[:110])
    print(f"wrote {a.out}: rows attend to columns, {len(labels)} tokens")
    return p


# ----------------------------------------------------------------------------------------------------------
# loss curves from log.jsonl (train.py: step, loss, val_loss; finetune.py: step, loss, val {metric: value})


def read_log(path):
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no such log")
    recs = []
    for n, line in enumerate(open(path), 1):
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON ({e})") from None
    if not recs or any("step" not in r or "loss" not in r for r in recs):
        raise SystemExit(f"{path}: expected JSON lines with 'step' and 'loss' (train.py / finetune.py log.jsonl)")
    return recs


def log_panels(paths):
    """Panel 1: training (and pre-training validation) loss against step; panel 2: fine-tuning validation
    metrics, when a log has them."""
    loss, val = [], []
    for path in paths:
        recs, name = read_log(path), os.path.basename(os.path.dirname(os.path.abspath(path)))
        loss.append((f"{name} train", [r["step"] for r in recs], [r["loss"] for r in recs]))
        vl = [r for r in recs if "val_loss" in r]
        if vl:
            loss.append((f"{name} val", [r["step"] for r in vl], [r["val_loss"] for r in vl]))
        keys = [k for k, x in recs[-1].get("val", {}).items() if isinstance(x, (int, float))]
        val += [(f"{name} {k}", [r["step"] for r in recs if "val" in r], [r["val"][k] for r in recs if "val" in r])
                for k in keys]
    panels = [{"title": "loss", "xlabel": "optimizer step", "ylabel": "loss", "series": loss}]
    if val:
        panels.append({"title": "validation", "xlabel": "optimizer step", "ylabel": "metric", "series": val})
    return panels


def plot_log(a):
    plots.line_chart(log_panels(a.logs), a.out)
    print(f"wrote {a.out}")


# ----------------------------------------------------------------------------------------------------------
# export: the encoder (+ MLM head) as a Hugging Face BERT directory


def hf_state_dict(model):
    """Our weights under BertForMaskedLM's names (bert.hf_name): bert.embeddings.*, bert.encoder.*,
    cls.predictions.*. The video MLP (Eq. 1) has no BERT counterpart and is left out."""
    out = {}
    for k, t in model.state_dict().items():
        if k.startswith("video_mlp."):
            continue
        name = bert.hf_name(k)
        if name == k:
            raise ValueError(f"export: parameter {k} has no Hugging Face name in bert.HF_TO_OURS")
        out[name if name.startswith("cls.") else "bert." + name] = t.detach().cpu().contiguous().clone()
    return out


def hf_config(cfg):
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
            "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "position_embedding_type": "absolute",
            **{k: getattr(cfg, k) for k in keep},
            # how VLM itself places text (Eq. 2): positions from 34, token type 1, then mean pooling
            "vlm_text_first_position": TEXT_START, "vlm_text_token_type": 1}


def save_hf_tokenizer(tok, out):
    """tokenizer.json, vocab.txt (ids in order) and tokenizer_config.json, for BertTokenizer(Fast)."""
    tok.save(os.path.join(out, "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda x: x[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise ValueError("export: the tokenizer's ids are not 0..V-1, cannot write vocab.txt")
    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w, _ in vocab))
    norm = json.loads(tok.to_str()).get("normalizer") or {}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": bool(norm.get("lowercase", True)),
                   "model_max_length": 512, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                   "cls_token": "[CLS]", "mask_token": "[MASK]"}, f, indent=1)


def export_hf(a):
    model, tok, _ = load_model(a.ckpt, a.data, a.tokenizer)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(hf_config(model.config), f, indent=1)
    sd = hf_state_dict(model)
    try:
        from safetensors.torch import save_file
        save_file(sd, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
        weights = "model.safetensors"
    except ImportError:  # safetensors is optional: the .bin layout loads the same
        torch.save(sd, os.path.join(a.out, "pytorch_model.bin"))
        weights = "pytorch_model.bin"
    save_hf_tokenizer(tok, a.out)
    print(f"wrote {a.out}: config.json, {weights} ({len(sd)} tensors; the video MLP is not part of BERT and is "
          "left out), tokenizer.json, vocab.txt, tokenizer_config.json")


# ----------------------------------------------------------------------------------------------------------
# the pictures in docs/, rebuilt from the quick start's outputs


def figures(a):
    """docs/loss.svg (pre-training), docs/finetune.svg (retrieval fine-tuning), docs/attention-full.svg and
    attention-caption.svg (Fig. 4: layer 1, head 1) for the first MSR-VTT-like test video and its caption."""
    os.makedirs(a.out, exist_ok=True)
    plots.line_chart(log_panels([os.path.join(a.pretrain, "log.jsonl")]), os.path.join(a.out, "loss.svg"))
    logs = [os.path.join(a.finetune, n, "log.jsonl") for n in ("retrieval-msrvtt", "retrieval-msrvtt-scratch")]
    logs = [p for p in logs if os.path.exists(p)]
    if logs:  # MSR-VTT-like retrieval fine-tuning, from the pre-trained model and (if run) from scratch
        plots.line_chart(log_panels(logs), os.path.join(a.out, "finetune.svg"))
    row = next(csv.DictReader(open(os.path.join(a.data, "msrvtt", "MSRVTT_JSFUSION_test.csv"))))
    video = os.path.join(a.data, "msrvtt", "feats", row["video_id"] + ".npy")
    cap = os.path.join(a.finetune, "captioning", "best.pt")
    for mask, ckpt in (("full", os.path.join(a.pretrain, "model")),
                       ("caption", cap if os.path.exists(cap) else os.path.join(a.pretrain, "model"))):
        attention(argparse.Namespace(ckpt=ckpt, data=a.data, tokenizer="", video=video, text=row["sentence"],
                                     mask=mask, layer=1, head=1, out=os.path.join(a.out, f"attention-{mask}.svg")))
    print(f"wrote the pictures in {a.out}")


# ----------------------------------------------------------------------------------------------------------
# command line


def _model_cmd(sub, name, help):
    s = sub.add_parser(name, help=help, description=help)
    s.add_argument("--ckpt", required=True, help="model directory (checkpoint.save_model_dir), pre-training ckpt.pt or "
                   "fine-tuned best.pt")
    s.add_argument("--data", default="data/world", help="data directory whose tokenizer is used when the "
                   "checkpoint carries none")
    s.add_argument("--tokenizer", default="", help="tokenizer directory (default: the checkpoint's)")
    return s


def _retrieval_parsers(sub):
    """embed, search, match."""
    s = _model_cmd(sub, "embed", "video embeddings of a folder -> OUT/embeddings.npy + OUT/ids.txt (+ meta.json)")
    s.add_argument("--videos", required=True, help="a folder of videos (.npy S3D features (T, 512)) or one file")
    s.add_argument("--batch_size", type=int, default=64, help="videos per forward pass")
    s.add_argument("--out", required=True, help="output folder")
    s = _model_cmd(sub, "search", "text queries -> the top-k videos and their scores")
    s.add_argument("--videos", default="", help="a folder of videos (.npy S3D features (T, 512)); may be left out "
                   "when --emb holds this checkpoint's embeddings")
    s.add_argument("--batch_size", type=int, default=64, help="videos per forward pass")
    s.add_argument("--emb", default="", help="embedding folder written by `embed`: reused when it was made by "
                   "--ckpt for these videos, else computed and written there")
    s.add_argument("--query", action="append", default=[], help="a query text (repeatable)")
    s.add_argument("--queries", default="", help=".txt (one query a line) or .csv with a sentence/text/query column; "
                   "a video_id column (e.g. MSRVTT_JSFUSION_test.csv) makes search report R@1/5/10 and MedR")
    s.add_argument("--only_named", action="store_true", help="search only the videos the --queries csv names "
                   "(its split's gallery)")
    s.add_argument("--topk", type=int, default=5, help="videos listed per query")
    s.add_argument("--show", type=int, default=10, help="print the top-k of at most this many queries")
    s = _model_cmd(sub, "match", "one video -> the best-matching texts of a list")
    s.add_argument("--video", required=True, help="video file (.npy S3D features)")
    s.add_argument("--texts", required=True, help=".txt file, one text a line (or a .csv with a sentence/text column)")
    s.add_argument("--topk", type=int, default=5, help="texts listed")


def parser():
    p = argparse.ArgumentParser(description="Use a trained model: embeddings and search over video files, captions, "
                                "plots of logs and attention, export to a Hugging Face BERT directory.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _retrieval_parsers(sub)
    s = _model_cmd(sub, "caption", "beam-search captions (sec. 4.5) for a video file or a folder, one line per video")
    s.add_argument("--videos", required=True, help="a video file or a folder of them (.npy S3D features)")
    s.add_argument("--beams", type=int, default=5, help="beam width (1 = greedy)")
    s.add_argument("--max_length", type=int, default=24, help="positions incl. the 3 prompt tokens (at most 21 "
                   "generated)")
    s.add_argument("--batch_size", type=int, default=32, help="videos decoded together")
    s = _model_cmd(sub, "attention", "attention map of one layer (one head or the mean) for a video + text, as SVG")
    s.add_argument("--video", required=True, help="video file (.npy S3D features; its first 32 s)")
    s.add_argument("--text", required=True, help="the text placed after the video (Eq. 2)")
    s.add_argument("--mask", default="full", choices=["full", "isolated", "caption"], help="Fig. 3 attention mask")
    s.add_argument("--layer", type=int, default=1, help="layer, 1-based as in the paper's Fig. 4")
    s.add_argument("--head", type=int, default=0, help="head, 1-based; 0 = the mean over heads")
    s.add_argument("--out", default="attention.svg", help="output .svg")
    s = _model_cmd(sub, "export-hf", "the BERT part as a Hugging Face directory (transformers.BertModel)")
    s.add_argument("--out", required=True, help="output folder")
    s = sub.add_parser("plot-log", help="loss and validation curves of log.jsonl files as SVG",
                       description="loss and validation curves of train.py / finetune.py log.jsonl files as SVG")
    s.add_argument("logs", nargs="+", help="log.jsonl files (several are drawn together)")
    s.add_argument("--out", default="loss.svg", help="output .svg")
    s = sub.add_parser("figures", help="rebuild the README's pictures (docs/*.svg) from the quick start's outputs",
                       description="rebuild docs/*.svg from the quick start's outputs")
    s.add_argument("--pretrain", default="out/pretrain", help="train.py output folder (log.jsonl, model/)")
    s.add_argument("--finetune", default="out/finetune", help="finetune.py output folder (optional parts)")
    s.add_argument("--data", default="data/world", help="data directory (the picture's test video)")
    s.add_argument("--out", default="docs", help="output folder")
    return p


COMMANDS = {"embed": embed, "search": search, "match": match, "caption": caption, "attention": attention,
            "export-hf": export_hf, "plot-log": plot_log, "figures": figures}


def main(argv=None):
    a = parser().parse_args(argv)
    return COMMANDS[a.cmd](a)


if __name__ == "__main__":
    main()
