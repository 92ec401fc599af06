"""Losses of VLM: the masked token loss L_VLM (paper sec. 3.3, Eq. 8-9), the MFM-MLM baseline (sec. 3.2,
Eq. 5-7), the pre-training step that masks a batch and scores it, and the fine-tuning losses (sec. 4); the
All-in-One pre-training loss (MLM + VTM, docs/allinone.md). docs/method.md §3 states the method exactly.

    python train.py [--loss mfm_mlm]           # pre-training calls pretrain_loss every step (finetune.py the rest)
    python -m pytest -q tests/test_losses.py

The masked-token losses work on GATHERED rows: the caller picks the masked positions first, so the vocabulary
is projected for (n_masked, V) rows only, never (B, T, V). Names used below:
    e_video  (Nv, H)  transform(h) at masked video positions              (Eq. 4)
    target   (Nv, H)  video_mlp(original feature) at those positions      (x_s, Eq. 1)
    neg      (Nn, H)  video_mlp(original feature) at every valid non-masked video position of the batch (V')
    e_text   (Nt, H)  transform(h) at masked text positions
    labels   (Nt,)    their original word ids
    E        (V, H)   the word-embedding matrix (tied decoder), D in Eq. 8
"""
import torch
import torch.nn.functional as F

from masking import TEXT_START, VIDEO_START, mask_batch, mask_text, vtm_pairs


def _zero(*tensors):
    """A scalar 0 that still has a gradient path to every tensor given (so backward() works and every parameter
    gets a gradient, exactly 0, when a batch has nothing masked). Never NaN, unlike the mean of an empty
    cross-entropy."""
    return sum(t.sum() * 0.0 for t in tensors)


# ----------------------------------------------------------------------------------------------------------
# Pre-training losses on gathered rows


def vlm_loss(e_video, target_video, neg_video, e_text, text_labels, word_emb):
    """Masked token loss L_VLM (Eq. 8-9): one cross-entropy over every masked video and text row.

    video row s:  logits [e.x_s | e.V'^T | e.E^T]   (1 + Nn + V), correct class 0
    text row s:   logits [e.E^T | e.V'^T]           (V + Nn),     correct class = its word id
    Plain dot products: no bias, no temperature; gradients reach targets and negatives. The loss is the mean
    over all Nv + Nt masked rows; with nothing masked it is a zero that still backpropagates.
    """
    n = e_video.shape[0] + e_text.shape[0]
    if n == 0:
        return _zero(e_video, target_video, neg_video, e_text, word_emb)
    total = e_video.new_zeros(())
    if e_video.shape[0] > 0:
        pos = (e_video * target_video).sum(-1, keepdim=True)                     # (Nv, 1)   e.x
        logits = torch.cat([pos, e_video @ neg_video.T, e_video @ word_emb.T], 1)  # (Nv, 1+Nn+V) Eq. 9
        zeros = torch.zeros(e_video.shape[0], dtype=torch.long, device=e_video.device)
        total = total + F.cross_entropy(logits.float(), zeros, reduction="sum")
    if e_text.shape[0] > 0:
        logits = torch.cat([e_text @ word_emb.T, e_text @ neg_video.T], 1)       # (Nt, V+Nn) Eq. 9
        total = total + F.cross_entropy(logits.float(), text_labels, reduction="sum")
    return total / n                                                             # Eq. 8: mean over s


def mfm_mlm_loss(e_video, target_video, neg_video, e_text, text_labels, word_emb, output_bias):
    """L_MFM-MLM = L_MFM + L_MLM (Eq. 7), the ablation baseline.

    L_MFM (Eq. 5-6): NCE of each masked video row over [x_s | V'], correct class 0, mean over video rows.
    L_MLM: BERT's cross-entropy over the vocabulary, logits e.E^T + bias, mean over text rows.
    A modality with no masked rows contributes a zero (with a gradient path), never NaN.
    """
    if e_video.shape[0] > 0:
        pos = (e_video * target_video).sum(-1, keepdim=True)                     # (Nv, 1)
        logits = torch.cat([pos, e_video @ neg_video.T], 1)                      # (Nv, 1+Nn) Eq. 6
        zeros = torch.zeros(e_video.shape[0], dtype=torch.long, device=e_video.device)
        mfm = F.cross_entropy(logits.float(), zeros)                             # Eq. 5
    else:
        mfm = _zero(e_video, target_video, neg_video)
    if e_text.shape[0] > 0:
        logits = e_text @ word_emb.T + output_bias                               # (Nt, V)
        mlm = F.cross_entropy(logits.float(), text_labels)
    else:
        mlm = _zero(e_text, word_emb, output_bias)
    return mfm + mlm                                                             # Eq. 7


# ----------------------------------------------------------------------------------------------------------
# One pre-training step's loss


