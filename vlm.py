"""VLM: one BERT encoder for video and text (Xu et al. 2021, sec. 3), in plain PyTorch.

    [CLS] v_1..v_32 [SEP] t_1..t_n [SEP] [PAD]..        (Eq. 2, docs/method.md §1; T = 34 + Lt + 1 <= 96)

- a from-scratch BERT (post-LayerNorm, exact erf GELU) that loads Hugging Face BERT checkpoints through one
  explicit name table (`HF_TO_OURS`), with every key accounted for and every shape checked;
- the video MLP (Eq. 1) whose outputs take the place of word embeddings at the 32 video slots;
- the shared MLM head (Eq. 4): transform + decoder tied to the word embeddings (+ bias for captioning);
- the three attention modes of Fig. 3 through `masking.attention_mask`, separate video / text passes
  (footnote 2) and caption decoding with beam search and a key/value cache (sec. 4.5).

Tests: python -m pytest -q tests/test_vlm.py
"""
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from masking import attention_mask
from tokens import load_tokenizer, special_ids

VIDEO_START = 1    # index of v_1
SEP1 = 33          # index of the [SEP] after the 32 video slots
TEXT_START = 34    # index of t_1
MAX_VIDEO = SEP1 - VIDEO_START


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
        names = {f.name for f in fields(cls)} - {"video_dim", "max_video_len", "max_len"}
        cfg = cls(**{k: v for k, v in hf.items() if k in names}, **overrides)
        if cfg.hidden_act != "gelu":
            raise ValueError(f"{path}: hidden_act={cfg.hidden_act!r} is not supported (only 'gelu', exact erf GELU)")
        return cfg


def check_config(cfg, where="config"):
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
# BERT


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H = cfg.hidden_size
        self.nh, self.p = cfg.num_attention_heads, cfg.attention_probs_dropout_prob
        self.q, self.k, self.v = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.proj = nn.Linear(H, H)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.keep_probs, self.probs = False, None  # keep_probs: store the softmax weights of the last call

    def forward(self, x, mask, past=None):
        """x (B, T, H); mask bool broadcastable to (B, nh, T, Tk), True = may attend; past = cached (k, v)."""
        B, T, H = x.shape
        split = lambda y: y.view(B, T, self.nh, H // self.nh).transpose(1, 2)  # (B, nh, T, hs)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if past is not None:  # decoding: the new position's keys/values join the cached ones
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)  # (B, nh, Tk, hs)
        if self.keep_probs:  # attention maps asked for (Fig. 4): the explicit path, equal to SDPA (tested)
            y, self.probs = explicit_attention(q, k, v, mask, self.p if self.training else 0.0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.drop(self.proj(y)), (k, v)


def explicit_attention(q, k, v, mask=None, dropout_p=0.0):
    """softmax(q k^T / sqrt(hs), masked) v, as SDPA computes it, also returning the weights.
    q (B, nh, T, hs), k and v (B, nh, Tk, hs), mask bool broadcastable to (B, nh, T, Tk), True = may attend.
    -> (B, nh, T, hs), probabilities (B, nh, T, Tk) (before dropout)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, -1)
    return F.dropout(probs, dropout_p) @ v, probs


class Layer(nn.Module):
    """Post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg):
        super().__init__()
        H, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attn = SelfAttention(cfg)
        self.ln1 = nn.LayerNorm(H, eps=eps)
        self.fc1 = nn.Linear(H, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, H)
        self.ln2 = nn.LayerNorm(H, eps=eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, mask, past=None):
        a, kv = self.attn(x, mask, past)
        x = self.ln1(x + a)
        x = self.ln2(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))  # exact erf GELU
        return x, kv


