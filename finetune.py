"""
Fine-tuning VLM on the five downstream tasks (paper sec. 4, Fig. 3; Tables 2-7), one encoder switched by
attention masks:

  retrieval     (sec. 4.1)  isolated mask; pooled text vs pooled video; in-batch CE text->video
  qa            (sec. 4.4)  isolated mask; trained as video->text contrastive on retrieval captions
  segmentation  (sec. 4.2)  isolated mask; a linear classifier on every video token; windows of 32 s
  localization  (sec. 4.3)  video windows and step texts encoded separately; BCE on frame x step dot products
  captioning    (sec. 4.5)  captioning mask; right-shifted text; BERT's LM head; next-token CE

  python finetune.py --task retrieval --init out/pretrain/model --data data/world --out out/ft
  torchrun --standalone --nproc_per_node=2 finetune.py --task retrieval
  python finetune.py --task qa --init out/allinone/model --data data/world_video    # All-in-One from frames

Optimisation as sec. 5.2 (Adam (0.9, 0.98), linear warm-up of 122 steps then linear decay, clip 2.0), the
DDP / AMP / checkpoint machinery of train.py, and model selection on the validation split (never on test):
the best epoch on validation is kept in OUT/<task>/best.pt and then evaluated once on test by evaluate.py.
Every task at once, both rows and the results table: python experiments.py.
"""
import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import data
import evaluate
import vlm as vlm_module
from checkpoint import (CheckpointError, atomic_save, load_checkpoint, load_finetuned, load_model,
                        load_state_checked, trained_tokenizer)
from common import amp_setup, cli
from losses import caption_loss, contrastive_loss, frame_loss, step_bce_loss
import readers
from train import (RANGES, Objective, StopFlag, any_rank, ensure_world, exit_if_stopped, lr_at, make_optimizer,
                   optimizer_step, parse_config, setup_distributed, to_device, wrap_ddp)
from vlm import TaskModel

TASKS = ("retrieval", "qa", "segmentation", "localization", "captioning")
# default passes over each task's training set on the built-in world (--epochs overrides)
EPOCHS = {"retrieval": 8, "qa": 8, "segmentation": 6, "localization": 4, "captioning": 8}
# the flags' ranges (finetune.py and experiments.py); here --epochs 0 = the task's default
FINETUNE_RANGES = {**RANGES, "epochs": (0, None), "temperature": (0, None), "scratch_word_init": (0, None)}


@dataclass
class FinetuneConfig:
    task: str = "retrieval"  # retrieval | qa | segmentation | localization | captioning
    dataset: str = "youcook2"  # retrieval data: youcook2 | msrvtt (qa always uses msrvtt)
    init: str = "out/pretrain/model"  # pre-trained model (directory or ckpt.pt)
    scratch: bool = False  # ignore the pre-trained weights: same architecture, random init (the no-pre-training row)
    scratch_word_init: float = 0.3  # std of the --scratch row's word embeddings (train.py's --word_init: rows start alike)
    data: str = "data/world"  # data directory
    out: str = "out/finetune"  # output directory; each run writes OUT/<run>/{best.pt, log.jsonl, test.json}
    epochs: int = 0  # passes over the training set (0 = the task's default in EPOCHS)
    batch_size: int = 32  # examples per batch per process (clips, windows or captions)
    lr: float = 2e-4  # peak learning rate (paper: 5e-5 for bert-base)
    temperature: float = 0.0  # retrieval / QA logits: 0 = raw dot products (paper, released code); t > 0 = cosine / t
    warmup: int = 122  # warm-up steps (sec. 5.2), capped at a tenth of all steps for short runs
    beta2: float = 0.98  # Adam beta2
    grad_clip: float = 2.0  # gradient norm clip
    dtype: str = "auto"  # float32 | bfloat16 | float16; auto = bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model (GPU)
    resume: bool = False  # continue from OUT/<run>/ckpt.pt (written at every epoch end)
    seed: int = 0  # random seed
    seeds: str = ""  # experiments.py: comma-separated fine-tuning seeds (e.g. 0,1,2); the table shows mean +- std over them
    synth_size: str = "default"  # size of the built-in world built if --data is missing
    model: str = "auto"  # auto (the kind the --init checkpoint records) | vlm | allinone (raw frames)


