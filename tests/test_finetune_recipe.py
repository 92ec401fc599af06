"""The fine-tuning recipe: the from-scratch row starts its word embeddings where pre-training does, and the
seeds flag's mean and spread reach the results table.

Run: python -m pytest -q tests/test_finetune_recipe.py
"""
import dataclasses

from types import SimpleNamespace

import pytest
import torch

import tokens
import evaluate
import experiments
import finetune
import tasks
from losses import step_bce_loss
import metrics
import vlm as vlm_module


class _Captured(Exception):
    pass


def test_scratch_row_word_embeddings_start_at_the_pre_training_scale(tiny_world, monkeypatch):
    tok = tokens.load_tokenizer(tiny_world)
    ids = {f"{k}_token_id": v for k, v in tokens.special_ids(tok).items()}
    cfg = vlm_module.VLMConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, **ids)
    monkeypatch.setattr(finetune, "load_model", lambda path: vlm_module.VLM(cfg))
    monkeypatch.setattr(finetune, "trained_tokenizer", lambda path, d, config=None: tok)
    seen = []

    def spy(model, num_classes=0):
        seen.append(model.bert.wte.weight.detach().clone())
        raise _Captured

    monkeypatch.setattr(finetune, "TaskModel", spy)
    for init in (0.3, 0.05):
        c = dataclasses.replace(finetune.FinetuneConfig(), data=tiny_world, scratch=True, word_init=init)
        with pytest.raises(_Captured):
            finetune.run(c, "qa", (False, 0, 1, "cpu"), verbose=False)
    for w, init in zip(seen, (0.3, 0.05)):
        rows = torch.cat([w[:cfg.pad_token_id], w[cfg.pad_token_id + 1:]])
        assert rows.std().item() == pytest.approx(init, rel=0.05)  # not BERT's 0.02
        assert w[cfg.pad_token_id].abs().sum() == 0


def test_seed_mean_and_the_table_show_mean_and_spread():
    runs = {"qa": [{"acc": 30.0}, {"acc": 34.0}, {"acc": 38.0}], "retrieval-msrvtt": [None, {"R1": 5.0}]}
    mean, std = experiments.seed_mean(runs)
    assert mean["qa"] == {"acc": 34.0} and std["qa"]["acc"] == pytest.approx(4.0)  # sample std of 30, 34, 38
    assert mean["retrieval-msrvtt"] == {"R1": 5.0} and std["retrieval-msrvtt"] == {"R1": 0.0}
    table = experiments.results_table({"scratch": mean, "scratch_std": std, "seeds": [0, 1, 2]})
    assert "| from scratch (no pre-training) | 34.00 +- 4.00 |" in table
    assert "seeds [0, 1, 2]" in table
    assert "What this run shows" not in table  # no VLM row, no verdict


def test_the_table_states_its_verdicts_from_its_own_numbers():
    """Worked by hand: a gap counts only when it exceeds the two seed spreads added; the floor line compares
    each row with the linear floor; one seed gives a plain above / below and says so."""
    res = {"pretrained": {"qa": {"acc": 50.0}, "retrieval-msrvtt": {"R1": 12.0}, "segmentation": {"acc": 90.0}},
           "scratch": {"qa": {"acc": 40.0}, "retrieval-msrvtt": {"R1": 11.0}, "segmentation": {"acc": 93.0}},
           "pretrained_std": {"qa": {"acc": 2.0}, "retrieval-msrvtt": {"R1": 0.5}, "segmentation": {"acc": 1.0}},
           "scratch_std": {"qa": {"acc": 3.0}, "retrieval-msrvtt": {"R1": 0.6}, "segmentation": {"acc": 1.0}},
           "floor": {"qa": {"acc": 45.0}, "retrieval-msrvtt": {"R1": 17.5}}, "seeds": [0, 1, 2]}
    lines = experiments.verdicts(res)
    assert ("- retrieval-msrvtt R1: VLM 12.00 is level with from scratch 11.00 (gap 1.00, seed spread 1.10); "
            "linear floor 17.50: VLM under it, from scratch under it.") in lines  # 1.00 < 0.5 + 0.6
    assert ("- qa acc: VLM 50.00 is above from scratch 40.00 (gap 10.00, seed spread 5.00); linear floor 45.00: "
            "VLM at or above it, from scratch under it.") in lines
    assert "- segmentation acc: VLM 90.00 is below from scratch 93.00 (gap 3.00, seed spread 2.00)." in lines
    assert "VLM pre-training is above from scratch on 1 of these 3 scores, over seeds [0, 1, 2]." in lines
    one = experiments.verdicts({k: res[k] for k in ("pretrained", "scratch")})
    assert "- retrieval-msrvtt R1: VLM 12.00 is above from scratch 11.00." in one
    assert one[-2].startswith("VLM pre-training is above from scratch on 2 of these 3 scores, at one seed")
    assert experiments.results_table(res).endswith("\n".join(lines))
    res["scratch_std"]["qa"] = None  # a task whose every seed failed leaves no spread: said, not taken as 0
    assert "- qa acc: VLM 50.00 is above from scratch 40.00 (no spread recorded); linear floor 45.00: VLM at or " \
           "above it, from scratch under it." in experiments.verdicts(res)
    res["pretrained"]["captioning"] = {"CIDEr": 0.5}  # a score with only one row is left out
    assert not any("captioning" in x for x in experiments.verdicts(res))


