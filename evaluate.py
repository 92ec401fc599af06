"""Evaluation of VLM on the five downstream tasks (paper sec. 4, Tables 2-7; docs/method.md §5, §7).

One runner per task turns a model into the arrays that metrics.py scores. The same runners serve finetune.py's
model selection (split "val") and the final test numbers (split "test"):
  - retrieval (sec. 4.1): pooled text vs pooled video from separate passes        -> run_task("retrieval")
  - qa (sec. 4.4): the video against its 5 candidate answers (val: video -> text)   -> run_task("qa")
  - segmentation (sec. 4.2): the classifier on every video token, 32 s windows      -> run_task("segmentation")
  - localization (sec. 4.3): frame x step dot products, log-softmax, ordered DP     -> run_task("localization")
  - captioning (sec. 4.5): next-token loss (val) or beam search + COCO metrics      -> run_captioning
  - All-in-One's raw frames (allinone.py, docs/allinone.md): retrieval and qa       -> run_frames_task
Grounding probes of a pre-trained model are in probes.py; the results table and yardsticks in experiments.py.

  python evaluate.py --task retrieval --ckpt out/finetune/retrieval-youcook2/best.pt --data data/world
  python evaluate.py --task retrieval --zero_shot --ckpt out/pretrain/model --dataset msrvtt
  python evaluate.py --task captioning --ckpt out/finetune/captioning/best.pt --show 5

Tests: python -m pytest -q tests/test_finetune.py tests/test_released_eval.py tests/test_probes.py
"""
import argparse
import json
import os
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

import data
import readers
from checkpoint import CheckpointError, load_finetuned, load_model, trained_tokenizer
from common import amp_setup, cli, flag_type
from tokens import load_tokenizer
from metrics import (caption_metrics, frame_accuracy, localization_recall, mc_accuracy, paper_scale,
                     retrieval_metrics, step_log_probs, window_average, windows)

# the validation number finetune.py keeps the best epoch by (captioning: the lowest loss)
SELECT = {"retrieval": "R1", "qa": "R1", "segmentation": "acc", "localization": "recall", "captioning": "loss"}

# paper Tables 2-7 (real datasets), printed beside our numbers on the built-in world (experiments.py's table too)
PAPER = {"retrieval-msrvtt": {"R1": 28.10, "R5": 55.50, "R10": 67.40, "MedR": 4},
         "retrieval-youcook2": {"R1": 27.05, "R5": 56.88, "R10": 69.38, "MedR": 4},
         "segmentation": {"acc": 68.39}, "localization": {"recall": 46.5}, "localization-zero-shot": {"recall": 28.5},
         "qa": {"acc": 91.64},
         "captioning": {"BLEU-3": 17.78, "BLEU-4": 12.27, "METEOR": 18.22, "ROUGE-L": 41.51, "CIDEr": 1.3869}}


# -----------------------------------------------------------------------------------------------------------
# encoding: separate video and text passes (footnote 2; equal to the isolated joint pass, docs/method.md §7)


def record_clip(store, rec, max_len=32):
    """Features of a record's clip (whole video when start/end are None), first max_len seconds, float32.
    store[video_id]: (T, 512) per-second features (docs/data_formats.md) -> (min(end - start, max_len), 512)."""
    feat = store[rec["video_id"]]
    start = 0 if rec.get("start") is None else rec["start"]
    end = len(feat) if rec.get("end") is None else rec["end"]
    return data.clip_features(feat, start, end, max_len=max_len)


def _batches(n, size):
    """Slices cutting range(n) into consecutive batches of at most `size`."""
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def encode_videos(vlm, clips, device, ctx, batch_size=128):
    """Pooled video vectors from separate video passes (footnote 2): (N, H) float32 on CPU.
    clips: N arrays (T_i, 512), padded per batch by data.collate_pairs; the isolated mask of Fig. 3, video only."""
    out = []
    for sl in _batches(len(clips), batch_size):
        b = data.collate_pairs(clips[sl], [[0]] * len(clips[sl]))  # video (B, Tv, 512); a dummy text
        with ctx:
            out.append(vlm.encode_video(b["video"].to(device), b["video_mask"].to(device)).float().cpu())  # (B, H)
    return torch.cat(out)


