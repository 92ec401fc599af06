"""VLM: one BERT encoder for video and text (Xu et al. 2021, sec. 3), in plain PyTorch.

    [CLS] v_1..v_32 [SEP] t_1..t_n [SEP] [PAD]..        (Eq. 2, docs/method.md §1; T = 34 + Lt + 1 <= 96)

- the BERT encoder of bert.py (post-LayerNorm, exact erf GELU), loaded from Hugging Face BERT checkpoints by
  `VLM.from_pretrained` through one explicit name table (bert.HF_TO_OURS), every key counted, every shape checked;
- the video MLP (Eq. 1) whose outputs take the place of word embeddings at the 32 video slots;
- the shared MLM head (Eq. 4): transform + decoder tied to the word embeddings (+ bias for captioning);
- the three attention modes of Fig. 3 through `masking.attention_mask`, separate video / text passes
  (footnote 2) and caption decoding with beam search and a key/value cache (sec. 4.5).
The sequence layout (VIDEO_START, SEP1, TEXT_START, MAX_VIDEO) is defined once, in masking.py.
Saving and loading our own checkpoints is checkpoint.py's job; `VLM.from_pretrained` is the way in from a
Hugging Face BERT directory (it also reads one of our model directories: the same config fields and weights).

Tests: python -m pytest -q tests/test_vlm.py
"""
import json
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from bert import Bert, bert_init, convert_hf_state_dict, hf_tokenizer_into, load_checked, read_hf_weights
from masking import MAX_VIDEO, SEP1, TEXT_START, VIDEO_START, attention_mask, pad_video_mask
from tokens import load_tokenizer


@dataclass
class VLMConfig:
    vocab_size: int = 30522                 # word pieces; must equal the tokenizer's vocabulary
    hidden_size: int = 768                  # H
    num_hidden_layers: int = 12             # transformer layers
    num_attention_heads: int = 12           # nh; head size hs = H / nh
    intermediate_size: int = 3072           # feed-forward width
    hidden_act: str = "gelu"                # only exact erf GELU is supported
    hidden_dropout_prob: float = 0.1        # dropout on embeddings and residual branches
    attention_probs_dropout_prob: float = 0.1  # dropout on attention weights (training only)
    max_position_embeddings: int = 512      # rows of the position table (>= max_len)
    type_vocab_size: int = 2                # token types: 0 = [CLS] + video + first [SEP], 1 = text
    layer_norm_eps: float = 1e-12           # BERT's LayerNorm eps (the video MLP's own is 1e-5)
    initializer_range: float = 0.02         # std of normal init for a model trained from scratch
    pad_token_id: int = 0                   # [PAD]
    cls_token_id: int = 101                 # [CLS], also BOS of captions
    sep_token_id: int = 102                 # [SEP], also end of captions
    mask_token_id: int = 103                # [MASK]
    video_dim: int = 512                    # S3D feature size per second
    max_video_len: int = 32                 # video slots in every sequence
    max_len: int = 96                       # longest sequence: 1 + 32 + 1 + 61 + 1

    @classmethod
    def from_bert_json(cls, path, **overrides):
        """Hyper-parameters from a Hugging Face BERT config.json (a file or the directory holding it)."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            hf = json.load(f)
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type={hf['position_embedding_type']!r}, "
                             "only 'absolute' is supported")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act={hf['hidden_act']!r} is not supported (only 'gelu', exact erf GELU)")
        names = {f.name for f in fields(cls)} - {"video_dim", "max_video_len", "max_len"}
        return cls(**{k: v for k, v in hf.items() if k in names}, **overrides)

    @classmethod
    def from_dict(cls, raw, where="config"):
        """The config saved with one of our models (config.json, a checkpoint's model_config), unknown fields named."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)} for {cls.__name__} "
                             "(another model's checkpoint?)")
        return cls(**raw)


def check_config(cfg, where="config"):
    """Refuse a config this code cannot run (the layout of Eq. 2 is fixed: 32 video slots)."""
    if cfg.hidden_act != "gelu":
        raise ValueError(f"{where}: hidden_act={cfg.hidden_act!r} is not supported (only 'gelu', exact erf GELU)")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"{where}: hidden_size {cfg.hidden_size} is not a multiple of "
                         f"num_attention_heads {cfg.num_attention_heads}")
    for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        if not 0 <= getattr(cfg, name) < cfg.vocab_size:
            raise ValueError(f"{where}: {name}={getattr(cfg, name)} is outside the vocabulary of {cfg.vocab_size}")
    if cfg.max_video_len != MAX_VIDEO:
        raise ValueError(f"{where}: max_video_len {cfg.max_video_len} != {MAX_VIDEO} (the layout is fixed, docs/method.md §1)")
    if cfg.max_position_embeddings < cfg.max_len:
        raise ValueError(f"{where}: max_position_embeddings {cfg.max_position_embeddings} < max_len {cfg.max_len}")


