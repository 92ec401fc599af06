"""Evaluation of VLM on the downstream tasks (paper Sec. 4, Tables 2-9; docs/method.md §5, §7).

The top of this file is the METRICS section: plain numpy / stdlib functions, importable on their own, that
turn model scores into the numbers the paper reports:
  - text-video retrieval (MSR-VTT, YouCook2): R@1/5/10 and median rank       -> retrieval_metrics
  - captioning (YouCook2): BLEU-1..4, METEOR, ROUGE-L, CIDEr as pycocoevalcap -> caption_metrics
  - action segmentation (COIN): frame accuracy                                -> frame_accuracy,
    windows + window_average (the 32-second windows a long video is cut into)
  - step localization (CrossTask): ordered DP alignment and average recall    -> step_log_probs, dp_align,
    localization_recall
  - multiple-choice QA (MSR-VTT MC): accuracy                                 -> mc_accuracy
Percentages are 0-100; caption_metrics is on pycocoevalcap's own scale (0-1, CIDEr unscaled); the runners
report BLEU / METEOR / ROUGE-L x100 as the paper's Table 7 does.

After the metrics come the evaluation runners (one per task, shared with finetune.py's model selection), the
results table of `finetune.py --task all`, and the command line:

  python evaluate.py --task retrieval --ckpt out/finetune/retrieval-youcook2/best.pt --data data/world
  python evaluate.py --task retrieval --zero_shot --ckpt out/pretrain/model --dataset msrvtt
  python evaluate.py --task captioning --ckpt out/finetune/captioning/best.pt --show 5
  python evaluate.py --probe --ckpt out/pretrain/model          # zero-shot grounding probes

Tests: python -m pytest -q tests/test_metrics.py tests/test_finetune.py tests/test_released_eval.py tests/test_probes.py
"""
import importlib.util
import math
import os
import shutil
import subprocess
from collections import Counter

import json
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

import data
import readers
from checkpoint import CheckpointError, load_finetuned, load_model, trained_tokenizer
from common import amp_setup, cli, flag_type
from tokens import load_tokenizer

# =====================================================================================================
# METRICS (numpy / stdlib only; the evaluation runners and the command line come after this section)
# =====================================================================================================


