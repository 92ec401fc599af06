"""
The downstream tasks of fine-tuning (paper sec. 4, Fig. 3; docs/method.md §5), one section each: how the
training split becomes examples (docs/data_formats.md), how examples become a batch, and the loss. finetune.py
runs them; validation and test go through evaluate.run_task, which selects on evaluate.SELECT[task].

  python finetune.py --task retrieval | qa | segmentation | localization | captioning      (TASKS below)

To add a task: a section with its three functions and one TASKS entry; evaluate.py gets its runner.
"""
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import data
import evaluate
import readers
from losses import caption_loss, contrastive_loss, frame_loss, step_bce_loss
from metrics import windows


@dataclass
class Task:
    """One downstream task: how its training split becomes examples and batches, and its loss. Validation and
    test go through evaluate.run_task (model selection on evaluate.SELECT[task])."""
    examples: Callable  # (data_dir, dataset, tok, model config) -> (examples, extra, num_classes, texts truncated)
    batch: Callable  # (examples, rng, model config, extra) -> batch dict
    loss: Callable  # (task_model, batch, opt) -> (loss, stats); opt.temperature, opt.step_centre (finetune flags)
    epochs: int  # default passes over the training set on the built-in world (--epochs overrides)


# -----------------------------------------------------------------------------------------------------------
# retrieval (sec. 4.1) and qa (sec. 4.4): a clip's features and all its captions, one caption drawn per visit


def pair_examples(data_dir, dataset, tok, mc):
    """Training clips of MSR-VTT or YouCook2 (docs/data_formats.md): S3D features and all captions."""
    recs, store = readers.load_retrieval(data_dir, dataset, "train")
    out, trunc = [], 0
    for r in recs:
        ids, n = data.encode_texts(tok, r["texts"])
        trunc += n
        out.append({"video": evaluate.record_clip(store, r), "texts": ids})
    return out, None, 0, trunc


def pair_batch(exs, rng, c, extra):
    """video (B, Tv, 512) + video_mask, text_ids / text_mask (B, L): one random caption per clip."""
    texts = [e["texts"][rng.integers(len(e["texts"]))] for e in exs]  # one caption per video visit
    return data.collate_pairs([e["video"] for e in exs], texts, pad_id=c.pad_token_id)


def pair_vectors(tm, b, opt):
    """Pooled text and video vectors (B, H) of two separate passes; opt.temperature > 0: cosine / temperature
    instead of the paper's raw dot products."""
    t = tm.vlm.encode_text(b["text_ids"], b["text_mask"])  # (B, H)
    return scaled(t, tm.vlm.encode_video(b["video"], b["video_mask"]), opt.temperature)  # video (B, H)


def scaled(t, v, temperature):
    """(t, v) as they are (the paper's dot products), or unit rows with t / temperature when temperature > 0."""
    if temperature > 0:
        return F.normalize(t.float(), dim=-1) / temperature, F.normalize(v.float(), dim=-1)
    return t, v


def retrieval_loss(tm, b, opt):
    """In-batch cross-entropy text -> video over the (B, B) similarities (sec. 4.1)."""
    t, v = pair_vectors(tm, b, opt)
    return contrastive_loss(t, v), {}  # text -> video


def qa_loss(tm, b, opt):
    """The same pairs scored the other way, video -> text (sec. 4.4: answers are ranked for a video)."""
    t, v = pair_vectors(tm, b, opt)
    return contrastive_loss(v, t), {}  # video -> text: rank the answers for a video


# -----------------------------------------------------------------------------------------------------------
# segmentation (sec. 4.2): 32 s windows of COIN videos, a class per second


def window_examples(records, stride, size=32):
    """Whole videos cut into windows of `size` seconds (sec. 4.2: stride 8 for training)."""
    out = []
    for r in records:
        for s in windows(len(r["feat"]), size=size, stride=stride):
            out.append({**r, "feat": r["feat"][s:s + size], "labels": r["labels"][s:s + size]})
    return out


def segmentation_examples(data_dir, dataset, tok, mc):
    """COIN training videos (COIN.json) as windows of 32 s at stride 8; labels: a class id per second."""
    recs, store, num_classes = readers.load_coin(data_dir, "train")
    full = [{"feat": store[r["video_id"]][:len(r["labels"])], "labels": r["labels"]} for r in recs]
    return window_examples(full, stride=8), None, num_classes, 0


