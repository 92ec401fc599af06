"""use.py and plots.py: the explicit attention path equals SDPA under every mask, search reproduces the evaluation
runner's retrieval metrics, embeddings are reused, captions equal direct beam search, the exported BERT loads in
transformers with equal hidden states, the SVGs hold what they claim, and bad input gets one clear line.

    python -m pytest -q tests/test_use.py
"""
import csv
import dataclasses
import os
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bert
import checkpoint
import tokens
import data
import evaluate
import masking
import plots
import use
import video
import vlm

SVG = "{http://www.w3.org/2000/svg}"


def random_vlm(vocab, seed=0, layers=2, heads=4, hidden=32):
    """A small random VLM with large weights (init 0.2), every LayerNorm and bias randomised, dropout 0."""
    torch.manual_seed(seed)
    cfg = vlm.VLMConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, initializer_range=0.2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=0, cls_token_id=2, sep_token_id=3,
                        mask_token_id=4)
    m = vlm.VLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or name.startswith("transform.ln"):
                p.normal_(0, 0.2)
    return m


@pytest.fixture(scope="module")
def model_dir(tiny_world, tmp_path_factory):
    """A random VLM with the tiny world's tokenizer, saved as a model directory (checkpoint.save_model_dir)."""
    tok = tokens.load_tokenizer(tiny_world)
    ids = tokens.special_ids(tok)
    m = random_vlm(tok.get_vocab_size())
    assert (ids["pad"], ids["cls"], ids["sep"], ids["mask"]) == (0, 2, 3, 4)
    d = str(tmp_path_factory.mktemp("model") / "model")
    checkpoint.save_model_dir(m, d, tokenizer=tok)
    return d


def run(capsys, *argv):
    out = use.main(list(argv))
    return out, capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("kind", ["full", "isolated", "caption"])
def test_explicit_attention_equals_sdpa_under_each_mask(kind):
    m = random_vlm(50, layers=2)
    g = torch.Generator().manual_seed(1)
    video = torch.randn(3, 7, 512, generator=g)
    vmask = torch.arange(7)[None] < torch.tensor([[7], [3], [5]])
    ids = torch.randint(5, 50, (3, 6), generator=g)
    tmask = torch.arange(6)[None] < torch.tensor([[6], [2], [4]])
    with torch.no_grad():
        ref = m(video, vmask, ids, tmask, attention=kind)
        ref64 = m.double()(video.double(), vmask, ids, tmask, attention=kind)
        for layer in m.bert.layers:
            layer.attn.keep_probs = True
        got64 = m(video.double(), vmask, ids, tmask, attention=kind)  # float64: the same function, to rounding
        got = m.float()(video, vmask, ids, tmask, attention=kind)
    assert (got64 - ref64).abs().max() < 1e-12
    assert (got - ref).abs().max() < 1e-5  # float32: rounding through 2 layers of weights at init 0.2
    mask = masking.attention_mask(vmask, tmask, kind)  # (B, T, T)
    for layer in m.bert.layers:
        p = layer.attn.probs  # (B, nh, T, T)
        assert p.shape == (3, 4) + mask.shape[1:]
        assert torch.all(p[~mask[:, None].expand_as(p)] == 0)  # no weight where the mask forbids
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-6)


def test_explicit_attention_with_a_cache_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 1, 8, generator=g)  # one new position against 9 cached keys, as in decoding
    k, v = torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 9, 8, generator=g)
    keys = torch.rand(2, 1, 1, 9, generator=g) > 0.3
    keys[..., 0] = True
    y, p = bert.explicit_attention(q, k, v, keys)
    assert (y - F.scaled_dot_product_attention(q, k, v, attn_mask=keys)).abs().max() < 1e-6
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) / 8 ** 0.5  # written out: exp over allowed keys, normalised
    e = torch.exp(s - s.max(-1, keepdim=True).values) * keys
    assert torch.allclose(p, e / e.sum(-1, keepdim=True), atol=1e-6)