def _to_numpy(x, name):
    """numpy array from a numpy array, a list or a torch tensor (no torch import needed)."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x)
    if x.dtype == object:
        raise ValueError(f"evaluate.py: {name} is not a rectangular numeric array")
    return x


# ----------------------------------------------------------------------------- retrieval (Tables 2-3)

def retrieval_metrics(sim, gt=None):
    """Text -> video retrieval metrics from a similarity matrix.

    sim: (N_text, N_video) scores, numpy or torch; higher = more similar.
    gt:  optional (N_text,) index of the true video of each text; default: the diagonal (sim must be square).
    Returns {"R1", "R5", "R10"} in percent and "MedR", the median 1-based rank (may end in .5).

    Tie rule (pessimistic; ties never flatter the model): the rank of the true video is
        1 + #{videos j != true : sim[i, j] >= sim[i, true]},
    so a constant matrix ranks every true video last (rank N_video): R@1 = 0 for N_video > 1, MedR = N_video.
    """
    sim = _to_numpy(sim, "sim").astype(np.float64)
    if sim.ndim != 2:
        raise ValueError(f"evaluate.py retrieval_metrics: sim must be 2-D (N_text, N_video), got {sim.shape}")
    n_text, n_video = sim.shape
    if gt is None:
        if n_text != n_video:
            raise ValueError(f"evaluate.py retrieval_metrics: sim is {sim.shape}, not square; pass gt")
        gt = np.arange(n_text)
    gt = _to_numpy(gt, "gt").astype(np.int64).reshape(-1)
    if gt.shape[0] != n_text or (n_text and (gt.min() < 0 or gt.max() >= n_video)):
        raise ValueError(f"evaluate.py retrieval_metrics: gt must hold {n_text} indices in [0, {n_video})")
    if not np.isfinite(sim).all():
        raise ValueError("evaluate.py retrieval_metrics: sim holds NaN or inf")
    true = sim[np.arange(n_text), gt][:, None]  # (N_text, 1)
    ranks = (sim >= true).sum(axis=1)  # counts the true video itself once -> 1 + others with score >= true
    return {
        "R1": 100.0 * float(np.mean(ranks <= 1)),
        "R5": 100.0 * float(np.mean(ranks <= 5)),
        "R10": 100.0 * float(np.mean(ranks <= 10)),
        "MedR": float(np.median(ranks)),
    }


# ----------------------------------------------------------------------------- captioning (Table 9)
# Own re-implementations of the COCO caption toolkit (pycocoevalcap) scorers, fact for fact, so the numbers
# are the toolkit's without needing it at runtime. Inputs are already-tokenised strings (words joined by
# single spaces); BLEU and CIDEr split on any whitespace, ROUGE-L on single spaces, as the toolkit does.

def _ngram_counts(words, n=4):
    """Counter of all 1..n-grams (tuples) of a word list."""
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _bleu(refs, hyps, n=4):
    """Corpus BLEU-1..n as pycocoevalcap's Bleu (option "closest").

    Per sentence: clipped n-gram matches (hypothesis count clipped by the max count in any one reference),
    guesses max(0, len - k + 1), and the reference length closest to the hypothesis length (ties -> shorter).
    Corpus: BLEU-k = (prod_{j<=k} (correct_j + 1e-15) / (guess_j + 1e-9)) ** (1/k), times the brevity penalty
    exp(1 - 1/ratio) when ratio = (testlen + 1e-15) / (reflen + 1e-9) < 1 (sums over the corpus).
    """
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    testlen = reflen = 0
    for rs, h in zip(refs, hyps):
        words = h.split()
        maxref = Counter()
        for r in rs:
            for g, c in _ngram_counts(r.split(), n).items():
                maxref[g] = max(maxref[g], c)
        for g, c in _ngram_counts(words, n).items():
            correct[len(g) - 1] += min(c, maxref.get(g, 0))
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        testlen += len(words)
        reflen += min((abs(len(r.split()) - len(words)), len(r.split())) for r in rs)[1]
    out, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:  # brevity penalty
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def _lcs(a, b):
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l(refs, hyps, beta=1.2):
    """Mean over clips of pycocoevalcap's ROUGE-L: P = max_r LCS/len(hyp), R = max_r LCS/len(ref) (maxima taken
    separately over the references), F = (1 + beta^2) P R / (R + beta^2 P), 0 if P or R is 0. Tokens come from
    split(" ") (an empty string is one empty token, as in the toolkit)."""
    scores = []
    for rs, h in zip(refs, hyps):
        hw = h.split(" ")
        lcs = [(_lcs(r.split(" "), hw), len(r.split(" "))) for r in rs]
        p = max(l / len(hw) for l, _ in lcs)
        r = max(l / n for l, n in lcs)
        scores.append((1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p != 0 and r != 0 else 0.0)
    return float(np.mean(scores))


def _cider_d(refs, hyps, n=4, sigma=6.0):
    """Mean over clips of pycocoevalcap's Cider (the CIDEr-D variant).

    idf: df(g) = number of clips whose references contain n-gram g (references of the evaluated set only);
    weight of g with count tf in a sentence: tf * (log(N_clips) - log(max(1, df(g)))).
    Per n-gram order k: clipped cosine sum_g min(w_hyp, w_ref) * w_ref / (|w_hyp| |w_ref|) (left unnormalised
    when a norm is 0), times the length penalty exp(-(l_hyp - l_ref)^2 / (2 sigma^2)), where the toolkit's
    "length" is the number of BIGRAMS of the sentence. Clip score = 10 * mean_k(sum over references) / n_refs.
    """
    df = Counter()
    for rs in refs:
        df.update(set(g for r in rs for g in _ngram_counts(r.split(), n)))
    log_n = math.log(float(len(refs)))

    def vec(sentence):  # -> per-order {ngram: weight}, per-order norm, length (bigram count)
        w, norm, length = [{} for _ in range(n)], [0.0] * n, 0
        for g, tf in _ngram_counts(sentence.split(), n).items():
            k = len(g) - 1
            w[k][g] = tf * (log_n - math.log(max(1.0, df.get(g, 0))))
            norm[k] += w[k][g] ** 2
            length += tf if k == 1 else 0
        return w, [math.sqrt(x) for x in norm], length

    scores = []
    for rs, h in zip(refs, hyps):
        wh, nh, lh = vec(h)
        total = np.zeros(n)
        for r in rs:
            wr, nr, lr = vec(r)
            for k in range(n):
                val = sum(min(x, wr[k].get(g, 0.0)) * wr[k].get(g, 0.0) for g, x in wh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
        scores.append(10.0 * float(np.mean(total)) / len(rs))
    return float(np.mean(scores))


def find_meteor_jar():
    """Path of meteor-1.5.jar: env METEOR_JAR, else the copy pycocoevalcap ships; None if neither exists."""
    path = os.environ.get("METEOR_JAR")
    if path:
        return path if os.path.isfile(path) else None
    spec = importlib.util.find_spec("pycocoevalcap")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        cand = os.path.join(loc, "meteor", "meteor-1.5.jar")
        if os.path.isfile(cand):
            return cand
    return None


def meteor_score(refs, hyps):
    """Corpus METEOR 1.5 from the official jar, as pycocoevalcap's Meteor reports it, or None (with a printed
    "METEOR unavailable: ..." notice) when java or the jar is missing or the jar fails. Never estimated.

    Protocol (java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm, one line in -> lines out):
      "SCORE ||| ref_1 ||| ... ||| ref_m ||| hyp"  -> one line of sufficient statistics per clip;
      "EVAL ||| stats_1 ||| ... ||| stats_N"       -> N per-clip scores, then the corpus score (returned).
    As the toolkit does, "|||" is removed from the hypothesis and double spaces become single; line breaks
    (which would break the protocol) become spaces.
    """
    java, jar = shutil.which("java"), find_meteor_jar()
    if java is None or jar is None:
        why = ("no java on PATH" if java is None
               else "meteor-1.5.jar not found (set METEOR_JAR or install pycocoevalcap)")
        print(f"METEOR unavailable: {why}")
        return None
    cmd = [java, "-jar", "-Xmx2G", jar, "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = None
    try:
        proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.abspath(jar)), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def ask(line):
            proc.stdin.write((line.replace("\n", " ").replace("\r", " ") + "\n").encode("utf-8"))
            proc.stdin.flush()

        def answer():
            out = proc.stdout.readline().decode("utf-8").strip()
            if not out:
                raise RuntimeError(f"the jar gave no answer (exit code {proc.poll()})")
            return out

        stats = []
        for rs, h in zip(refs, hyps):
            h = h.replace("|||", "").replace("  ", " ")
            ask(" ||| ".join(["SCORE", " ||| ".join(rs), h]))
            stats.append(answer())
        ask(" ||| ".join(["EVAL"] + stats))
        for _ in stats:  # per-clip scores, not used
            answer()
        return float(answer())  # the corpus score line
    except (OSError, ValueError, RuntimeError) as e:
        print(f"METEOR unavailable: {jar} failed: {e}")
        return None
    finally:
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.kill()
            proc.wait()


def caption_metrics(references, hypotheses, meteor=True):
    """COCO-caption metrics of generated captions, equal to pycocoevalcap's scorers on the same strings.

    references: {clip_id: [reference str, ...]} (>= 1 each); hypotheses: {clip_id: str} (or [str]).
    Strings must already be tokenised (words separated by spaces; the toolkit's PTB tokeniser is not run).
    Returns {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} on the toolkit's scale (0-1; CIDEr as is).
    METEOR is None when the jar cannot run (or meteor=False); see meteor_score.
    """
    if set(references) != set(hypotheses):
        miss = sorted(map(str, set(references) ^ set(hypotheses)))[:5]
        raise ValueError(f"evaluate.py caption_metrics: references and hypotheses ids differ, e.g. {miss}")
    if not references:
        raise ValueError("evaluate.py caption_metrics: no captions to score")
    ids = list(references)
    refs, hyps = [], []
    for i in ids:
        rs, h = references[i], hypotheses[i]
        if isinstance(h, (list, tuple)):
            if len(h) != 1:
                raise ValueError(f"evaluate.py caption_metrics: hypothesis {i!r} must be one string, got {len(h)}")
            h = h[0]
        if isinstance(rs, str) or len(rs) == 0:
            raise ValueError(f"evaluate.py caption_metrics: references[{i!r}] must be a non-empty list of str")
        refs.append([str(r) for r in rs])
        hyps.append(str(h))
    b = _bleu(refs, hyps)
    out = {f"BLEU-{k + 1}": b[k] for k in range(4)}
    out["METEOR"] = meteor_score(refs, hyps) if meteor else None
    out["ROUGE-L"] = _rouge_l(refs, hyps)
    out["CIDEr"] = _cider_d(refs, hyps)
    return out


# ----------------------------------------------------------------------------- action segmentation (COIN)

def frame_accuracy(pred, labels, background=0):
    """Per-second classification accuracy in percent.

    pred, labels: one array each or lists of per-video arrays (concatenated). pred holds class ids (T,) or
    logits (T, C) (then argmax over C). Returns
      "acc":            over all frames, background included (as published for COIN),
      "acc_no_bg":      over frames whose label != background (nan if there are none),
      "all_background": accuracy of predicting background everywhere (the trivial baseline).
    """
    if isinstance(pred, (list, tuple)):
        pred = [_to_numpy(p, "pred") for p in pred]
        pred = np.concatenate([p.argmax(-1) if p.ndim == 2 else p for p in pred]) if pred else np.zeros(0)
    else:
        pred = _to_numpy(pred, "pred")
        pred = pred.argmax(-1) if pred.ndim == 2 else pred
    if isinstance(labels, (list, tuple)):
        labels = np.concatenate([_to_numpy(l, "labels").reshape(-1) for l in labels]) if labels else np.zeros(0)
    labels = _to_numpy(labels, "labels").reshape(-1)
    pred = pred.reshape(-1)
    if pred.shape != labels.shape or labels.size == 0:
        raise ValueError(f"evaluate.py frame_accuracy: {pred.size} predictions for {labels.size} labels")
    fg = labels != background
    return {
        "acc": 100.0 * float(np.mean(pred == labels)),
        "acc_no_bg": 100.0 * float(np.mean(pred[fg] == labels[fg])) if fg.any() else float("nan"),
        "all_background": 100.0 * float(np.mean(~fg)),
    }


def windows(T, size=32, stride=16):
    """Start seconds of the sliding windows over [0, T), as the released COIN / CrossTask evaluation cuts
    them: starts 0, stride, 2 * stride, ...; window i covers min(size, T - start_i) seconds; the first window
    that reaches second T is the last one (it may be shorter than `size`; it is never moved back).
    T <= size -> [0]."""
    if T <= 0 or size <= 0 or stride <= 0:
        raise ValueError(f"evaluate.py windows: need T, size, stride > 0, got {T}, {size}, {stride}")
    starts = [0]
    while starts[-1] + size < T:
        starts.append(starts[-1] + stride)
    return starts


def window_average(logits_windows, starts, T):
    """(T, C) per-second logits from overlapping windows: each second gets the mean of the logits that the
    windows covering it give it. logits_windows[i]: (w_i, C) for seconds starts[i] .. starts[i] + w_i - 1;
    rows at seconds >= T (padding of a short video) are ignored. Every second must be covered."""
    if len(logits_windows) != len(starts) or not starts:
        raise ValueError(f"evaluate.py window_average: {len(logits_windows)} windows but {len(starts)} starts")
    C = _to_numpy(logits_windows[0], "logits_windows[0]").shape[-1]
    total, count = np.zeros((T, C)), np.zeros(T)  # (T, C), (T,)
    for i, (lw, s) in enumerate(zip(logits_windows, starts)):
        lw = _to_numpy(lw, f"logits_windows[{i}]").astype(np.float64)  # (w, C)
        if lw.ndim != 2 or lw.shape[1] != C or s < 0:
            raise ValueError(f"evaluate.py window_average: window {i} has shape {lw.shape} at {s}, want (w, {C})")
        w = max(0, min(lw.shape[0], T - s))
        total[s:s + w] += lw[:w]
        count[s:s + w] += 1
    if (count == 0).any():
        raise ValueError(f"evaluate.py window_average: seconds {np.flatnonzero(count == 0)[:5].tolist()}... "
                         f"are covered by no window")
    return total / count[:, None]


# ----------------------------------------------------------------------------- step localization (CrossTask)

def dp_align(scores):
    """Ordered one-frame-per-step alignment (CrossTask protocol, Zhukov et al. 2019).

    scores: (T, K) frame-step scores. Picks frames f_1 < f_2 < ... < f_K (strictly increasing, one per step,
    in step order) maximising sum_k scores[f_k, k]; returns them as a list of K ints. Needs T >= K.
    O(T K) dynamic programming: best[k, t] = scores[t, k] + max_{t' < t} best[k-1, t'].
    Among equally good alignments the one found first by a left-to-right prefix maximum is returned.
    """
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2 or s.shape[0] < s.shape[1]:
        raise ValueError(f"evaluate.py dp_align: scores must be (T, K) with T >= K, got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("evaluate.py dp_align: scores hold NaN")
    T, K = s.shape
    best = s[:, 0].copy()  # (T,) best total with step 0 at frame t
    back = np.zeros((K, T), dtype=np.int64)  # back[k, t] = frame of step k-1 given step k at t
    for k in range(1, K):
        # prefix max of the previous row over frames < t, and where it is reached (first occurrence)
        run = np.maximum.accumulate(best)  # (T,) max of best[:t+1]
        first = np.ones(T, dtype=bool)
        first[1:] = best[1:] > run[:-1]  # t sets a new strict maximum
        arg = np.maximum.accumulate(np.where(first, np.arange(T), 0))  # (T,) argmax of best[:t+1]
        new = np.full(T, -np.inf)
        new[1:] = best[arg[:-1]] + s[1:, k]
        new[:k] = -np.inf  # step k needs k earlier frames
        back[k, 1:] = arg[:-1]
        best = new
    f = [int(np.argmax(best))]
    for k in range(K - 1, 0, -1):
        f.append(int(back[k, f[-1]]))
    return f[::-1]


def step_log_probs(scores):
    """(T, K) raw frame x step scores (already averaged over windows) -> log-softmax over the K steps, as the
    released CrossTask evaluation does before its DP; dp_align maximising these log-probabilities is the
    toolkit's DP minimising the negative log-probabilities."""
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"evaluate.py step_log_probs: scores must be (T, K), got {s.shape}")
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def localization_recall(records, per_video=False):
    """CrossTask average recall in percent.

    records: dicts with "task", "scores" (T, K) and "labels" (T, K) 0/1 (all the task's K steps).
    Per video: f = dp_align(scores); step k is a hit if labels[f_k, k] == 1; the steps counted are those
    with any positive frame (a step absent from the video can never be a hit and is not counted).
    Within a task (CrossTask train.py get_recalls, and MMPT's CrossTaskMetric): recall = sum of hits over
    the task's videos / sum of counted steps over them. per_video=True instead averages each video's
    hits / counted steps (videos with no counted step skipped). The result is the mean over tasks.
    """
    hits, steps, per = {}, {}, {}
    for i, r in enumerate(records):
        s, y = _to_numpy(r["scores"], "scores"), _to_numpy(r["labels"], "labels")
        if s.shape != y.shape:
            raise ValueError(f"evaluate.py localization_recall: record {i} scores {s.shape} vs labels {y.shape}")
        f = dp_align(s)
        h = int(sum(y[f[k], k] > 0 for k in range(len(f))))
        n = int((y > 0).any(axis=0).sum())
        task = r["task"]
        hits[task] = hits.get(task, 0) + h
        steps[task] = steps.get(task, 0) + n
        if n > 0:
            per.setdefault(task, []).append(h / n)
    if per_video:
        recalls = [np.mean(v) for v in per.values()]
    else:
        recalls = [hits[t] / steps[t] for t in hits if steps[t] > 0]
    if not recalls:
        raise ValueError("evaluate.py localization_recall: no video has an annotated step")
    return 100.0 * float(np.mean(recalls))


