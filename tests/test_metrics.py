"""Tests of metrics.py: hand-computed cases, brute force, and parity with the COCO
caption toolkit (pycocoevalcap; skipped when it is not installed, METEOR also needs java).

Run: python -m pytest -q tests/test_metrics.py
"""
import itertools
import math
import random
import shutil

import numpy as np
import pytest

from metrics import (caption_metrics, dp_align, frame_accuracy, localization_recall, mc_accuracy,
                     retrieval_metrics, window_average, windows)


# ----------------------------------------------------------------------------- retrieval

def test_retrieval_perfect_diagonal():
    m = retrieval_metrics(np.eye(20) + 0.01 * np.random.default_rng(0).random((20, 20)))
    assert m == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MedR": 1.0}


def test_retrieval_constant_matrix_is_pessimistic():
    # every video ties with the true one -> rank = 1 + (N - 1) = N for every text
    m = retrieval_metrics(np.ones((5, 5)))
    assert m == {"R1": 0.0, "R5": 100.0, "R10": 100.0, "MedR": 5.0}
    m = retrieval_metrics(np.zeros((12, 12)))
    assert m == {"R1": 0.0, "R5": 0.0, "R10": 0.0, "MedR": 12.0}


def test_retrieval_hand_4x4_and_torch():
    sim = np.array([[0.9, 0.1, 0.2, 0.3],    # true 0.9 highest              -> rank 1
                    [0.5, 0.4, 0.6, 0.1],    # 0.5, 0.6 >= 0.4               -> rank 3
                    [0.2, 0.3, 0.1, 0.15],   # 0.2, 0.3, 0.15 >= 0.1 (true)  -> rank 4
                    [0.7, 0.0, 0.0, 0.7]])   # tie 0.7 counts against        -> rank 2
    # ranks [1, 3, 4, 2]: R1 = 1/4, R5 = R10 = 4/4, median(1, 2, 3, 4) = 2.5
    want = {"R1": 25.0, "R5": 100.0, "R10": 100.0, "MedR": 2.5}
    assert retrieval_metrics(sim) == want
    torch = pytest.importorskip("torch")
    assert retrieval_metrics(torch.tensor(sim, dtype=torch.float32)) == want


def test_retrieval_non_square_gt():
    sim = np.array([[0.9, 0.1],   # gt 0 -> rank 1
                    [0.2, 0.8],   # gt 1 -> rank 1
                    [0.5, 0.5]])  # gt 1, tie -> rank 2
    m = retrieval_metrics(sim, gt=[0, 1, 1])  # ranks [1, 1, 2]
    assert m == pytest.approx({"R1": 200 / 3, "R5": 100.0, "R10": 100.0, "MedR": 1.0})
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(sim)


# ----------------------------------------------------------------------------- captioning

def test_bleu1_rouge_hand():
    refs = {"a": ["the cat is on the mat"]}
    hyps = {"a": "the cat sat"}
    m = caption_metrics(refs, hyps, meteor=False)
    # BLEU-1: clipped unigram matches the, cat = 2 of 3; brevity: len 3 vs closest ref 6, BP = exp(1 - 6/3)
    assert m["BLEU-1"] == pytest.approx(2 / 3 * math.exp(-1), abs=1e-9)
    # ROUGE-L: LCS "the cat" = 2, P = 2/3, R = 2/6; F = 2.44 P R / (R + 1.44 P) = (4.88/9) / (1/3 + 0.96)
    #        = 4.88 / (3 + 8.64) = 4.88 / 11.64
    assert m["ROUGE-L"] == pytest.approx(4.88 / 11.64, abs=1e-12)
    assert m["METEOR"] is None


