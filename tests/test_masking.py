"""Tests for masking.py: every Fig. 3 attention mask cell by cell against hand-written matrices, and the
statistics of MFM-MLM / MMM token masking (sec. 3.2-3.3) over many draws of a fixed generator.

    python -m pytest -q tests/test_masking.py
"""

import pytest
import torch

import masking
from masking import attention_mask, mask_batch, mask_text, mask_video, plan

torch.set_num_threads(1)

CLS, SEP, PAD, MASK, V = 101, 102, 0, 103, 3000
SPECIALS = (CLS, SEP, PAD, MASK)

# ----------------------------------------------------------------------------------------------------------
# Attention masks. Example: B = 2, video 3 columns (valid 2 / 3), text 3 columns (valid 2 / 3), T = 38.
# The positions that hold anything interesting are 0 ([CLS]), 1-3 (video), 33 (first [SEP]), 34-37 (text and
# last [SEP]); slots 4..32 are video padding in both examples. Rows / columns below follow IDX.
IDX = [0, 1, 2, 3, 33, 34, 35, 36, 37]
VIDEO_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
TEXT_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)

# example 0: C v1 v2 [pad] S1 t1 t2 S2(at 36) [pad at 37]
# example 1: C v1 v2 v3    S1 t1 t2 t3        S2(at 37)
EXPECTED = {
    ("full", 0): """
        C  1 1 1 . 1 1 1 1 .
        v1 1 1 1 . 1 1 1 1 .
        v2 1 1 1 . 1 1 1 1 .
        pd . . . 1 . . . . .
        S1 1 1 1 . 1 1 1 1 .
        t1 1 1 1 . 1 1 1 1 .
        t2 1 1 1 . 1 1 1 1 .
        S2 1 1 1 . 1 1 1 1 .
        pd . . . . . . . . 1""",
    ("full", 1): """
        C  1 1 1 1 1 1 1 1 1
        v1 1 1 1 1 1 1 1 1 1
        v2 1 1 1 1 1 1 1 1 1
        v3 1 1 1 1 1 1 1 1 1
        S1 1 1 1 1 1 1 1 1 1
        t1 1 1 1 1 1 1 1 1 1
        t2 1 1 1 1 1 1 1 1 1
        t3 1 1 1 1 1 1 1 1 1
        S2 1 1 1 1 1 1 1 1 1""",
    ("isolated", 0): """
        C  1 . . . . . . . .
        v1 . 1 1 . 1 . . . .
        v2 . 1 1 . 1 . . . .
        pd . . . 1 . . . . .
        S1 . 1 1 . 1 . . . .
        t1 . . . . . 1 1 1 .
        t2 . . . . . 1 1 1 .
        S2 . . . . . 1 1 1 .
        pd . . . . . . . . 1""",
    ("isolated", 1): """
        C  1 . . . . . . . .
        v1 . 1 1 1 1 . . . .
        v2 . 1 1 1 1 . . . .
        v3 . 1 1 1 1 . . . .
        S1 . 1 1 1 1 . . . .
        t1 . . . . . 1 1 1 1
        t2 . . . . . 1 1 1 1
        t3 . . . . . 1 1 1 1
        S2 . . . . . 1 1 1 1""",
    ("caption", 0): """
        C  1 1 1 . 1 . . . .
        v1 1 1 1 . 1 . . . .
        v2 1 1 1 . 1 . . . .
        pd . . . 1 . . . . .
        S1 1 1 1 . 1 . . . .
        t1 1 1 1 . 1 1 . . .
        t2 1 1 1 . 1 1 1 . .
        S2 1 1 1 . 1 1 1 1 .
        pd . . . . . . . . 1""",
    ("caption", 1): """
        C  1 1 1 1 1 . . . .
        v1 1 1 1 1 1 . . . .
        v2 1 1 1 1 1 . . . .
        v3 1 1 1 1 1 . . . .
        S1 1 1 1 1 1 . . . .
        t1 1 1 1 1 1 1 . . .
        t2 1 1 1 1 1 1 1 . .
        t3 1 1 1 1 1 1 1 1 .
        S2 1 1 1 1 1 1 1 1 1""",
}


