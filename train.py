"""
Pre-training VLM (paper sec. 3 and 5.2): masked modality modelling + the masked token loss L_VLM.

One process (CPU or one GPU):            python train.py
DDP on one machine (NCCL on GPU, gloo on CPU):
                                         torchrun --standalone --nproc_per_node=2 train.py
Several machines: the same script under torchrun's own rendezvous flags (see README).

With no arguments it builds the built-in world in data/world if it is missing, trains a small model from
scratch with the world's tokenizer, and writes out/pretrain/{ckpt.pt, model/, log.jsonl}. `--init_from DIR`
starts from a Hugging Face BERT directory (the paper's setting); `--preset paper` sets the paper's
hyper-parameters. The skeleton follows nanoGPT: DDP only when torchrun's RANK is set, one autocast context,
the raw model kept before torch.compile / DDP, loss / grad_accum, unscale -> clip -> step -> update -> zero_grad.

The machinery here (argument parsing, DDP set-up, AMP, LR schedule, atomic checkpoints, the step loop) is
shared with finetune.py, which imports it.
"""
import argparse
import dataclasses
import inspect
import json
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import allinone
import probes
import vlm
import world
from checkpoint import (CheckpointError, atomic_save, load_checkpoint, load_model, load_state_checked,
                        save_model_dir)
from common import amp_setup, cli, flag_type
from data import DataError, FramePretrainData, PretrainData
from losses import allinone_loss, pretrain_loss
from tokens import load_tokenizer, special_ids

# -----------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    data: str = "data/world"  # data directory (the built-in world is built here if it is missing)
    synth_size: str = "default"  # size of the built-in world built if --data is missing: tiny | default
    out: str = "out/pretrain"  # output directory: ckpt.pt, model/, log.jsonl
    init_from: str = ""  # Hugging Face BERT directory to start from; empty = a small model from scratch
    preset: str = ""  # "paper": bert-base settings of sec. 5.2 (use with --init_from)
    layers: int = 4  # from scratch: number of transformer layers
    hidden: int = 256  # from scratch: hidden size
    heads: int = 4  # from scratch: attention heads
    word_init: float = 0.3  # from scratch: std of the word-embedding init (see build_model)
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all --epochs)
    epochs: int = 7  # passes over the pre-training videos
    # Many videos with few clips each (paper: 8 x 32). From scratch, a batch of few videos fills V' with
    # near-copies of each masked second (overlapping clips of one video); L_VLM then rewards one shared video
    # direction and the video stream collapses. 32 x 2, the same clips per step as 4 x 16, doubles the spread
    # of the video states (README, "What pre-training buys").
    batch_videos: int = 32  # videos per batch per process (paper: 8)
    clips_per_video: int = 2  # clips drawn per video visit (paper: 32)
    grad_accum: int = 1  # micro-batches per optimizer step
    num_workers: int = 0  # DataLoader worker processes
    lr: float = 5e-4  # peak learning rate (paper: 5e-5 from BERT)
    warmup: int = 30  # linear warm-up steps (paper: 1000), then linear decay to 0
    beta2: float = 0.98  # Adam beta2 (beta1 = 0.9, eps = 1e-8, no weight decay)
    grad_clip: float = 2.0  # clip the gradient norm at this value (0 = off)
    dtype: str = "auto"  # float32 | bfloat16 | float16 (fp16 uses a GradScaler); auto = bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model (GPU)
    mmm_prob: float = 0.5  # share of examples masked as MMM (paper ablation: 0, 0.3, 0.5, 0.7)
    loss: str = "vlm"  # vlm (Eq. 8-9) | mfm_mlm (Eq. 5-7, the ablation baseline)
    model: str = "vlm"  # vlm (S3D features) | allinone (raw frames, allinone.py: VTM + MLM on howto100m/videos)
    frame_size: int = 32  # allinone: frame side S in pixels (real video: 224)
    patch_size: int = 8  # allinone: patch side P, S / P patches a side (real video: 224 / 16)
    num_frames: int = 3  # allinone: frames per clip T (paper: 8 in pre-training, 3 fine-tuning)
    vtc: float = 0.0  # allinone: weight of the optional video-text contrastive loss (temperature 0.05)
    min_text_len: int = 8  # minimum text tokens per sampled clip (paper ablation: 16)
    max_text_len: int = 64  # maximum target text tokens per sampled clip
    log_every: int = 10  # steps between log lines
    eval_every: int = 100  # steps between validation losses on held-out videos (0 = only at the end)
    eval_batches: int = 4  # batches of held-out videos per validation
    ckpt_every: int = 200  # steps between checkpoints (also written at the end and on SIGTERM / Ctrl-C)
    resume: bool = False  # continue from OUT/ckpt.pt (automatic after a torchrun restart)
    stop_after: int = 0  # save and exit after this many steps, as if interrupted (0 = never); --resume goes on
    seed: int = 0  # random seed (offset by rank for dropout; data order is shared and sharded)
    max_bad_steps: int = 8  # stop after this many non-finite steps in a row
    cache_dir: str = ""  # derived files (the token cache); empty = OUT/cache. Nothing is written into --data
    probe: bool = True  # print the zero-shot grounding probes at the end (probes.grounding_probes; --model vlm)


