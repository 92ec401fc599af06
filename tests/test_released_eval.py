"""The three evaluation steps that follow the released COIN / CrossTask evaluation code, each on a case worked
by hand: sliding windows (shorter last window, never moved back), localization scoring (raw scores averaged
over windows, log-softmax over steps, DP), and annotations starting past the end of the features (empty).

Run: python -m pytest -q tests/test_released_eval.py
"""
import os

import numpy as np
import pytest
import torch

import tokens
import data
import evaluate
from evaluate import frame_outputs
from metrics import dp_align, localization_recall, step_log_probs, window_average, windows
import readers


def test_windows_start_every_stride_and_the_last_is_shorter():
    # T = 40, size 32, stride 16: [0, 32) then [16, 40) (24 s); the old rule moved the last one back to 8
    assert windows(40) == [0, 16]
    # T = 70: 0, 16, 32 (ends at 64 < 70), 48 (reaches 70: the last, 22 s long)
    assert windows(70) == [0, 16, 32, 48]
    # COIN training stride 8: 0, 8, ..., 40 (40 + 32 >= 70)
    assert windows(70, stride=8) == [0, 8, 16, 24, 32, 40]
    assert windows(32) == [0] and windows(5) == [0] and windows(33) == [0, 16]


class _StubVideo(torch.nn.Module):
    """video_states returns the input features' first H dims, plus 100 on every token of a 24-second window,
    so each second's averaged output shows which windows covered it and how long they were."""
    def __init__(self, H=2):
        super().__init__()
        self.H, self.lengths = H, []

    def video_states(self, video, video_mask):
        n = video_mask.sum(1)  # (W,) valid seconds per window
        self.lengths += n.tolist()
        h = video[..., :self.H].clone() + 100.0 * (n == 24).float()[:, None, None]
        return torch.cat([h, torch.zeros(h.shape[0], 1, self.H)], 1)  # + the first [SEP] slot


def test_frame_outputs_average_overlapping_seconds_of_a_shorter_last_window():
    T = 40
    feat = np.zeros((T, 512), np.float32)
    feat[:, 0] = np.arange(T)  # dim 0 = the second
    stub = _StubVideo()
    out = frame_outputs(stub, feat, lambda h: h, "cpu", torch.no_grad())
    assert stub.lengths == [32, 24]  # window [0, 32) and the shorter last window [16, 40)
    # seconds 0..15: window 0 only -> t; 16..31: mean of t and t + 100 -> t + 50; 32..39: window 1 only
    want = np.arange(T, dtype=np.float64) + np.r_[np.zeros(16), np.full(16, 50.0), np.full(8, 100.0)]
    np.testing.assert_allclose(out[:, 0], want)


def test_step_log_probs_hand():
    lp = step_log_probs(np.array([[0.0, np.log(3.0)], [5.0, 5.0]]))
    np.testing.assert_allclose(lp, np.log([[0.25, 0.75], [0.5, 0.5]]))