# -----------------------------------------------------------------------------------------------------------
# training examples per task (validation and test go through evaluate.py's runners)


def retrieval_examples(data_dir, dataset, tok, split):
    recs, store = readers.load_retrieval(data_dir, dataset, split)
    out, trunc = [], 0
    for r in recs:
        ids, n = data.encode_texts(tok, r["texts"])
        trunc += n
        out.append({"video": evaluate.record_clip(store, r), "texts": ids})
    return out, trunc


def window_examples(records, stride, size=32):
    """Whole videos cut into windows of `size` seconds (sec. 4.2: stride 8 for training)."""
    out = []
    for r in records:
        for s in evaluate.windows(len(r["feat"]), size=size, stride=stride):
            out.append({**r, "feat": r["feat"][s:s + size], "labels": r["labels"][s:s + size]})
    return out


def segmentation_examples(data_dir, split):
    recs, store, num_classes = readers.load_coin(data_dir, split)
    full = [{"feat": store[r["video_id"]][:len(r["labels"])], "labels": r["labels"]} for r in recs]
    return window_examples(full, stride=8), num_classes


def localization_examples(data_dir, split):
    recs, tasks, store = readers.load_crosstask(data_dir, split)
    full = [{"feat": store[r["video_id"]][:len(r["labels"])], "labels": r["labels"], "task": r["task"]}
            for r in recs]
    return window_examples(full, stride=16), tasks  # CrossTask windows: the test stride, half the windows


def captioning_examples(data_dir, tok, split):
    recs, store = readers.load_captioning(data_dir, split)
    ids, trunc = data.encode_texts(tok, [r["text"] for r in recs], max_len=60)  # + BOS / [SEP] = 61
    return [{"video": evaluate.record_clip(store, r), "text": t} for r, t in zip(recs, ids)], trunc


# -----------------------------------------------------------------------------------------------------------
# batches and losses


def make_batch(task, exs, rng, c, extra):
    """Collate examples of `task` into a batch; c is the model config (special token ids)."""
    if task in ("retrieval", "qa"):
        texts = [e["texts"][rng.integers(len(e["texts"]))] for e in exs]  # one caption per video visit
        return data.collate_pairs([e["video"] for e in exs], texts, pad_id=c.pad_token_id)
    if task == "segmentation":
        b = data.collate_pairs([e["feat"] for e in exs], [[c.sep_token_id]] * len(exs), pad_id=c.pad_token_id)
        labels = torch.full(b["video_mask"].shape, -100, dtype=torch.long)
        for i, e in enumerate(exs):
            labels[i, :len(e["labels"])] = torch.as_tensor(e["labels"], dtype=torch.long)
        return {**b, "labels": labels}
    if task == "localization":
        tasks = extra
        b = data.collate_pairs([e["feat"] for e in exs], [[c.sep_token_id]] * len(exs), pad_id=c.pad_token_id)
        K = max(len(tasks[e["task"]]["steps"]) for e in exs)
        targets = torch.zeros(len(exs), b["video_mask"].shape[1], K)
        step_mask = torch.zeros(len(exs), K, dtype=torch.bool)
        step_ids = []
        for i, e in enumerate(exs):
            k = e["labels"].shape[1]
            targets[i, :len(e["labels"]), :k] = torch.as_tensor(e["labels"])
            step_mask[i, :k] = True
            steps = tasks[e["task"]]["step_ids"]
            step_ids += steps + [[c.sep_token_id]] * (K - len(steps))
        s = data.collate_pairs([np.zeros((1, 512), np.float32)] * len(step_ids), step_ids, pad_id=c.pad_token_id)
        return {**b, "targets": targets, "step_mask": step_mask, "step_ids": s["text_ids"],
                "step_text_mask": s["text_mask"], "K": K}
    if task == "captioning":
        # sec. 4.5: input right-shifted (BOS = [CLS]); the final [SEP] is the end token to predict
        text_in = [[c.cls_token_id] + e["text"] for e in exs]
        b = data.collate_pairs([e["video"] for e in exs], text_in, pad_id=c.pad_token_id)
        labels = torch.full(b["text_ids"].shape, -100, dtype=torch.long)
        for i, e in enumerate(exs):
            labels[i, :len(e["text"]) + 1] = torch.as_tensor(e["text"] + [c.sep_token_id])
        return {**b, "labels": labels}
    raise ValueError(task)