def even_steps_recall(records, per_video=False):
    """The trivial localization baseline: cut each video into K equal parts and put step k at the middle
    second of part k, floor((k + 1/2) T / K), scored by localization_recall. records need "task", "labels"."""
    out = []
    for r in records:
        y = _to_numpy(r["labels"], "labels")
        T, K = y.shape
        s = np.zeros((T, K))
        s[np.floor((np.arange(K) + 0.5) * T / K).astype(int), np.arange(K)] = 1.0  # the DP's unique best
        out.append({"task": r["task"], "scores": s, "labels": y})
    return localization_recall(out, per_video=per_video)


# ----------------------------------------------------------------------------- multiple choice (MSR-VTT MC)

def mc_accuracy(scores, answers):
    """Multiple-choice accuracy in percent. scores: (N, 5) candidate scores, answers: (N,) correct index.
    A question counts as right only if its answer scores strictly above every other candidate (ties are
    wrong, like retrieval's pessimistic rank)."""
    s = _to_numpy(scores, "scores").astype(np.float64)
    a = _to_numpy(answers, "answers").astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != a.shape[0] or s.shape[0] == 0 or a.min() < 0 or a.max() >= s.shape[1]:
        raise ValueError(f"evaluate.py mc_accuracy: scores {s.shape} and answers {a.shape} do not match")
    true = s[np.arange(len(a)), a][:, None]  # (N, 1)
    return 100.0 * float(np.mean((s >= true).sum(axis=1) == 1))