def gather_masked(model, batch, masked):
    """Run the encoder on a masked batch (full attention, Eq. 3) and gather the rows the losses need.

    Returns dict(e_video, target_video, neg_video, e_text, text_labels): see the module docstring.
    """
    video, video_mask = batch["video"], batch["video_mask"].bool()          # (B, Tv, 512), (B, Tv)
    text_mask = batch["text_mask"].bool()
    Tv, Lt = video_mask.shape[1], text_mask.shape[1]
    h = model(masked["video_in"], video_mask, masked["text_in"], text_mask, attention="full")  # (B, T, H)
    h_video = h[:, VIDEO_START:VIDEO_START + Tv]                            # (B, Tv, H)
    h_text = h[:, TEXT_START:TEXT_START + Lt]                               # (B, Lt, H)

    v_lab, t_lab = masked["video_labels"], masked["text_labels"]            # (B, Tv) bool, (B, Lt) long
    t_sel = t_lab != -100
    x = model.video_mlp(video)                                              # (B, Tv, H) unmasked tokens, Eq. 1
    return dict(
        e_video=model.transform(h_video[v_lab]),                            # (Nv, H) Eq. 4
        target_video=x[v_lab],                                              # (Nv, H)
        neg_video=x[video_mask & ~v_lab],                                   # (Nn, H) V'
        e_text=model.transform(h_text[t_sel]),                              # (Nt, H) Eq. 4
        text_labels=t_lab[t_sel],                                           # (Nt,)
    )


def pretrain_loss(model, batch, gen, loss="vlm", mmm_prob=0.5, p_text=0.15, p_video=0.15):
    """Mask `batch` (MMM + MFM-MLM plan, masking.mask_batch), encode it and return (loss, stats).

    loss="vlm": L_VLM (Eq. 8); loss="mfm_mlm": L_MFM + L_MLM (Eq. 7). stats holds n_masked_video,
    n_masked_text and n_negatives (|V'|) as ints.
    """
    if loss not in ("vlm", "mfm_mlm"):
        raise ValueError(f"losses.pretrain_loss: loss must be 'vlm' or 'mfm_mlm', got {loss!r}")
    cfg = model.config
    specials = (cfg.cls_token_id, cfg.sep_token_id, cfg.pad_token_id, cfg.mask_token_id)
    # masked = {video_in: the video with masked seconds' features zeroed (MFM), video_labels (B, Tv) bool,
    # text_in: selected pieces 80/10/10 [MASK] / random / kept, text_labels: original id or -100, kind}; per
    # example (masking.plan): mmm_prob/2 whole text, mmm_prob/2 whole video, the rest 15% / 15% (sec. 3.3)
    masked = mask_batch(batch, gen, mmm_prob, p_text, p_video, cfg.mask_token_id, cfg.vocab_size, specials)
    rows = gather_masked(model, batch, masked)
    if loss == "vlm":
        value = vlm_loss(**rows, word_emb=model.word_embeddings)
        # the output bias is unused by L_VLM; a zero term keeps it in the graph, so every parameter has a gradient
        # (exactly 0: Adam leaves it unchanged). DDP does not rely on it: engine.wrap_ddp sets
        # find_unused_parameters because fine-tuning leaves the MLM head out
        value = value + _zero(model.output_bias)
    else:
        value = mfm_mlm_loss(**rows, word_emb=model.word_embeddings, output_bias=model.output_bias)
    stats = dict(n_masked_video=rows["e_video"].shape[0], n_masked_text=rows["e_text"].shape[0],
                 n_negatives=rows["neg_video"].shape[0])
    return value, stats


def text_loss(model, batch, gen, p_text=0.15):
    """The text stage of train.py (--text_epochs): BERT's masked language modelling on the text alone, through the
    isolated text pass, scored as L_VLM scores a text row when nothing else is in the batch (logits e.E^T, no
    bias, Eq. 9 without video columns). From scratch it stands in for the BERT checkpoint the paper starts from:
    under L_VLM a 15%-masked text row, the only kind whose context is visible, is about 1 masked row in 8, and a
    small model does not learn to read text from so few (docs/log.md, "A text stage"). -> (loss, stats)"""
    cfg = model.config
    specials = (cfg.cls_token_id, cfg.sep_token_id, cfg.pad_token_id, cfg.mask_token_id)
    text_in, labels = mask_text(batch["text_ids"], batch["text_mask"], p_text, gen, cfg.mask_token_id,
                                cfg.vocab_size, specials)
    h = model.text_states(text_in, batch["text_mask"])[:, :text_in.shape[1]]  # (B, Lt, H): t_1..t_n
    sel = labels != -100
    e_text = model.transform(h[sel])                                          # (Nt, H) Eq. 4
    none = e_text.new_zeros((0, e_text.shape[1]))
    value = vlm_loss(none, none, none, e_text, labels[sel], model.word_embeddings)
    value = value + _zero(*model.video_mlp.parameters(), model.output_bias)  # unused here: gradient exactly 0
    return value, dict(n_masked_video=0, n_masked_text=int(sel.sum()), n_negatives=0)


