"""Benchmarks of this VLM implementation (Xu et al. 2021): ratios measured side by side in one process.

    python bench.py                      # full run: a few minutes on 2 CPU cores; writes bench.json
    python bench.py --quick              # tiny shapes, a smoke run in seconds
    python bench.py --sections encoder,decode --out my.json
    torchrun --standalone --nproc_per_node=2 bench.py --sections comm   # NCCL all-reduce between GPUs

Sections (one table at the end: what, ours, reference, ratio, target, met?):
  encoder   BERT encoder forward + backward, vlm.py vs transformers.BertModel (its default attention) with the
            same weights: throughput ratio, and model FLOP/s (6 x non-embedding parameters x tokens) as a share
            of the float32 matmul rate measured in this process (MFU against a bf16 matmul on a GPU).
  step      one pre-training step (masking + forward + L_VLM (Eq. 8-9) + backward + Adam), sec. 3.3 / 5.2.
  retrieval separate video / text passes (footnote 2) vs the joint isolated pass (Fig. 3) over the same pairs.
  decode    VLM.generate (sec. 4.5) with and without the key/value cache.
  data      the pre-training loader on packed shards vs the clips/s one training step consumes.
  memory    peak memory of one pre-training step and of the loss alone (a fresh subprocess per number).
  comm      all-reduce of a bert-base gradient (only under torchrun; NCCL on GPUs, gloo on CPU).
  frames    All-in-One (allinone.py): a pre-training step (VTM + MLM, T = 3 frames of 32 x 32, patch 8) vs the
            features model's at the same hidden size, tokens per clip, token rolling's share of a layer's time,
            PyAV decoding frames/s and read_video clips/s.
transformers is a test-only dependency: without it the encoder comparison is skipped, the rest runs.
GPU paths (guarded by torch.cuda.is_available()): bf16 autocast, fused Adam (engine.make_optimizer),
`--compile` (torch.compile of our model), MFU against a measured bf16 matmul, the paper's 256-clip step.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import allinone
import bert
import data
import engine
import evaluate
import losses
import masking
import train
import video
import vlm
import world
from allinone import roll_tokens
from common import amp_setup
from tokens import load_tokenizer

SECTIONS = ["encoder", "step", "retrieval", "decode", "data", "memory", "comm", "frames"]
ROWS = []  # the table: (what, ours, reference, ratio, target, met)


def row(what, ours, ref="", ratio=None, target="", met=None):
    ROWS.append(dict(what=what, ours=ours, reference=ref, ratio=ratio, target=target, met=met))


# ----------------------------------------------------------------------------------------------------------
# timing helpers


def sync(device):
    if "cuda" in device:
        torch.cuda.synchronize()


def interleaved(fns, device, repeats, warmup=1):
    """Median seconds of each fn in `fns` (dict), the fns run in turn so background load hits all alike."""
    times = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_fns(device, dtype, H=768, I=3072, tokens=768):
    """Plain matmuls to measure the machine's rate: {name: (fn, flops)}: a 2048^3 square product and the
    forward GEMMs of one encoder layer at `tokens` rows (q, k, v, proj: H x H; fc1: H x I; fc2: I x H)."""
    r = lambda *s: torch.randn(*s, device=device, dtype=dtype)
    a, b = r(2048, 2048), r(2048, 2048)
    x, y, wh, w1, w2 = r(tokens, H), r(tokens, I), r(H, H), r(H, I), r(I, H)
    layer = lambda: [x @ wh, x @ wh, x @ wh, x @ wh, x @ w1, y @ w2]
    return {"mm 2048^3": (lambda: a @ b, 2 * 2048 ** 3), f"mm layer GEMMs ({tokens} rows)":
            (layer, 2 * tokens * (4 * H * H + 2 * H * I))}


def matmul_rate(device, dtype, repeats=5, **shape):
    """Best FLOP/s of the plain matmuls of matmul_fns: the machine's measured matmul rate."""
    fns = matmul_fns(device, dtype, **shape)
    t = interleaved({k: f for k, (f, _) in fns.items()}, device, repeats, warmup=2)
    return max(fl / t[k] for k, (_, fl) in fns.items())