def segmentation_batch(exs, rng, c, extra):
    """The windows with a lone [SEP] as text (the isolated mask sees video only) and per-second labels."""
    b = data.collate_pairs([e["feat"] for e in exs], [[c.sep_token_id]] * len(exs), pad_id=c.pad_token_id)
    labels = torch.full(b["video_mask"].shape, -100, dtype=torch.long)  # (B, Tv); -100: padding, no loss
    for i, e in enumerate(exs):
        labels[i, :len(e["labels"])] = torch.as_tensor(e["labels"], dtype=torch.long)
    return {**b, "labels": labels}


def segmentation_loss(tm, b, opt):
    """Per-second cross-entropy of the linear head on the video tokens' states (sec. 4.2)."""
    h = tm.vlm.video_states(b["video"], b["video_mask"])[:, :b["video_mask"].shape[1]]  # (B, Tv, H)
    return frame_loss(tm.head(h), b["labels"]), {}


# -----------------------------------------------------------------------------------------------------------
# localization (sec. 4.3): CrossTask windows; each window's frames against its task's K step texts


def localization_examples(data_dir, dataset, tok, mc):
    """CrossTask training windows, (Tv, K) step labels; extra: the tasks, their step texts encoded."""
    recs, tasks, store = readers.load_crosstask(data_dir, "train")
    full = [{"feat": store[r["video_id"]][:len(r["labels"])], "labels": r["labels"], "task": r["task"]}
            for r in recs]
    trunc = 0
    for t in tasks.values():
        t["step_ids"], n = data.encode_texts(tok, t["steps"])
        trunc += n
    return window_examples(full, stride=16), tasks, 0, trunc  # the test stride, half the windows of stride 8


def localization_batch(exs, rng, c, extra):
    """Windows + every window's K step texts, padded to the batch's largest K with lone [SEP]s."""
    tasks = extra
    b = data.collate_pairs([e["feat"] for e in exs], [[c.sep_token_id]] * len(exs), pad_id=c.pad_token_id)
    K = max(len(tasks[e["task"]]["steps"]) for e in exs)
    targets = torch.zeros(len(exs), b["video_mask"].shape[1], K)  # (B, Tv, K)
    step_mask = torch.zeros(len(exs), K, dtype=torch.bool)  # (B, K): real steps of each window's task
    step_ids = []
    for i, e in enumerate(exs):
        k = e["labels"].shape[1]
        targets[i, :len(e["labels"]), :k] = torch.as_tensor(e["labels"])
        step_mask[i, :k] = True
        steps = tasks[e["task"]]["step_ids"]
        step_ids += steps + [[c.sep_token_id]] * (K - len(steps))
    s = data.collate_pairs([np.zeros((1, 512), np.float32)] * len(step_ids), step_ids, pad_id=c.pad_token_id)
    return {**b, "targets": targets, "step_mask": step_mask, "step_ids": s["text_ids"],
            "step_text_mask": s["text_mask"], "K": K}  # step_ids (B * K, L)


def localization_loss(tm, b, opt):
    """BCE on frame x step dot products over real (frame, step) pairs (sec. 4.3); opt.step_centre: on the
    products minus their batch mean (losses.step_bce_loss)."""
    B, K = b["targets"].shape[0], b["K"]
    frames = tm.vlm.video_states(b["video"], b["video_mask"])[:, :b["video_mask"].shape[1]]  # (B, Tv, H)
    steps = tm.vlm.encode_text(b["step_ids"], b["step_text_mask"]).view(B, K, -1)  # (B, K, H)
    mask = b["video_mask"][:, :, None] & b["step_mask"][:, None, :]  # (B, Tv, K)
    return step_bce_loss(frames, steps, b["targets"], mask, centre=opt.step_centre), {}


# -----------------------------------------------------------------------------------------------------------
# captioning (sec. 4.5): the captioning mask, right-shifted text, next-token cross-entropy


def captioning_examples(data_dir, dataset, tok, mc):
    """YouCook2 captioning clips: features and one caption of at most 60 pieces (+ BOS / [SEP] = 61)."""
    recs, store = readers.load_captioning(data_dir, "train")
    ids, trunc = data.encode_texts(tok, [r["text"] for r in recs], max_len=60)  # + BOS / [SEP] = 61
    return [{"video": evaluate.record_clip(store, r), "text": t} for r, t in zip(recs, ids)], None, 0, trunc