@torch.no_grad()
def encode_text_ids(vlm, ids, device, ctx, batch_size=256):
    """Pooled text vectors from separate text passes: (N, H) float32 on CPU.
    ids: N lists of word-piece ids (no [CLS] / [SEP]: the model's sequence of Eq. 2 adds them), from _tokenize."""
    out = []
    empty = np.zeros((1, 512), np.float32)  # a one-second dummy video, never attended to by encode_text
    for sl in _batches(len(ids), batch_size):
        b = data.collate_pairs([empty] * len(ids[sl]), ids[sl])  # text_ids (B, Lt)
        with ctx:
            out.append(vlm.encode_text(b["text_ids"].to(device), b["text_mask"].to(device)).float().cpu())  # (B, H)
    return torch.cat(out)


@torch.no_grad()
def frame_outputs(vlm, feat, fn, device, ctx, stride=16, size=32):
    """Run fn(states (W, 32, H)) over 32 s windows of a whole video and average overlapping seconds
    (metrics.windows / window_average, docs/method.md §7): feat (T, 512) -> (T, C) numpy.
    fn maps the last layer's video states to per-second outputs: the classifier, or the frame x step scores."""
    feat = np.asarray(feat, dtype=np.float32)
    starts = windows(len(feat), size=size, stride=stride)
    b = data.collate_pairs([feat[s:s + size] for s in starts], [[0]] * len(starts))  # video (W, 32, 512)
    with ctx:
        h = vlm.video_states(b["video"].to(device), b["video_mask"].to(device))[:, :b["video_mask"].shape[1]]
        out = fn(h).float().cpu().numpy()  # (W, 32, H) states -> (W, 32, C)
    lens = b["video_mask"].sum(1).tolist()  # real seconds of each window (the last may be shorter)
    return window_average([o[:n] for o, n in zip(out, lens)], starts, len(feat))


def _tokenize(tok, texts, max_len=61):
    """Word-piece ids of each text (data.encode_texts), saying how many were cut to max_len.
    61 = data.MAX_TEXT: the 96-token sequence of Eq. 2 less 32 video seconds and 3 special tokens."""
    ids, n = data.encode_texts(tok, texts, max_len=max_len)
    if n:
        print(f"{n} texts were longer than {max_len} word pieces and were truncated")
    return ids


# -----------------------------------------------------------------------------------------------------------
# evaluation runners: one function per task, shared by finetune.py (validation) and the command line (test).
# Each takes (task, model, data_dir, split, tok, dataset, device, ctx, show) and returns {metric: value}.
def as_ranked(model, *xs):
    """xs as the runners rank them: unit rows for a model fine-tuned on cosine logits (--temperature sets
    model.cosine), else unchanged (the paper's raw dot products)."""
    return tuple(F.normalize(x, dim=-1) for x in xs) if getattr(model, "cosine", False) else xs


# `model` is a fine-tuned vlm.TaskModel (.vlm, .head, .cosine) or a bare VLM (zero-shot); `show` prints that
# many worked examples (paper Tables 10-11). Test splits give the paper's numbers, val splits finetune.py's
# selection number (SELECT). Video features: (T, 512) per second (docs/data_formats.md); H = hidden size.


def _retrieval(task, model, data_dir, split, tok, dataset, device, ctx, show):
    """Text -> video R@k / MedR (sec. 4.1); for qa's validation (the MC set has no val split) video -> text.
    MSR-VTT-like or YouCook2-like (`dataset`); one query per clip, its first caption, against every clip."""
    vlm = getattr(model, "vlm", model)
    dataset = "msrvtt" if task == "qa" else dataset
    recs, store = readers.load_retrieval(data_dir, dataset, split)
    if not recs:
        raise SystemExit(f"{data_dir}: the {dataset} {split} split is empty")
    texts = [r["texts"][0] for r in recs]  # the first caption of each clip is its query
    v = encode_videos(vlm, [record_clip(store, r) for r in recs], device, ctx)  # (N, H)
    t = encode_text_ids(vlm, _tokenize(tok, texts), device, ctx)  # (N, H)
    t, v = as_ranked(model, t, v)  # cosine when fine-tuned with --temperature
    sim = t @ v.T  # (N_text, N_video): one similarity matrix from separate passes
    # qa is selected on video -> text retrieval (the multiple-choice set has no validation split)
    m = retrieval_metrics(sim.T if task == "qa" else sim)
    for i in range(min(show, len(recs))):
        j = int(sim[i].argmax())
        print(f"query: {texts[i]!r}\n  top-1: {recs[j]['video_id']} ({texts[j]!r})"
              f" {'RIGHT' if j == i else 'wrong'}")
    return m