def test_attention_command_writes_a_labelled_map(tiny_world, model_dir, tmp_path, capsys):
    path = os.path.join(tiny_world, "msrvtt", "feats", "video40.npy")
    out = str(tmp_path / "a.svg")
    p, _ = run(capsys, "attention", "--ckpt", model_dir, "--video", path, "--text", "cut the onion",
               "--mask", "isolated", "--layer", "2", "--head", "3", "--out", out)
    tok = tokens.load_tokenizer(model_dir)
    words = [tok.id_to_token(i) for i in tokens.piece_ids(tok, "cut the onion")]
    n = min(32, len(np.load(path)))
    labels = ["[CLS]"] + [f"v{i + 1}" for i in range(n)] + ["[SEP]"] + words + ["[SEP]"]
    assert p.shape == (len(labels), len(labels))
    # reference: layer 2's input and mask caught by a hook on the ordinary (SDPA) pass, head 3 written out
    m = checkpoint.load_model(model_dir).eval()
    seen = {}
    m.bert.layers[1].register_forward_pre_hook(lambda mod, args: seen.update(x=args[0], mask=args[1]))
    b = data.collate_pairs([data.clip_features(np.load(path), None, None)], [tokens.piece_ids(tok, "cut the onion")])
    with torch.no_grad():
        m(b["video"], b["video_mask"], b["text_ids"], b["text_mask"], attention="isolated")
        at, hs = m.bert.layers[1].attn, m.config.hidden_size // m.config.num_attention_heads
        q, k = at.q(seen["x"])[0, :, 2 * hs:3 * hs], at.k(seen["x"])[0, :, 2 * hs:3 * hs]  # head 3: (T, hs)
        s = (q @ k.T / hs ** 0.5).masked_fill(~seen["mask"][0, 0], -1e9)
    valid = masking.layout(b["video_mask"], b["text_mask"])[0][0]
    ref = torch.softmax(s, -1)[valid][:, valid]
    assert torch.allclose(p, ref, atol=1e-6)
    side = np.array([0] + [1] * (n + 1) + [2] * (len(words) + 1))
    assert np.all(p.numpy()[side[:, None] != side[None, :]] == 0)  # isolated: nothing across modalities
    root = ET.parse(out).getroot()
    texts = [t.text for t in root.iter(SVG + "text")]
    assert texts.count("v1") == 2 and texts.count("[SEP]") == 4 and texts.count("onion") == 2
    cells = [r for r in root.iter(SVG + "rect") if r.get("width") == r.get("height") == "14"]
    assert len(cells) == len(labels) ** 2


# ---------------------------------------------------------------------------------------------------------- search


def test_search_reproduces_the_evaluation_runner(tiny_world, model_dir, tmp_path, capsys):
    """MSR-VTT-like test split: use.py's ranking of the folder's videos gives evaluate.py's R@1/5/10 and MedR."""
    tok = tokens.load_tokenizer(model_dir)
    ref = evaluate.run_task("retrieval", checkpoint.load_model(model_dir), tiny_world, "test", tok, dataset="msrvtt")
    csv_path = os.path.join(tiny_world, "msrvtt", "MSRVTT_JSFUSION_test.csv")
    got, out = run(capsys, "search", "--ckpt", model_dir, "--videos", os.path.join(tiny_world, "msrvtt", "feats"),
                   "--queries", csv_path, "--only_named", "--topk", "3", "--show", "2")
    assert got == pytest.approx(ref, abs=1e-9)
    assert 0 < ref["R10"] < 100 and ref["MedR"] > 1  # a ranking that can be wrong
    assert "50 queries, 50 videos" in out and out.count("query: ") == 2


