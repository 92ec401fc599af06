"""Zero-shot grounding probes of a pre-trained model: does it link words to video before any fine-tuning?
(README, "Which of the paper's claims hold here"; paper sec. 3.3 for the shared head, sec. 4 for the tasks.)

  - word_probe: the pre-training head (Eq. 4) predicting one masked word per caption, video visible or hidden
    (zeroed features, as MMM's masked video, sec. 3.2), for concept words (concept_words) and template words
  - mc_pseudo_likelihood: multiple choice by log p(answer | video) from the same head, no fine-tuning
  - grounding_probes: those two, zero-shot retrieval and localization (evaluate.run_task), each beside chance
  - video_collapse: how much of the video stream is one shared direction (docs/log.md, "What pre-training buys")
train.py prints grounding_probes at the end of pre-training; for any checkpoint:

  python probes.py --ckpt out/pretrain/model                 # the grounding probes
  python probes.py --ckpt out/pretrain/model --diagnose      # video_collapse

Tests: python -m pytest -q tests/test_probes.py
"""
import argparse
from collections import Counter
from contextlib import nullcontext

import numpy as np
import torch

import data
import readers
import world
from checkpoint import CheckpointError, load_model, trained_tokenizer
from common import amp_setup, cli
from evaluate import _batches, _tokenize, record_clip, run_task
from masking import TEXT_START
from metrics import even_steps_recall, mc_accuracy
from tokens import load_tokenizer


def concept_words():
    """Words that name the built-in world's actions, objects, places and styles and never occur in its text
    templates ("in" of "put in" is a template word), so predicting one needs what is on screen."""
    lexicon = [d[k] for d in world.DOMAINS.values() for k in ("actions", "objects", "places")] + [world.STYLES]
    words = {w for group in lexicon for item in group.split(",") for phr in item.split("/") for w in phr.split()}
    templates = world.INTRO + world.STEP_TALK + world.OFF_TALK + world.FILLER + world.OUTRO + world.CAPTION + \
        world.SENTENCE
    return words - {w for t in templates for w in t.replace("{", " {").split() if not w.startswith("{")}


@torch.no_grad()
def _masked_top1(vlm, clips, ids, pos, device, ctx, hide_video=False, batch_size=256):
    """For each (clip, caption ids, position): mask that text token, full attention over video and text
    (Eq. 2-4, the pre-training head), and return the log-probabilities (N, V) at that position."""
    c, out = vlm.config, []
    for sl in _batches(len(ids), batch_size):
        texts = [list(t) for t in ids[sl]]
        for t, p in zip(texts, pos[sl]):
            t[p] = c.mask_token_id  # hide the word to predict
        b = data.collate_pairs([np.zeros_like(v) if hide_video else v for v in clips[sl]], texts, c.pad_token_id)
        with ctx:
            h = vlm(b["video"].to(device), b["video_mask"].to(device), b["text_ids"].to(device),
                    b["text_mask"].to(device))  # (B, L, H) over the sequence of Eq. 2
            at = h[torch.arange(len(texts)), TEXT_START + torch.as_tensor(pos[sl]).to(device)]  # (B, H)
            out.append(torch.log_softmax(vlm.mlm_logits(at).float(), -1).cpu())  # (B, V)
    return torch.cat(out)


def word_probe(vlm, data_dir, tok, device="cpu", ctx=nullcontext(), n=300, seed=0):
    """Top-1 accuracy of the pre-training head on one masked word per MSR-VTT-like test caption, video visible
    and video hidden (zeroed features, as MMM's masked video), for concept words and template words; chance is
    always answering the most frequent target word of the class."""
    recs, store = readers.load_retrieval(data_dir, "msrvtt", "test")
    recs = recs[:n]
    clips = [record_clip(store, r) for r in recs]
    ids = _tokenize(tok, [r["texts"][0] for r in recs])
    concept = {tok.token_to_id(w) for w in concept_words()} - {None}
    specials = {vlm.config.cls_token_id, vlm.config.sep_token_id, vlm.config.pad_token_id, vlm.config.mask_token_id}
    rng, out = np.random.default_rng(seed), {}
    for kind in ("concept", "template"):
        rows = []
        for i, t in enumerate(ids):
            cand = [p for p, x in enumerate(t) if (x in concept) == (kind == "concept") and x not in specials]
            if cand:
                rows.append((i, int(rng.choice(cand))))
        if not rows:
            continue
        sel = [i for i, _ in rows]
        pos, target = [p for _, p in rows], torch.tensor([ids[i][p] for i, p in rows])
        for view in ("video", "no_video"):
            lp = _masked_top1(vlm, [clips[i] for i in sel], [ids[i] for i in sel], pos, device, ctx,
                              hide_video=view == "no_video")
            out[f"{kind}_top1_{view}"] = 100.0 * float((lp.argmax(-1) == target).float().mean())
        out[f"{kind}_chance"] = 100.0 * Counter(target.tolist()).most_common(1)[0][1] / len(target)
        out[f"{kind}_n"] = len(target)
    return out