class Bert(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H = cfg.hidden_size
        self.wte = nn.Embedding(cfg.vocab_size, H, padding_idx=cfg.pad_token_id)  # word embeddings E
        self.wpe = nn.Embedding(cfg.max_position_embeddings, H)
        self.wtt = nn.Embedding(cfg.type_vocab_size, H)
        self.ln_emb = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def embed(self, input_ids=None, token_type_ids=None, inputs_embeds=None, position_ids=None):
        """Word (or given) embeddings + position + token type -> LayerNorm -> dropout. (B, T, H)"""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        T = x.shape[1]
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)[None]
        if token_type_ids is None:
            token_type_ids = torch.zeros(1, T, dtype=torch.long, device=x.device)
        return self.drop(self.ln_emb(x + self.wpe(position_ids) + self.wtt(token_type_ids)))

    def run(self, x, mask, past=None):
        """The layers on embedded x (B, T, H); returns (B, T, H) and each layer's (k, v) for caching."""
        cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, mask, None if past is None else past[i])
            cache.append(kv)
        return x, cache

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                position_ids=None):
        """(B, T, H) last hidden states. attention_mask: None; (B, T) 0/1 key padding as in Hugging Face
        (every row attends to the valid keys, padding rows included); or bool (B, T, T), True = may attend."""
        x = self.embed(input_ids, token_type_ids, inputs_embeds, position_ids)
        return self.run(x, sdpa_mask(attention_mask))[0]


