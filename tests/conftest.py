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


def _ddp_step_worker(rank, port, out, make_model, loss, make_batch, make_opt):
    import torch.distributed as dist
    import common
    import engine
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ddp, r, world, device = engine.setup_distributed()
    assert ddp and r == rank and world == 2 and device == "cpu"
    model = make_model()
    obj = engine.wrap_ddp(engine.Objective(model, loss), device)  # as train.py and finetune.py wrap it
    opt = make_opt(model.parameters())
    _, ctx, scaler = common.amp_setup("float32", "cpu")
    half = {k: v[2 * rank:2 * rank + 2] for k, v in make_batch().items()}
    engine.optimizer_step(obj, [half], opt, scaler, ctx, 2.0, ddp=True)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def ddp_vs_one_process(out, make_model, loss, make_batch, make_opt):
    """One optimizer step under 2-process gloo DDP (each rank the half batch 2*rank : 2*rank+2) and the same step
    in one process on the whole batch. make_* and loss must be module-level (spawn pickles them).
    Returns (rank 0's weights, rank 1's, the weights before the step, the one-process weights)."""
    import socket
    import torch.multiprocessing as mp
    import common
    import engine
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_step_worker, args=(port, str(out), make_model, loss, make_batch, make_opt), nprocs=2,
                       start_method="spawn")
    w0, w1 = torch.load(os.path.join(out, "rank0.pt")), torch.load(os.path.join(out, "rank1.pt"))
    model = make_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_opt(model.parameters())
    _, ctx, scaler = common.amp_setup("float32", "cpu")
    engine.optimizer_step(engine.Objective(model, loss), [make_batch()], opt, scaler, ctx, 2.0, ddp=False)
    return w0, w1, start, model.state_dict()
