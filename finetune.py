"""
Fine-tuning (paper sec. 4, Fig. 3; Tables 2-7): one encoder for five downstream tasks, switched by attention
masks (docs/method.md §2, §5). Each task is one section of tasks.py: its training examples, batch and loss.

  retrieval     (sec. 4.1)  isolated mask; pooled text vs pooled video; in-batch CE text->video
  qa            (sec. 4.4)  isolated mask; trained as video->text contrastive on retrieval captions
  segmentation  (sec. 4.2)  isolated mask; a linear classifier on every video token; windows of 32 s
  localization  (sec. 4.3)  video windows and step texts encoded separately; BCE on frame x step dot products
  captioning    (sec. 4.5)  captioning mask; right-shifted text; BERT's LM head; next-token CE

  python finetune.py --task retrieval --init out/pretrain/model --data data/world --out out/ft
  python finetune.py --task captioning --scratch          # the same architecture without pre-training
  torchrun --standalone --nproc_per_node=2 finetune.py --task retrieval
  python finetune.py --task qa --init out/allinone/model --data data/world_video    # All-in-One from frames

Optimisation as sec. 5.2 (Adam (0.9, 0.98), linear warm-up of 122 steps then linear decay, clip 2.0), the
DDP / AMP machinery of engine.py, and model selection on the validation split (never on test): the best
epoch on validation is kept in OUT/<run>/best.pt and then evaluated once on test by evaluate.py.
Every task at once, both rows and the results table: python experiments.py.
"""
import json
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch

import data
import evaluate
import vlm as vlm_module
from checkpoint import (CheckpointError, checkpoint_kind, load_checkpoint, load_finetuned, load_model,
                        load_state_checked, save, trained_tokenizer)
from common import amp_setup, cli, parse_config
from engine import (BETA2, Objective, StopFlag, any_rank, exit_if_stopped, lr_at, make_optimizer, optimizer_step,
                    set_lr, setup_distributed, to_device, wrap_ddp)
from tasks import FRAMES, TASKS
from train import RANGES, ensure_world, scratch_word_init
from vlm import TaskModel


@dataclass
class FinetuneConfig:
    ranges: ClassVar[dict] = {**RANGES, "epochs": (0, None), "temperature": (0, None)}  # --epochs 0: the default
    # I/O
    task: str = "retrieval"  # retrieval | qa | segmentation | localization | captioning
    dataset: str = "youcook2"  # retrieval data: youcook2 | msrvtt (qa always uses msrvtt)
    data: str = "data/world"  # data directory
    synth_size: str = "default"  # size of the built-in world built if --data is missing
    out: str = "out/finetune"  # output directory; each run writes OUT/<run>/{best.pt, log.jsonl, test.json}
    resume: bool = False  # continue from OUT/<run>/ckpt.pt (written at every epoch end)
    seed: int = 0  # random seed
    seeds: str = ""  # experiments.py: comma-separated fine-tuning seeds (e.g. 0,1,2); the table shows mean +- std over them
    # model
    init: str = "out/pretrain/model"  # pre-trained model (directory or ckpt.pt)
    model: str = "auto"  # auto (the kind the --init checkpoint records) | vlm | allinone (raw frames)
    scratch: bool = False  # ignore the pre-trained weights: same architecture, random init (the no-pre-training row)
    word_init: float = 0.3  # --scratch: std of the word-embedding init (as train.py's --word_init: rows start alike)
    temperature: float = 0.0  # retrieval / QA logits: 0 = raw dot products (paper, released code); t > 0 = cosine / t
    step_centre: bool = True  # localization BCE on products minus their batch mean; --no-step_centre = the paper
    # optimizer (sec. 5.2)
    epochs: int = 0  # passes over the training set (0 = the task's default, Task.epochs)
    batch_size: int = 32  # examples per batch per process (clips, windows or captions)
    lr: float = 1e-3  # peak learning rate, for the small models of the built-in world (paper: 5e-5 for bert-base)
    warmup: int = 122  # warm-up steps (sec. 5.2), capped at a tenth of all steps for short runs
    grad_clip: float = 2.0  # gradient norm clip
    # DDP / precision
    dtype: str = "auto"  # float32 | bfloat16 | float16; auto = bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model (GPU)