def layer_params(model):
    """Non-embedding parameters: the transformer layers (weights, biases, LayerNorms), no embeddings/heads."""
    return sum(p.numel() for p in model.bert.layers.parameters())


def base_config(quick, **kw):
    """bert-base (the paper's encoder) or, with --quick, a 2-layer 128-wide model."""
    small = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512,
                 vocab_size=1000)
    return vlm.VLMConfig(**{**(small if quick else {}), **kw})


def small_config(vocab_size=30522):
    """The repo's from-scratch model: train.py's default --layers / --hidden / --heads (as build_model)."""
    t = train.TrainConfig()
    return vlm.VLMConfig(vocab_size=vocab_size, hidden_size=t.hidden, num_hidden_layers=t.layers,
                         num_attention_heads=t.heads, intermediate_size=4 * t.hidden)


def random_batch(B, cfg, gen, max_text=61, device="cpu"):
    """A batch in the layout of docs/method.md §1: video (B, 32, 512) with U{4..32} valid seconds, text (B, Lt)
    with U{8..max_text} pieces."""
    vlen = torch.randint(4, 33, (B,), generator=gen)
    tlen = torch.randint(8, max_text + 1, (B,), generator=gen)
    Lt = int(tlen.max())
    video_mask = torch.arange(32) < vlen[:, None]  # (B, 32)
    text_mask = torch.arange(Lt) < tlen[:, None]  # (B, Lt)
    video = torch.randn(B, 32, 512, generator=gen) * video_mask[..., None]
    lo = 1000 if cfg.vocab_size > 2000 else 5  # clear of BERT's special ids
    text = torch.randint(lo, cfg.vocab_size, (B, Lt), generator=gen) * text_mask
    b = dict(video=video, video_mask=video_mask, text_ids=text, text_mask=text_mask)
    return {k: v.to(device) for k, v in b.items()}


class Encoded:
    """Stands in for the model inside losses.pretrain_loss, returning precomputed states h: the loss alone."""

    def __init__(self, model, h):
        self.model, self.h = model, h

    def __call__(self, *args, **kwargs):
        return self.h

    def __getattr__(self, name):
        return getattr(self.model, name)


# ----------------------------------------------------------------------------------------------------------
# 1. encoder: ours vs transformers.BertModel


def hf_bert_like(model):
    """A transformers.BertModel with our config and our weights (through bert.HF_TO_OURS)."""
    from transformers import BertConfig, BertModel
    c = model.config
    hcfg = BertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                      num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=c.layer_norm_eps,
                      max_position_embeddings=c.max_position_embeddings, pad_token_id=c.pad_token_id)
    hf = BertModel(hcfg, add_pooling_layer=False)
    sd = {bert.hf_name(k): v for k, v in model.state_dict().items() if k.startswith("bert.")}
    hf.load_state_dict(sd, strict=True)  # every encoder key, named through bert.HF_TO_OURS
    return hf