def mc_pseudo_likelihood(vlm, data_dir, tok, device="cpu", ctx=nullcontext(), n=200, scores_only=False):
    """Zero-shot multiple choice with the pre-training head: each answer scored by its pseudo-log-likelihood
    given the video, sum over its tokens of log p(token | video, the other tokens) with that token masked.
    Returns the accuracy, or with scores_only the (n, 5) scores."""
    recs, store = readers.load_mc(data_dir)
    recs = recs[:n]
    clips, ids, pos, owner = [], [], [], []
    for q, r in enumerate(recs):
        clip = record_clip(store, r)
        for k, t in enumerate(_tokenize(tok, r["candidates"])):
            clips += [clip] * len(t)
            ids += [t] * len(t)
            pos += list(range(len(t)))
            owner += [q * 5 + k] * len(t)
    lp = _masked_top1(vlm, clips, ids, pos, device, ctx)
    token_lp = lp[torch.arange(len(ids)), torch.tensor([t[p] for t, p in zip(ids, pos)])]  # (tokens,)
    # sum each answer's token log-probabilities: (tokens,) -> (n * 5,)
    scores = torch.zeros(len(recs) * 5, dtype=torch.float64).index_add_(0, torch.tensor(owner), token_lp.double())
    if scores_only:
        return scores.view(-1, 5).numpy()
    return mc_accuracy(scores.view(-1, 5).numpy(), np.array([r["answer"] for r in recs]))


def grounding_probes(vlm, data_dir, tok, device="cpu", ctx=nullcontext(), n_words=300, n_mc=100, show=True):
    """Zero-shot probes of a pre-trained model, each beside its chance level (a few seconds for the small
    model): masked concept / template words with and without the video, multiple choice by the pre-training
    head, retrieval R@1 / R@10 and step localization straight from pre-training."""
    was_training = vlm.training
    vlm.eval()
    try:
        w = word_probe(vlm, data_dir, tok, device, ctx, n=n_words)
        rows = [(f"{k} words top-1, video visible (video hidden)", w.get(f"{k}_top1_video"),
                 w.get(f"{k}_top1_no_video"), w.get(f"{k}_chance"), "most frequent word") for k in
                ("concept", "template") if f"{k}_n" in w]
        n = min(n_mc, len(readers.load_mc(data_dir)[0]))
        rows.append((f"MC QA by log p(answer | video), {n} questions",
                     mc_pseudo_likelihood(vlm, data_dir, tok, device, ctx, n=n), None, 20.0, "1 in 5"))
        for ds in ("msrvtt", "youcook2"):
            m = run_task("retrieval", vlm, data_dir, "test", tok, dataset=ds, device=device, ctx=ctx)
            n = len(readers.load_retrieval(data_dir, ds, "test")[0])
            rows.append((f"{ds} retrieval R@1 / R@10", m["R1"], m["R10"], 100.0 / n,
                         f"R@10 {min(100.0, 1000.0 / n):.2f}"))
        loc = run_task("localization", vlm, data_dir, "test", tok, device=device, ctx=ctx)["recall"]
        recs = readers.load_crosstask(data_dir, "test")[0]
        rows.append(("localization recall", loc, None, even_steps_recall(recs), "evenly spaced steps"))
    finally:
        vlm.train(was_training)
    if show:
        print("grounding probes (zero-shot, no fine-tuning):")
        for name, v, v2, chance, how in rows:
            extra = "" if v2 is None else f" ({v2:.1f})"
            print(f"  {name:52s} {v:6.1f}{extra:9s} chance {chance:5.1f} ({how})")
    return {name: {"value": v, "second": v2, "chance": chance} for name, v, v2, chance, _ in rows}


@torch.no_grad()
def video_collapse(vlm, data_dir, n=32):
    """How much of the video stream is one shared direction (docs/log.md, "What pre-training buys"): the norm of
    the video MLP's mean output against its per-token part, and how much the last layer's states differ across
    the seconds of one clip (std over a clip's valid tokens, averaged) against their norm."""
    recs, store = readers.load_retrieval(data_dir, "youcook2", "val")
    b = data.collate_pairs([record_clip(store, r) for r in recs[:n]], [[0]] * min(n, len(recs)))
    vm = b["video_mask"]
    x = vlm.video_mlp(b["video"])[vm]  # (N, H) video tokens (Eq. 1)
    h = vlm.video_states(b["video"], vm)[:, :vm.shape[1]]  # (B, Tv, H)
    within = [h[i, vm[i]].std(0).norm() for i in range(len(h)) if vm[i].sum() > 1]
    return {"mlp_mean_norm": float(x.mean(0).norm()), "mlp_token_norm": float((x - x.mean(0)).norm(dim=-1).mean()),
            "state_norm": float(h[vm].norm(dim=-1).mean()), "state_spread_in_clip": float(torch.stack(within).mean())}


# -----------------------------------------------------------------------------------------------------------
# grounding probes: does a pre-trained model link words to video before any fine-tuning?


# -----------------------------------------------------------------------------------------------------------
# command line


def main(argv=None):
    p = argparse.ArgumentParser(description="Zero-shot grounding probes of a pre-trained model.")
    p.add_argument("--ckpt", required=True, help="a pre-trained model (directory or ckpt.pt)")
    p.add_argument("--diagnose", action="store_true", help="print how collapsed the model's video stream is "
                   "(video_collapse) instead of the probes")
    p.add_argument("--data", default="data/world", help="data directory")
    p.add_argument("--tokenizer", default="", help="tokenizer directory (default: the pre-trained model's or --data)")
    p.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, ctx, _ = amp_setup(a.dtype, device)
    if a.diagnose:
        d = video_collapse(load_model(a.ckpt).eval(), a.data)
        print(" ".join(f"{k} {v:.3f}" for k, v in d.items()))
        return d
    model = load_model(a.ckpt).to(device).eval()
    tok = (load_tokenizer(a.tokenizer) if a.tokenizer
           else trained_tokenizer(a.ckpt, a.data, model.config))
    return grounding_probes(model, a.data, tok, device, ctx)


if __name__ == "__main__":
    cli(main, errors=(data.DataError, CheckpointError))
