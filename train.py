"""
Pre-training (paper sec. 3 and 5.2): masked modality modelling (MMM, sec. 3.2) and the masked token loss L_VLM
(sec. 3.3, Eq. 8-9), or the MFM + MLM baseline (Eq. 5-7); with `--model allinone` the raw-frames All-in-One
model (allinone.py, docs/allinone.md) with VTM + MLM (+ VTC). Method: docs/method.md §1-4 (§6 All-in-One);
data: docs/data_formats.md.

  python train.py                                        # small model from scratch on the built-in world
  python train.py --max_steps 20 --layers 1 --hidden 32 --heads 2 --out /tmp/p   # a smoke run (seconds)
  python train.py --preset small --out out/pretrain_small   # 2 layers held at peak lr: transfers (15 min)
  torchrun --standalone --nproc_per_node=2 train.py      # DDP on one machine (NCCL on GPU, gloo on CPU)
  torchrun --standalone --nproc_per_node=8 train.py --preset paper --init /path/to/bert-base-uncased --data DIR
  python train.py --model allinone --data data/world_video --out out/allinone    # All-in-One from frames
  python train.py --resume                               # go on from OUT/ckpt.pt, bit-identical

With no arguments it builds the built-in world in data/world if it is missing, trains a small model from
scratch with the world's tokenizer, and writes OUT/{ckpt.pt, model/, log.jsonl} (OUT = out/pretrain).
`--init DIR` starts from a Hugging Face BERT directory (the paper's setting) or a model directory of ours;
`--preset paper` sets the hyper-parameters of sec. 5.2; several machines: torchrun's rendezvous flags (README).

The skeleton follows nanoGPT: DDP only when torchrun's RANK is set, one autocast context, the raw model kept
before torch.compile / DDP, loss / grad_accum, unscale -> clip -> step -> update -> zero_grad (engine.py, shared
with finetune.py, which also uses ensure_world, scratch_word_init and the flag ranges RANGES from here).
"""
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import ClassVar
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import allinone
import probes
import vlm
import world
from checkpoint import (CheckpointError, load_checkpoint, load_model, load_state_checked, save, save_model_dir)
from common import amp_setup, cli, parse_config
from data import DataError, FramePretrainData, PretrainData
from engine import (BETA2, Objective, StopFlag, any_rank, bad_step_message, exit_if_stopped, lr_at, make_optimizer,
                    optimizer_step, rng_state, set_lr, set_rng_state, setup_distributed, to_device, wrap_ddp)
from losses import allinone_loss, pretrain_loss, text_loss
from tokens import load_tokenizer, special_ids

# -----------------------------------------------------------------------------------------------------------
# configuration: each field is a flag (--name); its trailing comment is its --help text


# valid range of each numeric flag, checked where it is parsed: (low, high, low excluded)
RANGES = dict(layers=(1, None), hidden=(1, None), heads=(1, None), word_init=(0, None), dropout=(0, 1),
              max_steps=(0, None), epochs=(0, None), batch_videos=(1, None), clips_per_video=(1, None),
              grad_accum=(1, None), num_workers=(0, None), lr=(0, None, True), warmup=(0, None), grad_clip=(0, None),
              mmm_prob=(0, 1), min_text_len=(1, None), max_text_len=(1, None), log_every=(1, None),
              eval_every=(0, None), eval_batches=(1, None), ckpt_every=(1, None), stop_after=(0, None),
              max_bad_steps=(1, None), batch_size=(1, None),
              text_epochs=(-1, None), text_lr=(0, None, True))