# ----------------------------------------------------------------------------------------------------------
# Fine-tuning losses (sec. 4)


def contrastive_loss(query, keys):
    """In-batch cross-entropy on raw dot products, pair i is the positive for query i. query, keys (B, H).
    Retrieval (sec. 4.1): contrastive_loss(text, video); multiple-choice QA (sec. 4.4): the video->text
    form, contrastive_loss(video, text)."""
    logits = query @ keys.T                                                  # (B, B)
    target = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits.float(), target)


def frame_loss(logits, labels, ignore_index=-100):
    """Action segmentation (sec. 4.2): cross-entropy per video token. logits (..., C), labels (...).
    Mean over non-ignored frames; zero (not NaN) if every frame is ignored."""
    logits = logits.reshape(-1, logits.shape[-1]).float()                    # (N, C)
    labels = labels.reshape(-1)                                              # (N,)
    n = (labels != ignore_index).sum()
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / n.clamp(min=1)


def step_bce_loss(frames, steps, targets, mask, centre=False):
    """Step localization (sec. 4.3): BCE on frame x step dot products.
    frames (B, T, H), steps (B, K, H), targets (B, T, K) 0/1, mask (B, T) valid frames or (B, T, K) valid
    cells. Mean over valid cells; zero (not NaN) if none is valid. centre: the products minus their mean over
    the batch's valid cells first. Scoring takes a log-softmax over steps (metrics.step_log_probs), blind to a
    shared offset, while plain BCE is not: a pre-trained model whose products start near +35 on average spends its
    fine-tuning pulling them down (docs/log.md). centre=False is the paper's loss."""
    logits = torch.einsum("bth,bkh->btk", frames, steps).float()             # (B, T, K)
    if mask.shape == logits.shape[:2]:
        mask = mask[:, :, None].expand_as(logits)                            # (B, T, K)
    if mask.shape != logits.shape:
        raise ValueError(f"losses.step_bce_loss: mask shape {tuple(mask.shape)} is neither (B, T) nor "
                         f"(B, T, K) = {tuple(logits.shape)}")
    mask = mask.bool()
    if centre and mask.any():
        logits = logits - logits[mask].mean()                                # one shift for the whole batch
    per_cell = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    return per_cell[mask].sum() / mask.sum().clamp(min=1)


def caption_loss(logits, labels):
    """Captioning (sec. 4.5): next-token cross-entropy. logits (B, L, V), labels (B, L) with -100 = ignore."""
    return frame_loss(logits, labels, ignore_index=-100)


# ----------------------------------------------------------------------------------------------------------
# All-in-One pre-training (allinone.py): video-text matching + MLM, optional video-text contrastive


def vtc_loss(text, video, temperature=0.05):
    """Symmetric in-batch InfoNCE on L2-normalised pooled vectors (B, H), pair i positive for row i."""
    logits = F.normalize(text.float(), dim=-1) @ F.normalize(video.float(), dim=-1).T / temperature  # (B, B)
    target = torch.arange(text.shape[0], device=text.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def allinone_loss(model, batch, gen, p_text=0.15, p_neg=0.5, vtc=0.0):
    """All-in-One pre-training on a frames batch (frames, text_ids, text_mask[, video_index]) -> (loss, stats).

    MLM: 15% of the text (80/10/10, masking.mask_text) with the pair's own video, CE over the vocabulary at the
    masked positions only. VTM: a second joint pass on the clean text where a p_neg share of the pairs take
    another video's clip (masking.vtm_pairs); CE of the 2-way head. Loss = MLM + VTM (+ vtc * VTC)."""
    c = model.config
    ids, tm, frames = batch["text_ids"], batch["text_mask"], batch["frames"]
    specials = (c.cls_token_id, c.sep_token_id, c.pad_token_id, c.mask_token_id)
    text_in, labels = mask_text(ids, tm, p_text, gen, c.mask_token_id, c.vocab_size, specials)
    h = model(frames, text_in, tm)[:, 1:1 + ids.shape[1]]  # (B, Lt, H): content slots after [CLS]
    sel = labels != -100
    mlm = F.cross_entropy(model.mlm_logits(h[sel]).float(), labels[sel]) if sel.any() else _zero(h)
    idx, match = vtm_pairs(ids.shape[0], gen, p_neg, batch.get("video_index"))
    logits = model.vtm_logits(frames[idx.to(frames.device)], ids, tm)  # (B, 2)
    vtm = F.cross_entropy(logits.float(), match.to(logits.device))
    loss = mlm + vtm
    if vtc:
        loss = loss + vtc * vtc_loss(model.encode_text(ids, tm), model.encode_video(frames))
    stats = dict(n_masked_text=int(sel.sum()), n_mismatched=int((match == 0).sum()),
                 vtm_correct=int((logits.argmax(1).cpu() == match).sum()))
    return loss, stats