def _qa(task, model, data_dir, split, tok, dataset, device, ctx, show):
    """Multiple-choice accuracy on MSR_MC_test (sec. 4.4): the video's dot product with each of 5 answers.
    No new head: the answers are ranked as retrieval ranks captions (metrics.mc_accuracy; ties are wrong)."""
    if split != "test":
        return _retrieval(task, model, data_dir, split, tok, dataset, device, ctx, show)
    vlm = getattr(model, "vlm", model)
    recs, store = readers.load_mc(data_dir)
    if not recs:
        raise SystemExit(f"{data_dir}: the multiple-choice test set is empty")
    v = encode_videos(vlm, [record_clip(store, r) for r in recs], device, ctx)  # (N, H)
    cands = [c for r in recs for c in r["candidates"]]
    t = encode_text_ids(vlm, _tokenize(tok, cands), device, ctx).view(len(recs), 5, -1)  # (N * 5, H) -> (N, 5, H)
    t, v = as_ranked(model, t, v)
    scores = torch.einsum("nh,nkh->nk", v, t).numpy()  # (N, 5)
    answers = np.array([r["answer"] for r in recs])
    for i in range(min(show, len(recs))):
        c = recs[i]["candidates"]
        print(f"video {recs[i]['video_id']}: chose {c[scores[i].argmax()]!r}, answer {c[answers[i]]!r}")
    return {"acc": mc_accuracy(scores, answers)}


def _segmentation(task, model, data_dir, split, tok, dataset, device, ctx, show):
    """COIN frame accuracy (sec. 4.2): the fine-tuned classifier on every second, windows averaged.
    Needs finetune.py's head (hidden size -> classes); its class count must match the data's."""
    vlm, head = getattr(model, "vlm", model), getattr(model, "head", None)
    recs, store, num_classes = readers.load_coin(data_dir, split)
    if head is None:
        raise SystemExit("segmentation needs a fine-tuned checkpoint with its classifier (finetune.py)")
    if head.out_features != num_classes:
        raise SystemExit(f"checkpoint classifier has {head.out_features} classes, {data_dir} has "
                         f"{num_classes}")
    preds, labels = [], []
    # the features are cut to the labelled seconds; every second is classified (background = class 0)
    for r in recs:
        logits = frame_outputs(vlm, store[r["video_id"]][:len(r["labels"])], head, device, ctx)  # (T, classes)
        preds.append(logits.argmax(-1))  # (T,)
        labels.append(np.asarray(r["labels"]))
    return frame_accuracy(preds, labels)


def _localization(task, model, data_dir, split, tok, dataset, device, ctx, show):
    """CrossTask average recall (sec. 4.3; zero-shot or fine-tuned): each step text encoded alone.
    Scoring as the released evaluators (docs/method.md §7): window-averaged scores, log-softmax, ordered DP."""
    vlm = getattr(model, "vlm", model)
    recs, tasks, store = readers.load_crosstask(data_dir, split)
    step_emb = {k: encode_text_ids(vlm, _tokenize(tok, t["steps"]), device, ctx).to(device)  # (K, H) per task
                for k, t in tasks.items()}
    out = []
    for r in recs:
        emb = step_emb[r["task"]]  # (K, H)
        # sec. 4.3: frame x step dot products; raw scores averaged over windows, then log-softmax
        raw = frame_outputs(vlm, store[r["video_id"]][:len(r["labels"])],
                            lambda h: h.float() @ emb.T.float(), device, ctx)  # (T, K)
        out.append({"task": r["task"], "scores": step_log_probs(raw), "labels": r["labels"]})
    return {"recall": localization_recall(out)}


