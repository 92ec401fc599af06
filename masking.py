"""Attention masks (paper Fig. 3) and token masking (sec. 3.2 MFM-MLM, sec. 3.3 MMM) for VLM.

Everything here is a pure function of its inputs and a torch.Generator, so it can be tested without a model:
    python -m pytest -q tests/test_masking.py
train.py calls mask_batch (through losses.pretrain_loss) every pre-training step; vlm.py builds its attention
from attention_mask. docs/method.md §1 (the layout) and §3 (masking) state the method exactly.

Sequence layout (Eq. 2, docs/method.md §1), one row per example, T = 1 + 32 + 1 + Lt + 1:

    index   0      1 .. 32        33     34 .. 34+n-1   34+n    34+n+1 .. T-1
    token   [CLS]  v_1 .. v_32    [SEP]  t_1 .. t_n     [SEP]   [PAD] ..
    side    0      1 (video)      1      2 (text)       2       -

Video always has 32 slots; slots past the k valid seconds are padding. Valid positions of both modalities are
a prefix, so the last [SEP] of example i sits at 34 + n_i. The constants below are the one definition of this
layout (vlm.py, losses.py and the scripts import them from here).
"""
import torch

MAX_VIDEO = 32                    # video slots in every sequence
VIDEO_START = 1                   # index of v_1
SEP1 = VIDEO_START + MAX_VIDEO    # 33: the [SEP] after the video
TEXT_START = SEP1 + 1             # 34: index of t_1

# kinds returned by plan()
MFM_MLM, WHOLE_TEXT, WHOLE_VIDEO = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------
# Layout


def _check_prefix(mask, name):
    """Valid positions must be a prefix (1..k); everything here relies on it."""
    n = mask.sum(1, keepdim=True)                                        # (B, 1)
    prefix = torch.arange(mask.shape[1], device=mask.device) < n         # (B, L)
    if not torch.equal(prefix, mask.bool()):
        raise ValueError(f"masking.py: {name} must be True on a prefix of each row (valid positions 1..k), "
                         f"got {mask.int().tolist()}")


def pad_video_mask(video_mask):
    """(B, Tv) bool with Tv <= 32 -> (B, 32): slots past Tv are padding."""
    B, Tv = video_mask.shape
    if Tv > MAX_VIDEO:
        raise ValueError(f"masking.py: video_mask has {Tv} columns, at most {MAX_VIDEO} video slots fit")
    out = torch.zeros(B, MAX_VIDEO, dtype=torch.bool, device=video_mask.device)
    out[:, :Tv] = video_mask.bool()
    return out


def layout(video_mask, text_mask):
    """Which positions hold a real token and which side they belong to.

    Returns valid (B, T) bool and side (B, T) long: 0 = [CLS], 1 = video + first [SEP], 2 = text + last [SEP].
    """
    _check_prefix(video_mask, "video_mask")
    _check_prefix(text_mask, "text_mask")
    vm = pad_video_mask(video_mask)                                      # (B, 32)
    B, Lt = text_mask.shape
    dev = text_mask.device
    n = text_mask.sum(1, keepdim=True)                                   # (B, 1) text length n_i
    ones = torch.ones(B, 1, dtype=torch.bool, device=dev)
    text_side = torch.arange(Lt + 1, device=dev) <= n                    # (B, Lt+1): t_1..t_n and last [SEP]
    valid = torch.cat([ones, vm, ones, text_side], dim=1)                # (B, T)
    side = torch.cat([torch.zeros(1 + MAX_VIDEO + 1, dtype=torch.long, device=dev),
                      torch.full((Lt + 1,), 2, dtype=torch.long, device=dev)])
    side[VIDEO_START:SEP1 + 1] = 1
    return valid, side.expand(B, -1)                                     # (B, T), (B, T)