@dataclass
class TrainConfig:
    ranges: ClassVar[dict] = RANGES  # checked as flags are parsed (common.parse_config)
    # I/O
    data: str = "data/world"  # data directory (the built-in world is built here if it is missing)
    synth_size: str = "default"  # size of the built-in world built if --data is missing: tiny | default
    out: str = "out/pretrain"  # output directory: ckpt.pt, model/, log.jsonl
    cache_dir: str = ""  # derived files (the token cache); empty = OUT/cache. Nothing is written into --data
    init: str = ""  # Hugging Face BERT directory (or a model directory of ours) to start from; empty = from scratch
    resume: bool = False  # continue from OUT/ckpt.pt (automatic after a torchrun restart)
    stop_after: int = 0  # save and exit after this many steps, as if interrupted (0 = never); --resume goes on
    log_every: int = 10  # steps between log lines
    eval_every: int = 100  # steps between validation losses on held-out videos (0 = only at the end)
    eval_batches: int = 4  # batches of held-out videos per validation
    ckpt_every: int = 200  # steps between checkpoints (also written at the end and on SIGTERM / Ctrl-C)
    probe: bool = True  # print the zero-shot grounding probes at the end (probes.grounding_probes; --model vlm)
    preset: str = ""  # "paper": bert-base settings of sec. 5.2 (use with --init); "small": see PRESETS
    seed: int = 0  # random seed (offset by rank for dropout; data order is shared and sharded)
    # data
    # many videos, few clips each (paper: 8 x 32): few videos fill V' with near-copies of each masked second and
    # the video stream collapses; 32 x 2 doubles the spread of 4 x 16 (docs/log.md, "What pre-training buys")
    batch_videos: int = 32  # videos per batch per process (paper: 8)
    clips_per_video: int = 2  # clips drawn per video visit (paper: 32)
    min_text_len: int = 8  # minimum text tokens per sampled clip (paper ablation: 16)
    max_text_len: int = 64  # maximum target text tokens per sampled clip
    num_workers: int = 0  # DataLoader worker processes
    # model
    model: str = "vlm"  # vlm (S3D features) | allinone (raw frames, allinone.py: VTM + MLM on howto100m/videos)
    layers: int = 2  # from scratch: number of transformer layers
    hidden: int = 128  # from scratch: hidden size
    heads: int = 2  # from scratch: attention heads
    word_init: float = 0.3  # from scratch: std of the word-embedding init (see scratch_word_init)
    dropout: float = 0.0  # from scratch: hidden and attention dropout (BERT: 0.1; off here: faster, no worse)
    frame_size: int = 32  # allinone: frame side S in pixels (real video: 224)
    patch_size: int = 8  # allinone: patch side P, S / P patches a side (real video: 224 / 16)
    num_frames: int = 3  # allinone: frames per clip T (paper: 8 in pre-training, 3 fine-tuning)
    # loss (sec. 3.2-3.3)
    loss: str = "vlm"  # vlm (Eq. 8-9) | mfm_mlm (Eq. 5-7, the ablation baseline)
    mmm_prob: float = 0.5  # share of examples masked as MMM (paper ablation: 0, 0.3, 0.5, 0.7)
    vtc: float = 0.0  # allinone: weight of the optional video-text contrastive loss (temperature 0.05)
    # the text stage: from scratch, learn to read the text alone first, as the paper's model is BERT (docs/log.md)
    text_epochs: int = -1  # passes of text-only MLM before L_VLM; -1 = 34 from scratch, 0 with --init or allinone
    text_lr: float = 6e-3  # peak learning rate of the text stage (constant after --warmup)
    # optimizer (sec. 5.2)
    epochs: int = 30  # passes of L_VLM over the pre-training videos (default world: 30 steps each; 0 = text alone)
    max_steps: int = 0  # stop after this many L_VLM steps, after the text stage (0 = run all --epochs)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate of Adam (0.9, 0.98), eps 1e-8, no weight decay (paper: 5e-5 from BERT)
    warmup: int = 20  # linear warm-up steps (paper: 1000), then --decay
    # constant by default: a short linearly decayed run from scratch ends on the MLM plateau (docs/log.md)
    decay: str = "constant"  # after warm-up: linear (to 0 at the last step, the paper's) | constant (hold the peak)
    grad_clip: float = 2.0  # clip the gradient norm at this value (0 = off)
    max_bad_steps: int = 8  # stop after this many non-finite steps in a row
    # DDP / precision
    dtype: str = "auto"  # float32 | bfloat16 | float16 (fp16 uses a GradScaler); auto = bf16 on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model (GPU)


PRESETS = {
    # sec. 5.2: bert-base, 8 videos x 32 clips per GPU, Adam (0.9, 0.98), lr 5e-5, 1000 warm-up, 15 epochs
    "paper": dict(batch_videos=8, clips_per_video=32, lr=5e-5, warmup=1000, epochs=15, grad_clip=2.0, decay="linear"),
    # 1,500 L_VLM steps, BERT's dropout, no text stage: it beat from scratch at fine-tuning lr 2e-4 (docs/log.md)
    "small": dict(layers=2, hidden=128, heads=2, lr=1e-3, warmup=20, decay="constant", max_steps=1500, dropout=0.1,
                  text_epochs=0),
}