def sdpa_mask(attention_mask):
    """None | (B, T) 0/1 padding | bool (B, T, T) -> a bool mask that broadcasts to (B, nh, T, T)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): key padding only
    if attention_mask.dim() == 3 and attention_mask.dtype == torch.bool:
        return attention_mask[:, None]  # (B, 1, T, T)
    raise ValueError(f"vlm.Bert: attention_mask must be (B, T) 0/1 or bool (B, T, T), "
                     f"got {attention_mask.dtype} {tuple(attention_mask.shape)}")


# ----------------------------------------------------------------------------------------------------------
# VLM


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


def pad_video(video, video_mask):
    """(B, Tv, 512), (B, Tv) with Tv <= 32 -> (B, 32, 512), (B, 32) bool; extra slots are zero and invalid."""
    B, Tv, D = video.shape
    if Tv > MAX_VIDEO:
        raise ValueError(f"vlm.py: video has {Tv} seconds, at most {MAX_VIDEO} fit (clip it first)")
    return F.pad(video, (0, 0, 0, MAX_VIDEO - Tv)), F.pad(video_mask.bool(), (0, MAX_VIDEO - Tv))


class VLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.config = cfg
        self.bert = Bert(cfg)
        self.video_mlp = VideoMLP(cfg)
        self.transform = Transform(cfg)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # BERT's cls.predictions.bias
        self.tokenizer_dir = None  # where tokenizer files came from (copied by save)
        self.apply(self._init)
        for m in self.video_mlp.modules():  # the new part: normal(0, 0.02), zero biases (docs/method.md §1)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.initializer_range)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg)

    @property
    def word_embeddings(self):
        return self.bert.wte.weight  # (V, H), also the tied decoder

    def mlm_logits(self, h):
        """Eq. 4 with BERT's LM head: transform(h) @ E^T + bias. (..., H) -> (..., V)"""
        return self.transform(h) @ self.word_embeddings.t() + self.output_bias

    # --- the sequence of Eq. 2 ---------------------------------------------------------------------------

    def _text_ids(self, text_ids, text_mask):
        """(B, Lt) content ids -> (B, Lt + 1): t_1..t_n [SEP] [PAD].. (padding forced to the pad id)."""
        cfg = self.config
        B = text_ids.shape[0]
        ids = torch.where(text_mask.bool(), text_ids, cfg.pad_token_id)
        ids = F.pad(ids, (0, 1), value=cfg.pad_token_id)  # (B, Lt + 1)
        n = text_mask.sum(1)  # (B,) last [SEP] at n_i
        ids[torch.arange(B, device=ids.device), n] = cfg.sep_token_id
        return ids

    def _video_side(self, video):
        """(B, 32, 512) -> (B, 34, H) token embeddings of [CLS] v_1..v_32 [SEP] (before position/type/LN).
        Eq. 1-2: the video MLP's outputs take the place of word embeddings at the video slots."""
        B, dev = video.shape[0], video.device
        ends = self.bert.wte(torch.tensor([self.config.cls_token_id, self.config.sep_token_id], device=dev))
        ends = ends[None].expand(B, -1, -1)  # (B, 2, H)
        return torch.cat([ends[:, :1], self.video_mlp(video).to(ends.dtype), ends[:, 1:]], 1)

    def forward(self, video, video_mask, text_ids, text_mask, attention="full"):
        """Joint pass over [CLS] v [SEP] t [SEP] [PAD] under a Fig. 3 mask -> (B, T, H), T = 34 + Lt + 1."""
        B, Lt = text_ids.shape
        if TEXT_START + Lt + 1 > self.config.max_len:
            raise ValueError(f"vlm.py: text has {Lt} columns, at most {self.config.max_len - TEXT_START - 1} fit")
        video, video_mask = pad_video(video, video_mask)  # (B, 32, 512), (B, 32)
        x = torch.cat([self._video_side(video), self.bert.wte(self._text_ids(text_ids, text_mask))], 1)  # (B, T, H)
        types = (torch.arange(x.shape[1], device=x.device) >= TEXT_START).long()[None]  # (1, T) 0 video, 1 text
        mask = attention_mask(video_mask, text_mask.bool(), attention)  # (B, T, T)
        return self.bert(inputs_embeds=x, token_type_ids=types, attention_mask=mask)

    # --- separate passes (footnote 2): isolated video and text never see each other ---------------------

    def video_states(self, video, video_mask):
        """(B, 33, H): the 32 video slots + first [SEP] alone, positions 1..33, type 0 (= isolated joint pass)."""
        video, video_mask = pad_video(video, video_mask)
        B, dev = video.shape[0], video.device
        x = self._video_side(video)[:, VIDEO_START:]  # (B, 33, H)
        pos = torch.arange(VIDEO_START, SEP1 + 1, device=dev)[None]
        dummy = torch.ones(B, 1, dtype=torch.bool, device=dev)
        mask = attention_mask(video_mask, dummy, "isolated")[:, VIDEO_START:SEP1 + 1, VIDEO_START:SEP1 + 1]
        return self.bert(inputs_embeds=x, position_ids=pos, attention_mask=mask)

    def text_states(self, text_ids, text_mask):
        """(B, Lt + 1, H): t_1..t_n + last [SEP] (at index n_i) alone, positions 34.., type 1."""
        B, Lt = text_ids.shape
        dev = text_ids.device
        ids = self._text_ids(text_ids, text_mask)  # (B, Lt + 1)
        pos = torch.arange(TEXT_START, TEXT_START + Lt + 1, device=dev)[None]
        dummy = torch.ones(B, 1, dtype=torch.bool, device=dev)
        mask = attention_mask(dummy, text_mask.bool(), "isolated")[:, TEXT_START:, TEXT_START:]
        return self.bert(ids, mask, torch.ones_like(ids), position_ids=pos)

    def encode_video(self, video, video_mask):
        """(B, H): mean of last-layer states over valid video tokens + the first [SEP] (docs/method.md §1, pooling)."""
        h = self.video_states(video, video_mask)  # (B, 33, H)
        _, vm = pad_video(video, video_mask)
        keep = torch.cat([vm, torch.ones_like(vm[:, :1])], 1)  # (B, 33)
        return masked_mean(h, keep)

    def encode_text(self, text_ids, text_mask):
        """(B, H): mean over text tokens + the last [SEP]."""
        h = self.text_states(text_ids, text_mask)  # (B, Lt + 1, H)
        keep = F.pad(text_mask.bool(), (1, 0), value=True)  # (B, Lt + 1): prefix of n_i + 1
        return masked_mean(h, keep)

    # --- captioning (sec. 4.5) ---------------------------------------------------------------------------

    def caption_logits(self, video, video_mask, text_in, text_mask):
        """(B, Lt, V) next-token logits at the text positions, caption mask, BERT LM head with bias.
        text_in = [CLS] t_1..t_n (BOS = [CLS]); the labels are t_1..t_n [SEP]."""
        h = self(video, video_mask, text_in, text_mask, attention="caption")  # (B, T, H)
        return self.mlm_logits(h[:, TEXT_START:TEXT_START + text_in.shape[1]])

    def _prefix(self, video, video_mask):
        """Encode [CLS] v [SEP] once under the caption mask. -> per-layer (k, v) and which prefix keys text sees."""
        video, video_mask = pad_video(video, video_mask)
        B, dev = video.shape[0], video.device
        full = attention_mask(video_mask, torch.ones(B, 1, dtype=torch.bool, device=dev), "caption")
        x = self.bert.embed(inputs_embeds=self._video_side(video))  # (B, 34, H), positions 0..33, type 0
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
        cfg, K = self.config, num_beams
        if max_length <= 3 or K < 1:
            raise ValueError(f"vlm.generate: need max_length > 3 (3 prompt tokens) and num_beams >= 1, "
                             f"got {max_length}, {num_beams}")
        was_training = self.training
        self.eval()
        B, dev = video.shape[0], video.device
        V, N = cfg.vocab_size, B * K
        video_k, vmask_k = video.repeat_interleave(K, 0), video_mask.repeat_interleave(K, 0)  # (N, Tv, ..)
        if use_cache:
            cache, seen = self._prefix(video, video_mask)
            cache = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0)) for k, v in cache]
            seen = seen.repeat_interleave(K, 0)  # (N, 34)
        bos = torch.full((N, 1), cfg.cls_token_id, device=dev)
        tokens = torch.zeros(N, 0, dtype=torch.long, device=dev)  # generated so far, per beam
        scores = torch.full((B, K), -math.inf, device=dev)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        finished = [[] for _ in range(B)]  # (score, ids) per video
        done = [False] * B
        for s in range(max_length - 3):
            if use_cache:
                last = bos[:, 0] if s == 0 else tokens[:, -1]
                logits, cache = self._step(last, s, cache, seen)  # (N, V)
            else:
                text_in = torch.cat([bos, tokens], 1)  # (N, s + 1)
                ones = torch.ones_like(text_in, dtype=torch.bool)
                logits = self.caption_logits(video_k, vmask_k, text_in, ones)[:, -1]  # (N, V)
            cand = scores[:, :, None] + F.log_softmax(logits.float(), -1).view(B, K, V)  # (B, K, V)
            top, idx = cand.view(B, K * V).topk(2 * K, dim=1)  # (B, 2K)
            new_scores = torch.full((B, K), -math.inf, device=dev)
            new_src = torch.zeros(B, K, dtype=torch.long, device=dev)
            new_tok = torch.full((B, K), cfg.pad_token_id, dtype=torch.long, device=dev)
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
            if all(done):
                break
            order = (torch.arange(B, device=dev)[:, None] * K + new_src).view(-1)  # (N,) surviving beams
            tokens = torch.cat([tokens[order], new_tok.view(N, 1)], 1)
            if use_cache:
                cache = [(k[order], v[order]) for k, v in cache]
            scores = new_scores
        else:  # length limit reached: live beams count as finished
            for b in range(B):
                if not done[b]:
                    finished[b] += [(scores[b, k].item(), tokens[b * K + k].tolist())
                                    for k in range(K) if scores[b, k] > -math.inf]
        self.train(was_training)
        return [max(f, key=lambda x: x[0])[1] for f in finished]

    # --- checkpoints -------------------------------------------------------------------------------------

    def save(self, out_dir, tokenizer=None):
        """DIR/config.json (our fields), DIR/model.pt (state_dict), and tokenizer files: `tokenizer` (a
        tokenizers.Tokenizer or a directory) or else those of the directory this model was loaded from."""
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(asdict(self.config), f, indent=2)
        torch.save(self.state_dict(), os.path.join(out_dir, "model.pt"))
        src = tokenizer if tokenizer is not None else self.tokenizer_dir
        if src is not None and not isinstance(src, (str, os.PathLike)):
            src.save(os.path.join(out_dir, "tokenizer.json"))
        elif src is not None and os.path.abspath(src) != os.path.abspath(out_dir):
            for name in ("tokenizer.json", "vocab.txt"):
                if os.path.exists(os.path.join(src, name)):
                    shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))

    @classmethod
    def load(cls, path):
        """A model written by save(): config.json + model.pt, every key and shape checked."""
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        if raw.get("model") == "allinone":  # the frames model shares the format: checkpoint.load_model picks it
            raise ValueError(f"{path}: a frames model (allinone.py); load it with checkpoint.load_model")
        unknown = set(raw) - {f.name for f in fields(VLMConfig)}
        if unknown:
            raise ValueError(f"{path}/config.json: unknown fields {sorted(unknown)} (not a vlm.py checkpoint?)")
        model = cls(VLMConfig(**raw))
        sd = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
        load_checked(model, sd, os.path.join(path, "model.pt"))
        _attach_tokenizer(model, path)
        return model

    @classmethod
    def from_pretrained(cls, path):
        """From a Hugging Face BERT directory (config.json + model.safetensors or pytorch_model.bin), or from
        a directory written by save(). The video MLP is new; a bare BertModel gets a fresh MLM head."""
        if os.path.exists(os.path.join(path, "model.pt")):
            return cls.load(path)
        cfg = VLMConfig.from_bert_json(path)
        tok = hf_tokenizer_into(cfg, path)
        model = cls(cfg)
        hf, src = read_hf_weights(path)
        sd, unknown, notes = convert_hf_state_dict(hf, model, src)
        load_checked(model, sd, src, unknown)
        _attach_tokenizer(model, path, tok)
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