def task_loss(task, temperature=0.0):
    """loss_fn(task_model, batch) -> (loss, stats) for the task (docs/method.md §3, fine-tuning losses). temperature > 0:
    retrieval / QA logits are cosine similarities / temperature instead of the paper's raw dot products."""
    def pair(tm, b):
        t = tm.vlm.encode_text(b["text_ids"], b["text_mask"])  # (B, H)
        v = tm.vlm.encode_video(b["video"], b["video_mask"])  # (B, H)
        if temperature > 0:
            t, v = F.normalize(t.float(), dim=-1) / temperature, F.normalize(v.float(), dim=-1)
        return t, v

    def retrieval(tm, b):
        t, v = pair(tm, b)
        return contrastive_loss(t, v), {}  # text -> video

    def qa(tm, b):
        t, v = pair(tm, b)
        return contrastive_loss(v, t), {}  # video -> text: rank the answers for a video

    def segmentation(tm, b):
        h = tm.vlm.video_states(b["video"], b["video_mask"])[:, :b["video_mask"].shape[1]]  # (B, Tv, H)
        return frame_loss(tm.head(h), b["labels"]), {}

    def localization(tm, b):
        B, K = b["targets"].shape[0], b["K"]
        frames = tm.vlm.video_states(b["video"], b["video_mask"])[:, :b["video_mask"].shape[1]]  # (B, Tv, H)
        steps = tm.vlm.encode_text(b["step_ids"], b["step_text_mask"]).view(B, K, -1)  # (B, K, H)
        mask = b["video_mask"][:, :, None] & b["step_mask"][:, None, :]  # (B, Tv, K)
        return step_bce_loss(frames, steps, b["targets"], mask), {}

    def captioning(tm, b):
        logits = tm.vlm.caption_logits(b["video"], b["video_mask"], b["text_ids"], b["text_mask"])
        return caption_loss(logits, b["labels"]), {}

    return {"retrieval": retrieval, "qa": qa, "segmentation": segmentation, "localization": localization,
            "captioning": captioning}[task]


