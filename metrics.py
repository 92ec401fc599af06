"""Every score the paper reports, as plain numpy / stdlib functions (paper sec. 4, Tables 2-9; docs/method.md §5, §7).

  - text-video retrieval (MSR-VTT, YouCook2; Tables 2-3): R@1/5/10, median rank      -> retrieval_metrics
  - captioning (YouCook2; Table 7): BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, equal to the
    COCO caption toolkit (pycocoevalcap) on the same strings                        -> caption_metrics
  - action segmentation (COIN; Table 4): frame accuracy over 32-second windows       -> frame_accuracy,
    windows, window_average (as the released VLM / MMPT evaluators cut a long video)
  - step localization (CrossTask; Table 5): the released evaluators' log-softmax,
    ordered DP alignment and average recall (CrossTask toolkit, docs/method.md §7)  -> step_log_probs,
    dp_align, localization_recall, even_steps_recall (the trivial baseline)
  - multiple-choice QA (MSR-VTT MC; Table 6): accuracy                               -> mc_accuracy
Percentages are 0-100; caption_metrics is on pycocoevalcap's own scale (0-1, CIDEr unscaled) and paper_scale
turns it into the paper's (BLEU / METEOR / ROUGE-L x100). This file imports nothing of ours (evaluate.py's
runners turn model outputs into the arrays scored here). Tests: tests/test_metrics.py, tests/test_released_eval.py
"""
import importlib.util
import math
import os
import shutil
import subprocess
from collections import Counter
from contextlib import suppress

import numpy as np


