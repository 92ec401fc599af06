"""Grounding probes (probes.py) and yardsticks (experiments.py): the masked-word probe and the multiple-choice
pseudo-likelihood against one-example-at-a-time loops, the evenly-spaced-steps baseline on a hand case, the caption
roof against an independent tf-idf written here, and the linear floor learning on the tiny world.

Run: python -m pytest -q tests/test_probes.py
"""
import math
from collections import Counter

import numpy as np
import pytest
import torch

import tokens
import data
import evaluate
import readers
import experiments
import metrics
import probes
import vlm as vlm_module
from masking import TEXT_START


@pytest.fixture(scope="module")
def tiny_model(tiny_world):
    torch.manual_seed(0)
    tok = tokens.load_tokenizer(tiny_world)
    ids = {f"{k}_token_id": v for k, v in tokens.special_ids(tok).items()}
    cfg = vlm_module.VLMConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, **ids)
    return vlm_module.VLM(cfg).eval(), tok


def test_concept_words_name_things_on_screen_not_template_words():
    w = probes.concept_words()
    assert {"onion", "chop", "kitchen", "spicy", "tire", "garden"} <= w
    assert not w & {"the", "in", "a", "someone", "person", "now", "video"}  # template words


def test_masked_word_log_probs_equal_a_one_at_a_time_loop(tiny_model, tiny_world):
    model, tok = tiny_model
    recs, store = readers.load_retrieval(tiny_world, "msrvtt", "test")
    recs = recs[:6]
    clips = [evaluate.record_clip(store, r) for r in recs]
    ids = data.encode_texts(tok, [r["texts"][0] for r in recs])[0]
    pos = [len(t) // 2 for t in ids]
    got = probes._masked_top1(model, clips, ids, pos, "cpu", torch.no_grad(), batch_size=4)  # padded batches
    for i in range(len(ids)):
        t = torch.tensor([ids[i]])
        t[0, pos[i]] = model.config.mask_token_id
        v = torch.as_tensor(clips[i])[None]
        with torch.no_grad():
            h = model(v, torch.ones(1, v.shape[1], dtype=torch.bool), t, torch.ones_like(t, dtype=torch.bool))
            want = torch.log_softmax(model.mlm_logits(h[0, TEXT_START + pos[i]]), -1)
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)
    # hiding the video changes the prediction inputs (zeroed features, as MMM's masked video)
    hidden = probes._masked_top1(model, clips, ids, pos, "cpu", torch.no_grad(), hide_video=True)
    assert not torch.allclose(hidden, got)


def test_mc_pseudo_likelihood_equals_a_loop(tiny_model, tiny_world):
    model, tok = tiny_model
    recs, store = readers.load_mc(tiny_world)
    recs = recs[:4]
    scores = np.zeros((4, 5))
    for q, r in enumerate(recs):
        v = torch.as_tensor(evaluate.record_clip(store, r))[None]
        for k, c in enumerate(r["candidates"]):
            t0 = tok.encode(c, add_special_tokens=False).ids
            for p in range(len(t0)):
                t = torch.tensor([t0])
                t[0, p] = model.config.mask_token_id
                with torch.no_grad():
                    h = model(v, torch.ones(1, v.shape[1], dtype=torch.bool), t, torch.ones_like(t, dtype=torch.bool))
                    scores[q, k] += float(torch.log_softmax(model.mlm_logits(h[0, TEXT_START + p]), -1)[t0[p]])
    np.testing.assert_allclose(probes.mc_pseudo_likelihood(model, tiny_world, tok, n=4, scores_only=True),
                               scores, rtol=1e-4, atol=1e-4)
    want = metrics.mc_accuracy(scores, np.array([r["answer"] for r in recs]))
    assert probes.mc_pseudo_likelihood(model, tiny_world, tok, n=4) == pytest.approx(want)


def test_grounding_probes_print_every_probe_beside_its_chance(tiny_model, tiny_world, capsys):
    model, tok = tiny_model
    out = probes.grounding_probes(model, tiny_world, tok, n_words=20, n_mc=10)
    text = capsys.readouterr().out
    n = len(readers.load_retrieval(tiny_world, "msrvtt", "test")[0])
    assert out["msrvtt retrieval R@1 / R@10"]["chance"] == pytest.approx(100.0 / n)
    assert out["MC QA by log p(answer | video), 10 questions"]["chance"] == 20.0
    for name in ("concept words", "template words", "MC QA", "retrieval", "localization recall"):
        assert name in text
    assert text.count("chance") == len(out) == 6
    assert not model.training


def test_even_steps_recall_hand():
    # T = 10, K = 2: steps at floor(0.5 * 5) = 2 and floor(1.5 * 5) = 7
    y = np.zeros((10, 2))
    y[1:4, 0] = 1  # step 0 on seconds 1..3: hit at 2
    y[0, 1] = 1    # step 1 at second 0: miss at 7
    assert metrics.even_steps_recall([{"task": "t", "labels": y}]) == pytest.approx(50.0)
    y[6:9, 1] = 1  # now step 1 also covers 7: both hit
    assert metrics.even_steps_recall([{"task": "t", "labels": y}]) == pytest.approx(100.0)


def test_caption_roof_equals_an_independent_tfidf(tiny_world):
    tok = tokens.load_tokenizer(tiny_world)
    got = experiments.caption_roof(tiny_world, tok)
    _, sents = readers.read_msrvtt_json(f"{tiny_world}/msrvtt/MSRVTT_data.json")
    recs, _ = readers.load_retrieval(tiny_world, "msrvtt", "test")
    words = lambda s: Counter(tok.encode(s, add_special_tokens=False).ids)
    all_caps = [c for r in recs for c in sents[r["video_id"]]]
    df = Counter(w for c in all_caps for w in set(words(c)))
    idf = {w: math.log(len(all_caps) / (1 + df.get(w, 0))) for w in range(tok.get_vocab_size())}

    def vec(counter):
        v = {w: c * idf[w] for w, c in counter.items()}
        n = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / n for w, x in v.items()}

    def doc(vid, leave):
        return vec(sum((words(c) for c in sents[vid] if c not in leave), Counter()))

    sim = np.zeros((len(recs), len(recs)))
    for i, r in enumerate(recs):
        q = vec(words(r["texts"][0]))
        for j, s in enumerate(recs):
            d = doc(s["video_id"], {r["texts"][0]} if i == j else set())
            sim[i, j] = sum(x * d.get(w, 0.0) for w, x in q.items())
    want = metrics.retrieval_metrics(sim)
    for k in want:
        assert got["retrieval-msrvtt"][k] == pytest.approx(want[k])
    assert got["retrieval-msrvtt"]["R1"] > 20 and got["qa"]["acc"] > 50  # far above chance (2%, 20%)


def test_linear_floor_learns_on_the_tiny_world(tiny_world):
    tok = tokens.load_tokenizer(tiny_world)
    n = len(readers.load_retrieval(tiny_world, "msrvtt", "test")[0])
    m = experiments.linear_floor(tiny_world, tok, "retrieval", "msrvtt", steps=60)
    assert m["R10"] > 2 * 1000.0 / n  # R@10 chance is 20% on 50 test videos
    assert experiments.linear_floor(tiny_world, tok, "retrieval", "msrvtt", steps=60) == m  # seeded
    untrained = experiments.linear_floor(tiny_world, tok, "retrieval", "msrvtt", steps=0)
    assert m["R10"] > untrained["R10"]