def masked_mean(h, keep):
    """(B, L, H), (B, L) bool -> (B, H) mean over kept positions."""
    w = keep.to(h.dtype)[..., None]  # (B, L, 1)
    return (h * w).sum(1) / w.sum(1)


def _attach_tokenizer(model, path, tok=None):
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


# ----------------------------------------------------------------------------------------------------------
# Loading Hugging Face BERT weights: one table, every key accounted for


HF_TO_OURS = [  # Hugging Face name (after dropping "bert." and gamma/beta) -> ours; {i} = layer index
    ("embeddings.word_embeddings.weight", "bert.wte.weight"),
    ("embeddings.position_embeddings.weight", "bert.wpe.weight"),
    ("embeddings.token_type_embeddings.weight", "bert.wtt.weight"),
    ("embeddings.LayerNorm.{p}", "bert.ln_emb.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "bert.layers.{i}.attn.q.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "bert.layers.{i}.attn.k.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "bert.layers.{i}.attn.v.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "bert.layers.{i}.attn.proj.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "bert.layers.{i}.ln1.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "bert.layers.{i}.fc1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "bert.layers.{i}.fc2.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "bert.layers.{i}.ln2.{p}"),
    ("cls.predictions.transform.dense.{p}", "transform.dense.{p}"),
    ("cls.predictions.transform.LayerNorm.{p}", "transform.ln.{p}"),
    ("cls.predictions.bias", "output_bias"),
    ("cls.predictions.decoder.bias", "output_bias"),  # older name of the same bias
    ("cls.predictions.decoder.weight", None),  # tied to the word embeddings: checked, then dropped
    ("embeddings.position_ids", None),  # stale buffers of old checkpoints
    ("embeddings.token_type_ids", None),
    ("pooler.{rest}", None),  # unused: pooler and next-sentence head
    ("cls.seq_relationship.{rest}", None),
]