def test_embed_then_search_reuses_the_embeddings(tiny_world, model_dir, tmp_path, capsys):
    feats = os.path.join(tiny_world, "msrvtt", "feats")
    emb = str(tmp_path / "emb")
    (ids, v), _ = run(capsys, "embed", "--ckpt", model_dir, "--videos", feats, "--out", emb, "--batch_size", "7")
    assert open(os.path.join(emb, "ids.txt")).read().split() == ids == sorted(f[:-4] for f in os.listdir(feats))
    m = checkpoint.load_model(model_dir).eval()
    store = video.open_features(feats)
    ref = evaluate.encode_videos(m, [data.clip_features(store[i], None, None) for i in ids], "cpu",
                                 torch.autocast("cpu", enabled=False))
    assert torch.allclose(torch.from_numpy(np.load(os.path.join(emb, "embeddings.npy"))), ref, atol=1e-5)
    (got, out) = run(capsys, "search", "--ckpt", model_dir, "--emb", emb, "--query", "cut the onion", "--topk", "4")
    assert "reusing 90 video embeddings" in out
    t = evaluate.encode_text_ids(m, [tokens.piece_ids(tokens.load_tokenizer(model_dir), "cut the onion")], "cpu",
                                 torch.autocast("cpu", enabled=False))
    assert got["top"][0] == (t @ ref.T)[0].topk(4).indices.tolist()
    os.utime(os.path.join(model_dir, "model.pt"))  # the weights changed: computed again
    _, out = run(capsys, "search", "--ckpt", model_dir, "--videos", feats, "--emb", emb, "--query", "x")
    assert "computing again" in out and "reusing" not in out


def test_match_ranks_texts_for_one_video(tiny_world, model_dir, tmp_path, capsys):
    rows = list(csv.DictReader(open(os.path.join(tiny_world, "msrvtt", "MSRVTT_JSFUSION_test.csv"))))[:8]
    (tmp_path / "t.txt").write_text("".join(r["sentence"] + "\n" for r in rows))
    path = os.path.join(tiny_world, "msrvtt", "feats", rows[0]["video_id"] + ".npy")
    best, out = run(capsys, "match", "--ckpt", model_dir, "--video", path, "--texts", str(tmp_path / "t.txt"),
                    "--topk", "8")
    m, tok = checkpoint.load_model(model_dir).eval(), tokens.load_tokenizer(model_dir)
    b = data.collate_pairs([data.clip_features(np.load(path), None, None)], [[0]])
    with torch.no_grad():  # one video against each text, one pass at a time
        v = m.encode_video(b["video"], b["video_mask"])[0]
        s = [float(v @ m.encode_text(torch.tensor([tokens.piece_ids(tok, r["sentence"])]),
                                      torch.ones(1, len(tokens.piece_ids(tok, r["sentence"])), dtype=torch.bool))[0])
             for r in rows]
    assert best == [rows[i]["sentence"] for i in np.argsort(s)[::-1]]


# ---------------------------------------------------------------------------------------------------------- caption


def test_caption_equals_direct_beam_search(tiny_world, model_dir, tmp_path, capsys):
    """A fine-tuned captioning best.pt (finetune.py's layout); a folder of 3 videos decoded 2 at a time."""
    m, tok = checkpoint.load_model(model_dir), tokens.load_tokenizer(model_dir)
    ck = {"task": "captioning", "dataset": None, "model_config": dataclasses.asdict(m.config),
          "model": m.state_dict(), "head": None, "num_classes": 0, "tokenizer": tok.to_str()}
    torch.save(ck, tmp_path / "best.pt")
    folder = tmp_path / "videos"
    folder.mkdir()
    g = np.random.default_rng(0)
    for name, T in (("a", 40), ("b", 5), ("c", 12)):
        np.save(folder / f"{name}.npy", g.normal(size=(T, 512)).astype(np.float32))
    got, out = run(capsys, "caption", "--ckpt", str(tmp_path / "best.pt"), "--videos", str(folder),
                   "--batch_size", "2", "--beams", "3")
    assert "1 of 3 videos are longer than 32 s" in out and "note:" not in out
    for name in "abc":
        f = np.load(folder / f"{name}.npy")[:32]
        ids = m.generate(torch.from_numpy(f)[None], torch.ones(1, len(f), dtype=torch.bool), num_beams=3)[0]
        assert got[name] == tok.decode(ids) and f"{name}: {tok.decode(ids)}" in out


# ---------------------------------------------------------------------------------------------------------- export