def _varied_set():
    refs = {
        "short": ["a man is cooking", "someone cooks food"],
        "empty-ish": ["add the salt"],
        "repeat": ["the the cat sat on the mat", "a cat sits on a mat"],
        "exact": ["cut the onion into small pieces"],
        "long": ["pour the oil in the pan and heat it up"],
        "multi": ["mix flour and water", "combine the flour with water", "stir water into the flour", "mix it"],
        7: ["put the bread in the oven"],
        "one": ["slice"],
    }
    hyps = {
        "short": "a",
        "empty-ish": "the",
        "repeat": "the the the the the",
        "exact": "cut the onion into small pieces",
        "long": "pour the oil in the pan and heat the pan and then add the oil to the pan again",
        "multi": "mix the flour and the water",
        7: "put bread into oven",
        "one": "slice slice",
    }
    rng = random.Random(0)
    vocab = "the a of cut add mix pan oil salt onion water bread oven stir slice it and into".split()
    for i in range(30):
        refs[f"r{i}"] = [" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 3))]
        hyps[f"r{i}"] = " ".join(rng.choices(vocab, k=rng.randint(1, 12)))
    return refs, hyps


def test_caption_metrics_match_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    refs, hyps = _varied_set()
    res = {k: [v] for k, v in hyps.items()}
    mine = caption_metrics(refs, hyps, meteor=False)
    bleu, _ = Bleu(4).compute_score(refs, res, verbose=0)
    for k in range(4):
        assert mine[f"BLEU-{k + 1}"] == pytest.approx(bleu[k], abs=1e-6)
    assert mine["ROUGE-L"] == pytest.approx(Rouge().compute_score(refs, res)[0], abs=1e-6)
    assert mine["CIDEr"] == pytest.approx(Cider().compute_score(refs, res)[0], abs=1e-6)
    # one clip alone (log N = 0 in CIDEr) and a one-word hypothesis (no bigrams, BLEU-2..4 ~ 0)
    for one in (["exact"], ["short"], ["one", "short"]):
        r, h = {k: refs[k] for k in one}, {k: res[k] for k in one}
        m = caption_metrics(r, {k: v[0] for k, v in h.items()}, meteor=False)
        b, _ = Bleu(4).compute_score(r, h, verbose=0)
        assert [m[f"BLEU-{k + 1}"] for k in range(4)] == pytest.approx(b, abs=1e-6)
        assert m["CIDEr"] == pytest.approx(Cider().compute_score(r, h)[0], abs=1e-6)
        assert m["ROUGE-L"] == pytest.approx(Rouge().compute_score(r, h)[0], abs=1e-6)


def test_meteor_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("no java")
    from pycocoevalcap.meteor.meteor import Meteor
    refs, hyps = _varied_set()
    refs = {k: refs[k] for k in list(refs)[:12]}
    hyps = {k: hyps[k] for k in refs}
    mine = caption_metrics(refs, hyps)["METEOR"]
    scorer = Meteor()
    theirs, _ = scorer.compute_score(refs, {k: [v] for k, v in hyps.items()})
    del scorer
    assert mine is not None and mine == pytest.approx(theirs, abs=1e-6)


def test_meteor_unavailable_notice(monkeypatch, capsys):
    monkeypatch.setenv("METEOR_JAR", "/nonexistent/meteor-1.5.jar")
    m = caption_metrics({"a": ["x y"]}, {"a": "x y"})
    assert m["METEOR"] is None
    assert "METEOR unavailable" in capsys.readouterr().out


def test_caption_metrics_id_mismatch():
    with pytest.raises(ValueError, match="ids differ"):
        caption_metrics({"a": ["x"]}, {"b": "x"}, meteor=False)


# ----------------------------------------------------------------------------- segmentation

def test_frame_accuracy_hand():
    labels = [np.array([0, 0, 1]), np.array([2, 2])]
    pred = [np.array([0, 1, 1]), np.array([2, 0])]
    # all 5 frames: right at 0, 2, 3 -> 3/5; non-background frames 2, 3, 4: right at 2, 3 -> 2/3;
    # predicting 0 everywhere is right on the 2 background frames -> 2/5
    m = frame_accuracy(pred, labels)
    assert m["acc"] == pytest.approx(60.0)
    assert m["acc_no_bg"] == pytest.approx(200 / 3)
    assert m["all_background"] == pytest.approx(40.0)
    assert frame_accuracy(np.concatenate(pred), np.concatenate(labels)) == m
    logits = np.eye(3)[np.concatenate(pred)]  # (5, 3) one-hot logits -> argmax gives pred back
    assert frame_accuracy(logits, np.concatenate(labels)) == m


def test_windows():
    assert windows(10) == [0]
    assert windows(32) == [0]
    assert windows(40) == [0, 16]            # 0..31, then 16..39 (8 s shorter, never moved back)
    assert windows(64) == [0, 16, 32]
    assert windows(70) == [0, 16, 32, 48]
    assert windows(70, size=32, stride=8) == [0, 8, 16, 24, 32, 40]
    for T in range(1, 120):
        s = windows(T)
        covered = np.zeros(T, bool)
        for a in s:
            covered[a:a + 32] = True
        assert covered.all() and s[-1] + 32 >= T and (len(s) == 1 or s[-2] + 32 < T)


def test_window_average_hand():
    # T = 5, windows of 3 at 0 and 2: second 2 is covered by both
    w0 = np.array([[1., 0.], [2., 0.], [3., 0.]])
    w1 = np.array([[5., 1.], [6., 1.], [7., 1.]])
    out = window_average([w0, w1], [0, 2], 5)
    want = np.array([[1, 0], [2, 0], [(3 + 5) / 2, 0.5], [6, 1], [7, 1]])
    np.testing.assert_allclose(out, want)
    # a window longer than the video (padding rows) is cut at T
    np.testing.assert_allclose(window_average([w0], [0], 2), w0[:2])
    with pytest.raises(ValueError, match="covered by no window"):
        window_average([w0], [0], 4)


# ----------------------------------------------------------------------------- localization

def test_dp_align_fixes_out_of_order_argmax():
    scores = np.array([[0.5, 0.8],
                       [0.0, 0.0],
                       [0.0, 0.1],
                       [0.9, 0.7]])  # (T=4, K=2)
    # greedy argmax: step 0 -> frame 3, step 1 -> frame 0 (out of order).
    # ordered pairs: (0,3) = 0.5 + 0.7 = 1.2 is the best (next: (0,2) = 0.6, (1,3) = (2,3) = 0.7)
    assert list(scores.argmax(0)) == [3, 0]
    assert dp_align(scores) == [0, 3]
    assert dp_align(np.zeros((3, 3))) == [0, 1, 2]  # T == K forces the diagonal
    with pytest.raises(ValueError):
        dp_align(np.zeros((2, 3)))


def test_dp_align_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        T = int(rng.integers(1, 8))
        K = int(rng.integers(1, T + 1))
        s = rng.normal(size=(T, K))
        f = dp_align(s)
        assert len(f) == K and all(a < b for a, b in zip(f, f[1:]))
        best = max(itertools.combinations(range(T), K), key=lambda c: s[list(c), range(K)].sum())
        assert f == list(best)


def test_localization_recall_hand():
    def rec(task, scores, labels):
        return {"task": task, "scores": np.array(scores, float), "labels": np.array(labels, float)}
    # task A, video 1: alignment [0, 1]; labels: step 0 positive at frame 0 (hit), step 1 at frame 2 (miss)
    a1 = rec("A", [[1, 0], [0, 1], [0, 0]], [[1, 0], [0, 0], [0, 1]])
    # task A, video 2: alignment [0, 2]; only step 1 annotated, at frame 2 -> 1 hit of 1 counted step
    a2 = rec("A", [[1, 0], [0, 0], [0, 1]], [[0, 0], [0, 0], [0, 1]])
    # task B, video: alignment [1, 2]; both steps annotated elsewhere -> 0 of 2
    b1 = rec("B", [[0, 0], [1, 0], [0, 1]], [[1, 1], [0, 0], [0, 0]])
    # pooled within task (CrossTask): A = (1 + 1) / (2 + 1) = 2/3, B = 0 -> mean 1/3
    assert localization_recall([a1, a2, b1]) == pytest.approx(100 / 3)
    # per-video mean within task: A = (1/2 + 1) / 2 = 3/4, B = 0 -> mean 3/8
    assert localization_recall([a1, a2, b1], per_video=True) == pytest.approx(37.5)


# ----------------------------------------------------------------------------- multiple choice

def test_mc_accuracy_hand():
    scores = np.array([[0.1, 0.9, 0.0, 0.0, 0.0],   # answer 1, right
                       [0.5, 0.2, 0.1, 0.0, 0.0],   # answer 3, wrong
                       [0.3, 0.3, 0.0, 0.0, 0.0],   # answer 0, tie with 1 -> wrong (pessimistic)
                       [0.0, 0.0, 0.0, 0.0, 1.0]])  # answer 4, right
    assert mc_accuracy(scores, np.array([1, 3, 0, 4])) == pytest.approx(50.0)