# ----------------------------------------------------------------------------------------------------------
# Attention masks (Fig. 3). True = query row may attend to key column.
#
#   full (pre-training)        isolated (retrieval etc.)    caption (generation)
#   keys: C  V  S1 T  S2       keys: C  V  S1 T  S2          keys: C  V  S1 T      S2
#   C     x  x  x  x  x        C     x  .  .  .  .           C     x  x  x  .      .
#   V     x  x  x  x  x        V     .  x  x  .  .           V     x  x  x  .      .
#   S1    x  x  x  x  x        S1    .  x  x  .  .           S1    x  x  x  .      .
#   T     x  x  x  x  x        T     .  .  .  x  x           T     x  x  x  lower  .
#   S2    x  x  x  x  x        S2    .  .  .  x  x           S2    x  x  x  x      x
#
# (C = [CLS], V = valid video, S1/S2 = first/last [SEP], T = valid text; "lower" = key index <= query index.)
# Padding is never a key; a padding row attends to itself only, so no row is all False (SDPA would give NaN).


def _full(valid, side):
    return valid[:, :, None] & valid[:, None, :]                         # (B, T, T)


def _isolated(valid, side):
    same_side = side[:, :, None] == side[:, None, :]                     # (B, T, T)
    return _full(valid, side) & same_side


def _caption(valid, side):
    T = valid.shape[1]
    pos = torch.arange(T, device=valid.device)
    key_is_text = (side == 2)[:, None, :]                                # (B, 1, T)
    query_is_text = (side == 2)[:, :, None]                              # (B, T, 1)
    causal = pos[None, :, None] >= pos[None, None, :]                    # (1, T, T) key <= query
    # keys on the video side ([CLS], video, first [SEP]) are seen by everyone; text keys only by later text
    allowed = ~key_is_text | (query_is_text & causal)
    return _full(valid, side) & allowed


_KINDS = {"full": _full, "isolated": _isolated, "caption": _caption}


def attention_mask(video_mask, text_mask, kind="full"):
    """Boolean (B, T, T) attention mask for `kind` in full / isolated / caption, T = 34 + Lt + 1."""
    if kind not in _KINDS:
        raise ValueError(f"masking.attention_mask: unknown kind {kind!r}, expected one of {sorted(_KINDS)}")
    valid, side = layout(video_mask, text_mask)
    mask = _KINDS[kind](valid, side)
    eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    return mask | (eye & ~valid[:, :, None])                             # padding rows: themselves only


# ----------------------------------------------------------------------------------------------------------
# Token masking (sec. 3.2 MFM-MLM, sec. 3.3 MMM)