def _captioning(task, model, data_dir, split, tok, dataset, device, ctx, show):
    """YouCook2 captioning (sec. 4.5): run_captioning on the model's encoder (captioning needs no new head)."""
    return run_captioning(getattr(model, "vlm", model), data_dir, split, tok, device, ctx, show)


# task name -> runner; qa's runner hands its validation split to _retrieval (video -> text)
RUNNERS = {"retrieval": _retrieval, "qa": _qa, "segmentation": _segmentation, "localization": _localization,
           "captioning": _captioning}


def run_task(task, model, data_dir, split, tok, dataset="youcook2", device="cpu", ctx=nullcontext(), show=0):
    """Evaluate `task` on one split; model is a fine-tuned TaskModel or a bare VLM (zero-shot). The model is
    put in eval mode for the run and given back in the mode it came in.
    -> {metric: value} (percent, CIDEr unscaled; captioning val: {"loss"}), as the paper's Tables 2-7."""
    vlm = getattr(model, "vlm", model)
    was_training = vlm.training
    vlm.eval()  # no dropout; finetune.py calls this between epochs and goes on training afterwards
    try:
        if task not in RUNNERS:
            raise SystemExit(f"unknown task {task!r}")
        return RUNNERS[task](task, model, data_dir, split, tok, dataset, device, ctx, show)
    finally:
        vlm.train(was_training)


@torch.no_grad()
def run_captioning(vlm, data_dir, split, tok, device, ctx, show=0, batch_size=64):
    """val: next-token loss (for model selection); test: beam search (5 beams, 24 positions) + metrics
    (sec. 4.5, Table 7; the captioning mask of Fig. 3, docs/method.md §7 for the prompt).
    One reference per clip (lower-cased); metrics.caption_metrics on the paper's scale (metrics.paper_scale)."""
    recs, store = readers.load_captioning(data_dir, split)
    if not recs:
        raise SystemExit(f"{data_dir}: the captioning {split} split is empty")
    clips = [record_clip(store, r) for r in recs]  # (T_i <= 32, 512) each
    if split != "test":  # validation: teacher-forced loss, cheaper and smoother than generating
        return {"loss": _caption_loss(vlm, recs, clips, tok, device, ctx, batch_size)}
    hyps, refs = {}, {}
    for sl in _batches(len(recs), batch_size):
        b = data.collate_pairs(clips[sl], [[0]] * len(clips[sl]))  # video (B, Tv, 512)
        with ctx:
            out = vlm.generate(b["video"].to(device), b["video_mask"].to(device), num_beams=5, max_length=24)
        for r, ids in zip(recs[sl], out):  # out: B lists of generated word-piece ids
            hyps[r["clip_id"]] = tok.decode(ids)
            refs[r["clip_id"]] = [r["text"].lower()]
    for r in recs[:show]:
        print(f"{r['clip_id']}: generated {hyps[r['clip_id']]!r} | reference {refs[r['clip_id']][0]!r}")
    return paper_scale(caption_metrics(refs, hyps))


def _caption_loss(vlm, recs, clips, tok, device, ctx, batch_size):
    """Mean next-token cross-entropy of the reference captions, right-shifted after [CLS] (as in fine-tuning).
    Summed over every scored position of every caption, divided once: a per-token mean, not per caption."""
    c = vlm.config
    ids = _tokenize(tok, [r["text"] for r in recs], max_len=60)
    total, count = 0.0, 0
    for sl in _batches(len(recs), batch_size):
        b = data.collate_pairs(clips[sl], [[c.cls_token_id] + t for t in ids[sl]])  # input: [CLS] t_1 .. t_n
        labels = torch.full(b["text_ids"].shape, -100, dtype=torch.long)  # (B, Lt); -100 = not scored
        for i, t in enumerate(ids[sl]):
            labels[i, :len(t) + 1] = torch.as_tensor(t + [c.sep_token_id])  # target: t_1 .. t_n [SEP]
        with ctx:
            logits = vlm.caption_logits(b["video"].to(device), b["video_mask"].to(device),
                                        b["text_ids"].to(device), b["text_mask"].to(device))  # (B, Lt, V)
        n = int((labels != -100).sum())
        total += float(F.cross_entropy(logits.float().flatten(0, 1).cpu(), labels.flatten(),  # (B * Lt, V)
                                       ignore_index=-100, reduction="sum"))
        count += n
    return total / max(1, count)