def check_config(cfg):
    """The checks argparse cannot make alone (choices and pairs of flags)."""
    if cfg.loss not in ("vlm", "mfm_mlm"):
        raise SystemExit(f"--loss {cfg.loss!r}: choose vlm or mfm_mlm")
    if cfg.min_text_len > cfg.max_text_len:
        raise SystemExit(f"--min_text_len {cfg.min_text_len} is above --max_text_len {cfg.max_text_len}")
    if not cfg.init and cfg.hidden % cfg.heads:
        raise SystemExit(f"--hidden {cfg.hidden} must be a multiple of --heads {cfg.heads}")
    if cfg.decay not in ("linear", "constant"):
        raise SystemExit(f"--decay {cfg.decay!r}: choose linear or constant")
    if cfg.model not in ("vlm", "allinone"):
        raise SystemExit(f"--model {cfg.model!r}: choose vlm or allinone")
    if cfg.model == "allinone" and cfg.text_epochs > 0:
        raise SystemExit(f"--text_epochs {cfg.text_epochs}: the text stage is for --model vlm (All-in-One has MLM)")


# -----------------------------------------------------------------------------------------------------------
# model and data


def ensure_world(data_dir, size, seed, master, ddp, video=False):
    """Build the built-in world on rank 0 if the data directory is missing (video: with frames), the others
    waiting; written under a temp name and renamed, so a killed build never looks like a world."""
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


def scratch_config(cls, cfg, tok, **extra):
    """A from-scratch model config (VLMConfig or AllInOneConfig) sized by the flags, the tokenizer's ids."""
    ids = special_ids(tok)
    return cls(vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
               num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden, hidden_dropout_prob=cfg.dropout,
               attention_probs_dropout_prob=cfg.dropout, cls_token_id=ids["cls"],
               sep_token_id=ids["sep"], mask_token_id=ids["mask"], pad_token_id=ids["pad"], **extra)


def scratch_word_init(model, std):
    """At BERT's init (std 0.02) words (norm ~0.3) are dwarfed by video tokens (norm ~5), and L_VLM then tells
    the modalities apart by one direction shared by every video token: the video stream collapses (docs/log.md,
    "The video stream partly collapses"). Start them at the video tokens' scale (finetune.py --scratch too)."""
    with torch.no_grad():
        model.bert.wte.weight.normal_(0.0, std)
        model.bert.wte.weight[model.config.pad_token_id].zero_()
    return model