def captioning_batch(exs, rng, c, extra):
    """text_ids = [CLS] + caption, labels = caption + [SEP] (B, L); -100 on padding."""
    # input right-shifted (BOS = [CLS]); the final [SEP] is the end token to predict
    text_in = [[c.cls_token_id] + e["text"] for e in exs]
    b = data.collate_pairs([e["video"] for e in exs], text_in, pad_id=c.pad_token_id)
    labels = torch.full(b["text_ids"].shape, -100, dtype=torch.long)  # (B, L)
    for i, e in enumerate(exs):
        labels[i, :len(e["text"]) + 1] = torch.as_tensor(e["text"] + [c.sep_token_id])
    return {**b, "labels": labels}


def captioning_loss(tm, b, opt):
    """Next-token cross-entropy through BERT's LM head under the captioning mask (sec. 4.5)."""
    logits = tm.vlm.caption_logits(b["video"], b["video_mask"], b["text_ids"], b["text_mask"])  # (B, L, V)
    return caption_loss(logits, b["labels"]), {}


# epochs: segmentation and localization from a pre-trained model need 10+ (from scratch: 2-4); retrieval and QA
# gain up to 24-32 for both rows; 24 keeps the main job inside 10 minutes (docs/log.md, "Fine-tuning levers")
TASKS = {
    "retrieval": Task(pair_examples, pair_batch, retrieval_loss, epochs=24),
    "qa": Task(pair_examples, pair_batch, qa_loss, epochs=24),
    "segmentation": Task(segmentation_examples, segmentation_batch, segmentation_loss, epochs=12),
    "localization": Task(localization_examples, localization_batch, localization_loss, epochs=10),
    "captioning": Task(captioning_examples, captioning_batch, captioning_loss, epochs=8),
}


def task_loss(task, temperature=0.0, step_centre=True):
    """loss_fn(task_model, batch) -> (loss, stats) for the task (docs/method.md §5), with finetune.py's
    --temperature and --step_centre."""
    opt = SimpleNamespace(temperature=temperature, step_centre=step_centre)
    return lambda tm, b: TASKS[task].loss(tm, b, opt)


# -----------------------------------------------------------------------------------------------------------
# All-in-One (raw frames, allinone.py): MSR-VTT-like retrieval and multiple-choice QA, VLM's recipes (sec. 4.1,
# 4.4) on pooled vectors of a text-only and a frames-only pass; finetune.run picks FRAMES for a frames model


def frames_examples(data_dir, dataset, tok, mc):
    """MSR-VTT training videos as video files (docs/allinone.md) and all their captions, each cut to the frames
    model's text budget (max_text_len - 2 pieces; the cuts are counted). extra: the video store."""
    recs, store = readers.load_retrieval(data_dir, "msrvtt", "train", videos=True)
    out, trunc = [], 0
    for r in recs:
        ids, n = data.encode_texts(tok, r["texts"], mc.max_text_len - 2)
        out.append({"video_id": r["video_id"], "texts": ids})
        trunc += n
    return out, store, 0, trunc


def frames_batch(exs, rng, mc, store):
    """frames (B, T, 3, S, S) uint8, a random frame in each of T segments of the whole video; one caption per
    video visit."""
    frames = torch.stack([store.clip(e["video_id"], None, None, mc.num_frames, mc.frame_size, True, rng)
                          for e in exs])
    ids, mask = data.pad_texts([e["texts"][rng.integers(len(e["texts"]))] for e in exs], mc.pad_token_id)
    return {"frames": frames, "text_ids": ids, "text_mask": mask}


def frame_pair_vectors(tm, b, opt):
    """pair_vectors for frames: pooled text and video vectors of separate passes (no rolling)."""
    return scaled(tm.vlm.encode_text(b["text_ids"], b["text_mask"]), tm.vlm.encode_video(b["frames"]),
                  opt.temperature)


def frames_retrieval_loss(tm, b, opt):
    """In-batch text -> video cross-entropy (raw dot products, or cosine / temperature)."""
    t, v = frame_pair_vectors(tm, b, opt)
    return contrastive_loss(t, v), {}


def frames_qa_loss(tm, b, opt):
    """Video -> text: rank the captions for a video (VLM's sec. 4.4 recipe)."""
    t, v = frame_pair_vectors(tm, b, opt)
    return contrastive_loss(v, t), {}


FRAMES = {
    "retrieval": Task(frames_examples, frames_batch, frames_retrieval_loss, epochs=40),
    "qa": Task(frames_examples, frames_batch, frames_qa_loss, epochs=40),
}