def bench_encoder(args, device, ctx, res):
    try:
        import transformers
    except ImportError:
        print("encoder: skipped, transformers is not installed (a test-only dependency: "
              "pip install -r requirements-test.txt)")
        return {"skipped": "transformers not installed"}
    out = {"transformers": transformers.__version__}
    dtype = torch.bfloat16 if "cuda" in device else torch.float32
    shapes = [("bert-base", base_config(args.quick), 8, 96), ("small", small_config(), 8, 96)]
    if args.quick:
        shapes = [("quick", base_config(True), 4, 32)]
    for name, cfg, B, T in shapes:
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0  # dropout off in both
        torch.manual_seed(0)
        model = vlm.VLM(cfg).to(device)
        hf = hf_bert_like(model).to(device)
        ours = torch.compile(model.bert) if args.compile else model.bert
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(1000 if cfg.vocab_size > 2000 else 5, cfg.vocab_size, (B, T), generator=gen)
        lens = torch.randint(T // 2, T + 1, (B,), generator=gen)
        am = (torch.arange(T) < lens[:, None]).long()  # (B, T) padding, HF semantics
        ids, am = ids.to(device), am.to(device)
        with torch.no_grad(), ctx:
            diff = (model.bert(ids, am) - hf(input_ids=ids, attention_mask=am).last_hidden_state)
            diff = diff.float().abs()[am.bool()].max().item()

        def fwd_bwd(m, f):
            def run():
                m.zero_grad(set_to_none=True)
                with ctx:
                    h = f()
                h.float().sum().backward()
            return run

        mms = matmul_fns(device, dtype, cfg.hidden_size, cfg.intermediate_size, B * T)
        # the matmuls run in the same loop, so background load on a shared machine hits all of them alike
        t = interleaved({"ours": fwd_bwd(model, lambda: ours(ids, am)),
                         "hf": fwd_bwd(hf, lambda: hf(input_ids=ids, attention_mask=am).last_hidden_state),
                         **{k: f for k, (f, _) in mms.items()}}, device, args.repeats)
        mm = max(fl / t[k] for k, (_, fl) in mms.items())  # this shape's measured matmul rate
        flops = 6 * layer_params(model) * B * T
        r = dict(shape=f"{cfg.num_hidden_layers}L {cfg.hidden_size}H batch {B} length {T}", ours_s=t["ours"],
                 hf_s=t["hf"], ratio=t["hf"] / t["ours"], ours_flops=flops / t["ours"],
                 share_of_matmul=flops / t["ours"] / mm, hf_share_of_matmul=flops / t["hf"] / mm,
                 max_abs_diff=diff, hf_attention=hf.config._attn_implementation, matmul_flops=mm,
                 matmul_each={k: fl / t[k] for k, (_, fl) in mms.items()})
        out[name] = r
        print(f"encoder {name} ({r['shape']}): ours {t['ours']*1e3:.0f} ms, HF ({r['hf_attention']}) "
              f"{t['hf']*1e3:.0f} ms, x{r['ratio']:.2f}; {r['ours_flops']/1e9:.1f} GFLOP/s = "
              f"{100*r['share_of_matmul']:.0f}% of matmul; max |h - h_hf| {diff:.1e}")
        row(f"encoder fwd+bwd {name}: throughput vs HF BertModel", f"{t['ours']*1e3:.0f} ms",
            f"{t['hf']*1e3:.0f} ms", r["ratio"], ">= 1.0", r["ratio"] >= 1.0)
        big = name in ("bert-base", "quick")
        row(f"encoder fwd+bwd {name}: share of matmul rate", f"{r['ours_flops']/1e9:.1f} GF/s",
            f"{mm/1e9:.1f} GF/s", r["share_of_matmul"], ">= 0.80" if big else "", r["share_of_matmul"] >= 0.8 if big else None)
        del model, hf
    return out


# ----------------------------------------------------------------------------------------------------------
# 2. one pre-training step


def step_parts(cfg, B, device, seed=0):
    torch.manual_seed(seed)
    model = vlm.VLM(cfg).to(device).train()
    gen = torch.Generator().manual_seed(seed)
    batch = random_batch(B, cfg, gen, device=device)
    mgen = torch.Generator(device=device).manual_seed(seed)  # masking draws
    return model, batch, mgen


def bench_step(args, device, ctx, res):
    cfg = base_config(args.quick)
    B = args.step_clips or (4 if args.quick else 256 if "cuda" in device else 8)
    model, batch, mgen = step_parts(cfg, B, device)
    opt = engine.make_optimizer(model, 5e-5, 0.98, device)  # fused Adam on GPU
    _, ctx, scaler = amp_setup("auto", device)
    raw = model
    if args.compile:
        model = torch.compile(model)
    objective = engine.Objective(model, lambda m, b: losses.pretrain_loss(m, b, mgen))
    step = lambda: engine.optimizer_step(objective, [batch], opt, scaler, ctx, 2.0, False)

    with torch.no_grad(), ctx:  # states for the loss alone: masking + gather + transform + L_VLM, fwd + bwd
        h0 = raw(batch["video"], batch["video_mask"], batch["text_ids"], batch["text_mask"])

    def loss_alone():
        h = h0.detach().requires_grad_()
        with ctx:
            loss, _ = losses.pretrain_loss(Encoded(raw, h), batch, mgen)
        loss.backward()
        raw.zero_grad(set_to_none=True)

    T = h0.shape[1]
    dtype = torch.bfloat16 if "cuda" in device else torch.float32
    mms = matmul_fns(device, dtype, cfg.hidden_size, cfg.intermediate_size, B * T)  # timed in the same loop
    t = interleaved({"step": step, "loss": loss_alone, **{k: f for k, (f, _) in mms.items()}}, device,
                    max(1, args.repeats - 1))
    flops = 6 * layer_params(raw) * B * T
    mm = max(fl / t[k] for k, (_, fl) in mms.items())
    out = dict(shape=f"{cfg.num_hidden_layers}L {cfg.hidden_size}H, {B} clips, T {T}", clips=B, T=T,
               step_s=t["step"], clips_per_s=B / t["step"], share_of_matmul=flops / t["step"] / mm,
               loss_s=t["loss"], loss_share=t["loss"] / t["step"], paper_clips=256, matmul_flops=mm)
    print(f"step ({out['shape']}): {t['step']:.2f} s, {out['clips_per_s']:.1f} clips/s, "
          f"{100*out['share_of_matmul']:.0f}% of matmul; loss alone {t['loss']*1e3:.0f} ms "
          f"= {100*out['loss_share']:.1f}% of the step")
    row(f"pre-training step, {B} clips (paper 256/GPU)", f"{out['clips_per_s']:.1f} clips/s",
        f"{mm/1e9:.1f} GF/s", out["share_of_matmul"], "share of matmul", None)
    row("L_VLM extra cost (mask+gather+loss, fwd+bwd) / step", f"{t['loss']*1e3:.0f} ms",
        f"{t['step']*1e3:.0f} ms", out["loss_share"], "small", None)
    return out


# ----------------------------------------------------------------------------------------------------------
# 3. retrieval: separate passes vs the joint isolated pass


def bench_retrieval(args, device, ctx, res):
    N = 64 if args.quick else 1000
    cfg = base_config(True) if args.quick else small_config()
    torch.manual_seed(0)
    model = vlm.VLM(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    b = random_batch(N, cfg, gen, max_text=30)
    clips = [b["video"][i, : int(b["video_mask"][i].sum())].numpy() for i in range(N)]
    ids = [b["text_ids"][i, : int(b["text_mask"][i].sum())].tolist() for i in range(N)]

    def separate():
        return (evaluate.encode_videos(model, clips, device, ctx), evaluate.encode_text_ids(model, ids, device, ctx))

    @torch.no_grad()
    def joint(bs=128):
        vs, ts = [], []
        for i in range(0, N, bs):
            p = data.collate_pairs(clips[i:i + bs], ids[i:i + bs])
            p = {k: v.to(device) for k, v in p.items()}
            with ctx:
                h = model(p["video"], p["video_mask"], p["text_ids"], p["text_mask"], attention="isolated")
            vm = masking.pad_video_mask(p["video_mask"])
            keep_v = torch.cat([vm, torch.ones_like(vm[:, :1])], 1)  # (B, 33) valid video + first [SEP]
            keep_t = F.pad(p["text_mask"].bool(), (1, 0), value=True)  # (B, Lt + 1) text + last [SEP]
            vs.append(vlm.masked_mean(h[:, masking.VIDEO_START:masking.SEP1 + 1], keep_v).float().cpu())
            ts.append(vlm.masked_mean(h[:, masking.TEXT_START:], keep_t).float().cpu())
        return torch.cat(vs), torch.cat(ts)

    got = {}
    t = interleaved({"separate": lambda: got.update(s=separate()), "joint": lambda: got.update(j=joint())},
                    device, max(1, args.repeats - 2))
    sim_s = got["s"][1] @ got["s"][0].T  # (N, N) text x video
    sim_j = got["j"][1] @ got["j"][0].T
    diff = (sim_s - sim_j).abs().max().item()
    out = dict(pairs=N, model=f"{cfg.num_hidden_layers}L {cfg.hidden_size}H", separate_s=t["separate"],
               joint_s=t["joint"], ratio=t["joint"] / t["separate"], max_abs_diff=diff,
               sim_max_abs=sim_s.abs().max().item(), joint_all_pairs_s=t["joint"] * N)
    print(f"retrieval ({N} pairs, {out['model']}): separate {t['separate']:.2f} s, joint isolated "
          f"{t['joint']:.2f} s (x{out['ratio']:.2f}); max |sim diff| {diff:.1e} (|sim| <= {out['sim_max_abs']:.1f})")
    row(f"retrieval {N} pairs: joint isolated / separate time", f"{t['separate']:.2f} s", f"{t['joint']:.2f} s",
        out["ratio"], "(none)", None)
    row(f"retrieval: joint over all {N}x{N} pairs (extrapolated)", f"{t['separate']:.2f} s",
        f"{out['joint_all_pairs_s']:.0f} s", out["joint_all_pairs_s"] / t["separate"], "", None)
    row("retrieval: max |sim_separate - sim_joint|", f"{diff:.1e}", "", None, "< 1e-3", diff < 1e-3)
    return out


# ----------------------------------------------------------------------------------------------------------
# 4. caption decoding with and without the key/value cache


def bench_decode(args, device, ctx, res):
    cfg = base_config(True) if args.quick else small_config()
    B = 2 if args.quick else 4
    torch.manual_seed(0)
    model = vlm.VLM(cfg).to(device).eval()
    b = random_batch(B, cfg, torch.Generator().manual_seed(2))
    got = {}

    def gen(cache):
        def run():
            with ctx:
                got[cache] = model.generate(b["video"], b["video_mask"], num_beams=5, max_length=24, use_cache=cache)
        return run

    t = interleaved({True: gen(True), False: gen(False)}, device, args.repeats)
    same = got[True] == got[False]
    out = dict(videos=B, model=f"{cfg.num_hidden_layers}L {cfg.hidden_size}H vocab {cfg.vocab_size}",
               cache_s=t[True], no_cache_s=t[False], speedup=t[False] / t[True], identical=same,
               mean_len=float(np.mean([len(x) for x in got[True]])))
    print(f"decode ({B} videos, beam 5, max length 24, {out['model']}): cache {t[True]:.2f} s, no cache "
          f"{t[False]:.2f} s, x{out['speedup']:.1f}; identical {same}; mean length {out['mean_len']:.1f}")
    row("caption decoding: kv cache speed-up (beam 5, len 24)", f"{t[True]:.2f} s", f"{t[False]:.2f} s",
        out["speedup"], ">= 3", out["speedup"] >= 3)
    row("caption decoding: identical outputs", str(same), "", None, "True", same)
    return out


# ----------------------------------------------------------------------------------------------------------
# 5. data loading from packed shards


def bench_data(args, device, ctx, res):
    tmp = tempfile.mkdtemp(prefix="vlm-bench-")
    root = "data/world"
    if args.quick or not os.path.exists(os.path.join(root, "howto100m", "raw_caption.json")):
        root = os.path.join(tmp, "world")
        world.synth(root, seed=0, size="tiny")
    packed = os.path.join(tmp, "packed")
    video.pack(os.path.join(root, "howto100m", "feats"), packed)
    step = res.get("step", {})
    clips = step.get("clips", 4 if args.quick else 8)
    K = min(32, clips)
    bv = max(1, clips // K)
    d = data.PretrainData(root, load_tokenizer(root), clips_per_video=K, features=packed)
    n, dt = data.time_loader(d, bv, 0, 5 if args.quick else 40)
    rate = n / dt
    out = dict(world=root, batch=f"{bv} videos x {K} clips", loader_clips_per_s=rate, workers=0)
    print(f"data ({out['batch']}, packed shards, 0 workers): {rate:.0f} clips/s")
    if "clips_per_s" in step:
        out["step_clips_per_s"] = step["clips_per_s"]
        out["ratio"] = rate / step["clips_per_s"]
        row(f"data loading {bv}x{K} clips, 0 workers / step", f"{rate:.0f} clips/s",
            f"{step['clips_per_s']:.1f} clips/s", out["ratio"], ">= 1", out["ratio"] >= 1)
    else:
        row(f"data loading {bv}x{K} clips, 0 workers", f"{rate:.0f} clips/s", "(no step section)")
    return out


# ----------------------------------------------------------------------------------------------------------
# 6. memory (each number from a fresh subprocess)


def peak_memory(what, layers, clips, quick, device):
    """Run inside a fresh process: peak memory of one pre-training step or of the loss alone."""
    cfg = base_config(quick, num_hidden_layers=layers) if layers else base_config(quick)
    model, batch, mgen = step_parts(cfg, clips, device)
    opt = engine.make_optimizer(model, 5e-5, 0.98, device)
    _, ctx, scaler = amp_setup("auto", device)
    if what == "loss":  # the loss's cost does not depend on the values of h: random states, no encoder pass
        T = masking.TEXT_START + batch["text_ids"].shape[1] + 1
        h = torch.randn(clips, T, cfg.hidden_size, device=device, requires_grad=True)  # (B, T, H)

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    if "cuda" in device:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        try:  # reset the peak-RSS high-water mark (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        before = rss("VmRSS")
    if what == "step":
        objective = engine.Objective(model, lambda m, b: losses.pretrain_loss(m, b, mgen))
        engine.optimizer_step(objective, [batch], opt, scaler, ctx, 2.0, False)
    else:
        with ctx:
            loss, _ = losses.pretrain_loss(Encoded(model, h), batch, mgen)
        loss.backward()
    if "cuda" in device:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = rss("VmHWM")
    return dict(before=before, peak=peak, extra=peak - before)


def bench_memory(args, device, ctx, res):
    clips = 8 if args.quick else 256
    cuda = "cuda" in device
    full = args.memory_full or cuda or args.quick

    def measure(what, layers):
        cmd = [sys.executable, os.path.abspath(__file__), "--_memory", what, "--_layers", str(layers),
               "--step_clips", str(clips), "--threads", str(torch.get_num_threads())] + (["--quick"] if args.quick else [])
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        if p.returncode:
            raise RuntimeError(f"bench.py memory subprocess {what} failed:\n{p.stderr[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    L = base_config(args.quick).num_hidden_layers
    out = dict(clips=clips, unit="bytes", kind="cuda max_memory_allocated" if cuda else "peak RSS (VmHWM)")
    if full:
        out["step"] = measure("step", 0)
        how = "measured"
    else:  # 12 layers at 256 clips take minutes on 2 cores: measure 1 and 2 layers, extrapolate linearly
        m1, m2 = measure("step", 1), measure("step", 2)
        slope = {k: m2[k] - m1[k] for k in m1}
        out["step"] = {k: m1[k] + (L - 1) * slope[k] for k in m1}
        out["step_1_layer"], out["step_2_layers"] = m1, m2
        how = "extrapolated from 1 and 2 layers"
    out["step_how"] = how
    out["loss"] = measure("loss", 0)
    gb = lambda x: f"{x / 2**30:.2f} GiB"
    print(f"memory ({clips} clips, {out['kind']}): step peak {gb(out['step']['peak'])} "
          f"(+{gb(out['step']['extra'])} over model) [{how}]; loss alone +{gb(out['loss']['extra'])}")
    row(f"memory: one step, {L}L, {clips} clips ({how})", gb(out["step"]["peak"]),
        f"+{gb(out['step']['extra'])} over start")
    row(f"memory: loss alone (mask+gather+L_VLM fwd+bwd), {clips} clips", f"+{gb(out['loss']['extra'])}",
        f"{gb(out['loss']['peak'])} process peak", out["loss"]["extra"] / max(1, out["step"]["extra"]), "share of step")
    return out


# ----------------------------------------------------------------------------------------------------------
# 7. all-reduce (torchrun only)


def bench_comm(args, device, ctx, res):
    if int(os.environ.get("RANK", -1)) == -1:
        print("comm: skipped (run under torchrun --standalone --nproc_per_node=N bench.py --sections comm)")
        return {"skipped": "not under torchrun"}
    n = layer_params(vlm.VLM(base_config(args.quick)))  # bert-base layers' gradient, float32
    x = torch.ones(n, device=device)
    t = interleaved({"ar": lambda: dist.all_reduce(x)}, device, args.repeats, warmup=2)["ar"]
    w = dist.get_world_size()
    busbw = 2 * (w - 1) / w * n * 4 / t  # ring all-reduce bus bandwidth
    out = dict(backend=dist.get_backend(), world_size=w, numel=n, seconds=t, bus_bytes_per_s=busbw)
    row(f"all-reduce {n*4/2**20:.0f} MiB ({out['backend']}, {w} ranks)", f"{t*1e3:.1f} ms", f"{busbw/1e9:.1f} GB/s bus")
    return out


# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# 8. All-in-One (raw frames) vs the features model at equal hidden size; rolling's share; video decoding


def frames_parts(quick, B, seed=0):
    """The features model and the frames model (allinone.py) with the same encoder shape, and a batch each."""
    c = small_config(1000) if not quick else base_config(True)
    shape = dict(vocab_size=1000, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                 num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size)
    fcfg = allinone.AllInOneConfig(**shape, frame_size=32, patch_size=8, num_frames=3, cls_token_id=2,
                                   sep_token_id=3, mask_token_id=4)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vcfg = vlm.VLMConfig(**shape, cls_token_id=2, sep_token_id=3, mask_token_id=4)
    feats = random_batch(B, vcfg, gen, max_text=24)
    frames = dict(frames=torch.randint(0, 256, (B, 3, 3, 32, 32), generator=gen, dtype=torch.uint8),
                  text_ids=feats["text_ids"], text_mask=feats["text_mask"], video_index=torch.arange(B))
    return vlm.VLM(vcfg).train(), allinone.AllInOne(fcfg).train(), feats, frames


def bench_frames(args, device, ctx, res):
    B = 4 if args.quick else 16
    vmodel, fmodel, feats, frames = frames_parts(args.quick, B)
    gen = torch.Generator().manual_seed(0)

    def step(model, fn, batch):
        loss, _ = fn(model, batch, gen)
        loss.backward()
        model.zero_grad(set_to_none=True)

    Lt = feats["text_ids"].shape[1]
    N, L, T, H = fmodel.tokens_per_frame, Lt + 2, 3, fmodel.config.hidden_size
    layer = fmodel.bert.layers[0].eval()
    x = torch.randn(B * T, L + N, H)  # one joint-pass row per (clip, frame)
    t = interleaved({"vlm": lambda: step(vmodel, losses.pretrain_loss, feats),
                     "frames": lambda: step(fmodel, losses.allinone_loss, frames)}, device, args.repeats)
    with torch.no_grad():
        t.update(interleaved({"layer": lambda: layer(x, None), "roll": lambda: torch.cat(
            [x[:, :L], roll_tokens(x[:, L:].view(B, T, N, H), N // 8).reshape(B * T, N, H)], 1)}, device, 5))
    out = dict(clips=B, hidden=H, layers=fmodel.config.num_hidden_layers, vlm_step_s=t["vlm"],
               frames_step_s=t["frames"], vlm_tokens_per_clip=34 + Lt + 1, frames_tokens_per_clip=T * (L + N),
               layer_s=t["layer"], roll_s=t["roll"], roll_share=t["roll"] / t["layer"])
    row(f"frames model step / features model step ({B} clips, H {H})", f"{t['frames']*1e3:.0f} ms",
        f"{t['vlm']*1e3:.0f} ms", t["frames"] / t["vlm"], "(none)", None)
    row("tokens per clip: frames joint pass (T=3) / features", f"{out['frames_tokens_per_clip']}",
        f"{out['vlm_tokens_per_clip']}", out["frames_tokens_per_clip"] / out["vlm_tokens_per_clip"], "", None)
    row("token rolling / one layer forward", f"{t['roll']*1e3:.2f} ms", f"{t['layer']*1e3:.2f} ms",
        out["roll_share"], "~0", None)
    out.update(bench_decode_video(args))
    return out


def bench_decode_video(args):
    """PyAV decoding: frames/s of a whole H.264 clip, and read_video clips/s (T=3 of a 10 s clip)."""
    try:
        import av  # noqa: F401
    except ImportError:
        print("frames: PyAV not installed, video decoding not measured")
        return {}
    size, n = (32, 20) if args.quick else (224, 250)  # 224 x 224 at 25 frames/s, 10 s
    clip = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    clip = np.clip(clip // 4 + np.linspace(0, 180, size, dtype=np.uint8)[None, None, :, None], 0, 255)
    with tempfile.TemporaryDirectory() as d:
        path = world.write_frames(os.path.join(d, "clip"), clip.astype(np.uint8))
        t = interleaved({"all": lambda: sum(1 for _ in av.open(path).decode(video=0)),
                         "read": lambda: video.read_video(path, 3, size)}, "cpu", args.repeats)
    row(f"video decode, {size}x{size} H.264 (PyAV)", f"{n / t['all']:.0f} frames/s", "", None, "", None)
    row("read_video: T=3 frames of a whole clip, resized + cropped", f"{1 / t['read']:.1f} clips/s", "", None, "",
        None)
    return dict(decode_frames_per_s=n / t["all"], read_video_clips_per_s=1 / t["read"], decode_size=size)


def machine(device):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    m = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
             cpu=cpu, cpu_count=os.cpu_count(), threads=torch.get_num_threads(), device=device,
             load_average_1min=os.getloadavg()[0])  # > 0 before we start: another job shares the cores
    if "cuda" in device:
        m["gpu"] = torch.cuda.get_device_name()
    return m


def print_table(rows):
    fmt = lambda r: [r["what"], r["ours"], r["reference"], "" if r["ratio"] is None else f"{r['ratio']:.2f}",
                     r["target"], "" if r["met"] is None else ("yes" if r["met"] else "NO")]
    cells = [["what", "ours", "reference", "ratio", "target", "met?"]] + [fmt(r) for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(6)]
    for i, c in enumerate(cells):
        print("  ".join(x.ljust(w[j]) for j, x in enumerate(c)))
        if i == 0:
            print("  ".join("-" * x for x in w))


def main(argv=None):
    p = argparse.ArgumentParser(description="VLM benchmarks: ratios measured side by side (see the docstring)")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run in seconds")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--out", default="bench.json", help="where to write the numbers (JSON)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per measurement (0 = 3, quick 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--step_clips", type=int, default=0,
                   help="clips in the pre-training step (0 = 256 on GPU as in the paper, 8 on CPU, quick 4)")
    p.add_argument("--memory_full", action="store_true",
                   help="CPU: measure the 12-layer 256-clip step's memory directly (minutes) instead of "
                        "extrapolating from 1 and 2 layers")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (GPU)")
    p.add_argument("--_memory", default="", help=argparse.SUPPRESS)
    p.add_argument("--_layers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._memory:  # child process of the memory section
        print(json.dumps(peak_memory(args._memory, args._layers, args.step_clips or 8, args.quick, device)))
        return
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if int(os.environ.get("RANK", -1)) != -1:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    _, ctx, _ = amp_setup("auto", device)  # bf16 autocast on GPU, nothing on CPU
    dtype = torch.bfloat16 if "cuda" in device else torch.float32
    t_start = time.perf_counter()
    c = base_config(args.quick)
    res = {"matmul_flops": matmul_rate(device, dtype, H=c.hidden_size, I=c.intermediate_size),
           "matmul_dtype": str(dtype).replace("torch.", "")}
    print(f"{machine(device)}\nmatmul rate ({res['matmul_dtype']}, best of 2048^3 and a layer's GEMMs): "
          f"{res['matmul_flops']/1e9:.1f} GFLOP/s" + (" (MFU below is against this)" if "cuda" in device else ""))
    fns = dict(encoder=bench_encoder, step=bench_step, retrieval=bench_retrieval, decode=bench_decode,
               data=bench_data, memory=bench_memory, comm=bench_comm, frames=bench_frames)
    for s in SECTIONS:
        if s in sections:
            t = time.perf_counter()
            res[s] = fns[s](args, device, ctx, res)
            res[s]["section_seconds"] = time.perf_counter() - t
    res["total_seconds"] = time.perf_counter() - t_start
    if int(os.environ.get("RANK", 0)) == 0:
        print()
        print_table(ROWS)
        print(f"total {res['total_seconds']:.0f} s")
        doc = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine(device),
                   args=vars(args), results=res, table=ROWS)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