def _to_numpy(x, name):
    """numpy array from a numpy array, a list or a torch tensor (no torch import needed)."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().double().numpy()  # float64 on CPU: the scores never depend on the device
    x = np.asarray(x)
    if x.dtype == object:
        raise ValueError(f"metrics: {name} is not a rectangular numeric array")
    return x


# ----------------------------------------------------------------------------- retrieval (Tables 2-3)

def retrieval_metrics(sim, gt=None):
    """Text -> video retrieval metrics from a similarity matrix (docs/method.md §5; Tables 2-3).

    sim: (N_text, N_video) scores, numpy or torch; higher = more similar.
    gt:  optional (N_text,) index of the true video of each text; default: the diagonal (sim must be square).
    Returns {"R1", "R5", "R10"} in percent and "MedR", the median 1-based rank (may end in .5).

    Tie rule (pessimistic; ties never flatter the model): the rank of the true video is
        1 + #{videos j != true : sim[i, j] >= sim[i, true]},
    so a constant matrix ranks every true video last (rank N_video): R@1 = 0 for N_video > 1, MedR = N_video.
    """
    sim = _to_numpy(sim, "sim").astype(np.float64)
    if sim.ndim != 2:
        raise ValueError(f"metrics.retrieval_metrics: sim must be 2-D (N_text, N_video), got {sim.shape}")
    n_text, n_video = sim.shape  # (N_text, N_video)
    if gt is None:
        if n_text != n_video:
            raise ValueError(f"metrics.retrieval_metrics: sim is {sim.shape}, not square; pass gt")
        gt = np.arange(n_text)
    gt = _to_numpy(gt, "gt").astype(np.int64).reshape(-1)  # (N_text,)
    if gt.shape[0] != n_text or (n_text and (gt.min() < 0 or gt.max() >= n_video)):
        raise ValueError(f"metrics.retrieval_metrics: gt must hold {n_text} indices in [0, {n_video})")
    if not np.isfinite(sim).all():
        raise ValueError("metrics.retrieval_metrics: sim holds NaN or inf")
    true = sim[np.arange(n_text), gt][:, None]  # (N_text, 1)
    ranks = (sim >= true).sum(axis=1)  # counts the true video itself once -> 1 + others with score >= true
    return {
        "R1": 100.0 * float(np.mean(ranks <= 1)),
        "R5": 100.0 * float(np.mean(ranks <= 5)),
        "R10": 100.0 * float(np.mean(ranks <= 10)),
        "MedR": float(np.median(ranks)),
    }


# ----------------------------------------------------------------------------- captioning (Table 7)
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
    correct, guess = [0] * n, [0] * n  # per order k = 1..n, summed over the corpus
    testlen = reflen = 0
    for rs, h in zip(refs, hyps):
        words = h.split()
        maxref = Counter()  # n-gram -> its largest count in any one reference (the clip)
        for r in rs:
            for g, c in _ngram_counts(r.split(), n).items():
                maxref[g] = max(maxref[g], c)
        for g, c in _ngram_counts(words, n).items():
            correct[len(g) - 1] += min(c, maxref.get(g, 0))
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        testlen += len(words)
        reflen += min((abs(len(r.split()) - len(words)), len(r.split())) for r in rs)[1]
    out, prod = [], 1.0  # prod: the running product of precisions 1..k (geometric mean below)
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:  # brevity penalty
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def _lcs(a, b):
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)))."""
    prev = [0] * (len(b) + 1)  # one row of the DP table: LCS of a[:i] and b[:j] for every j
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
        hw = h.split(" ")  # hypothesis tokens
        lcs = [(_lcs(r.split(" "), hw), len(r.split(" "))) for r in rs]  # (LCS, ref length) per ref
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
    df = Counter()  # document frequency: clips (not references) containing each n-gram
    for rs in refs:
        df.update(set(g for r in rs for g in _ngram_counts(r.split(), n)))
    log_n = math.log(float(len(refs)))  # log N_clips

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
        total = np.zeros(n)  # (n,) per-order similarity, summed over the clip's references
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
    cmd = [java, "-jar", "-Xmx2G", jar, "-", "-", "-stdio", "-l", "en", "-norm"]  # as pycocoevalcap
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

        stats = []  # one line of sufficient statistics per clip
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
            with suppress(OSError):
                proc.stdin.close()
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
        raise ValueError(f"metrics.caption_metrics: references and hypotheses ids differ, e.g. {miss}")
    if not references:
        raise ValueError("metrics.caption_metrics: no captions to score")
    ids = list(references)  # one fixed clip order for every scorer
    refs, hyps = [], []
    for i in ids:
        rs, h = references[i], hypotheses[i]
        if isinstance(h, (list, tuple)):
            if len(h) != 1:
                raise ValueError(f"metrics.caption_metrics: hypothesis {i!r} must be one string, got {len(h)}")
            h = h[0]
        if isinstance(rs, str) or len(rs) == 0:
            raise ValueError(f"metrics.caption_metrics: references[{i!r}] must be a non-empty list of str")
        refs.append([str(r) for r in rs])
        hyps.append(str(h))
    b = _bleu(refs, hyps)  # [BLEU-1, ..., BLEU-4]
    out = {f"BLEU-{k + 1}": b[k] for k in range(4)}
    out["METEOR"] = meteor_score(refs, hyps) if meteor else None
    out["ROUGE-L"] = _rouge_l(refs, hyps)
    out["CIDEr"] = _cider_d(refs, hyps)
    return out


def paper_scale(m):
    """caption_metrics on the paper's scale (Table 7): BLEU, METEOR and ROUGE-L in percent, CIDEr unscaled."""
    return {k: (v if v is None or k == "CIDEr" else 100 * v) for k, v in m.items()}


# ----------------------------------------------------------------------------- action segmentation (COIN)