def test_export_hf_loads_in_transformers_with_equal_hidden_states(tiny_world, model_dir, tmp_path, capsys,
                                                                  monkeypatch):
    transformers = pytest.importorskip("transformers")
    m, tok = checkpoint.load_model(model_dir).eval(), tokens.load_tokenizer(model_dir)
    texts = ["cut the onion", "someone wants to flatten the sauce in a pan"]
    ids = [tokens.piece_ids(tok, t) for t in texts]
    b = data.collate_pairs([np.zeros((1, 512), np.float32)] * 2, ids)
    for layout in ("model.safetensors", "pytorch_model.bin"):
        out = str(tmp_path / layout)
        if layout.endswith(".bin"):
            monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # safetensors not installed
        run(capsys, "export-hf", "--ckpt", model_dir, "--out", out)
        assert sorted(os.listdir(out)) == sorted(["config.json", layout, "tokenizer.json", "vocab.txt",
                                                  "tokenizer_config.json"])
        hf = transformers.BertModel.from_pretrained(out).eval()
        full = m._text_ids(b["text_ids"], b["text_mask"])  # t [SEP] [PAD], as VLM places text
        keys = F.pad(b["text_mask"], (0, 1), value=False) | (full == 3)
        pos = torch.arange(vlm.TEXT_START, vlm.TEXT_START + full.shape[1])[None]
        with torch.no_grad():
            theirs = hf(input_ids=full, attention_mask=keys.long(), token_type_ids=torch.ones_like(full),
                        position_ids=pos).last_hidden_state
            ours = m.text_states(b["text_ids"], b["text_mask"])
            assert (theirs - ours)[keys].abs().max() < 1e-5
            plain = torch.tensor([[2] + ids[0] + [3]])  # BERT's own layout: [CLS] t [SEP], positions 0..
            assert (hf(input_ids=plain).last_hidden_state - m.bert(plain)).abs().max() < 1e-5
        hft = transformers.AutoTokenizer.from_pretrained(out)
        assert [hft(t, add_special_tokens=False)["input_ids"] for t in texts] == ids
    mlm = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "model.safetensors")).eval()
    plain = torch.tensor([[2] + ids[1] + [3]])
    with torch.no_grad():
        assert (mlm(input_ids=plain).logits - m.mlm_logits(m.bert(plain))).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------------------- plots


def test_plot_log_draws_every_record(tmp_path, capsys):
    pre, fin = tmp_path / "pretrain", tmp_path / "retrieval"
    pre.mkdir(), fin.mkdir()
    (pre / "log.jsonl").write_text("".join(
        f'{{"step": {s}, "loss": {10 - s / 10}' + (f', "val_loss": {9 - s / 20}' if s % 20 == 0 else "") + "}\n"
        for s in range(10, 70, 10)))
    (fin / "log.jsonl").write_text('{"epoch": 0, "step": 5, "loss": 3.0, "val": {"R1": 2.0, "MedR": 40.0}}\n'
                                   '{"epoch": 1, "step": 10, "loss": 2.5, "val": {"R1": 5.0, "MedR": 30.0}}\n')
    out = str(tmp_path / "loss.svg")
    run(capsys, "plot-log", str(pre / "log.jsonl"), str(fin / "log.jsonl"), "--out", out)
    root = ET.parse(out).getroot()
    lines = [p.get("points").split() for p in root.iter(SVG + "polyline")]
    assert [len(x) for x in lines] == [6, 3, 2, 2, 2]  # pretrain train / val, finetune train, R1, MedR
    texts = [t.text for t in root.iter(SVG + "text")]
    for s in ("optimizer step", "loss", "validation", "pretrain train", "pretrain val", "retrieval R1"):
        assert s in texts, s
    # the first train point sits at x of step 10 and y of loss 9: read back through the axis ticks
    ticks = {float(t.text): float(t.get("x")) for t in root.iter(SVG + "text")
             if t.get("y") == "324.0" and t.text.replace(".", "").isdigit() and float(t.get("x")) < 520}
    x0 = float(lines[0][0].split(",")[0])
    (a, xa), (b, xb) = sorted(ticks.items())[:2]
    assert xa + (10 - a) / (b - a) * (xb - xa) == pytest.approx(x0, abs=0.2)