# -----------------------------------------------------------------------------------------------------------
# All-in-One (raw frames, allinone.py): MSR-VTT-like retrieval and multiple-choice QA from separate passes.
# A clip is T frames (the middle frame of each of T equal segments, docs/method.md §6), decoded by data.VideoStore;
# the frames model has no segmentation, localization or captioning head (docs/allinone.md).


def clip_frames(store, recs, cfg):
    """uint8 (N, T, 3, S, S): each record's clip, the middle frame of each of T segments (evaluation).
    cfg: the frames model's config (num_frames T, frame_size S)."""
    return torch.stack([store.clip(r["video_id"], r.get("start"), r.get("end"), cfg.num_frames, cfg.frame_size)
                        for r in recs])


@torch.no_grad()
def frames_vectors(model, frames, ids, device, ctx, batch_size=64):
    """Pooled text (N_text, H) and video (N_video, H) vectors from separate passes (no rolling), as they are
    (run_frames_task ranks them through as_ranked). frames: uint8 (N_video, T, 3, S, S); ids: N_text lists of
    word-piece ids."""
    v, t = [], []
    for sl in _batches(len(frames), batch_size):
        with ctx:
            v.append(model.encode_video(frames[sl].to(device)).float().cpu())  # (B, T, 3, S, S) -> (B, H)
    for sl in _batches(len(ids), 4 * batch_size):
        x, m = data.pad_texts(ids[sl], model.config.pad_token_id)  # (N, Lt)
        with ctx:
            t.append(model.encode_text(x.to(device), m.to(device)).float().cpu())  # (N, H)
    return torch.cat(t), torch.cat(v)


def mc_candidates(texts, seed=0):
    """A validation stand-in for the multiple-choice set: each clip's caption among 4 captions of other clips
    (fixed seed; fewer when there are fewer clips) -> (candidates per clip [K str], answer index per clip)."""
    rng, cands, answers, K = np.random.default_rng(seed), [], [], min(5, len(texts))
    for i, t in enumerate(texts):
        others = rng.choice([j for j in range(len(texts)) if j != i], K - 1, replace=False)
        c, k = [texts[j] for j in others], int(rng.integers(K))
        cands.append(c[:k] + [t] + c[k:])  # the true caption inserted at position k
        answers.append(k)
    return cands, answers


def run_frames_task(task, model, data_dir, split, tok, device="cpu", ctx=nullcontext()):
    """retrieval (MSR-VTT-like, text -> video) or qa (test: MSR_MC_test; val: mc_candidates) for the frames
    model, both on dot products of pooled vectors from separate passes (as VLM's retrieval and QA).
    Raw dot products, or cosine for a model fine-tuned with --temperature (model.cosine), as VLM's."""
    m = getattr(model, "vlm", model)
    was_training = m.training
    m.eval()
    try:
        n_tok = m.config.max_text_len - 2  # room for [CLS] and [SEP]
        # both tasks compare pooled vectors: the text alone and the T frames alone (no rolling, no joint pass)
        if task == "retrieval":
            recs, store = readers.load_retrieval(data_dir, "msrvtt", split, videos=True)
            ids = _tokenize(tok, [r["texts"][0] for r in recs], n_tok)
            t, v = as_ranked(model, *frames_vectors(m, clip_frames(store, recs, m.config), ids, device, ctx))
            return retrieval_metrics(t @ v.T)  # (N_text, N_video)
        if task != "qa":
            raise SystemExit(f"the frames model evaluates retrieval and qa, not {task!r}")
        if split == "test":  # the real multiple-choice set; validation builds one from captions (mc_candidates)
            recs, store = readers.load_mc(data_dir, videos=True)
            cands, answers = [r["candidates"] for r in recs], [r["answer"] for r in recs]
        else:
            recs, store = readers.load_retrieval(data_dir, "msrvtt", split, videos=True)
            cands, answers = mc_candidates([r["texts"][0] for r in recs])
        ids = _tokenize(tok, [c for cs in cands for c in cs], n_tok)
        # (N*K, H), (N, H)
        t, v = as_ranked(model, *frames_vectors(m, clip_frames(store, recs, m.config), ids, device, ctx))
        scores = torch.einsum("nh,nkh->nk", v, t.view(len(recs), len(cands[0]), -1))  # (N, K)
        return {"acc": mc_accuracy(scores.numpy(), np.array(answers))}
    finally:
        m.train(was_training)


