"""BERT in plain PyTorch (Devlin et al. 2019): the encoder that VLM (vlm.py, sec. 3 of Xu et al. 2021) and
All-in-One (allinone.py) both run, and the one name table that loads Hugging Face BERT weights into them.

- post-LayerNorm layers, exact erf GELU, SDPA attention (or the explicit softmax path that keeps the weights,
  for the attention maps of Fig. 4), an optional per-layer key/value cache for caption decoding (sec. 4.5);
- `HF_TO_OURS`: every Hugging Face BERT / BertForMaskedLM key maps to one of ours or is named as dropped;
  `convert_hf_state_dict` + `load_checked` refuse unknown keys, missing keys and wrong shapes, naming them.
  `VLM.from_pretrained` (vlm.py) is the way in that uses them.

Tests: python -m pytest -q tests/test_vlm.py      (parity with transformers, every checkpoint layout, errors)
"""
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokens import load_tokenizer, special_ids


# ----------------------------------------------------------------------------------------------------------
# BERT


class SelfAttention(nn.Module):
    """Multi-head self-attention (nh heads of size hs = H / nh) with an output projection and dropout."""

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
    """BERT's encoder: word (or given) + position + token-type embeddings -> LayerNorm -> dropout -> the layers."""

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
    raise ValueError(f"bert.Bert: attention_mask must be (B, T) 0/1 or bool (B, T, T), "
                     f"got {attention_mask.dtype} {tuple(attention_mask.shape)}")


def bert_init(m, std):
    """BERT's init of one module: Linear / Embedding weights normal(0, std), biases 0, the padding row 0,
    LayerNorm 1 and 0. Applied to every module (model.apply), children before parents."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
    if isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)
    if isinstance(m, nn.Embedding) and m.padding_idx is not None:
        nn.init.zeros_(m.weight[m.padding_idx])
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face BERT weights: one name table, every key accounted for


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


def _hf_match(key):
    """The first row of HF_TO_OURS matching a Hugging Face key -> (match, our name template), else (None, None)."""
    for pattern, ours in _PATTERNS:
        m = pattern.match(key)
        if m:
            return m, ours
    return None, None


def hf_name(ours):
    """Our parameter name -> its Hugging Face name (for error messages); unchanged if it has none."""
    for hf, o in HF_TO_OURS:
        m = o is not None and _regex(o).match(ours)
        if m:
            return hf.format(**m.groupdict())
    return ours


def read_hf_weights(path):
    """-> (state dict, file) of a Hugging Face directory: model.safetensors, else pytorch_model.bin."""
    st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st), st
    if os.path.exists(pt):
        return torch.load(pt, map_location="cpu", weights_only=True), pt
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def hf_tokenizer_into(cfg, path):
    """The tokenizer of a Hugging Face BERT directory (or None), its special ids written into cfg."""
    if not any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "vocab.txt")):
        return None
    tok = load_tokenizer(path)
    ids = special_ids(tok)
    cfg.cls_token_id, cfg.sep_token_id = ids["cls"], ids["sep"]
    cfg.mask_token_id, cfg.pad_token_id = ids["mask"], ids["pad"]
    return tok


def convert_hf_state_dict(hf, model, src="checkpoint"):
    """Hugging Face BERT / BertForMaskedLM state dict -> (ours, unknown HF keys, notices to print); the
    model's new_parts (and the MLM head, if the checkpoint has none) come from the model itself."""
    out, unknown, decoder, notes = {}, [], None, []
    for name, t in hf.items():
        key = name[len("bert."):] if name.startswith("bert.") else name
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        m, ours = _hf_match(key)
        if m is None:
            unknown.append(name)
        elif key == "cls.predictions.decoder.weight":
            decoder = (name, t)
        elif ours is not None:
            ours = ours.format(**m.groupdict())
            if ours in out and not torch.equal(out[ours], t):
                raise ValueError(f"{src}: cls.predictions.bias and cls.predictions.decoder.bias differ")
            out[ours] = t
    emb = out.get("bert.wte.weight")
    if decoder is not None and emb is not None and (decoder[1].shape != emb.shape or not torch.equal(decoder[1], emb)):
        raise ValueError(f"{src}: {decoder[0]} {tuple(decoder[1].shape)} is not tied to the word embeddings "
                         f"{tuple(emb.shape)}; untied decoders are not supported")  # Eq. 4: tied
    own = model.state_dict()
    head = [k for k in own if k.startswith("transform.")] + ["output_bias"]
    if not any(k in out for k in head):  # a bare BertModel (e.g. MiniLM): keep the fresh head
        notes.append(f"vlm.py: {src} has no MLM head (cls.predictions.*): transform and output bias initialised fresh")
        out.update({k: own[k] for k in head})
    notes.append(model.new_note)
    out.update({k: v for k, v in own.items() if k.startswith(model.new_parts)})
    return out, unknown, notes


def load_checked(model, sd, src="checkpoint", unknown=()):
    """load_state_dict with every key and shape checked first; errors list the offending keys
    (by their Hugging Face names where they have one)."""
    own = model.state_dict()
    missing = sorted(hf_name(k) for k in set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{hf_name(k)}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = ([f"unknown keys (not in bert.HF_TO_OURS) {list(unknown)}"] if unknown else []) + \
               ([f"missing keys {missing}"] if missing else []) + \
               ([f"unexpected keys {unexpected}"] if unexpected else []) + \
               ([f"wrong shapes {shapes}"] if shapes else [])
    if problems:
        raise ValueError(f"{src}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