def batch_order(n, batch_size, epoch, seed, rank, world):
    """Shuffled index batches for one epoch; every rank gets the same number of disjoint batches."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world
    mine = perm[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)] or [mine]


# -----------------------------------------------------------------------------------------------------------
# one fine-tuning run


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
        if isinstance(base, vlm_module.VLM):  # the init pre-training starts from (train.build_model)
            with torch.no_grad():  # not BERT's 0.02
                base.bert.wte.weight.normal_(0.0, cfg.scratch_word_init)
                base.bert.wte.weight[base.config.pad_token_id].zero_()
    return out, ctx, scaler, base, trained_tokenizer(cfg.init, cfg.data, base.config)


def run(cfg, task, dist_state, dataset=None, verbose=True):
    """Fine-tune one task, keep the best epoch on validation, evaluate it on test. Returns test metrics."""
    ddp, rank, world, device = dist_state
    master = rank == 0
    dataset = dataset or ("msrvtt" if task == "qa" else cfg.dataset)
    name = f"{task}-{dataset}" if task == "retrieval" else task
    out, ctx, scaler, base, tok = start_run(cfg, name + ("-scratch" if cfg.scratch else ""), rank, device)
    name = os.path.basename(out)
    mc = base.config

    extra, num_classes, trunc = None, 0, 0
    if task in ("retrieval", "qa"):
        train_ex, trunc = retrieval_examples(cfg.data, dataset, tok, "train")
    elif task == "segmentation":
        train_ex, num_classes = segmentation_examples(cfg.data, "train")
    elif task == "localization":
        train_ex, extra = localization_examples(cfg.data, "train")
        for t in extra.values():
            t["step_ids"], n = data.encode_texts(tok, t["steps"])
            trunc += n
    else:
        train_ex, trunc = captioning_examples(cfg.data, tok, "train")
    if not train_ex:
        raise SystemExit(f"{cfg.data}: the {task} training split is empty")
    if master and trunc:
        print(f"{name}: {trunc} training texts were longer than the text budget and were truncated")

    model = TaskModel(base, num_classes).to(device)
    model.cosine = cfg.temperature > 0  # evaluate.run_task ranks by cosine similarity then
    optimizer = make_optimizer(model, cfg.lr, cfg.beta2, device)
    per_epoch = len(batch_order(len(train_ex), cfg.batch_size, 0, cfg.seed, rank, world))
    epochs = cfg.epochs or EPOCHS[task]
    total = per_epoch * epochs
    warmup = min(cfg.warmup, max(1, total // 10))
    objective = Objective(model, task_loss(task, cfg.temperature))
    if cfg.compile:
        objective = torch.compile(objective)
    if ddp:
        objective = wrap_ddp(objective, device)

    ckpt_path, best_path = os.path.join(out, "ckpt.pt"), os.path.join(out, "best.pt")
    start_epoch, best, step = 0, -float("inf"), 0
    start_batch, rng_resume = 0, None
    if cfg.resume and os.path.exists(ckpt_path):
        ck = load_checkpoint(ckpt_path, need=("model", "optimizer", "epoch", "best", "step"))
        load_state_checked(model, ck["model"], ckpt_path)
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, best, step = ck["epoch"] + 1, ck["best"], ck["step"]
        if ck.get("next_batch"):  # stopped inside an epoch: go on at its next batch
            start_epoch, start_batch, rng_resume = ck["epoch"], ck["next_batch"], ck["rng"]
    log = open(os.path.join(out, "log.jsonl"), "a") if master else None
    stop = StopFlag()

    def model_state():
        return {"task": task, "dataset": dataset, "model_config": dataclasses.asdict(mc),
                "model": model.vlm.state_dict(), "head": model.head.state_dict() if model.head else None,
                "num_classes": num_classes, "tokenizer": tok.to_str(), "temperature": cfg.temperature}

    t0 = time.time()
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        if rng_resume is not None and epoch == start_epoch:
            rng.bit_generator.state, torch_state = rng_resume[rank] if rank < len(rng_resume) else rng_resume[0]
            torch.set_rng_state(torch_state)
        losses = []
        order = batch_order(len(train_ex), cfg.batch_size, epoch, cfg.seed, rank, world)
        for b in range(start_batch if epoch == start_epoch else 0, len(order)):
            lr = lr_at(step, cfg.lr, warmup, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = to_device(make_batch(task, [train_ex[i] for i in order[b]], rng, mc, extra), device)
            loss, _, finite = optimizer_step(objective, [batch], optimizer, scaler, ctx, cfg.grad_clip, ddp)
            losses.append(loss)
            step += 1
            if b + 1 < len(order) and any_rank(stop.stop, ddp, device):  # honoured at the next step
                save_inside_epoch(model, optimizer, epoch, b + 1, best, step, rng, ckpt_path, dist_state)
                if master:
                    print(f"stopped: {ckpt_path} saved at step {step} (epoch {epoch}, batch {b + 1}); "
                          f"continue with --resume")
                    log.close()
                return None
        # model selection on the validation split (evaluate.py's runner for this task)
        if master:
            model.eval()
            val = evaluate.run_task(task, model, cfg.data, "val", tok, dataset=dataset, device=device, ctx=ctx)
            model.train()
            score = val[evaluate.SELECT[task]] * (-1 if task == "captioning" else 1)
            rec = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "lr": lr,
                   "val": val, "seconds": time.time() - t0}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if verbose:
                print(f"{name} epoch {epoch}: train loss {rec['loss']:.4f} | val "
                      + " ".join(f"{k} {v:.3f}" for k, v in val.items() if isinstance(v, float)))
            if score > best:
                best = score
                atomic_save(model_state(), best_path)
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "best": best, "step": step}, ckpt_path)
        if any_rank(stop.stop, ddp, device):
            if master:
                print(f"stopped: {ckpt_path} saved after epoch {epoch}; continue with --resume")
                log.close()
            return None
    if ddp:
        torch.distributed.barrier()
    result = None
    if master:
        best_model = load_finetuned(best_path, device)
        result = evaluate.run_task(task, best_model, cfg.data, "test", tok, dataset=dataset, device=device, ctx=ctx)
        with open(os.path.join(out, "test.json"), "w") as f:
            json.dump(result, f, indent=1)
        if verbose:
            print(f"{name} test: " + " ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)))
        log.close()
    return result


def save_inside_epoch(model, optimizer, epoch, next_batch, best, step, rng, ckpt_path, dist_state):
    """The resumable state after a stop inside an epoch: weights, optimizer, position, every rank's caption RNG."""
    ddp, rank, world, _ = dist_state
    mine = (rng.bit_generator.state, torch.get_rng_state())  # captions drawn, dropout
    states = [mine]
    if ddp:
        states = [None] * world
        torch.distributed.all_gather_object(states, mine)
    if rank == 0:
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "next_batch": next_batch, "best": best, "step": step, "rng": states}, ckpt_path)


