"""Shared fixtures: the tiny built-in world, built once per test session (about a second)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    import world
    out = str(tmp_path_factory.mktemp("world") / "tiny")
    world.synth(out, seed=0, size="tiny")
    return out


@pytest.fixture
def stop_and_resume(tmp_path, monkeypatch):
    """finetune.run(cfg, task) three times: uninterrupted into OUT a; into OUT b with a stop (the flag SIGTERM sets)
    raised at the second optimizer step, which must save ckpt.pt at batch 2 and return None; then --resume into b.
    Returns (a's ckpt.pt, b's ckpt.pt, the resumed run's test metrics) for the test to compare."""
    import dataclasses
    import engine
    import finetune

    def go(cfg, task, run_name):
        dist_state = (False, 0, 1, "cpu")
        finetune.run(dataclasses.replace(cfg, out=str(tmp_path / "a")), task, dist_state, verbose=False)
        step_fn, n = finetune.optimizer_step, [0]

        def stop_after_two(*a, **kw):
            n[0] += 1
            if n[0] == 2:
                engine.StopFlag().stop = True  # as SIGTERM would
            return step_fn(*a, **kw)

        monkeypatch.setattr(finetune, "optimizer_step", stop_after_two)
        try:
            assert finetune.run(dataclasses.replace(cfg, out=str(tmp_path / "b")), task, dist_state,
                                verbose=False) is None
        finally:
            engine.StopFlag().stop = False
        assert n[0] == 2
        assert torch.load(tmp_path / "b" / run_name / "ckpt.pt", weights_only=False)["next_batch"] == 2
        monkeypatch.undo()
        got = finetune.run(dataclasses.replace(cfg, out=str(tmp_path / "b"), resume=True), task, dist_state,
                           verbose=False)
        a, b = (torch.load(tmp_path / d / run_name / "ckpt.pt", weights_only=False) for d in "ab")
        return a, b, got

    return go
