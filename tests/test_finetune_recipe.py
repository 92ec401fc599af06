"""The fine-tuning recipe: the from-scratch row starts its word embeddings where pre-training does, and the
seeds flag's mean and spread reach the results table.

Run: python -m pytest -q tests/test_finetune_recipe.py
"""
import dataclasses

import pytest
import torch

import evaluate
import finetune
import vlm as vlm_module


class _Captured(Exception):
    pass


def test_scratch_row_word_embeddings_start_at_the_pre_training_scale(tiny_world, monkeypatch):
    tok = vlm_module.load_tokenizer(tiny_world)
    ids = {f"{k}_token_id": v for k, v in vlm_module.special_ids(tok).items()}
    cfg = vlm_module.VLMConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, **ids)
    monkeypatch.setattr(finetune, "load_trained", lambda path: vlm_module.VLM(cfg))
    monkeypatch.setattr(finetune, "trained_tokenizer", lambda path, d: tok)
    seen = []

    def spy(model, num_classes=0):
        seen.append(model.bert.wte.weight.detach().clone())
        raise _Captured

    monkeypatch.setattr(finetune, "TaskModel", spy)
    for init in (0.3, 0.05):
        c = dataclasses.replace(finetune.FinetuneConfig(), data=tiny_world, scratch=True, scratch_word_init=init)
        with pytest.raises(_Captured):
            finetune.run(c, "qa", (False, 0, 1, "cpu"), verbose=False)
    for w, init in zip(seen, (0.3, 0.05)):
        rows = torch.cat([w[:cfg.pad_token_id], w[cfg.pad_token_id + 1:]])
        assert rows.std().item() == pytest.approx(init, rel=0.05)  # not BERT's 0.02
        assert w[cfg.pad_token_id].abs().sum() == 0


def test_seed_mean_and_the_table_show_mean_and_spread():
    runs = {"qa": [{"acc": 30.0}, {"acc": 34.0}, {"acc": 38.0}], "retrieval-msrvtt": [None, {"R1": 5.0}]}
    mean, std = finetune.seed_mean(runs)
    assert mean["qa"] == {"acc": 34.0} and std["qa"]["acc"] == pytest.approx(4.0)  # sample std of 30, 34, 38
    assert mean["retrieval-msrvtt"] == {"R1": 5.0} and std["retrieval-msrvtt"] == {"R1": 0.0}
    table = evaluate.results_table({"scratch": mean, "scratch_std": std, "seeds": [0, 1, 2]})
    assert "| from scratch (no pre-training) | 34.00 +- 4.00 |" in table
    assert "seeds [0, 1, 2]" in table