PRESETS = {
    # sec. 5.2: bert-base, 8 videos x 32 clips per GPU, Adam (0.9, 0.98), lr 5e-5, 1000 warm-up, 15 epochs
    "paper": dict(batch_videos=8, clips_per_video=32, lr=5e-5, warmup=1000, epochs=15, grad_clip=2.0),
}


# valid range of each numeric flag, checked where it is parsed: (low, high, low excluded)
RANGES = dict(layers=(1, None), hidden=(1, None), heads=(1, None), word_init=(0, None), max_steps=(0, None),
              epochs=(1, None), batch_videos=(1, None), clips_per_video=(1, None), grad_accum=(1, None),
              num_workers=(0, None), lr=(0, None, True), warmup=(0, None), beta2=(0, 1, True), grad_clip=(0, None),
              mmm_prob=(0, 1), min_text_len=(1, None), max_text_len=(1, None), log_every=(1, None),
              eval_every=(0, None), eval_batches=(1, None), ckpt_every=(1, None), stop_after=(0, None),
              max_bad_steps=(1, None), batch_size=(1, None))


def field_help(cls):
    """The trailing comment of each dataclass field, used as its --help text (one source of truth)."""
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith("#"):
            helps[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    return helps


def parse_config(cls, argv=None, presets=None, description="", ranges=None):
    """argparse over the fields of a config dataclass; a --preset (if any) changes defaults, flags win.
    Numeric flags named in `ranges` (default RANGES) are checked against their range as they are parsed."""
    helps, ranges = field_help(cls), RANGES if ranges is None else ranges

    def build(defaults):
        p = argparse.ArgumentParser(description=description,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for f in dataclasses.fields(cls):
            default = defaults.get(f.name, f.default)
            if f.type in (bool, "bool"):
                p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=default,
                               help=helps.get(f.name, ""))
            else:
                typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
                if f.name in ranges and typ in (int, float):
                    typ = flag_type(f.name, typ, *ranges[f.name])
                p.add_argument(f"--{f.name}", type=typ, default=default, help=helps.get(f.name, ""))
        return p

    args = build({}).parse_args(argv)
    preset = getattr(args, "preset", "")
    if preset:
        if preset not in (presets or {}):
            raise SystemExit(f"--preset {preset!r}: unknown preset, choose from {sorted(presets or {})}")
        args = build(presets[preset]).parse_args(argv)
    return cls(**vars(args))


# -----------------------------------------------------------------------------------------------------------
# distributed set-up, AMP, schedule, checkpoints (shared with finetune.py)


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
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cpu"
    if cuda:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return True, rank, world, device


def lr_at(step, lr, warmup, total):
    """Linear warm-up to lr, then linear (polynomial power 1) decay to 0 at `total` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model, lr, beta2, device):
    """Adam (0.9, beta2), eps 1e-8, no weight decay (sec. 5.2); the fused kernel on GPU."""
    fused = "cuda" in device
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, beta2), eps=1e-8, fused=fused)


def rng_state(gen):
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "gen": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state, gen):
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
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def optimizer_step(objective, batches, optimizer, scaler, ctx, grad_clip, ddp):
    """One optimizer step over len(batches) micro-batches: loss / grad_accum, DDP sync on the last one only,
    unscale -> clip -> (skip if non-finite) step -> update -> zero_grad. Returns (loss, stats, finite)."""
    n = len(batches)
    total, stats = 0.0, {}
    for i, batch in enumerate(batches):
        sync = nullcontext() if (not ddp or i == n - 1) else objective.no_sync()
        with sync:
            with ctx:
                loss, st = objective(batch)
            scaler.scale(loss / n).backward()
        total += loss.item() / n
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
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
    hint = ("try --dtype bfloat16 or float32" if dtype == "float16" else
            "try a lower --lr, a longer --warmup or --grad_clip 1.0")
    return (f"stopping: {n_bad} non-finite steps in a row (last at step {step}); the last good checkpoint is "
            f"kept; {hint}")


# -----------------------------------------------------------------------------------------------------------
# model and data set-up


def ensure_world(data_dir, size, seed, master, ddp, video=False):
    """Build the built-in world on (global) rank 0 if the data directory does not exist yet (video: with frames),
    while the other ranks wait; it is written under a temp name and renamed, so a killed build never looks like a
    world."""
    if master and not os.path.exists(data_dir):
        print(f"building the built-in world ({size}{', with video' if video else ''}) in {data_dir} ...")
        t0 = time.time()
        final = os.path.abspath(data_dir)
        tmp = f"{final}.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        world.synth(tmp, seed=seed, size=size, **({"video": True} if video else {}))
        os.replace(tmp, final)
        print(f"built in {time.time() - t0:.1f}s")
    if ddp:
        dist.barrier()


def build_model(cfg, data_dir):
    """A BERT checkpoint (--init_from) or a small model from scratch with the data's own tokenizer."""
    if cfg.init_from:
        if not os.path.isdir(cfg.init_from):
            raise CheckpointError(f"--init_from {cfg.init_from}: no such directory (a Hugging Face BERT directory)")
        if os.path.exists(os.path.join(cfg.init_from, "model.pt")):  # a model directory of this project
            return load_model(cfg.init_from), load_tokenizer(cfg.init_from)
        try:
            return vlm.VLM.from_pretrained(cfg.init_from), load_tokenizer(cfg.init_from)
        except CheckpointError:
            raise
        except Exception as e:  # a damaged weight file, config.json or tokenizer
            raise CheckpointError(f"--init_from {cfg.init_from}: cannot load ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]})") from None
    tok = load_tokenizer(data_dir)
    ids = special_ids(tok)
    mcfg = vlm.VLMConfig(vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                         num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden,
                         cls_token_id=ids["cls"], sep_token_id=ids["sep"], mask_token_id=ids["mask"],
                         pad_token_id=ids["pad"])
    model = vlm.VLM(mcfg)
    # At BERT's init (std 0.02) the word embeddings (norm ~0.3) are dwarfed by the video tokens (MLP outputs,
    # norm ~5). L_VLM scores both in one softmax, and the cheapest way to tell the modalities apart is then one
    # shared direction added to every video token, which the embedding LayerNorm turns into near-identical video
    # inputs: the video stream collapses (measured: README, "Pre-training from scratch"). A real BERT's words
    # have norm ~1.4; from scratch we start them at the video tokens' scale instead.
    with torch.no_grad():
        model.bert.wte.weight.normal_(0.0, cfg.word_init)
        model.bert.wte.weight[mcfg.pad_token_id].zero_()
    return model, tok


def build_frames_model(cfg, data_dir):
    """The All-in-One frames model (allinone.py): from a BERT checkpoint (--init_from) or from scratch."""
    frame = dict(frame_size=cfg.frame_size, patch_size=cfg.patch_size, num_frames=cfg.num_frames)
    if cfg.init_from:
        return allinone.AllInOne.from_pretrained(cfg.init_from, **frame), load_tokenizer(cfg.init_from)
    tok = load_tokenizer(data_dir)
    ids = special_ids(tok)
    mcfg = allinone.AllInOneConfig(vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden,
                                   num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                   intermediate_size=4 * cfg.hidden, cls_token_id=ids["cls"], sep_token_id=ids["sep"],
                                   mask_token_id=ids["mask"], pad_token_id=ids["pad"], **frame)
    return allinone.AllInOne(mcfg), tok


# -----------------------------------------------------------------------------------------------------------
# pre-training


def evaluate_loss(raw_model, val, cfg, ctx, device, loss_fn):
    """Masked-token loss on the first eval_batches batches of held-out videos, fixed masking seed."""
    raw_model.eval()
    gen = torch.Generator(device=device).manual_seed(1234)
    losses = []
    # fork_rng: validation must not move the training RNG (resumed runs stay bit-identical)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for i, batch in enumerate(val.loader(cfg.batch_videos, epoch=0)):
            if i >= cfg.eval_batches:
                break
            with ctx:
                loss, _ = loss_fn(raw_model, to_device(batch, device), gen)
            losses.append(loss.item())
    raw_model.train()
    return sum(losses) / max(1, len(losses))


def main(argv=None):
    cfg = parse_config(TrainConfig, argv, PRESETS, description=__doc__.split("\n\n")[0])
    if cfg.loss not in ("vlm", "mfm_mlm"):
        raise SystemExit(f"--loss {cfg.loss!r}: choose vlm or mfm_mlm")
    if cfg.min_text_len > cfg.max_text_len:
        raise SystemExit(f"--min_text_len {cfg.min_text_len} is above --max_text_len {cfg.max_text_len}")
    if not cfg.init_from and cfg.hidden % cfg.heads:
        raise SystemExit(f"--hidden {cfg.hidden} must be a multiple of --heads {cfg.heads}")
    if cfg.model not in ("vlm", "allinone"):
        raise SystemExit(f"--model {cfg.model!r}: choose vlm or allinone")
    StopFlag()  # from here on Ctrl-C / SIGTERM stop the run at the next step (with a checkpoint)

    ddp, rank, world, device = setup_distributed()
    master = rank == 0
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    frames = cfg.model == "allinone"
    ensure_world(cfg.data, cfg.synth_size, cfg.seed, master, ddp, video=frames)
    os.makedirs(cfg.out, exist_ok=True)
    dtype, ctx, scaler = amp_setup(cfg.dtype, device)

    model, tok = (build_frames_model if frames else build_model)(cfg, cfg.data)
    model.to(device)
    # derived files (the token cache) go under OUT, never into the data; rank 0 builds them while the others
    # wait, then they read them (on nodes that do not share OUT each builds its own, under unique temp names)
    cache_dir = cfg.cache_dir or os.path.join(cfg.out, "cache")
    if ddp and not master:
        dist.barrier()
    if frames:  # raw frames from howto100m/videos; text at most max_text_len - 2 pieces ([CLS], [SEP])
        mc = model.config
        n_tok = min(cfg.max_text_len, mc.max_text_len - 2)
        kw = dict(clips_per_video=cfg.clips_per_video, min_text=min(cfg.min_text_len, n_tok), max_text=n_tok,
                  seed=cfg.seed, num_frames=mc.num_frames, frame_size=mc.frame_size, max_tokens=n_tok,
                  cache_dir=cache_dir)
        train_data, val_data = (FramePretrainData(cfg.data, tok, split=s, **kw) for s in ("train", "val"))
    else:
        train_data = PretrainData(cfg.data, tok, split="train", clips_per_video=cfg.clips_per_video,
                                  min_text=cfg.min_text_len, max_text=cfg.max_text_len, seed=cfg.seed,
                                  cache_dir=cache_dir)
        val_data = PretrainData(cfg.data, tok, split="val", clips_per_video=cfg.clips_per_video,
                                min_text=cfg.min_text_len, max_text=cfg.max_text_len, seed=cfg.seed, cache_dir=cache_dir)
    if ddp and master:
        dist.barrier()
    per_epoch = train_data.batches_per_epoch(cfg.batch_videos, world) // cfg.grad_accum
    if per_epoch == 0:
        raise SystemExit(f"{cfg.data}: {train_data.num_videos} training videos are too few for "
                         f"{world} x {cfg.batch_videos} videos x {cfg.grad_accum} micro-steps per step")
    total = cfg.max_steps or per_epoch * cfg.epochs
    optimizer = make_optimizer(model, cfg.lr, cfg.beta2, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)  # masking draws

    def loss_fn(m, batch, g):
        if frames:  # All-in-One: VTM + MLM (+ VTC)
            return allinone_loss(m, batch, g, vtc=cfg.vtc)
        return pretrain_loss(m, batch, g, loss=cfg.loss, mmm_prob=cfg.mmm_prob)

    step, n_skipped, bad_in_row = 0, 0, 0
    ckpt_path = os.path.join(cfg.out, "ckpt.pt")
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if (cfg.resume or restarted) and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, need=("model", "optimizer", "scaler", "step", "n_skipped", "rng"))
        old = ckpt.get("train_config", {})
        flags = {k: (old[k], getattr(cfg, k)) for k in ("init_from", "layers", "hidden", "heads", "data") if k in old}
        load_state_checked(model, ckpt["model"], ckpt_path, flags)
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, n_skipped = ckpt["step"], ckpt["n_skipped"]
        set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0], gen)
        if master:
            print(f"resumed from {ckpt_path} at step {step}")
    elif cfg.resume and master:
        print(f"--resume: no {ckpt_path} yet, starting from scratch")

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    objective = Objective(model, lambda m, b: loss_fn(m, b, gen))
    if ddp:
        objective = wrap_ddp(objective, device)

    def save(step):
        # every rank contributes its RNG state, rank 0 writes
        states = [rng_state(gen)]
        if ddp:
            states = [None] * world
            dist.all_gather_object(states, rng_state(gen))
        if master:
            atomic_save({"model": raw_model.state_dict(), "model_config": dataclasses.asdict(raw_model.config),
                         "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                         "n_skipped": n_skipped, "rng": states, "train_config": dataclasses.asdict(cfg),
                         "data_position": {"epoch": step // per_epoch, "batch": (step % per_epoch) * cfg.grad_accum}},
                        ckpt_path)

    if master:
        n_params = sum(p.numel() for p in raw_model.parameters())
        print(f"{n_params / 1e6:.2f}M parameters | {train_data.num_videos} videos | {per_epoch} steps/epoch | "
              f"{total} steps | {world} process(es) on {device} | {dtype}")
        print(json.dumps(dataclasses.asdict(cfg)))
    log = open(os.path.join(cfg.out, "log.jsonl"), "a") if master else None
    stop = StopFlag()
    bar = None
    if master:
        bar = tqdm(total=total, initial=step, dynamic_ncols=True, disable=None)
    clips_per_step = cfg.batch_videos * cfg.clips_per_video * cfg.grad_accum * world
    t_last, steps_since = time.time(), 0
    stopped = False
    while step < total and not stopped:
        epoch, start_batch = step // per_epoch, (step % per_epoch) * cfg.grad_accum
        loader = iter(train_data.loader(cfg.batch_videos, epoch=epoch, rank=rank, world_size=world,
                                        start_batch=start_batch, num_workers=cfg.num_workers))
        for _ in range(step % per_epoch, per_epoch):
            lr = lr_at(step, cfg.lr, cfg.warmup, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batches = [to_device(next(loader), device) for _ in range(cfg.grad_accum)]
            loss, stats, finite = optimizer_step(objective, batches, optimizer, scaler, ctx, cfg.grad_clip, ddp)
            step += 1
            steps_since += 1
            if finite:
                bad_in_row = 0
            else:
                n_skipped += 1
                bad_in_row += 1
                if master:
                    print(f"step {step}: non-finite loss or gradient, step skipped ({n_skipped} so far)")
                if bad_in_row >= cfg.max_bad_steps:
                    if master:
                        print(bad_step_message(step, bad_in_row, dtype))
                    stopped = True
                    break
            if master:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
            last = step == total
            if master and (step % cfg.log_every == 0 or last):
                dt = time.time() - t_last
                rec = {"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                       "clips_per_s": clips_per_step * steps_since / max(dt, 1e-9), "skipped": n_skipped,
                       **{k: int(v) for k, v in stats.items()}}
                t_last, steps_since = time.time(), 0
                if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                    rec["val_loss"] = evaluate_loss(raw_model, val_data, cfg, ctx, device, loss_fn)
                    bar.write(f"step {step}: loss {loss:.4f} val {rec['val_loss']:.4f}")
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if step % cfg.ckpt_every == 0 or last:
                save(step)
            if any_rank(stop.stop, ddp, device) or step == cfg.stop_after:
                save(step)
                if master:
                    print(f"stopped: checkpoint saved at step {step} in {ckpt_path}; continue with --resume")
                stopped = True
                break
            if last:
                break
    if master:
        bar.close()
        log.close()
        model_dir = os.path.join(cfg.out, "model")
        save_model_dir(raw_model, model_dir, tokenizer=tok)
        if step >= total:
            print(f"done: {step} steps, {n_skipped} skipped. checkpoint {ckpt_path}, model {model_dir}")
            print(f"next: python experiments.py --init {model_dir} --data {cfg.data}")
            if cfg.probe and not frames:  # does pre-training link words to video? (README, "Grounding probes")
                raw_model.eval()
                probes.grounding_probes(raw_model, cfg.data, tok, device, ctx)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    exit_if_stopped()
    return step


if __name__ == "__main__":
    cli(main, errors=(DataError, CheckpointError))