# -----------------------------------------------------------------------------------------------------------
# command line


def _report(m, a, key):
    """Print the metrics beside the paper's (real-data) numbers and write them as JSON beside the checkpoint.
    key: the PAPER entry (retrieval-<dataset>, or the task; localization zero-shot has its own)."""
    paper = PAPER.get(key + ("-zero-shot" if a.zero_shot and a.task == "localization" else ""), {})
    print(f"{key} ({a.split}{', zero-shot' if a.zero_shot else ''}), built-in world vs paper (real data):")
    for k, v in m.items():
        if v is None:
            print(f"  {k:10s} unavailable")
        else:
            print(f"  {k:10s} {v:10.4f}" + (f"   paper {paper[k]}" if k in paper else ""))
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), f"eval-{key}-{a.split}.json")
    with open(out, "w") as f:
        json.dump(m, f, indent=1)
    print(f"wrote {out}")


def main(argv=None):
    """python evaluate.py --task TASK --ckpt CKPT [...]: one task's metrics on one split, printed beside the
    paper's and written as JSON (--out, default eval-<task>-<split>.json beside the checkpoint)."""
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on one downstream task (paper metrics).")
    p.add_argument("--task", required=True, choices=list(SELECT), help="downstream task")
    p.add_argument("--ckpt", required=True, help="fine-tuned best.pt, or with --zero_shot a pre-trained model")
    p.add_argument("--data", default="data/world", help="data directory")
    p.add_argument("--dataset", default="youcook2", choices=["youcook2", "msrvtt"], help="retrieval data")
    p.add_argument("--split", default="test", choices=["val", "test"], help="split to evaluate")
    p.add_argument("--zero_shot", action="store_true", help="retrieval / localization straight from pre-training")
    p.add_argument("--tokenizer", default="", help="tokenizer directory (default: the pre-trained model's or --data)")
    p.add_argument("--show", type=flag_type("show", int, 0), default=0, help="print this many worked examples (paper Tables 10-11)")
    p.add_argument("--out", default="", help="JSON file for the metrics (default: beside the checkpoint)")
    p.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, ctx, _ = amp_setup(a.dtype, device)  # bf16 autocast on GPU by default, fp32 on CPU
    # zero-shot: a pre-trained model straight from train.py (paper Table 5's first row); else finetune.py's best.pt
    if a.zero_shot:
        if a.task not in ("retrieval", "localization"):
            raise SystemExit("--zero_shot applies to retrieval and localization (other tasks need a new head or "
                             "fine-tuning)")
        model = load_model(a.ckpt).to(device).eval()
    else:
        model = load_finetuned(a.ckpt, device, task=a.task)
    # the tokenizer: --tokenizer, else the one stored in the checkpoint, else the pre-trained model's / the data's
    if a.tokenizer:
        tok = load_tokenizer(a.tokenizer)
    elif getattr(model, "tokenizer", None) is not None:  # fine-tuned checkpoints carry their tokenizer
        tok = model.tokenizer
    else:
        tok = trained_tokenizer(a.ckpt, a.data, getattr(model, "vlm", model).config)
    if tok.get_vocab_size() != getattr(model, "vlm", model).config.vocab_size:
        raise SystemExit(f"the tokenizer has {tok.get_vocab_size()} entries, the checkpoint's embeddings "
                         f"{getattr(model, 'vlm', model).config.vocab_size}: pass --tokenizer DIR")
    m = run_task(a.task, model, a.data, a.split, tok, dataset=a.dataset, device=device, ctx=ctx, show=a.show)
    # retrieval is reported per dataset, as the paper's Tables 2 (MSR-VTT) and 3 (YouCook2)
    _report(m, a, f"retrieval-{a.dataset}" if a.task == "retrieval" else a.task)
    return m


if __name__ == "__main__":
    cli(main, errors=(data.DataError, CheckpointError))