class _Fixed(torch.nn.Module):
    """A task model whose text and video vectors are given tensors."""
    def __init__(self, t, v):
        super().__init__()
        self.vlm = self
        self.t, self.v = t, v

    def encode_text(self, ids, mask):
        return self.t

    def encode_video(self, video, mask=None):  # features (video, mask) or frames (frames)
        return self.v


def test_temperature_flag_gives_cosine_logits_and_zero_keeps_the_papers_dot_products():
    t = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    b = {"text_ids": None, "text_mask": None, "video": None, "video_mask": None}
    raw = tasks.task_loss("retrieval", 0.0)(_Fixed(t, v), b)[0]
    assert raw.item() == pytest.approx(torch.nn.functional.cross_entropy(t @ v.T, torch.arange(2)).item())
    # cosines by hand: text 0 = (1, 0), text 1 = (0, 1); video 0 = (1, 1)/sqrt 2, video 1 = (0, 1)
    cos = torch.tensor([[2 ** -0.5, 0.0], [2 ** -0.5, 1.0]])
    want = torch.nn.functional.cross_entropy(cos / 0.05, torch.arange(2))
    assert tasks.task_loss("retrieval", 0.05)(_Fixed(t, v), b)[0].item() == pytest.approx(want.item(), rel=1e-5)
    want_qa = torch.nn.functional.cross_entropy(cos.T / 0.05, torch.arange(2))  # video -> text
    assert tasks.task_loss("qa", 0.05)(_Fixed(t, v), b)[0].item() == pytest.approx(want_qa.item(), rel=1e-5)
    # the frames model's retrieval and QA take the same flag
    bf = {"text_ids": None, "text_mask": None, "frames": None}
    dot, cos_opt = SimpleNamespace(temperature=0.0), SimpleNamespace(temperature=0.05)
    assert tasks.FRAMES["retrieval"].loss(_Fixed(t, v), bf, dot)[0].item() == pytest.approx(raw.item())
    assert tasks.FRAMES["retrieval"].loss(_Fixed(t, v), bf, cos_opt)[0].item() == pytest.approx(want.item(), rel=1e-5)
    assert tasks.FRAMES["qa"].loss(_Fixed(t, v), bf, cos_opt)[0].item() == pytest.approx(want_qa.item(), rel=1e-5)


class _FixedSteps(torch.nn.Module):
    """A stand-in task model for localization: fixed frame states and step vectors."""
    def __init__(self, frames, steps):
        super().__init__()
        self.vlm = self
        self.frames, self.steps = frames, steps

    def video_states(self, video, mask):
        return self.frames

    def encode_text(self, ids, mask):
        return self.steps


def test_step_centre_flag_reaches_the_localization_loss():
    frames, steps = torch.tensor([[[1.0], [3.0]]]), torch.tensor([[2.0], [1.0]])  # (1, 2, 1), K = 2 -> (2, 1)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = {"video": None, "video_mask": torch.ones(1, 2, dtype=torch.bool), "step_ids": None, "step_text_mask": None,
         "step_mask": torch.ones(1, 2, dtype=torch.bool), "targets": targets, "K": 2}
    tm = _FixedSteps(frames, steps)
    want = {c: step_bce_loss(frames, steps.view(1, 2, 1), targets, torch.ones(1, 2, 2), centre=c)
            for c in (True, False)}
    assert abs(want[True].item() - want[False].item()) > 0.1                # logits [[2, 1], [6, 3]]: centring matters
    for centre in (True, False):
        got = tasks.task_loss("localization", step_centre=centre)(tm, b)[0]
        assert got.item() == pytest.approx(want[centre].item())
    assert finetune.FinetuneConfig().step_centre is True                    # the default; --no-step_centre: the paper's
    cfg = finetune.parse_config(finetune.FinetuneConfig, ["--no-step_centre"])
    assert cfg.step_centre is False


def test_a_cosine_trained_model_is_ranked_by_cosine(tiny_world):
    import readers
    torch.manual_seed(0)
    tok = tokens.load_tokenizer(tiny_world)
    ids = {f"{k}_token_id": v for k, v in tokens.special_ids(tok).items()}
    model = vlm_module.TaskModel(vlm_module.VLM(vlm_module.VLMConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, **ids))).eval()
    model.cosine = True
    recs, store = readers.load_retrieval(tiny_world, "msrvtt", "test")
    with torch.no_grad():
        v = torch.cat([model.vlm.encode_video(torch.as_tensor(evaluate.record_clip(store, r))[None],
                                              torch.ones(1, len(evaluate.record_clip(store, r)), dtype=torch.bool))
                       for r in recs])
        tt = [torch.tensor([tok.encode(r["texts"][0], add_special_tokens=False).ids]) for r in recs]
        t = torch.cat([model.vlm.encode_text(x, torch.ones_like(x, dtype=torch.bool)) for x in tt])
    cos = torch.nn.functional.normalize(t, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).T
    got = evaluate.run_task("retrieval", model, tiny_world, "test", tok, dataset="msrvtt")
    assert got == pytest.approx(metrics.retrieval_metrics(cos.numpy()))


def test_bad_recipe_flags_are_refused(capsys):
    with pytest.raises(SystemExit, match="--seeds '0,x'"):
        experiments.main(["--seeds", "0,x"])
    with pytest.raises(SystemExit):
        finetune.main(["--task", "qa", "--temperature", "-1"])
    assert "--temperature must be a number >= 0" in capsys.readouterr().err