def expected_matrix(kind, b):
    """The full 38 x 38 expected mask: the hand-written 9 x 9 block, and video padding slots 4..32 that
    attend to themselves only and are nobody's key."""
    rows = [line.split()[1:] for line in EXPECTED[(kind, b)].strip().splitlines()]
    out = torch.zeros(38, 38, dtype=torch.bool)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            out[IDX[i], IDX[j]] = cell == "1"
    for p in range(4, 33):
        out[p, p] = True
    return out


@pytest.mark.parametrize("kind", ["full", "isolated", "caption"])
def test_attention_mask_cell_by_cell(kind):
    m = attention_mask(VIDEO_MASK, TEXT_MASK, kind)
    assert m.dtype == torch.bool and m.shape == (2, 38, 38)
    for b in range(2):
        exp = expected_matrix(kind, b)
        bad = (m[b] != exp).nonzero().tolist()
        assert not bad, f"{kind} example {b}: cells differ at {bad[:10]}"


@pytest.mark.parametrize("kind", ["full", "isolated", "caption"])
def test_attention_mask_invariants(kind):
    m = attention_mask(VIDEO_MASK, TEXT_MASK, kind)
    assert m.any(-1).all(), "an all-False row would make SDPA return NaN"
    # a 32-column video mask gives the same result as the 3-column one padded inside
    vm32 = torch.zeros(2, 32, dtype=torch.bool)
    vm32[:, :3] = VIDEO_MASK
    assert torch.equal(attention_mask(vm32, TEXT_MASK, kind), m)
    # no text at all (a dummy-free video-only sequence): T = 35, last [SEP] at 34
    m0 = attention_mask(VIDEO_MASK, torch.zeros(2, 0, dtype=torch.bool), kind)
    assert m0.shape == (2, 35, 35) and m0[:, 34, 34].all()


def test_layout_constants():
    assert (masking.VIDEO_START, masking.SEP1, masking.TEXT_START, masking.MAX_VIDEO) == (1, 33, 34, 32)


def test_attention_mask_errors():
    with pytest.raises(ValueError, match="unknown kind"):
        attention_mask(VIDEO_MASK, TEXT_MASK, "causal")
    with pytest.raises(ValueError, match="at most 32"):
        attention_mask(torch.ones(2, 33, dtype=torch.bool), TEXT_MASK, "full")
    with pytest.raises(ValueError, match="prefix"):
        attention_mask(torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool), TEXT_MASK, "full")


# ----------------------------------------------------------------------------------------------------------
# Token masking