def test_raw_average_then_log_softmax_picks_another_alignment_than_averaged_probabilities():
    # 3 seconds, 2 steps, windows of 2 s at 0 and 1; second 1 is covered by both.
    w0 = np.array([[3.0, -3.0], [-1.0, -1.0]])  # seconds 0, 1
    w1 = np.array([[3.0, -2.0], [0.0, -2.0]])   # seconds 1, 2
    raw = window_average([w0, w1], [0, 1], 3)
    np.testing.assert_allclose(raw, [[3, -3], [1, -1.5], [0, -2]])
    # log p(step 0) = -log(1 + e^(s1 - s0)): -0.0025, -0.0789, -0.1269; log p(step 1): -6.0025, -2.5789, -2.1269
    # pairs (f0 < f1): (0,1) -2.581, (0,2) -2.129, (1,2) -2.206 -> (0, 2)
    assert dp_align(step_log_probs(raw)) == [0, 2]
    # averaging per-window softmax probabilities instead: second 1 gets (0.747, 0.253); sums of probabilities
    # (0,1) 1.251, (0,2) 1.117, (1,2) 0.866 -> (0, 1): the released code's rule changes the answer
    soft = lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)
    assert dp_align(window_average([soft(w0), soft(w1)], [0, 1], 3)) == [0, 1]
    labels = np.array([[1, 0], [0, 0], [0, 1]], float)  # step 0 at second 0, step 1 at second 2
    assert localization_recall([{"task": "t", "scores": step_log_probs(raw), "labels": labels}]) == 100.0


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_crosstask_segment_starting_past_the_features_is_empty(tmp_path, capsys):
    d = tmp_path / "crosstask"
    _write(str(d / "tasks_primary.txt"), "7\nMake Tea\nhttp://w\n3\nboil water,add tea,pour\n\n")
    _write(str(d / "videos.csv"), "7,v1,http://y\n7,v2,http://y\n")
    _write(str(d / "videos_val.csv"), "7,v2,http://y\n")
    for v in ("v1", "v2"):
        os.makedirs(d / "feats", exist_ok=True)
        np.save(str(d / "feats" / f"{v}.npy"), np.ones((20, 512), np.float16) / np.sqrt(512))
        # step 1 inside; step 2 starts inside (19.5 s) and runs past T = 20; step 3 starts past T
        _write(str(d / "annotations" / f"7_{v}.csv"), "1,1.5,3.2\n2,19.5,30.0\n3,22.0,25.0\n")
    recs = readers.load_crosstask(str(tmp_path), "train", n_train=1)[0]
    y = recs[0]["labels"]
    assert np.flatnonzero(y[:, 0]).tolist() == [1, 2, 3]
    assert np.flatnonzero(y[:, 1]).tolist() == [19]  # clipped at the end
    assert y[:, 2].sum() == 0  # empty, not clamped to second 19
    assert "1 segments starting past the features, left empty (e.g. v1)" in capsys.readouterr().out


def test_zero_shot_localization_equals_a_loop_over_released_windows(tiny_world):
    """run_task's localization against an independent loop: windows cut here by the released rule, raw frame x
    step dot products averaged per second, log-softmax in torch, the same DP."""
    import vlm as vlm_module
    torch.manual_seed(0)
    tok = tokens.load_tokenizer(tiny_world)
    ids = {f"{k}_token_id": v for k, v in tokens.special_ids(tok).items()}
    model = vlm_module.VLM(vlm_module.VLMConfig(vocab_size=tok.get_vocab_size(), hidden_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                                **ids)).eval()
    got = evaluate.run_task("localization", model, tiny_world, "test", tok)["recall"]
    recs, tasks, store = readers.load_crosstask(tiny_world, "test")
    out = []
    with torch.no_grad():
        for r in recs:
            ids = [tok.encode(s, add_special_tokens=False).ids for s in tasks[r["task"]]["steps"]]
            b = data.collate_pairs([np.zeros((1, 512), np.float32)] * len(ids), ids)
            emb = model.encode_text(b["text_ids"], b["text_mask"])  # (K, H)
            feat = torch.as_tensor(np.asarray(store[r["video_id"]][:len(r["labels"])], np.float32))
            T, start = len(feat), 0
            total, count = torch.zeros(T, len(ids)), torch.zeros(T, 1)
            while True:
                end = min(T, start + 32)
                w = feat[start:end][None]
                h = model.video_states(w, torch.ones(1, end - start, dtype=torch.bool))[0, :end - start]
                total[start:end] += h @ emb.T
                count[start:end] += 1
                if end == T:
                    break
                start += 16
            lp = torch.log_softmax(total / count, dim=1)
            out.append({"task": r["task"], "scores": lp.numpy(), "labels": r["labels"]})
    assert got == pytest.approx(localization_recall(out))