# ----------------------------------------------------------------------------------------------------------
# VLM: the video MLP, the MLM head, the model


class VideoMLP(nn.Module):
    """Eq. 1: x = MLP(S3D feature): Linear(512, H) -> GELU -> LayerNorm(H, eps 1e-5) -> Linear(H, H)."""

    def __init__(self, cfg):
        super().__init__()
        H = cfg.hidden_size
        self.fc1 = nn.Linear(cfg.video_dim, H)
        self.ln = nn.LayerNorm(H, eps=1e-5)
        self.fc2 = nn.Linear(H, H)

    def forward(self, video):  # (B, Tv, 512) -> (B, Tv, H)
        return self.fc2(self.ln(F.gelu(self.fc1(video))))


class Transform(nn.Module):
    """Eq. 4: e = LayerNorm(GELU(W h + b)), BERT's MLM transform shared by video and text."""

    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h):  # (..., H) -> (..., H)
        return self.ln(F.gelu(self.dense(h)))


class VLM(nn.Module):
    """VLM (sec. 3): the sequence of Eq. 2 through one BERT, read top-down as: the config and init; the
    embeddings of Eq. 2; the separate video and text passes; the joint pass; the MLM head; captioning;
    from_pretrained, the way in from a Hugging Face BERT directory."""

    config_class = VLMConfig  # what from_pretrained builds
    new_parts = ("video_mlp.",)  # not in a BERT checkpoint: keep their fresh init (from_pretrained)
    new_note = "vlm.py: the video MLP (Eq. 1) is new: initialised normal(0, 0.02), zero biases"

    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.config = cfg
        self.bert = Bert(cfg)
        self.video_mlp = VideoMLP(cfg)
        self.transform = Transform(cfg)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # BERT's cls.predictions.bias
        self.tokenizer_dir = None  # where tokenizer files came from (checkpoint.save_model_dir copies them)
        self._init_weights()

    def _init_weights(self):
        """BERT's init (bert_init, std initializer_range) everywhere, with one special case: the video MLP, the
        part BERT does not have, gets normal(0, 0.02) and zero biases whatever the config (docs/method.md §1)."""
        self.apply(lambda m: bert_init(m, self.config.initializer_range))
        for m in self.video_mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def word_embeddings(self):
        return self.bert.wte.weight  # (V, H), also the tied decoder

    # --- the sequence of Eq. 2 ---------------------------------------------------------------------------

    def _video_side(self, video):
        """(B, Tv, 512), Tv <= 32 -> (B, 34, H) token embeddings of [CLS] v_1..v_32 [SEP] (before position, type,
        LN); slots past Tv get zero features. Eq. 1-2: the video MLP's outputs replace word embeddings there."""
        B, Tv, _ = video.shape
        if Tv > MAX_VIDEO:
            raise ValueError(f"vlm.py: video has {Tv} seconds, at most {MAX_VIDEO} fit (clip it first)")
        video = F.pad(video, (0, 0, 0, MAX_VIDEO - Tv))  # (B, 32, 512)
        ends = self.bert.wte(torch.tensor([self.config.cls_token_id, self.config.sep_token_id], device=video.device))
        ends = ends[None].expand(B, -1, -1)  # (B, 2, H)
        return torch.cat([ends[:, :1], self.video_mlp(video).to(ends.dtype), ends[:, 1:]], 1)  # (B, 34, H)

    def _text_ids(self, text_ids, text_mask):
        """(B, Lt) content ids -> (B, Lt + 1): t_1..t_n [SEP] [PAD].. (padding forced to the pad id)."""
        cfg = self.config
        B = text_ids.shape[0]
        ids = torch.where(text_mask.bool(), text_ids, cfg.pad_token_id)
        ids = F.pad(ids, (0, 1), value=cfg.pad_token_id)  # (B, Lt + 1)
        n = text_mask.sum(1)  # (B,) last [SEP] at n_i
        ids[torch.arange(B, device=ids.device), n] = cfg.sep_token_id
        return ids

    # --- separate passes (footnote 2): isolated video and text never see each other ---------------------

    def video_states(self, video, video_mask):
        """(B, 33, H): the 32 video slots + first [SEP] alone, positions 1..33, type 0 (= isolated joint pass)."""
        B, dev = video.shape[0], video.device
        x = self._video_side(video)[:, VIDEO_START:]  # (B, 33, H)
        pos = torch.arange(VIDEO_START, SEP1 + 1, device=dev)[None]
        dummy = torch.ones(B, 1, dtype=torch.bool, device=dev)
        mask = attention_mask(video_mask, dummy, "isolated")[:, VIDEO_START:SEP1 + 1, VIDEO_START:SEP1 + 1]
        return self.bert(inputs_embeds=x, position_ids=pos, attention_mask=mask)

    def encode_video(self, video, video_mask):
        """(B, H): mean of last-layer states over valid video tokens + the first [SEP] (docs/method.md §1, pooling)."""
        h = self.video_states(video, video_mask)  # (B, 33, H)
        vm = pad_video_mask(video_mask)  # (B, 32)
        keep = torch.cat([vm, torch.ones_like(vm[:, :1])], 1)  # (B, 33)
        return masked_mean(h, keep)

    def text_states(self, text_ids, text_mask):
        """(B, Lt + 1, H): t_1..t_n + last [SEP] (at index n_i) alone, positions 34.., type 1."""
        B, Lt = text_ids.shape
        dev = text_ids.device
        ids = self._text_ids(text_ids, text_mask)  # (B, Lt + 1)
        pos = torch.arange(TEXT_START, TEXT_START + Lt + 1, device=dev)[None]
        dummy = torch.ones(B, 1, dtype=torch.bool, device=dev)
        mask = attention_mask(dummy, text_mask.bool(), "isolated")[:, TEXT_START:, TEXT_START:]
        return self.bert(ids, mask, torch.ones_like(ids), position_ids=pos)

    def encode_text(self, text_ids, text_mask):
        """(B, H): mean over text tokens + the last [SEP]."""
        h = self.text_states(text_ids, text_mask)  # (B, Lt + 1, H)
        keep = F.pad(text_mask.bool(), (1, 0), value=True)  # (B, Lt + 1): prefix of n_i + 1
        return masked_mean(h, keep)

    # --- the joint pass (Eq. 3) and the MLM head (Eq. 4) -------------------------------------------------

    def forward(self, video, video_mask, text_ids, text_mask, attention="full"):
        """Joint pass over [CLS] v [SEP] t [SEP] [PAD] under a Fig. 3 mask -> (B, T, H), T = 34 + Lt + 1."""
        B, Lt = text_ids.shape
        if TEXT_START + Lt + 1 > self.config.max_len:
            raise ValueError(f"vlm.py: text has {Lt} columns, at most {self.config.max_len - TEXT_START - 1} fit")
        x = torch.cat([self._video_side(video), self.bert.wte(self._text_ids(text_ids, text_mask))], 1)  # (B, T, H)
        types = (torch.arange(x.shape[1], device=x.device) >= TEXT_START).long()[None]  # (1, T) 0 video, 1 text
        mask = attention_mask(video_mask, text_mask.bool(), attention)  # (B, T, T)
        return self.bert(inputs_embeds=x, token_type_ids=types, attention_mask=mask)

    def mlm_logits(self, h):
        """Eq. 4 with BERT's LM head: transform(h) @ E^T + bias. (..., H) -> (..., V)"""
        return self.transform(h) @ self.word_embeddings.t() + self.output_bias

    # --- captioning (sec. 4.5) ---------------------------------------------------------------------------

    def caption_logits(self, video, video_mask, text_in, text_mask):
        """(B, Lt, V) next-token logits at the text positions, caption mask, BERT LM head with bias.
        text_in = [CLS] t_1..t_n (BOS = [CLS]); the labels are t_1..t_n [SEP]."""
        h = self(video, video_mask, text_in, text_mask, attention="caption")  # (B, T, H)
        return self.mlm_logits(h[:, TEXT_START:TEXT_START + text_in.shape[1]])

    def _prefix(self, video, video_mask):
        """Encode [CLS] v [SEP] once under the caption mask. -> per-layer (k, v) and which prefix keys text sees."""
        x = self.bert.embed(inputs_embeds=self._video_side(video))  # (B, 34, H), positions 0..33, type 0
        B, dev = video.shape[0], video.device
        full = attention_mask(video_mask, torch.ones(B, 1, dtype=torch.bool, device=dev), "caption")
        _, cache = self.bert.run(x, full[:, None, :TEXT_START, :TEXT_START])
        return cache, full[:, TEXT_START, :TEXT_START]  # list of (B, nh, 34, hs) pairs, (B, 34)

    def _step(self, tok, s, cache, seen):
        """One text position (index 34 + s) with the cache: only its own keys/values are computed."""
        N = tok.shape[0]
        pos = torch.full((N, 1), TEXT_START + s, device=tok.device)
        x = self.bert.embed(tok[:, None], torch.ones_like(tok[:, None]), position_ids=pos)  # (N, 1, H)
        keys = F.pad(seen, (0, s + 1), value=True)[:, None, None, :]  # (N, 1, 1, 34 + s + 1)
        h, cache = self.bert.run(x, keys, cache)
        return self.mlm_logits(h[:, -1]), cache  # (N, V)

    @torch.no_grad()
    def generate(self, video, video_mask, num_beams=5, max_length=24, use_cache=True):
        """Beam search captions -> list (per video) of token ids, without BOS and without the final [SEP].

        Length rule: max_length counts the 3 prompt tokens ([CLS], first [SEP], BOS), so at most
        max_length - 3 tokens are generated, the last of which may be [SEP]. Scores are summed log-probs
        (no length normalisation). Each step extends K live beams with the top 2K candidates; a [SEP] in
        the top K ends a hypothesis; a video stops once its best finished score is >= its best live score
        (log-probs only decrease, so nothing can beat it); beams still live at the limit count as finished.
        The best finished hypothesis wins. num_beams=1 is greedy. use_cache=False re-encodes the whole
        sequence each step (as the released code does) and gives the same tokens. Runs in eval mode.
        """
        K = num_beams
        if max_length <= 3 or K < 1:
            raise ValueError(f"vlm.generate: need max_length > 3 (3 prompt tokens) and num_beams >= 1, "
                             f"got {max_length}, {num_beams}")
        was_training = self.training
        self.eval()
        B, dev = video.shape[0], video.device
        state = self._beam_start(video, video_mask, K, use_cache)
        tokens = torch.zeros(B * K, 0, dtype=torch.long, device=dev)  # (N, s) generated so far, per beam
        scores = torch.full((B, K), -math.inf, device=dev)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        finished, done = [[] for _ in range(B)], [False] * B  # (score, ids) per video; video finished?
        for s in range(max_length - 3):
            logits = self._beam_logits(state, tokens, s)  # (N, V)
            new_scores, new_src, new_tok = self._beam_step(scores, logits, tokens, finished, done)
            if all(done):
                break
            order = (torch.arange(B, device=dev)[:, None] * K + new_src).view(-1)  # (N,) surviving beams
            tokens = torch.cat([tokens[order], new_tok.view(B * K, 1)], 1)  # (N, s + 1)
            if use_cache:
                state["cache"] = [(k[order], v[order]) for k, v in state["cache"]]
            scores = new_scores
        else:  # length limit reached: live beams count as finished
            for b in range(B):
                if not done[b]:
                    finished[b] += [(scores[b, k].item(), tokens[b * K + k].tolist())
                                    for k in range(K) if scores[b, k] > -math.inf]
        self.train(was_training)
        return [max(f, key=lambda x: x[0])[1] for f in finished]

    def _beam_start(self, video, video_mask, K, use_cache):
        """What every step needs, per beam (N = B * K rows): BOS, and the prompt's key/value cache (use_cache)
        or the video itself (to re-encode the whole sequence)."""
        state = dict(bos=torch.full((video.shape[0] * K, 1), self.config.cls_token_id, device=video.device),
                     video=video.repeat_interleave(K, 0), video_mask=video_mask.repeat_interleave(K, 0))
        if use_cache:
            cache, seen = self._prefix(video, video_mask)
            state["cache"] = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0)) for k, v in cache]
            state["seen"] = seen.repeat_interleave(K, 0)  # (N, 34)
        return state

    def _beam_logits(self, state, tokens, s):
        """(N, V) next-token logits of every beam after BOS + tokens (N, s); the cache grows by one position."""
        if "cache" in state:
            last = state["bos"][:, 0] if s == 0 else tokens[:, -1]
            logits, state["cache"] = self._step(last, s, state["cache"], state["seen"])
            return logits
        text_in = torch.cat([state["bos"], tokens], 1)  # (N, s + 1)
        ones = torch.ones_like(text_in, dtype=torch.bool)
        return self.caption_logits(state["video"], state["video_mask"], text_in, ones)[:, -1]

    def _beam_step(self, scores, logits, tokens, finished, done):
        """Extend the K live beams of every video not done: of the top 2K (beam, token) candidates, a [SEP]
        ranked in the top K ends a hypothesis (appended to finished[b]), the first K others live on; done[b]
        once finished[b]'s best >= the best live score. -> new scores, source beam, new token, each (B, K)."""
        cfg, (B, K), V = self.config, scores.shape, self.config.vocab_size
        cand = scores[:, :, None] + F.log_softmax(logits.float(), -1).view(B, K, V)  # (B, K, V)
        top, idx = cand.view(B, K * V).topk(2 * K, dim=1)  # (B, 2K)
        new_scores = torch.full((B, K), -math.inf, device=scores.device)
        new_src = torch.zeros(B, K, dtype=torch.long, device=scores.device)
        new_tok = torch.full((B, K), cfg.pad_token_id, dtype=torch.long, device=scores.device)
        for b in range(B):
            if done[b]:
                continue
            j = 0
            for rank, (sc, i) in enumerate(zip(top[b].tolist(), idx[b].tolist())):
                src, tok = divmod(i, V)
                if tok == cfg.sep_token_id:
                    if rank < K and sc > -math.inf:
                        finished[b].append((sc, tokens[b * K + src].tolist()))
                    continue
                new_scores[b, j], new_src[b, j], new_tok[b, j] = sc, src, tok
                j += 1
                if j == K:
                    break
            if finished[b] and max(f[0] for f in finished[b]) >= new_scores[b, 0].item():
                done[b] = True
        return new_scores, new_src, new_tok

    # --- the way in from Hugging Face BERT ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """From a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin, its tokenizer
        if any; `overrides` set config fields) or from one of our model directories (config.json + model.pt).
        Every Hugging Face key is mapped through HF_TO_OURS or refused, every key counted and every shape
        checked before copying; cls.new_parts (and a bare BertModel's MLM head) keep their fresh init."""
        if os.path.exists(os.path.join(path, "model.pt")):  # ours (checkpoint.save_model_dir): same fields
            with open(os.path.join(path, "config.json")) as f:
                model = cls(cls.config_class.from_dict(json.load(f), f"{path}/config.json"))
            src, unknown, notes, tok = os.path.join(path, "model.pt"), (), [], None
            sd = torch.load(src, map_location="cpu", weights_only=True)
        else:
            cfg = cls.config_class.from_bert_json(path, **overrides)
            tok = hf_tokenizer_into(cfg, path)
            model = cls(cfg)
            hf, src = read_hf_weights(path)
            sd, unknown, notes = convert_hf_state_dict(hf, model, src)
        load_checked(model, sd, src, unknown)
        attach_tokenizer(model, path, tok)
        for line in notes:
            print(line)
        return model


class TaskModel(nn.Module):
    """A fine-tuned model: the encoder (VLM or AllInOne) and, for action segmentation only, a linear head on the
    hidden state of every video token (sec. 4.2). finetune.py trains it; checkpoint.load_finetuned reads it."""

    def __init__(self, vlm, num_classes=0):
        super().__init__()
        self.vlm = vlm
        self.head = nn.Linear(vlm.config.hidden_size, num_classes) if num_classes else None
        self.cosine = False  # True when fine-tuned on cosine logits (--temperature > 0): evaluation ranks by cosine


def masked_mean(h, keep):
    """(B, L, H), (B, L) bool -> (B, H) mean over kept positions."""
    w = keep.to(h.dtype)[..., None]  # (B, L, 1)
    return (h * w).sum(1) / w.sum(1)


def attach_tokenizer(model, path, tok=None):
    """Remember the directory's tokenizer and check its vocabulary against the embedding rows."""
    if tok is None and any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "vocab.txt")):
        tok = load_tokenizer(path)
    if tok is None:
        return
    n, rows = tok.get_vocab_size(), model.word_embeddings.shape[0]
    if n != rows:
        raise ValueError(f"{path}: tokenizer has {n} tokens but embeddings.word_embeddings.weight has {rows} rows "
                         f"(vocab_size {model.config.vocab_size}); they must match")
    model.tokenizer_dir = path