def test_nice_ticks():
    assert plots.nice_ticks(0.3, 9.7) == [0, 2, 4, 6, 8, 10]
    assert plots.nice_ticks(7.21, 7.58) == pytest.approx([7.2, 7.3, 7.4, 7.5, 7.6])
    assert plots.nice_ticks(3, 3) == pytest.approx([2.4, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6])  # a flat curve


# ---------------------------------------------------------------------------------------------------------- bad input


def test_bad_input_gets_one_clear_line(tiny_world, model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(SystemExit, match="no readable videos"):
        use.main(["embed", "--ckpt", model_dir, "--videos", str(empty), "--out", str(tmp_path / "e")])
    (empty / "broken.npy").write_bytes(b"not an npy")
    with pytest.raises(SystemExit, match=r"no readable videos among 1 files .*broken.npy: unreadable"):
        use.main(["embed", "--ckpt", model_dir, "--videos", str(empty), "--out", str(tmp_path / "e")])
    (empty / "clip.mp4").write_bytes(b"\x00")
    with pytest.raises(SystemExit, match=r"clip.mp4: this checkpoint is a features model .* needs a frames model"):
        use.main(["search", "--ckpt", model_dir, "--videos", str(empty), "--query", "x"])
    shutil.copy(os.path.join(tiny_world, "msrvtt", "feats", "video40.npy"), empty / "good.npy")
    (empty / "clip.mp4").unlink()
    (ids, _), out = run(capsys, "embed", "--ckpt", model_dir, "--videos", str(empty), "--out", str(tmp_path / "e"))
    assert ids == ["good"] and "1 unreadable videos skipped: " in out and "1 files that are not .npy" in out
    for reused in (False, True):  # the unreadable file does not stop the saved embeddings being reused
        _, out = run(capsys, "search", "--ckpt", model_dir, "--videos", str(empty), "--emb", str(tmp_path / "e2"),
                     "--query", "x")
        assert ("reusing 1 video embeddings" in out) == reused
    long = " ".join(["onion"] * 70)
    got, out = run(capsys, "search", "--ckpt", model_dir, "--videos", str(empty), "--query", long, "--query", "x")
    assert "text 1 has 70 word pieces, the model reads at most 61: truncated" in out
    with pytest.raises(SystemExit, match="no such file or directory"):
        use.main(["caption", "--ckpt", str(tmp_path / "nope"), "--videos", str(empty)])
    (tmp_path / "q.csv").write_text("video_id,sentence\ngood,cut\nvideo1,stir\n")
    with pytest.raises(SystemExit, match=r"q.csv: row 3 names video 'video1', which is not among the 1 videos"):
        use.main(["search", "--ckpt", model_dir, "--videos", str(empty), "--queries", str(tmp_path / "q.csv")])
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 2}\n{oops\n')
    with pytest.raises(SystemExit, match=r"log.jsonl:2: not JSON"):
        use.main(["plot-log", str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "l.svg")])


def test_every_checkpoint_kind_loads_to_the_same_model(tiny_world, model_dir, tmp_path, capsys):
    """A model directory, a pre-training ckpt.pt (its tokenizer in model/ beside it) and a fine-tuned best.pt."""
    m, tok = checkpoint.load_model(model_dir), tokens.load_tokenizer(model_dir)
    run_dir = tmp_path / "run"
    shutil.copytree(model_dir, run_dir / "model")
    torch.save({"model_config": dataclasses.asdict(m.config), "model": m.state_dict(), "step": 2}, run_dir / "ckpt.pt")
    torch.save({"task": "retrieval", "dataset": "msrvtt", "model_config": dataclasses.asdict(m.config),
                "model": m.state_dict(), "head": None, "num_classes": 0, "tokenizer": tok.to_str()},
               tmp_path / "best.pt")
    feats = os.path.join(tiny_world, "msrvtt", "feats")
    tops = [run(capsys, "search", "--ckpt", c, "--videos", feats, "--query", "stir the soup")[0]["top"]
            for c in (model_dir, str(run_dir / "ckpt.pt"), str(tmp_path / "best.pt"))]
    assert tops[0] == tops[1] == tops[2]
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="junk.pt: not a checkpoint of this project"):
        use.main(["search", "--ckpt", str(tmp_path / "junk.pt"), "--videos", feats, "--query", "x"])