# =====================================================================================================
# END OF METRICS
# =====================================================================================================

# ===========================================================================================================
# evaluation runners: one function per task, shared by finetune.py (validation) and the command line (test)

SELECT = {"retrieval": "R1", "qa": "R1", "segmentation": "acc", "localization": "recall", "captioning": "loss"}

# paper Tables 2-7 (real datasets), printed beside our numbers on the built-in world
PAPER = {"retrieval-msrvtt": {"R1": 28.10, "R5": 55.50, "R10": 67.40, "MedR": 4},
         "retrieval-youcook2": {"R1": 27.05, "R5": 56.88, "R10": 69.38, "MedR": 4},
         "segmentation": {"acc": 68.39}, "localization": {"recall": 46.5}, "localization-zero-shot": {"recall": 28.5},
         "qa": {"acc": 91.64},
         "captioning": {"BLEU-3": 17.78, "BLEU-4": 12.27, "METEOR": 18.22, "ROUGE-L": 41.51, "CIDEr": 1.3869}}


def record_clip(store, rec, max_len=32):
    """Features of a record's clip (whole video when start/end are None), first max_len seconds, float32."""
    feat = store[rec["video_id"]]
    start = 0 if rec.get("start") is None else rec["start"]
    end = len(feat) if rec.get("end") is None else rec["end"]
    return data.clip_features(feat, start, end, max_len=max_len)