# -----------------------------------------------------------------------------------------------------------
# All-in-One (raw frames, allinone.py): MSR-VTT-like retrieval and multiple-choice QA


def frames_batch(exs, store, mc, rng):
    """frames (B, T, 3, S, S) uint8, a random frame in each of T segments of the whole video; one caption per
    video visit."""
    frames = torch.stack([store.clip(e["video_id"], None, None, mc.num_frames, mc.frame_size, True, rng)
                          for e in exs])
    ids, mask = data.pad_texts([e["texts"][rng.integers(len(e["texts"]))] for e in exs], mc.pad_token_id)
    return {"frames": frames, "text_ids": ids, "text_mask": mask}


def frames_loss(task):
    def retrieval(tm, b):  # in-batch text -> video cross-entropy on pooled vectors of separate passes
        return contrastive_loss(tm.vlm.encode_text(b["text_ids"], b["text_mask"]), tm.vlm.encode_video(b["frames"])), {}

    def qa(tm, b):  # video -> text: rank the captions for a video (VLM's sec. 4.4 recipe)
        return contrastive_loss(tm.vlm.encode_video(b["frames"]), tm.vlm.encode_text(b["text_ids"], b["text_mask"])), {}

    return {"retrieval": retrieval, "qa": qa}[task]


def run_frames(cfg, task, dist_state, verbose=True):
    """Fine-tune the frames model on MSR-VTT-like videos for retrieval or qa, select on val, test once."""
    ddp, rank, world, device = dist_state
    master = rank == 0
    name = ("retrieval-msrvtt" if task == "retrieval" else "qa") + "-frames" + ("-scratch" if cfg.scratch else "")
    out, ctx, scaler, base, tok = start_run(cfg, name, rank, device)
    mc = base.config
    recs, store = readers.load_retrieval(cfg.data, "msrvtt", "train", videos=True)
    exs = [{"video_id": r["video_id"], "texts": data.encode_texts(tok, r["texts"], mc.max_text_len - 2)[0]}
           for r in recs]
    model = TaskModel(base).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.beta2, device)
    per_epoch = len(batch_order(len(exs), cfg.batch_size, 0, cfg.seed, rank, world))
    epochs = cfg.epochs or EPOCHS[task]
    total, step, best = per_epoch * epochs, 0, -float("inf")
    warmup = min(cfg.warmup, max(1, total // 10))
    objective = Objective(model, frames_loss(task))
    if ddp:
        objective = wrap_ddp(objective, device)
    best_path, t0 = os.path.join(out, "best.pt"), time.time()
    log = open(os.path.join(out, "log.jsonl"), "a") if master else None
    for epoch in range(epochs):
        rng, losses = np.random.default_rng([cfg.seed, epoch, rank]), []
        for idx in batch_order(len(exs), cfg.batch_size, epoch, cfg.seed, rank, world):
            lr = lr_at(step, cfg.lr, warmup, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = to_device(frames_batch([exs[i] for i in idx], store, mc, rng), device)
            loss, _, _ = optimizer_step(objective, [batch], optimizer, scaler, ctx, cfg.grad_clip, ddp)
            losses.append(loss)
            step += 1
            if any_rank(StopFlag().stop, ddp, device):  # Ctrl-C / SIGTERM: stop here (no resume for frames yet)
                if master:
                    print(f"{name}: stopped at step {step}; best so far in {best_path} (if any)")
                    log.close()
                return None
        if master:  # model selection on the validation split
            val = evaluate.run_frames_task(task, model, cfg.data, "val", tok, device, ctx)
            rec = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "val": val, "seconds": time.time() - t0}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if verbose:
                print(f"{name} epoch {epoch}: train loss {rec['loss']:.4f} | val " +
                      " ".join(f"{k} {v:.3f}" for k, v in val.items()))
            if val["R1" if task == "retrieval" else "acc"] > best:
                best = val["R1" if task == "retrieval" else "acc"]
                atomic_save({"task": task, "dataset": "msrvtt", "model_config": dataclasses.asdict(mc),
                             "model": model.vlm.state_dict(), "head": None, "num_classes": 0,
                             "tokenizer": tok.to_str()}, best_path)
    if ddp:
        torch.distributed.barrier()
    if not master:
        return None
    result = evaluate.run_frames_task(task, load_finetuned(best_path, device), cfg.data, "test", tok,
                                      device, ctx)
    with open(os.path.join(out, "test.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{name} test: " + " ".join(f"{k} {v:.3f}" for k, v in result.items()) + f" ({time.time() - t0:.0f}s)")
    log.close()
    return result


def checkpoint_kind(path):
    """'allinone' or 'vlm': the model kind a checkpoint's config records."""
    cfg = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if cfg and os.path.exists(cfg):
        with open(cfg) as f:
            return json.load(f).get("model", "vlm")
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.exists(path):
        return "vlm"  # load_model reports the missing checkpoint
    return load_checkpoint(path)["model_config"].get("model", "vlm")


def main(argv=None):
    cfg = parse_config(FinetuneConfig, argv, description=__doc__.split("\n\n")[0], ranges=FINETUNE_RANGES)
    if cfg.task not in TASKS:
        raise SystemExit(f"--task {cfg.task!r}: choose one of {', '.join(TASKS)}"
                         + (" (every task: python experiments.py)" if cfg.task == "all" else ""))
    StopFlag()  # from here on Ctrl-C / SIGTERM stop the run at the next step (with a checkpoint)
    dist_state = setup_distributed()
    kind = checkpoint_kind(cfg.init) if cfg.model == "auto" else cfg.model
    ensure_world(cfg.data, cfg.synth_size, cfg.seed, dist_state[1] == 0, dist_state[0], video=kind == "allinone")
    if kind == "allinone":  # raw frames: MSR-VTT-like retrieval and multiple-choice QA
        if cfg.task not in ("retrieval", "qa"):
            raise SystemExit(f"--task {cfg.task}: the frames model (allinone) fine-tunes retrieval or qa")
        result = run_frames(cfg, cfg.task, dist_state)
    else:
        result = run(cfg, cfg.task, dist_state)
    exit_if_stopped()
    return result


if __name__ == "__main__":
    cli(main, errors=(data.DataError, CheckpointError))