def _regex(template):
    """'encoder.layer.{i}.output.dense.{p}' -> a regex with groups i (layer) and p (weight|bias)."""
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
                      .replace(r"\{p\}", r"(?P<p>weight|bias)").replace(r"\{rest\}", ".+") + "$")


_PATTERNS = [(_regex(hf), ours) for hf, ours in HF_TO_OURS]


def hf_tokenizer_into(cfg, path):
    """The tokenizer of a Hugging Face BERT directory (or None), its special ids written into cfg."""
    if not any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "vocab.txt")):
        return None
    tok = load_tokenizer(path)
    ids = special_ids(tok)
    cfg.cls_token_id, cfg.sep_token_id = ids["cls"], ids["sep"]
    cfg.mask_token_id, cfg.pad_token_id = ids["mask"], ids["pad"]
    return tok


def read_hf_weights(path):
    """-> (state dict, file) of a Hugging Face directory: model.safetensors, else pytorch_model.bin."""
    st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st), st
    if os.path.exists(pt):
        return torch.load(pt, map_location="cpu", weights_only=True), pt
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def convert_hf_state_dict(hf, model, src="checkpoint"):
    """Hugging Face BERT / BertForMaskedLM state dict -> (ours, unknown HF keys, notices to print)."""
    out, unknown, decoder, notes = {}, [], None, []
    for name, t in hf.items():
        key = name[len("bert."):] if name.startswith("bert.") else name
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        for pat, ours in _PATTERNS:
            m = pat.match(key)
            if m:
                break
        else:
            unknown.append(name)
            continue
        if key == "cls.predictions.decoder.weight":
            decoder = (name, t)
        elif ours is not None:
            ours = ours.format(**m.groupdict())
            if ours in out and not torch.equal(out[ours], t):
                raise ValueError(f"{src}: cls.predictions.bias and cls.predictions.decoder.bias differ")
            out[ours] = t
    if decoder is not None:  # the decoder is tied to the word embeddings (Eq. 4)
        name, t = decoder
        emb = out.get("bert.wte.weight")
        if emb is not None and (t.shape != emb.shape or not torch.equal(t, emb)):
            raise ValueError(f"{src}: {name} {tuple(t.shape)} is not tied to the word embeddings "
                             f"{tuple(emb.shape)}; untied decoders are not supported")
    own = model.state_dict()
    head = [k for k in own if k.startswith("transform.")] + ["output_bias"]
    if not any(k in out for k in head):  # a bare BertModel (e.g. MiniLM): keep the fresh head
        notes.append(f"vlm.py: {src} has no MLM head (cls.predictions.*): transform and output bias initialised fresh")
        out.update({k: own[k] for k in head})
    notes.append("vlm.py: the video MLP (Eq. 1) is new: initialised normal(0, 0.02), zero biases")
    out.update({k: v for k, v in own.items() if k.startswith("video_mlp.")})
    return out, unknown, notes


def hf_name(ours):
    """Our parameter name -> its Hugging Face name (for error messages); unchanged if it has none."""
    for hf, o in HF_TO_OURS:
        m = o is not None and _regex(o).match(ours)
        if m:
            return hf.format(**m.groupdict())
    return ours


def load_checked(model, sd, src="checkpoint", unknown=()):
    """load_state_dict with every key and shape checked first; errors list the offending keys
    (by their Hugging Face names where they have one)."""
    own = model.state_dict()
    missing = sorted(hf_name(k) for k in set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{hf_name(k)}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = ([f"unknown keys (not in vlm.HF_TO_OURS) {list(unknown)}"] if unknown else []) + \
               ([f"missing keys {missing}"] if missing else []) + \
               ([f"unexpected keys {unexpected}"] if unexpected else []) + \
               ([f"wrong shapes {shapes}"] if shapes else [])
    if problems:
        raise ValueError(f"{src}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