def _rand(shape, gen, device):
    """Uniform [0, 1) drawn on the generator's device, moved to `device` (same draws on CPU and GPU)."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _per_example(p, B, device):
    """p float or (B,) tensor -> (B, 1) float tensor."""
    p = torch.as_tensor(p, dtype=torch.float32, device=device)
    if p.dim() == 0:
        p = p.expand(B)
    if p.shape != (B,):
        raise ValueError(f"masking.py: p must be a float or a ({B},) tensor, got shape {tuple(p.shape)}")
    return p[:, None]


def mask_text(text_ids, text_mask, p, gen, mask_id, vocab_size, special_ids=()):
    """BERT masking (MLM, sec. 3.2): select each valid non-special token with prob p (per example), then
    80% -> [MASK], 10% -> a random id, 10% unchanged.

    Never selected: padding, mask_id and any id in special_ids ([CLS], [SEP], [PAD]). Random ids are drawn
    uniformly over the vocabulary minus special_ids and mask_id. With p = 1 every valid non-special token is
    selected (MMM whole-text), still with 80/10/10.
    Returns (ids (B, Lt) long, labels (B, Lt) long: original id where selected, -100 elsewhere).
    """
    B, Lt = text_ids.shape
    dev = text_ids.device
    banned_ids = sorted(set(int(i) for i in special_ids) | {int(mask_id)})
    banned = torch.tensor(banned_ids, device=dev)
    candidate = text_mask.bool() & ~torch.isin(text_ids, banned)         # (B, Lt)
    selected = candidate & (_rand((B, Lt), gen, dev) < _per_example(p, B, dev))
    labels = torch.where(selected, text_ids, torch.full_like(text_ids, -100))

    r = _rand((B, Lt), gen, dev)                                         # 80 / 10 / 10 split
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in banned_ids if 0 <= i < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1).to(dev)                          # ids a random replacement may take
    random_ids = pool[torch.randint(len(pool), (B, Lt), generator=gen, device=gen.device).to(dev)]
    ids = torch.where(to_mask, torch.full_like(text_ids, mask_id), text_ids)
    ids = torch.where(to_random, random_ids, ids)
    return ids, labels


def mask_video(video, video_mask, p, gen):
    """MFM (sec. 3.2): mask each valid video token with prob p (per example) by zeroing its 512-d input
    feature. Returns (video_in (B, Tv, D), labels (B, Tv) bool, True = masked)."""
    B, Tv, _ = video.shape
    labels = video_mask.bool() & (_rand((B, Tv), gen, video.device) < _per_example(p, B, video.device))
    video_in = video.masked_fill(labels[:, :, None], 0.0)
    return video_in, labels


def plan(B, gen, mmm_prob=0.5, p_text=0.15, p_video=0.15):
    """Per-example masking plan (sec. 3.3). With prob mmm_prob an example is MMM: half of those mask the whole
    text (p_text = 1, p_video = 0), half the whole video (p_video = 1, p_text = 0); the rest are MFM-MLM.
    Returns (p_text (B,), p_video (B,), kind (B,) long: 0 = MFM-MLM, 1 = whole text, 2 = whole video)."""
    u = torch.rand(B, generator=gen, device=gen.device).cpu()            # one draw decides the kind
    kind = torch.full((B,), MFM_MLM, dtype=torch.long)
    kind[u < mmm_prob] = WHOLE_VIDEO
    kind[u < mmm_prob / 2] = WHOLE_TEXT
    pt = torch.full((B,), float(p_text))
    pv = torch.full((B,), float(p_video))
    pt[kind == WHOLE_TEXT] = 1.0                                         # whole text, video untouched
    pv[kind == WHOLE_TEXT] = 0.0
    pt[kind == WHOLE_VIDEO] = 0.0                                        # whole video, text untouched
    pv[kind == WHOLE_VIDEO] = 1.0
    return pt, pv, kind


def mask_batch(batch, gen, mmm_prob, p_text, p_video, mask_id, vocab_size, special_ids):
    """Mask a collated batch (video, video_mask, text_ids, text_mask): plan(), then mask_text, mask_video.
    Returns dict(video_in, video_labels, text_in, text_labels, kind). The batch itself is not modified."""
    for key in ("video", "video_mask", "text_ids", "text_mask"):
        if key not in batch:
            raise KeyError(f"masking.mask_batch: batch has no {key!r} (keys: {sorted(batch)})")
    B = batch["text_ids"].shape[0]
    pt, pv, kind = plan(B, gen, mmm_prob, p_text, p_video)
    text_in, text_labels = mask_text(batch["text_ids"], batch["text_mask"], pt, gen, mask_id, vocab_size,
                                     special_ids)
    video_in, video_labels = mask_video(batch["video"], batch["video_mask"], pv, gen)
    return dict(video_in=video_in, video_labels=video_labels, text_in=text_in, text_labels=text_labels,
                kind=kind.to(batch["text_ids"].device))


# ----------------------------------------------------------------------------------------------------------
# All-in-One: video-text matching pairs


def vtm_pairs(B, gen, p_neg=0.5, groups=None):
    """Video-text matching (All-in-One pre-training): each text keeps its own clip's video, or with prob p_neg
    takes another clip's of the batch, drawn uniformly among clips of OTHER videos (`groups` (B,): the video each
    clip came from; None = every clip its own). A clip with no other video in the batch stays matched.
    Returns (video index (B,) long, labels (B,) long: 1 = matched, 0 = mismatched)."""
    groups = torch.arange(B) if groups is None else groups.cpu()
    u = torch.rand(B, generator=gen, device=gen.device).cpu()
    r = torch.rand(B, B, generator=gen, device=gen.device).cpu()
    same = groups[:, None] == groups[None, :]                            # (B, B), diagonal included
    other = r.masked_fill(same, -1.0).argmax(1)                          # a random clip of another video
    neg = (u < p_neg) & (~same).any(1)
    return torch.where(neg, other, torch.arange(B)), (~neg).long()