def build_model(cfg, data_dir):
    """A BERT checkpoint or a model directory of ours (--init), or a small model from scratch with the data's
    own tokenizer. Returns (model, tokenizer)."""
    if not cfg.init:
        tok = load_tokenizer(data_dir)
        return scratch_word_init(vlm.VLM(scratch_config(vlm.VLMConfig, cfg, tok)), cfg.word_init), tok
    if not os.path.isdir(cfg.init):
        raise CheckpointError(f"--init {cfg.init}: no such directory (a Hugging Face BERT directory)")
    if os.path.exists(os.path.join(cfg.init, "model.pt")):  # a model directory of this project
        return load_model(cfg.init), load_tokenizer(cfg.init)
    try:
        return vlm.VLM.from_pretrained(cfg.init), load_tokenizer(cfg.init)
    except CheckpointError:
        raise
    except Exception as e:  # a damaged weight file, config.json or tokenizer
        raise CheckpointError(f"--init {cfg.init}: cannot load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from None


def build_frames_model(cfg, data_dir):
    """The All-in-One frames model (allinone.py): from a BERT checkpoint (--init) or from scratch."""
    frame = dict(frame_size=cfg.frame_size, patch_size=cfg.patch_size, num_frames=cfg.num_frames)
    if cfg.init:
        return allinone.AllInOne.from_pretrained(cfg.init, **frame), load_tokenizer(cfg.init)
    tok = load_tokenizer(data_dir)
    return allinone.AllInOne(scratch_config(allinone.AllInOneConfig, cfg, tok, **frame)), tok


def build_data(cfg, model, tok, ddp, master):
    """(train, val) pre-training data: S3D features (data.PretrainData) or, for --model allinone, raw frames from
    howto100m/videos (data.FramePretrainData; text at most max_text_len - 2 pieces, for [CLS] and [SEP]).
    The token cache goes under OUT, never into the data; rank 0 builds it while the others wait."""
    kw = dict(clips_per_video=cfg.clips_per_video, min_text=cfg.min_text_len, max_text=cfg.max_text_len,
              seed=cfg.seed, cache_dir=cfg.cache_dir or os.path.join(cfg.out, "cache"))
    cls = PretrainData
    if cfg.model == "allinone":
        mc, cls = model.config, FramePretrainData
        n_tok = min(cfg.max_text_len, mc.max_text_len - 2)
        kw.update(min_text=min(cfg.min_text_len, n_tok), max_text=n_tok, num_frames=mc.num_frames,
                  frame_size=mc.frame_size, max_tokens=n_tok)
    if ddp and not master:
        dist.barrier()
    train_data, val_data = (cls(cfg.data, tok, split=s, **kw) for s in ("train", "val"))
    if ddp and master:
        dist.barrier()
    return train_data, val_data


# -----------------------------------------------------------------------------------------------------------
# pre-training: setup -> resume -> the loop (batch -> loss -> step -> log -> validate -> save) -> the end


def make_loss_fn(cfg):
    """loss_fn(model, batch, masking generator) -> (loss, stats): L_VLM or MFM + MLM (losses.pretrain_loss,
    sec. 3.2-3.3), or All-in-One's VTM + MLM (+ VTC) for --model allinone (losses.allinone_loss)."""
    if cfg.model == "allinone":
        return lambda m, batch, g: allinone_loss(m, batch, g, vtc=cfg.vtc)
    return lambda m, batch, g: pretrain_loss(m, batch, g, loss=cfg.loss, mmm_prob=cfg.mmm_prob)


def setup(cfg):
    """DDP, seeds, the world, AMP, the model, the data, the optimizer and the masking generator, in the order
    that fixes every random stream. Returns a namespace s (s.raw_model: the model before compile / DDP)."""
    ddp, rank, world_size, device = setup_distributed()
    s = SimpleNamespace(ddp=ddp, rank=rank, world=world_size, device=device, master=rank == 0)
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank
    np.random.seed(cfg.seed + rank)
    ensure_world(cfg.data, cfg.synth_size, cfg.seed, s.master, ddp, video=cfg.model == "allinone")
    os.makedirs(cfg.out, exist_ok=True)
    s.dtype, s.ctx, s.scaler = amp_setup(cfg.dtype, device)
    model, s.tok = (build_frames_model if cfg.model == "allinone" else build_model)(cfg, cfg.data)
    s.raw_model = model.to(device)
    s.train_data, s.val_data = build_data(cfg, s.raw_model, s.tok, ddp, s.master)
    s.per_epoch = s.train_data.batches_per_epoch(cfg.batch_videos, world_size) // cfg.grad_accum
    if s.per_epoch == 0:
        raise SystemExit(f"{cfg.data}: {s.train_data.num_videos} training videos are too few for "
                         f"{world_size} x {cfg.batch_videos} videos x {cfg.grad_accum} micro-steps per step")
    auto = 0 if cfg.init or cfg.model == "allinone" else 34
    s.text_total = s.per_epoch * (auto if cfg.text_epochs < 0 else cfg.text_epochs)  # steps 0..text_total-1
    s.total = s.text_total + (cfg.max_steps or s.per_epoch * cfg.epochs)
    if s.total == 0:
        raise SystemExit(f"--epochs 0 with --text_epochs {cfg.text_epochs}: nothing to train")
    s.optimizer = make_optimizer(s.raw_model, cfg.lr, BETA2, device)
    s.gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)  # masking draws
    stage2, s.step = make_loss_fn(cfg), 0  # s.step: the step being taken (the loop sets it), picks the stage
    s.loss_fn = lambda m, b, g: text_loss(m, b, g) if s.step < s.text_total else stage2(m, b, g)
    s.ckpt_path = os.path.join(cfg.out, "ckpt.pt")
    return s