def make_text(B=64, Lt=40, seed=0):
    """Random content ids in 1000..2999 with specials sprinkled in and a random valid prefix length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, V, (B, Lt), generator=g)
    ids[:, 3], ids[:, 5], ids[:, 7] = CLS, SEP, MASK                      # specials inside the content
    n = torch.randint(10, Lt + 1, (B,), generator=g)
    mask = torch.arange(Lt) < n[:, None]
    ids[~mask] = PAD
    return ids, mask


def test_mask_text_statistics():
    ids, mask = make_text()
    gen = torch.Generator().manual_seed(1)
    candidate = mask & ~torch.isin(ids, torch.tensor(SPECIALS))
    n_sel = n_cand = n_mask = n_rand = n_same = 0
    for _ in range(20):
        out, labels = mask_text(ids, mask, 0.15, gen, MASK, V, SPECIALS)
        sel = labels != -100
        assert not (sel & ~candidate).any(), "selected a special token or padding"
        assert torch.equal(labels[sel], ids[sel])
        assert torch.equal(out[~sel], ids[~sel]), "an unselected token changed"
        n_sel += sel.sum().item()
        n_cand += candidate.sum().item()
        n_mask += (out[sel] == MASK).sum().item()
        n_same += (out[sel] == ids[sel]).sum().item()
        changed = sel & (out != MASK) & (out != ids)
        n_rand += changed.sum().item()
        assert not torch.isin(out[changed], torch.tensor(SPECIALS)).any(), "random id is a special token"
        assert ((out >= 0) & (out < V)).all()
    assert abs(n_sel / n_cand - 0.15) < 0.01
    assert abs(n_mask / n_sel - 0.8) < 0.02
    assert abs(n_rand / n_sel - 0.1) < 0.015
    assert abs(n_same / n_sel - 0.1) < 0.015


def test_mask_text_whole_and_per_example_p():
    ids, mask = make_text(B=8)
    candidate = mask & ~torch.isin(ids, torch.tensor(SPECIALS))
    gen = torch.Generator().manual_seed(2)
    _, labels = mask_text(ids, mask, 1.0, gen, MASK, V, SPECIALS)
    assert torch.equal(labels != -100, candidate), "p = 1 must select every valid non-special token"
    p = torch.tensor([0.0, 1.0] * 4)
    out, labels = mask_text(ids, mask, p, gen, MASK, V, SPECIALS)
    assert (labels[0::2] == -100).all() and torch.equal(out[0::2], ids[0::2])
    assert torch.equal(labels[1::2] != -100, candidate[1::2])
    with pytest.raises(ValueError, match="p must be"):
        mask_text(ids, mask, torch.ones(3), gen, MASK, V, SPECIALS)


def test_mask_video_statistics():
    g = torch.Generator().manual_seed(3)
    video = torch.randn(64, 32, 512, generator=g)
    vmask = torch.arange(32) < torch.randint(1, 33, (64,), generator=g)[:, None]
    video[~vmask] = 0
    gen = torch.Generator().manual_seed(4)
    n_sel = n_valid = 0
    for _ in range(20):
        vin, labels = mask_video(video, vmask, 0.15, gen)
        assert labels.dtype == torch.bool and not (labels & ~vmask).any()
        assert (vin[labels] == 0).all() and torch.equal(vin[~labels], video[~labels])
        n_sel += labels.sum().item()
        n_valid += vmask.sum().item()
    assert abs(n_sel / n_valid - 0.15) < 0.01
    _, labels = mask_video(video, vmask, 1.0, gen)
    assert torch.equal(labels, vmask)


def test_plan_shares():
    gen = torch.Generator().manual_seed(5)
    pt, pv, kind = plan(20000, gen, mmm_prob=0.5, p_text=0.15, p_video=0.15)
    share = torch.bincount(kind, minlength=3).float() / 20000
    assert abs(share[0] - 0.5) < 0.015 and abs(share[1] - 0.25) < 0.015 and abs(share[2] - 0.25) < 0.015
    assert (pt[kind == 0] == 0.15).all() and (pv[kind == 0] == 0.15).all()
    assert (pt[kind == 1] == 1).all() and (pv[kind == 1] == 0).all()
    assert (pt[kind == 2] == 0).all() and (pv[kind == 2] == 1).all()
    _, _, kind = plan(1000, gen, mmm_prob=0.0)
    assert (kind == 0).all()
    _, _, kind = plan(1000, gen, mmm_prob=1.0)
    assert (kind != 0).all()


def test_mask_batch():
    ids, tmask = make_text(B=32, Lt=20)
    g = torch.Generator().manual_seed(6)
    video = torch.randn(32, 10, 512, generator=g)
    vmask = torch.arange(10) < torch.randint(1, 11, (32,), generator=g)[:, None]
    video[~vmask] = 0
    batch = dict(video=video, video_mask=vmask, text_ids=ids, text_mask=tmask)
    before = {k: v.clone() for k, v in batch.items()}
    out = mask_batch(batch, torch.Generator().manual_seed(7), 0.5, 0.15, 0.15, MASK, V, SPECIALS)
    again = mask_batch(batch, torch.Generator().manual_seed(7), 0.5, 0.15, 0.15, MASK, V, SPECIALS)
    for k in out:
        assert torch.equal(out[k], again[k]), f"{k} not deterministic for a fixed generator"
    for k in batch:
        assert torch.equal(batch[k], before[k]), f"mask_batch modified batch[{k!r}]"
    candidate = tmask & ~torch.isin(ids, torch.tensor(SPECIALS))
    kind = out["kind"]
    assert set(kind.tolist()) == {0, 1, 2}
    text_sel = out["text_labels"] != -100
    for b in range(32):
        if kind[b] == 1:   # whole text, video untouched
            assert torch.equal(text_sel[b], candidate[b]) and not out["video_labels"][b].any()
            assert torch.equal(out["video_in"][b], video[b])
        if kind[b] == 2:   # whole video, text untouched
            assert torch.equal(out["video_labels"][b], vmask[b]) and not text_sel[b].any()
            assert torch.equal(out["text_in"][b], ids[b])
    with pytest.raises(KeyError, match="video_mask"):
        mask_batch(dict(video=video), torch.Generator(), 0.5, 0.15, 0.15, MASK, V, SPECIALS)