def _batches(n, size):
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def encode_videos(vlm, clips, device, ctx, batch_size=128):
    """Pooled video vectors from separate video passes (footnote 2): (N, H) float32 on CPU."""
    out = []
    for sl in _batches(len(clips), batch_size):
        b = data.collate_pairs(clips[sl], [[0]] * len(clips[sl]))
        with ctx:
            out.append(vlm.encode_video(b["video"].to(device), b["video_mask"].to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_text_ids(vlm, ids, device, ctx, batch_size=256):
    """Pooled text vectors from separate text passes: (N, H) float32 on CPU."""
    out = []
    empty = np.zeros((1, 512), np.float32)
    for sl in _batches(len(ids), batch_size):
        b = data.collate_pairs([empty] * len(ids[sl]), ids[sl])
        with ctx:
            out.append(vlm.encode_text(b["text_ids"].to(device), b["text_mask"].to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def frame_outputs(vlm, feat, fn, device, ctx, stride=16, size=32):
    """Run fn(states (W, 32, H)) over 32 s windows of a whole video and average overlapping seconds."""
    feat = np.asarray(feat, dtype=np.float32)
    starts = windows(len(feat), size=size, stride=stride)
    b = data.collate_pairs([feat[s:s + size] for s in starts], [[0]] * len(starts))
    with ctx:
        h = vlm.video_states(b["video"].to(device), b["video_mask"].to(device))[:, :b["video_mask"].shape[1]]
        out = fn(h).float().cpu().numpy()  # (W, 32, C)
    lens = b["video_mask"].sum(1).tolist()
    return window_average([o[:n] for o, n in zip(out, lens)], starts, len(feat))


def _tokenize(tok, texts, max_len=61):
    ids, n = data.encode_texts(tok, texts, max_len=max_len)
    if n:
        print(f"{n} texts were longer than {max_len} word pieces and were truncated")
    return ids


def run_task(task, model, data_dir, split, tok, dataset="youcook2", device="cpu", ctx=nullcontext(), show=0):
    """Evaluate `task` on one split; model is a fine-tuned TaskModel or a bare VLM (zero-shot)."""
    vlm = getattr(model, "vlm", model)
    head = getattr(model, "head", None)
    was_training = vlm.training
    vlm.eval()
    try:
        if task == "retrieval" or (task == "qa" and split != "test"):
            dataset = "msrvtt" if task == "qa" else dataset
            recs, store = readers.load_retrieval(data_dir, dataset, split)
            if not recs:
                raise SystemExit(f"{data_dir}: the {dataset} {split} split is empty")
            texts = [r["texts"][0] for r in recs]
            v = encode_videos(vlm, [record_clip(store, r) for r in recs], device, ctx)
            t = encode_text_ids(vlm, _tokenize(tok, texts), device, ctx)
            if getattr(model, "cosine", False):
                t, v = F.normalize(t, dim=-1), F.normalize(v, dim=-1)
            sim = t @ v.T  # (N_text, N_video): one similarity matrix from separate passes
            # qa is selected on video -> text retrieval (the multiple-choice set has no validation split)
            m = retrieval_metrics(sim.T if task == "qa" else sim)
            for i in range(min(show, len(recs))):
                j = int(sim[i].argmax())
                print(f"query: {texts[i]!r}\n  top-1: {recs[j]['video_id']} ({texts[j]!r})"
                      f" {'RIGHT' if j == i else 'wrong'}")
            return m
        if task == "qa":
            recs, store = readers.load_mc(data_dir)
            if not recs:
                raise SystemExit(f"{data_dir}: the multiple-choice test set is empty")
            v = encode_videos(vlm, [record_clip(store, r) for r in recs], device, ctx)
            cands = [c for r in recs for c in r["candidates"]]
            t = encode_text_ids(vlm, _tokenize(tok, cands), device, ctx).view(len(recs), 5, -1)
            if getattr(model, "cosine", False):
                t, v = F.normalize(t, dim=-1), F.normalize(v, dim=-1)
            scores = torch.einsum("nh,nkh->nk", v, t).numpy()  # (N, 5)
            answers = np.array([r["answer"] for r in recs])
            for i in range(min(show, len(recs))):
                c = recs[i]["candidates"]
                print(f"video {recs[i]['video_id']}: chose {c[scores[i].argmax()]!r}, answer {c[answers[i]]!r}")
            return {"acc": mc_accuracy(scores, answers)}
        if task == "segmentation":
            recs, store, num_classes = readers.load_coin(data_dir, split)
            if head is None:
                raise SystemExit("segmentation needs a fine-tuned checkpoint with its classifier (finetune.py)")
            if head.out_features != num_classes:
                raise SystemExit(f"checkpoint classifier has {head.out_features} classes, {data_dir} has "
                                 f"{num_classes}")
            preds, labels = [], []
            for r in recs:
                logits = frame_outputs(vlm, store[r["video_id"]][:len(r["labels"])], head, device, ctx)
                preds.append(logits.argmax(-1))
                labels.append(np.asarray(r["labels"]))
            return frame_accuracy(preds, labels)
        if task == "localization":
            recs, tasks, store = readers.load_crosstask(data_dir, split)
            step_emb = {k: encode_text_ids(vlm, _tokenize(tok, t["steps"]), device, ctx).to(device)
                        for k, t in tasks.items()}
            out = []
            for r in recs:
                emb = step_emb[r["task"]]  # (K, H)
                # sec. 4.3: frame x step dot products; raw scores averaged over windows, then log-softmax
                raw = frame_outputs(vlm, store[r["video_id"]][:len(r["labels"])],
                                    lambda h: h.float() @ emb.T.float(), device, ctx)
                out.append({"task": r["task"], "scores": step_log_probs(raw), "labels": r["labels"]})
            return {"recall": localization_recall(out)}
        if task == "captioning":
            return run_captioning(vlm, data_dir, split, tok, device, ctx, show)
        raise SystemExit(f"unknown task {task!r}")
    finally:
        vlm.train(was_training)


@torch.no_grad()
def run_captioning(vlm, data_dir, split, tok, device, ctx, show=0, batch_size=64):
    """val: next-token loss (for model selection); test: beam search (5 beams, 24 positions) + metrics."""
    recs, store = readers.load_captioning(data_dir, split)
    if not recs:
        raise SystemExit(f"{data_dir}: the captioning {split} split is empty")
    clips = [record_clip(store, r) for r in recs]
    c = vlm.config
    if split != "test":
        ids = _tokenize(tok, [r["text"] for r in recs], max_len=60)
        total, count = 0.0, 0
        for sl in _batches(len(recs), batch_size):
            b = data.collate_pairs(clips[sl], [[c.cls_token_id] + t for t in ids[sl]])
            labels = torch.full(b["text_ids"].shape, -100, dtype=torch.long)
            for i, t in enumerate(ids[sl]):
                labels[i, :len(t) + 1] = torch.as_tensor(t + [c.sep_token_id])
            with ctx:
                logits = vlm.caption_logits(b["video"].to(device), b["video_mask"].to(device),
                                            b["text_ids"].to(device), b["text_mask"].to(device))
            n = int((labels != -100).sum())
            total += float(F.cross_entropy(logits.float().flatten(0, 1).cpu(), labels.flatten(),
                                           ignore_index=-100, reduction="sum"))
            count += n
        return {"loss": total / max(1, count)}
    hyps, refs = {}, {}
    for sl in _batches(len(recs), batch_size):
        b = data.collate_pairs(clips[sl], [[0]] * len(clips[sl]))
        with ctx:
            out = vlm.generate(b["video"].to(device), b["video_mask"].to(device), num_beams=5, max_length=24)
        for r, ids in zip(recs[sl], out):
            hyps[r["clip_id"]] = tok.decode(ids)
            refs[r["clip_id"]] = [r["text"].lower()]
    for r in recs[:show]:
        print(f"{r['clip_id']}: generated {hyps[r['clip_id']]!r} | reference {refs[r['clip_id']][0]!r}")
    return paper_scale(caption_metrics(refs, hyps))


# -----------------------------------------------------------------------------------------------------------
# All-in-One (raw frames, allinone.py): MSR-VTT-like retrieval and multiple-choice QA from separate passes


def clip_frames(store, recs, cfg):
    """uint8 (N, T, 3, S, S): each record's clip, the middle frame of each of T segments (evaluation)."""
    return torch.stack([store.clip(r["video_id"], r.get("start"), r.get("end"), cfg.num_frames, cfg.frame_size)
                        for r in recs])


@torch.no_grad()
def frames_vectors(model, frames, ids, device, ctx, batch_size=64):
    """Pooled text (N_text, H) and video (N_video, H) vectors from separate passes (no rolling)."""
    v, t = [], []
    for sl in _batches(len(frames), batch_size):
        with ctx:
            v.append(model.encode_video(frames[sl].to(device)).float().cpu())
    for sl in _batches(len(ids), 4 * batch_size):
        x, m = data.pad_texts(ids[sl], model.config.pad_token_id)  # (N, Lt)
        with ctx:
            t.append(model.encode_text(x.to(device), m.to(device)).float().cpu())
    return torch.cat(t), torch.cat(v)


def mc_candidates(texts, seed=0):
    """A validation stand-in for the multiple-choice set: each clip's caption among 4 captions of other clips
    (fixed seed; fewer when there are fewer clips) -> (candidates per clip [K str], answer index per clip)."""
    rng, cands, answers, K = np.random.default_rng(seed), [], [], min(5, len(texts))
    for i, t in enumerate(texts):
        others = rng.choice([j for j in range(len(texts)) if j != i], K - 1, replace=False)
        c, k = [texts[j] for j in others], int(rng.integers(K))
        cands.append(c[:k] + [t] + c[k:])
        answers.append(k)
    return cands, answers


def run_frames_task(task, model, data_dir, split, tok, device="cpu", ctx=nullcontext()):
    """retrieval (MSR-VTT-like, text -> video) or qa (test: MSR_MC_test; val: mc_candidates) for the frames
    model, both on dot products of pooled vectors from separate passes (as VLM's retrieval and QA)."""
    m = getattr(model, "vlm", model)
    was_training = m.training
    m.eval()
    try:
        n_tok = m.config.max_text_len - 2
        if task == "retrieval":
            recs, store = readers.load_retrieval(data_dir, "msrvtt", split, videos=True)
            ids = _tokenize(tok, [r["texts"][0] for r in recs], n_tok)
            t, v = frames_vectors(m, clip_frames(store, recs, m.config), ids, device, ctx)
            return retrieval_metrics(t @ v.T)
        if task != "qa":
            raise SystemExit(f"the frames model evaluates retrieval and qa, not {task!r}")
        if split == "test":
            recs, store = readers.load_mc(data_dir, videos=True)
            cands, answers = [r["candidates"] for r in recs], [r["answer"] for r in recs]
        else:
            recs, store = readers.load_retrieval(data_dir, "msrvtt", split, videos=True)
            cands, answers = mc_candidates([r["texts"][0] for r in recs])
        ids = _tokenize(tok, [c for cs in cands for c in cs], n_tok)
        t, v = frames_vectors(m, clip_frames(store, recs, m.config), ids, device, ctx)
        scores = torch.einsum("nh,nkh->nk", v, t.view(len(recs), len(cands[0]), -1))  # (N, K)
        return {"acc": mc_accuracy(scores.numpy(), np.array(answers))}
    finally:
        m.train(was_training)


def paper_scale(m):
    """BLEU, METEOR and ROUGE-L in percent as in the paper's Table 7; CIDEr unscaled."""
    return {k: (v if v is None or k == "CIDEr" else 100 * v) for k, v in m.items()}


@torch.no_grad()
def video_collapse(vlm, data_dir, n=32):
    """How much of the video stream is one shared direction (README, "What pre-training buys"): the norm of
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


def concept_words():
    """Words that name the built-in world's actions, objects, places and styles and never occur in its text
    templates ("in" of "put in" is a template word), so predicting one needs what is on screen."""
    import world
    lexicon = [d[k] for d in world.DOMAINS.values() for k in ("actions", "objects", "places")] + [world.STYLES]
    words = {w for group in lexicon for item in group.split(",") for phr in item.split("/") for w in phr.split()}
    templates = world.INTRO + world.STEP_TALK + world.OFF_TALK + world.FILLER + world.OUTRO + world.CAPTION + \
        world.SENTENCE
    return words - {w for t in templates for w in t.replace("{", " {").split() if not w.startswith("{")}


@torch.no_grad()
def _masked_top1(vlm, clips, ids, pos, device, ctx, hide_video=False, batch_size=256):
    """For each (clip, caption ids, position): mask that text token, full attention over video and text
    (Eq. 2-4, the pre-training head), and return the log-probabilities (N, V) at that position."""
    from vlm import TEXT_START
    c, out = vlm.config, []
    for sl in _batches(len(ids), batch_size):
        texts = [list(t) for t in ids[sl]]
        for t, p in zip(texts, pos[sl]):
            t[p] = c.mask_token_id
        b = data.collate_pairs([np.zeros_like(v) if hide_video else v for v in clips[sl]], texts, c.pad_token_id)
        with ctx:
            h = vlm(b["video"].to(device), b["video_mask"].to(device), b["text_ids"].to(device),
                    b["text_mask"].to(device))
            at = h[torch.arange(len(texts)), TEXT_START + torch.as_tensor(pos[sl]).to(device)]
            out.append(torch.log_softmax(vlm.mlm_logits(at).float(), -1).cpu())
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
    token_lp = lp[torch.arange(len(ids)), torch.tensor([t[p] for t, p in zip(ids, pos)])]
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


def baselines(data_dir, tok):
    """Chance and trivial baselines on the test splits, computed the same way as the model's numbers."""
    out = {}
    for ds in ("msrvtt", "youcook2"):
        recs, _ = readers.load_retrieval(data_dir, ds, "test")
        n = len(recs)  # chance: the true video ranked uniformly at random among n
        out[f"retrieval-{ds}"] = {"R1": 100 / n, "R5": min(100.0, 500 / n), "R10": min(100.0, 1000 / n),
                                  "MedR": (n + 1) / 2}
    out["qa"] = {"acc": 20.0}
    recs, _, _ = readers.load_coin(data_dir, "test")
    labels = [np.asarray(r["labels"]) for r in recs]
    out["segmentation"] = {"acc": frame_accuracy([np.zeros_like(l) for l in labels], labels)["acc"]}  # all background
    recs, _, _ = readers.load_crosstask(data_dir, "test")
    out["localization"] = {"recall": even_steps_recall(recs)}  # evenly spaced steps (i.i.d. noise sits below)
    train, _ = readers.load_captioning(data_dir, "train")
    test, _ = readers.load_captioning(data_dir, "test")
    words = {}
    for r in train:
        words[r["text"].lower()] = words.get(r["text"].lower(), 0) + 1
    common = max(sorted(words), key=words.get)  # the most frequent training caption, for every clip
    out["captioning"] = paper_scale(caption_metrics({r["clip_id"]: [r["text"].lower()] for r in test},
                                                    {r["clip_id"]: common for r in test}))
    return out


# -----------------------------------------------------------------------------------------------------------
# yardsticks computed on the same splits: a linear floor below the transformer, a roof above it


def _bag_of_words(tok, texts):
    """(N, V) word-piece counts of each text (the linear floor's text side)."""
    ids, _ = data.encode_texts(tok, texts)
    bow = torch.zeros(len(ids), tok.get_vocab_size())
    for i, t in enumerate(ids):
        bow[i].index_add_(0, torch.as_tensor(t, dtype=torch.long), torch.ones(len(t)))
    return bow


def linear_floor(data_dir, tok, task="retrieval", dataset="youcook2", dim=256, steps=400, lr=1e-3, seed=0):
    """The simplest model that can learn the task: mean-pooled video features and bag-of-words text, one
    linear map each, cosine similarity / 0.05 and in-batch InfoNCE (text -> video; video -> text for QA) on
    the task's training split, Adam for `steps` steps of 128 pairs; the retrieval or MC test metric."""
    g = torch.Generator().manual_seed(seed)
    dataset = "msrvtt" if task == "qa" else dataset
    recs, store = readers.load_retrieval(data_dir, dataset, "train")
    vids = torch.stack([torch.as_tensor(record_clip(store, r)).mean(0) for r in recs])  # (N, 512)
    first = torch.tensor(np.cumsum([0] + [len(r["texts"]) for r in recs[:-1]]))  # (N,) first caption of video
    count = torch.tensor([len(r["texts"]) for r in recs])
    bow = _bag_of_words(tok, [t for r in recs for t in r["texts"]])  # (all captions, V)
    fv, ft = nn_linear(512, dim, g), nn_linear(bow.shape[1], dim, g)
    opt = torch.optim.Adam(list(fv.parameters()) + list(ft.parameters()), lr=lr)
    for _ in range(steps):
        pick = torch.randperm(len(recs), generator=g)[:128]  # 128 videos, one random caption each
        caps = first[pick] + (torch.rand(len(pick), generator=g) * count[pick]).long()  # one caption each
        v, t = F.normalize(fv(vids[pick]), dim=-1), F.normalize(ft(bow[caps]), dim=-1)
        logits = (v @ t.T if task == "qa" else t @ v.T) / 0.05
        loss = F.cross_entropy(logits, torch.arange(len(pick)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        if task == "qa":
            recs, store = readers.load_mc(data_dir)
            v = F.normalize(fv(torch.stack([torch.as_tensor(record_clip(store, r)).mean(0) for r in recs])), dim=-1)
            t = F.normalize(ft(_bag_of_words(tok, [c for r in recs for c in r["candidates"]])), dim=-1)
            scores = torch.einsum("nh,nkh->nk", v, t.view(len(recs), 5, -1))
            return {"acc": mc_accuracy(scores.numpy(), np.array([r["answer"] for r in recs]))}
        recs, store = readers.load_retrieval(data_dir, dataset, "test")
        v = F.normalize(fv(torch.stack([torch.as_tensor(record_clip(store, r)).mean(0) for r in recs])), dim=-1)
        t = F.normalize(ft(_bag_of_words(tok, [r["texts"][0] for r in recs])), dim=-1)
        return retrieval_metrics((t @ v.T).numpy())


def nn_linear(n_in, n_out, g):
    """nn.Linear with its weights drawn from generator g (reproducible without touching the global RNG)."""
    m = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        m.weight.uniform_(-n_in ** -0.5, n_in ** -0.5, generator=g)
        m.bias.zero_()
    return m


def caption_roof(data_dir, tok):
    """An upper yardstick where the MSR-VTT-like world has it: each test video described by its OTHER
    captions (MSRVTT_data.json holds 20 per video). A query (or an MC answer) is compared by tf-idf cosine of
    word-piece counts with the sum of the video's captions, leaving out the query's own string (for MC, every
    candidate's string). -> {"retrieval-msrvtt": retrieval metrics, "qa": {"acc"}}."""
    d = os.path.join(data_dir, "msrvtt")
    _, sents = readers.read_msrvtt_json(os.path.join(d, "MSRVTT_data.json"))
    recs, _ = readers.load_retrieval(data_dir, "msrvtt", "test")
    mc, _ = readers.load_mc(data_dir)
    all_caps = [c for r in recs for c in sents.get(r["video_id"], [])]
    idf = torch.log(len(all_caps) / (1.0 + (_bag_of_words(tok, all_caps) > 0).float().sum(0)))  # (V,)

    def describe(vid, leave_out):
        caps = [c for c in sents.get(vid, []) if c not in leave_out]
        if not caps:
            raise ValueError(f"{d}/MSRVTT_data.json: video {vid!r} has no caption besides the query")
        return _bag_of_words(tok, caps).sum(0)

    unit = lambda x: F.normalize(x * idf, dim=-1)
    q = unit(_bag_of_words(tok, [r["texts"][0] for r in recs]))  # (N, V)
    out = {}
    # each query is left out of its own video's description; every other video keeps all its captions
    docs = torch.stack([describe(r["video_id"], set()) for r in recs])
    own = unit(torch.stack([describe(r["video_id"], {r["texts"][0]}) for r in recs]))
    sim = q @ unit(docs).T
    sim[torch.arange(len(recs)), torch.arange(len(recs))] = (q * own).sum(-1)
    out["retrieval-msrvtt"] = retrieval_metrics(sim.numpy())
    cand = unit(_bag_of_words(tok, [c for r in mc for c in r["candidates"]])).view(len(mc), 5, -1)
    desc = unit(torch.stack([describe(r["video_id"], set(r["candidates"])) for r in mc]))
    scores = torch.einsum("nv,nkv->nk", desc, cand).numpy()  # (N, 5)
    out["qa"] = {"acc": mc_accuracy(scores, np.array([r["answer"] for r in mc]))}
    return out


def results_table(results):
    """The paper's Tables 2-7 layout in Markdown: baselines, zero-shot, from scratch, VLM, and the paper."""
    def f(x, k):
        if x is None or x.get(k) is None:
            return "-"
        v = x[k]
        return f"{v:.4f}" if k == "CIDEr" else (f"{v:.1f}" if k == "MedR" else f"{v:.2f}")

    rows = [("chance / trivial baseline", "baselines"), ("linear floor (mean-pooled features, bag of words)", "floor"),
            ("roof (each test video described by its other captions)", "roof"),
            ("zero-shot (pre-trained, no fine-tuning)", "zero_shot"),
            ("from scratch (no pre-training)", "scratch"), ("VLM (pre-trained + fine-tuned)", "pretrained"),
            ("All-in-One, raw frames, from scratch", "allinone_scratch"),
            ("All-in-One, raw frames (pre-trained + fine-tuned)", "allinone"), ("paper, real dataset", "paper")]
    sections = [("Text-video retrieval, MSR-VTT-like (Table 2)", "retrieval-msrvtt", ["R1", "R5", "R10", "MedR"]),
                ("Text-video retrieval, YouCook2-like (Table 3)", "retrieval-youcook2", ["R1", "R5", "R10", "MedR"]),
                ("Action segmentation, COIN-like (Table 4): frame accuracy", "segmentation", ["acc"]),
                ("Step localization, CrossTask-like (Table 5): average recall", "localization", ["recall"]),
                ("Multiple-choice QA, MSR-VTT-MC-like (Table 6): accuracy", "qa", ["acc"]),
                ("Captioning, YouCook2-like (Table 7)", "captioning",
                 ["BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"])]
    src = dict(results, paper=PAPER)
    lines = ["Measured on the built-in synthetic world, NOT on the real datasets; the paper's rows are the real-data "
             "numbers of Xu et al. 2021, for orientation only.", ""]
    if results.get("seeds"):
        lines[-1:] = [f"From scratch and VLM rows: mean +- standard deviation over fine-tuning seeds "
                      f"{results['seeds']}.", ""]
    for title, key, cols in sections:
        lines += [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for label, r in rows:
            x = src.get(r, {}).get(key)
            if r == "paper" and key == "localization":
                x = {"recall": f"{PAPER['localization']['recall']} (zero-shot {PAPER['localization-zero-shot']['recall']})"}
                lines.append(f"| {label} | {x['recall']} |")
                continue
            if x is None and r in ("zero_shot", "floor", "roof", "allinone", "allinone_scratch"):
                continue
            sd = src.get(r + "_std", {}).get(key)
            cells = [f(x, c) + (f" +- {f(sd, c)}" if sd and sd.get(c) is not None else "") for c in cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if key == "segmentation":
            extra = [(lab, src.get(r, {}).get(key)) for lab, r in rows if r in ("scratch", "pretrained")]
            lines += ["", "Without background frames: " + ", ".join(
                f"{lab}: {f(x, 'acc_no_bg')}" for lab, x in extra) + "."]
        lines.append("")
    return "\n".join(lines)


# -----------------------------------------------------------------------------------------------------------
# command line


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on one downstream task (paper metrics).")
    p.add_argument("--task", choices=list(SELECT), help="downstream task")
    p.add_argument("--diagnose", action="store_true", help="print how collapsed a pre-trained model's video "
                   "stream is (video_collapse) and exit")
    p.add_argument("--probe", action="store_true", help="print the zero-shot grounding probes of a pre-trained "
                   "model (grounding_probes) and exit")
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
    _, ctx, _ = amp_setup(a.dtype, device)
    if a.diagnose:
        d = video_collapse(load_model(a.ckpt).eval(), a.data)
        print(" ".join(f"{k} {v:.3f}" for k, v in d.items()))
        return d
    if a.probe:
        model = load_model(a.ckpt).to(device).eval()
        tok = (load_tokenizer(a.tokenizer) if a.tokenizer
               else trained_tokenizer(a.ckpt, a.data, model.config))
        return grounding_probes(model, a.data, tok, device, ctx)
    if not a.task:
        p.error("--task is required (or --diagnose, --probe)")
    if a.zero_shot:
        if a.task not in ("retrieval", "localization"):
            raise SystemExit("--zero_shot applies to retrieval and localization (other tasks need a new head or "
                             "fine-tuning)")
        model = load_model(a.ckpt).to(device).eval()
    else:
        model = load_finetuned(a.ckpt, device, task=a.task)
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
    key = f"retrieval-{a.dataset}" if a.task == "retrieval" else a.task
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
    return m


if __name__ == "__main__":
    cli(main, errors=(data.DataError, CheckpointError))
