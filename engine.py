"""The training engine shared by train.py (pre-training, sec. 5.2) and finetune.py (sec. 4): the DDP set-up, the
linear warm-up / decay schedule, Adam, RNG state for bit-identical resumes, the Ctrl-C / SIGTERM stop flag and one
optimizer step (loss / grad_accum, unscale -> clip -> skip if non-finite -> step). It imports nothing of ours.

    python train.py ...      torchrun --standalone --nproc_per_node=2 finetune.py ...    (nothing runs it alone)
"""
import os
import signal
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

BETA2 = 0.98  # Adam's beta2 in pre-training and fine-tuning (sec. 5.2; BERT's is 0.999)


def setup_distributed():
    """DDP only when torchrun set RANK; returns (ddp, rank, world_size, device)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 1, "cuda" if torch.cuda.is_available() else "cpu"
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # After `--max-restarts` restarts the workers, they meet again in torchrun's own key-value store, which
        # still holds the addresses the dead attempt published: without a fresh namespace the new process
        # group reads them and hangs or is refused. The restart count is the same on every worker of the run.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
        dist.init_process_group(backend, store=dist.PrefixStore(f"vlm_restart_{restart}", store),
                                rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    else:
        dist.init_process_group(backend)
    device = "cpu"
    if cuda:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return True, dist.get_rank(), dist.get_world_size(), device


def lr_at(step, lr, warmup, total, decay="linear"):
    """Linear warm-up to lr, then linear (polynomial power 1) decay to 0 at `total` steps (sec. 5.2), or with
    decay="constant" the peak held to the end (from scratch, a short run must not decay while masked language
    modelling is still on its plateau: docs/log.md, "Why the default pre-training does not ground")."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if decay == "constant":
        return lr
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def set_lr(optimizer, lr):
    """Set every parameter group's learning rate; returns it."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr


def make_optimizer(model, lr, beta2, device):
    """Adam (0.9, beta2), eps 1e-8, no weight decay (sec. 5.2); the fused kernel on GPU."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, beta2), eps=1e-8, fused="cuda" in device)


def rng_state(gen):
    """Every random stream a step draws from (torch CPU, numpy, the masking generator, CUDA), for ckpt.pt."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "gen": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state, gen):
    """The inverse of rng_state: a resumed run draws what the unbroken run would have drawn."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    gen.set_state(state["gen"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Objective(nn.Module):
    """Wraps model + loss function so DDP sees every parameter the loss uses inside one forward."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)  # (loss, stats)


class StopFlag:
    """SIGTERM / Ctrl-C set one process-wide flag (every StopFlag() is the same object, so a later run in the same
    process, as in experiments.py, still sees it); the loops save a checkpoint and stop at the next step.
    A second Ctrl-C raises KeyboardInterrupt at once."""
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance.stop, cls._instance.signum = False, None
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, cls._instance._handler)
        return cls._instance

    def _handler(self, signum, frame):
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop, self.signum = True, signum


def exit_if_stopped():
    """After a run stopped by SIGTERM / Ctrl-C: exit non-zero (128 + the signal number, the shell's convention)."""
    flag = StopFlag._instance
    if flag is not None and flag.stop:
        raise SystemExit(128 + int(flag.signum or signal.SIGTERM))


def any_rank(flag, ddp, device):
    """True on every rank if the flag is True on any rank (so all ranks stop or skip together)."""
    if not ddp:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_ddp(objective, device):
    """DDP over the objective; find_unused_parameters because a task may leave some weights out (the MLM
    head in retrieval, the output bias in L_VLM), and DDP would otherwise never reduce their buckets."""
    dev_ids = [int(device.split(":")[1])] if "cuda" in device else None
    return nn.parallel.DistributedDataParallel(objective, device_ids=dev_ids, find_unused_parameters=True)


def to_device(batch, device):
    """The batch dict's tensors on `device` (other values, e.g. K, as they are)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def optimizer_step(objective, batches, optimizer, scaler, ctx, grad_clip, ddp):
    """One optimizer step over len(batches) micro-batches: loss / grad_accum, DDP sync on the last one only,
    unscale -> clip -> (skip if non-finite) step -> update -> zero_grad. Returns (loss, stats, finite)."""
    n = len(batches)
    total, stats = 0.0, {}
    # micro-batches: gradients accumulate; under DDP only the last backward all-reduces them
    for i, batch in enumerate(batches):
        sync = nullcontext() if (not ddp or i == n - 1) else objective.no_sync()
        with sync:
            with ctx:
                loss, st = objective(batch)
            scaler.scale(loss / n).backward()
        total += loss.item() / n
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
    # fp16: unscale before clipping so the clip sees true gradient norms (a no-op without a GradScaler)
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    # a non-finite loss on any rank makes the averaged gradient non-finite on every rank: one shared decision
    finite = bool(torch.isfinite(norm))
    if finite:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total, stats, finite


def bad_step_message(step, n_bad, dtype):
    """What to try after --max_bad_steps non-finite steps in a row."""
    hint = ("try --dtype bfloat16 or float32" if dtype == "float16" else
            "try a lower --lr, a longer --warmup or --grad_clip 1.0")
    return (f"stopping: {n_bad} non-finite steps in a row (last at step {step}); the last good checkpoint is "
            f"kept; {hint}")