def batch_order(n, batch_size, epoch, seed, rank, world):
    """Shuffled index batches for one epoch; every rank gets the same number of disjoint batches."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world
    mine = perm[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)] or [mine]


# -----------------------------------------------------------------------------------------------------------
# one fine-tuning run: setup -> resume -> epochs (train -> validate -> keep the best) -> test once


def start_run(cfg, name, rank, device):
    """OUT/name, the autocast context and scaler, the model to fine-tune (the checkpoint, or with --scratch the
    same architecture freshly initialised) and its tokenizer."""
    out = os.path.join(cfg.out, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(cfg.seed + rank)
    _, ctx, scaler = amp_setup(cfg.dtype, device)
    base = load_model(cfg.init)
    if cfg.scratch:  # the same architecture, no pre-training
        torch.manual_seed(cfg.seed)
        base = type(base)(base.config)
        if isinstance(base, vlm_module.VLM):  # the word init pre-training starts from, not BERT's 0.02
            scratch_word_init(base, cfg.word_init)
    return out, ctx, scaler, base, trained_tokenizer(cfg.init, cfg.data, base.config)


def setup_run(cfg, task, dist_state, dataset):
    """Everything one run needs, in the order that fixes the random streams: OUT/<run>, the model, the training
    examples, the task model (+ head), Adam, the schedule, the objective (compiled, DDP). Returns a namespace r."""
    ddp, rank, world, device = dist_state
    r = SimpleNamespace(task=task, ddp=ddp, rank=rank, world=world, device=device, master=rank == 0)
    # a frames model (All-in-One) fine-tunes MSR-VTT-like retrieval or qa from video files (tasks.FRAMES)
    frames = (checkpoint_kind(cfg.init) if cfg.model == "auto" else cfg.model) == "allinone"
    if frames and task not in FRAMES:
        raise SystemExit(f"--task {task}: the frames model (allinone) fine-tunes retrieval or qa")
    r.spec = (FRAMES if frames else TASKS)[task]
    r.dataset = "msrvtt" if frames else dataset or ("msrvtt" if task == "qa" else cfg.dataset)
    name = (f"{task}-{r.dataset}" if task == "retrieval" else task) + ("-frames" if frames else "")
    r.out, r.ctx, r.scaler, base, r.tok = start_run(cfg, name + ("-scratch" if cfg.scratch else ""), rank, device)
    r.name, r.mc = os.path.basename(r.out), base.config
    # validation and test: evaluate.py's runner for the task; model selection on its SELECT metric
    if frames:
        r.evaluate = lambda m, split: evaluate.run_frames_task(task, m, cfg.data, split, r.tok, device, r.ctx)
    else:
        r.evaluate = lambda m, split: evaluate.run_task(task, m, cfg.data, split, r.tok, dataset=r.dataset,
                                                        device=device, ctx=r.ctx)
    r.select = "acc" if frames and task == "qa" else evaluate.SELECT[task]
    # the task's training split as examples (tasks.py); extra: localization's tasks and their step texts, or
    # the frames model's video store
    r.train_ex, r.extra, r.num_classes, trunc = r.spec.examples(cfg.data, r.dataset, r.tok, r.mc)
    if not r.train_ex:
        raise SystemExit(f"{cfg.data}: the {task} training split is empty")
    if r.master and trunc:
        print(f"{r.name}: {trunc} training texts were longer than the text budget and were truncated")
    r.model = TaskModel(base, r.num_classes).to(device)  # + a linear head for segmentation
    r.model.cosine = cfg.temperature > 0  # evaluate.run_task ranks by cosine similarity then
    r.optimizer = make_optimizer(r.model, cfg.lr, BETA2, device)
    # linear warm-up then decay over all steps (sec. 5.2); the warm-up is at most a tenth of a short run
    per_epoch = len(batch_order(len(r.train_ex), cfg.batch_size, 0, cfg.seed, rank, world))
    r.epochs = cfg.epochs or r.spec.epochs
    r.total = per_epoch * r.epochs
    r.warmup = min(cfg.warmup, max(1, r.total // 10))
    r.objective = Objective(r.model, lambda tm, b: r.spec.loss(tm, b, cfg))
    if cfg.compile:
        r.objective = torch.compile(r.objective)
    if ddp:
        r.objective = wrap_ddp(r.objective, device)
    r.ckpt_path, r.best_path = os.path.join(r.out, "ckpt.pt"), os.path.join(r.out, "best.pt")
    return r


def resume_run(cfg, r):
    """With --resume and OUT/<run>/ckpt.pt: weights, optimizer, best score and step; returns (first epoch, first
    batch, every rank's saved RNG state or None). A stop inside an epoch goes on at its next batch."""
    r.best, r.step = -float("inf"), 0
    if not (cfg.resume and os.path.exists(r.ckpt_path)):
        return 0, 0, None
    ck = load_checkpoint(r.ckpt_path, need=("model", "optimizer", "epoch", "best", "step"))
    load_state_checked(r.model.vlm, ck["model"], r.ckpt_path)
    if r.model.head is not None:
        load_state_checked(r.model.head, ck["head"], r.ckpt_path)
    r.optimizer.load_state_dict(ck["optimizer"])
    r.best, r.step = ck["best"], ck["step"]
    if ck.get("next_batch"):
        return ck["epoch"], ck["next_batch"], ck["rng"]
    return ck["epoch"] + 1, 0, None


def train_epoch(cfg, r, epoch, rng, first_batch):
    """The epoch's batches from `first_batch` on (batch -> loss -> step); their losses, or None after a stop
    (Ctrl-C / SIGTERM), honoured at the next step with the state saved to resume from."""
    losses = []
    order = batch_order(len(r.train_ex), cfg.batch_size, epoch, cfg.seed, r.rank, r.world)
    for b in range(first_batch, len(order)):
        r.lr = set_lr(r.optimizer, lr_at(r.step, cfg.lr, r.warmup, r.total))
        # the task's batch (tasks.py), then one optimizer step (engine.optimizer_step: clip 2.0, skip non-finite)
        batch = to_device(r.spec.batch([r.train_ex[i] for i in order[b]], rng, r.mc, r.extra), r.device)
        loss, _, _ = optimizer_step(r.objective, [batch], r.optimizer, r.scaler, r.ctx, cfg.grad_clip, r.ddp)
        losses.append(loss)
        r.step += 1
        if b + 1 < len(order) and any_rank(StopFlag().stop, r.ddp, r.device):
            save_inside_epoch(r.model, r.tok, r.optimizer, epoch, b + 1, r.best, r.step, rng, r.ckpt_path,
                              (r.ddp, r.rank, r.world, r.device))
            if r.master:
                print(f"stopped: {r.ckpt_path} saved at step {r.step} (epoch {epoch}, batch {b + 1}); "
                      f"continue with --resume")
            return None
    return losses


def validate_epoch(cfg, r, epoch, losses, t0, verbose):
    """Rank 0, after each epoch: the validation split through evaluate.py's runner, a log line, the best epoch
    so far to OUT/<run>/best.pt (what evaluate.py and use.py load) and the epoch-end checkpoint."""
    r.model.eval()
    val = r.evaluate(r.model, "val")
    r.model.train()
    score = val[r.select] * (-1 if r.task == "captioning" else 1)  # captioning: the lowest loss
    rec = {"epoch": epoch, "step": r.step, "loss": float(np.mean(losses)), "lr": r.lr, "val": val,
           "seconds": time.time() - t0}
    r.log.write(json.dumps(rec) + "\n")
    r.log.flush()
    if verbose:
        print(f"{r.name} epoch {epoch}: train loss {rec['loss']:.4f} | val "
              + " ".join(f"{k} {v:.3f}" for k, v in val.items() if isinstance(v, float)))
    if score > r.best:
        r.best = score
        save(r.best_path, r.model.vlm, r.tok, task=r.task, dataset=r.dataset, head=_head(r.model),
             num_classes=r.num_classes, temperature=cfg.temperature)
    save(r.ckpt_path, r.model.vlm, r.tok, head=_head(r.model), optimizer=r.optimizer.state_dict(), epoch=epoch,
         best=r.best, step=r.step)


def test_best(cfg, r, verbose):
    """Rank 0, at the end: the best validation epoch evaluated once on the test split -> OUT/<run>/test.json."""
    result = r.evaluate(load_finetuned(r.best_path, r.device), "test")
    with open(os.path.join(r.out, "test.json"), "w") as f:
        json.dump(result, f, indent=1)
    if verbose:
        print(f"{r.name} test: " + " ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)))
    return result


def run(cfg, task, dist_state, dataset=None, verbose=True):
    """Fine-tune one task, keep the best epoch on validation, evaluate it on test. Returns test metrics (None
    on other ranks, or after a stop: --resume goes on)."""
    # setup: OUT/<run>, model, examples, optimizer, objective; then resume (OUT/<run>/ckpt.pt) if asked
    r = setup_run(cfg, task, dist_state, dataset)
    start_epoch, start_batch, rng_resume = resume_run(cfg, r)
    r.log = open(os.path.join(r.out, "log.jsonl"), "a") if r.master else None
    t0 = time.time()
    for epoch in range(start_epoch, r.epochs):
        rng = np.random.default_rng([cfg.seed, epoch, r.rank])  # which caption each video visit draws
        if rng_resume is not None and epoch == start_epoch:  # resumed inside this epoch: the saved streams
            rng.bit_generator.state, torch_state = rng_resume[r.rank] if r.rank < len(rng_resume) else rng_resume[0]
            torch.set_rng_state(torch_state)
        losses = train_epoch(cfg, r, epoch, rng, start_batch if epoch == start_epoch else 0)
        if losses is not None and r.master:  # model selection on the validation split
            validate_epoch(cfg, r, epoch, losses, t0, verbose)
        # a stop inside the epoch (losses None) was saved there; one at its end saved the epoch checkpoint
        if losses is None or any_rank(StopFlag().stop, r.ddp, r.device):
            if r.master:
                if losses is not None:
                    print(f"stopped: {r.ckpt_path} saved after epoch {epoch}; continue with --resume")
                r.log.close()
            return None
    # the end: rank 0 tests the best validation epoch once; the others wait here first
    if r.ddp:
        torch.distributed.barrier()
    result = test_best(cfg, r, verbose) if r.master else None
    if r.master:
        r.log.close()
    return result


def _head(model):
    """The task head's weights (segmentation), else None."""
    return model.head.state_dict() if model.head is not None else None


def save_inside_epoch(model, tok, optimizer, epoch, next_batch, best, step, rng, ckpt_path, dist_state):
    """The resumable state after a stop inside an epoch: weights, optimizer, position, every rank's caption RNG."""
    ddp, rank, world, _ = dist_state
    mine = (rng.bit_generator.state, torch.get_rng_state())  # captions drawn, dropout
    states = [mine]
    if ddp:
        states = [None] * world
        torch.distributed.all_gather_object(states, mine)
    if rank == 0:
        save(ckpt_path, model.vlm, tok, head=_head(model), optimizer=optimizer.state_dict(), epoch=epoch,
             next_batch=next_batch, best=best, step=step, rng=states)


def main(argv=None):
    """python finetune.py [--flags]: one task, for a features model (VLM) or a frames model (All-in-One)."""
    cfg = parse_config(FinetuneConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.task not in TASKS:
        raise SystemExit(f"--task {cfg.task!r}: choose one of {', '.join(TASKS)}"
                         + (" (every task: python experiments.py)" if cfg.task == "all" else ""))
    if cfg.seeds:  # a field of the shared config, read by experiments.py only
        raise SystemExit(f"--seeds {cfg.seeds}: finetune.py runs one seed (--seed); python experiments.py --seeds runs several")
    StopFlag()  # from here on Ctrl-C / SIGTERM stop the run at the next step (with a checkpoint)
    dist_state = setup_distributed()
    kind = checkpoint_kind(cfg.init) if cfg.model == "auto" else cfg.model
    ensure_world(cfg.data, cfg.synth_size, cfg.seed, dist_state[1] == 0, dist_state[0], video=kind == "allinone")
    result = run(cfg, cfg.task, dist_state)  # a frames model: retrieval or qa from video files (setup_run)
    exit_if_stopped()
    return result


if __name__ == "__main__":
    cli(main, errors=(data.DataError, CheckpointError))