def resume(cfg, s):
    """(step, n_skipped): (0, 0), or OUT/ckpt.pt's with --resume or after a torchrun restart (bit-identical)."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if not ((cfg.resume or restarted) and os.path.exists(s.ckpt_path)):
        if cfg.resume and s.master:
            print(f"--resume: no {s.ckpt_path} yet, starting from scratch")
        return 0, 0
    ckpt = load_checkpoint(s.ckpt_path, need=("model", "optimizer", "scaler", "step", "n_skipped", "rng"))
    old = dict(ckpt.get("train_config", {}))
    if "init_from" in old:  # checkpoints written when --init was called --init_from
        old["init"] = old.pop("init_from")
    flags = {k: (old[k], getattr(cfg, k)) for k in ("init", "layers", "hidden", "heads", "data") if k in old}
    load_state_checked(s.raw_model, ckpt["model"], s.ckpt_path, flags)
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"][s.rank] if s.rank < len(ckpt["rng"]) else ckpt["rng"][0], s.gen)
    if s.master:
        print(f"resumed from {s.ckpt_path} at step {ckpt['step']}")
    return ckpt["step"], ckpt["n_skipped"]


def save_checkpoint(cfg, s, step, n_skipped):
    """OUT/ckpt.pt, written atomically by rank 0 with every rank's RNG state (the data position: for readers)."""
    states = [rng_state(s.gen)]
    if s.ddp:
        states = [None] * s.world
        dist.all_gather_object(states, rng_state(s.gen))
    if s.master:
        save(s.ckpt_path, s.raw_model, s.tok, optimizer=s.optimizer.state_dict(), scaler=s.scaler.state_dict(),
             step=step, n_skipped=n_skipped, rng=states, train_config=dataclasses.asdict(cfg),
             data_position={"epoch": step // s.per_epoch, "batch": (step % s.per_epoch) * cfg.grad_accum})


def enter_step(cfg, s, step):
    """Before step `step`: the text stage (steps 0..text_total-1) or the loss of --loss, each with its own lr and
    warm-up; L_VLM starts as from a checkpoint, with fresh Adam moments. Returns the lr set."""
    s.step, T = step, s.text_total  # s.step picks the stage in s.loss_fn
    if step == T > 0:
        s.optimizer.state.clear()
    return set_lr(s.optimizer, lr_at(step, cfg.text_lr, cfg.warmup, T, "constant") if step < T else
                  lr_at(step - T, cfg.lr, cfg.warmup, s.total - T, cfg.decay))


def validate(cfg, s):
    """Masked-token loss on the first --eval_batches batches of held-out videos, with a fixed masking seed."""
    s.raw_model.eval()
    gen = torch.Generator(device=s.device).manual_seed(1234)
    losses = []
    # fork_rng: validation must not move the training RNG (resumed runs stay bit-identical)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for i, batch in enumerate(s.val_data.loader(cfg.batch_videos, epoch=0)):
            if i >= cfg.eval_batches:
                break
            with s.ctx:
                loss, _ = s.loss_fn(s.raw_model, to_device(batch, s.device), gen)
            losses.append(loss.item())
    s.raw_model.train()
    return sum(losses) / max(1, len(losses))


class StepLog:
    """Rank 0's progress bar and OUT/log.jsonl: a record every --log_every steps, validation every --eval_every."""

    def __init__(self, cfg, s, step):
        self.cfg, self.s = cfg, s
        n_params = sum(p.numel() for p in s.raw_model.parameters())
        print(f"{n_params / 1e6:.2f}M parameters | {s.train_data.num_videos} videos | {s.per_epoch} steps/epoch | "
              f"{s.total} steps ({s.text_total} of them text alone) | {s.world} process(es) on {s.device} | "
              f"{s.dtype}")
        print(json.dumps(dataclasses.asdict(cfg)))
        self.file = open(os.path.join(cfg.out, "log.jsonl"), "a")
        self.bar = tqdm(total=s.total, initial=step, dynamic_ncols=True, disable=None)
        self.clips_per_step = cfg.batch_videos * cfg.clips_per_video * cfg.grad_accum * s.world
        self.t_last, self.steps_since = time.time(), 0

    def step(self, step, epoch, loss, lr, stats, n_skipped, last):
        cfg, self.steps_since = self.cfg, self.steps_since + 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
        if not (step % cfg.log_every == 0 or last):
            return
        speed = self.clips_per_step * self.steps_since / max(time.time() - self.t_last, 1e-9)
        rec = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "clips_per_s": speed, "skipped": n_skipped,
               **{k: int(v) for k, v in stats.items()}}
        self.t_last, self.steps_since = time.time(), 0
        if (cfg.eval_every and step % cfg.eval_every == 0) or last:
            rec["val_loss"] = validate(cfg, self.s)
            self.bar.write(f"step {step}: loss {loss:.4f} val {rec['val_loss']:.4f}")
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def close(self):
        self.bar.close()
        self.file.close()


def finish(cfg, s, step, n_skipped):
    """The end, on rank 0: OUT/model and, after a complete run, the zero-shot grounding probes; then DDP ends."""
    if s.master:
        model_dir = os.path.join(cfg.out, "model")
        save_model_dir(s.raw_model, model_dir, tokenizer=s.tok)
        if step >= s.total:
            print(f"done: {step} steps, {n_skipped} skipped. checkpoint {s.ckpt_path}, model {model_dir}")
            print(f"next: python experiments.py --init {model_dir} --data {cfg.data}")
            if cfg.probe and cfg.model != "allinone":  # does pre-training link words to video?
                s.raw_model.eval()
                probes.grounding_probes(s.raw_model, cfg.data, s.tok, s.device, s.ctx)
    if s.ddp:
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None):
    """python train.py [--flags]: pre-train, returns the last step (tests call it with argv)."""
    cfg = parse_config(TrainConfig, argv, PRESETS, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    stop = StopFlag()  # from here on Ctrl-C / SIGTERM stop the run at the next step (with a checkpoint)
    # setup: config, DDP, model, data, optimizer; then resume (OUT/ckpt.pt) if asked
    s = setup(cfg)
    step, n_skipped = resume(cfg, s)
    # torch.compile and DDP wrap the model; checkpoints and validation use the raw one
    model = torch.compile(s.raw_model) if cfg.compile else s.raw_model
    objective = Objective(model, lambda m, b: s.loss_fn(m, b, s.gen))
    if s.ddp:
        objective = wrap_ddp(objective, s.device)
    log = StepLog(cfg, s, step) if s.master else None
    bad_in_row, stopped = 0, False
    # the loop: batch -> loss -> step -> log -> validate -> save, until --max_steps / --epochs or a stop
    while step < s.total and not stopped:
        epoch = step // s.per_epoch
        # the loader skips the batches already seen this epoch, so a resumed run sees the same data
        loader = iter(s.train_data.loader(cfg.batch_videos, epoch=epoch, rank=s.rank, world_size=s.world,
                                          start_batch=(step % s.per_epoch) * cfg.grad_accum,
                                          num_workers=cfg.num_workers))
        for _ in range(step % s.per_epoch, s.per_epoch):
            lr = enter_step(cfg, s, step)
            # --grad_accum micro-batches of B = batch_videos x clips_per_video clips (data.PretrainData): {video
            # (B, Tv<=32, 512) zero-padded S3D seconds, video_mask (B, Tv), text_ids (B, Lt<=61) pieces without
            # [CLS]/[SEP], text_mask (B, Lt)}; frames (B, T, 3, S, S) uint8 for All-in-One; losses.py masks it
            batches = [to_device(next(loader), s.device) for _ in range(cfg.grad_accum)]
            loss, stats, finite = optimizer_step(objective, batches, s.optimizer, s.scaler, s.ctx, cfg.grad_clip,
                                                 s.ddp)
            step += 1
            # a non-finite loss or gradient skips the step (no update); too many in a row stop the run
            bad_in_row, n_skipped = (0, n_skipped) if finite else (bad_in_row + 1, n_skipped + 1)
            if not finite and s.master:
                print(f"step {step}: non-finite loss or gradient, step skipped ({n_skipped} so far)")
            if bad_in_row >= cfg.max_bad_steps:  # the last good checkpoint is kept
                if s.master:
                    print(bad_step_message(step, bad_in_row, s.dtype))
                stopped = True
                break
            last = step == s.total
            if log:
                log.step(step, epoch, loss, lr, stats, n_skipped, last)
            if step % cfg.ckpt_every == 0 or last:
                save_checkpoint(cfg, s, step, n_skipped)
            # Ctrl-C / SIGTERM on any rank (or --stop_after): every rank saves and stops at this step
            if any_rank(stop.stop, s.ddp, s.device) or step == cfg.stop_after:
                save_checkpoint(cfg, s, step, n_skipped)
                if s.master:
                    print(f"stopped: checkpoint saved at step {step} in {s.ckpt_path}; continue with --resume")
                stopped = True
                break
            if last:
                break
    # the end: OUT/model, the probes, and a non-zero exit if a signal stopped the run
    if log:
        log.close()
    finish(cfg, s, step, n_skipped)
    exit_if_stopped()
    return step


if __name__ == "__main__":
    cli(main, errors=(DataError, CheckpointError))