def frame_accuracy(pred, labels, background=0):
    """Per-second classification accuracy in percent (COIN, docs/method.md §5; Table 4).

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
        pred = pred.argmax(-1) if pred.ndim == 2 else pred  # (T, C) logits -> (T,) class ids
    if isinstance(labels, (list, tuple)):
        labels = np.concatenate([_to_numpy(l, "labels").reshape(-1) for l in labels]) if labels else np.zeros(0)
    labels = _to_numpy(labels, "labels").reshape(-1)
    pred = pred.reshape(-1)
    if pred.shape != labels.shape or labels.size == 0:
        raise ValueError(f"metrics.frame_accuracy: {pred.size} predictions for {labels.size} labels")
    fg = labels != background  # (T_total,) foreground frames
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
        raise ValueError(f"metrics.windows: need T, size, stride > 0, got {T}, {size}, {stride}")
    starts = [0]  # window i covers seconds starts[i] .. starts[i] + size - 1 (cut at T)
    while starts[-1] + size < T:
        starts.append(starts[-1] + stride)
    return starts


def window_average(logits_windows, starts, T):
    """(T, C) per-second logits from overlapping windows: each second gets the mean of the logits that the
    windows covering it give it. logits_windows[i]: (w_i, C) for seconds starts[i] .. starts[i] + w_i - 1;
    rows at seconds >= T (padding of a short video) are ignored. Every second must be covered."""
    if len(logits_windows) != len(starts) or not starts:
        raise ValueError(f"metrics.window_average: {len(logits_windows)} windows but {len(starts)} starts")
    C = _to_numpy(logits_windows[0], "logits_windows[0]").shape[-1]
    total, count = np.zeros((T, C)), np.zeros(T)  # (T, C), (T,)
    for i, (lw, s) in enumerate(zip(logits_windows, starts)):
        lw = _to_numpy(lw, f"logits_windows[{i}]").astype(np.float64)  # (w, C)
        if lw.ndim != 2 or lw.shape[1] != C or s < 0:
            raise ValueError(f"metrics.window_average: window {i} has shape {lw.shape} at {s}, want (w, {C})")
        w = max(0, min(lw.shape[0], T - s))  # rows of this window inside [0, T)
        total[s:s + w] += lw[:w]
        count[s:s + w] += 1
    if (count == 0).any():
        raise ValueError(f"metrics.window_average: seconds {np.flatnonzero(count == 0)[:5].tolist()}... "
                         f"are covered by no window")
    return total / count[:, None]


# ----------------------------------------------------------------------------- step localization (CrossTask)

def dp_align(scores):
    """Ordered one-frame-per-step alignment (CrossTask protocol, Zhukov et al. 2019; docs/method.md §7).

    scores: (T, K) frame-step scores. Picks frames f_1 < f_2 < ... < f_K (strictly increasing, one per step,
    in step order) maximising sum_k scores[f_k, k]; returns them as a list of K ints. Needs T >= K.
    O(T K) dynamic programming: best[k, t] = scores[t, k] + max_{t' < t} best[k-1, t'].
    Among equally good alignments the one found first by a left-to-right prefix maximum is returned.
    """
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2 or s.shape[0] < s.shape[1]:
        raise ValueError(f"metrics.dp_align: scores must be (T, K) with T >= K, got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("metrics.dp_align: scores hold NaN")
    T, K = s.shape  # T frames, K steps in order
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
    f = [int(np.argmax(best))]  # the last step's frame, then follow the back-pointers
    for k in range(K - 1, 0, -1):
        f.append(int(back[k, f[-1]]))
    return f[::-1]


def step_log_probs(scores):
    """(T, K) raw frame x step scores (already averaged over windows) -> log-softmax over the K steps, as the
    released CrossTask evaluation does before its DP; dp_align maximising these log-probabilities is the
    toolkit's DP minimising the negative log-probabilities."""
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"metrics.step_log_probs: scores must be (T, K), got {s.shape}")
    s = s - s.max(axis=1, keepdims=True)  # (T, K), shifted for a stable exp
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def localization_recall(records, per_video=False):
    """CrossTask average recall in percent (Table 5; docs/method.md §7).

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
            raise ValueError(f"metrics.localization_recall: record {i} scores {s.shape} vs labels {y.shape}")
        f = dp_align(s)  # K frames, one per step
        h = int(sum(y[f[k], k] > 0 for k in range(len(f))))
        n = int((y > 0).any(axis=0).sum())  # steps present in this video
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
        raise ValueError("metrics.localization_recall: no video has an annotated step")
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
    """Multiple-choice accuracy in percent (Table 6). scores: (N, 5) candidate scores, answers: (N,) correct index.
    A question counts as right only if its answer scores strictly above every other candidate (ties are
    wrong, like retrieval's pessimistic rank)."""
    s = _to_numpy(scores, "scores").astype(np.float64)
    a = _to_numpy(answers, "answers").astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != a.shape[0] or s.shape[0] == 0 or a.min() < 0 or a.max() >= s.shape[1]:
        raise ValueError(f"metrics.mc_accuracy: scores {s.shape} and answers {a.shape} do not match")
    true = s[np.arange(len(a)), a][:, None]  # (N, 1)
    return 100.0 * float(np.mean((s >= true).sum(axis=1) == 1))
