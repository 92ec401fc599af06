"""The experiments of the paper on the built-in world: every task fine-tuned from the pre-trained model and
from scratch, the zero-shot rows, the yardsticks, and the results table of Tables 2-7 (paper sec. 5.3), plus the
ablations of Tables 8-9 (sec. 5.4.1; `python experiments.py --ablation --help`). Its flags are finetune.py's but
--task (every task runs) and --scratch (both rows run). Built on finetune.py and evaluate.py.

  python experiments.py                  # every task, pre-trained and from scratch -> OUT/results.{md,json}
  python experiments.py --seeds 0,1,2    # mean +- standard deviation over fine-tuning seeds
  python experiments.py --init out/allinone/model --data data/world_video   # All-in-One from frames
  python experiments.py --ablation       # Tables 8-9: six pre-training variants (add --help for the flags)

Yardsticks, on the same test splits as the model: the chance / trivial baselines, a linear floor below the
transformer, a caption roof above.

Tests: python -m pytest -q tests/test_finetune_recipe.py tests/test_probes.py tests/test_interrupts.py
"""
import argparse
import dataclasses
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import data
import evaluate
import finetune
import readers
import train
from checkpoint import CheckpointError, load_model, trained_tokenizer
from common import amp_setup, cli
from evaluate import PAPER, record_clip
from metrics import caption_metrics, even_steps_recall, frame_accuracy, mc_accuracy, paper_scale, retrieval_metrics
from common import parse_config
from engine import StopFlag, exit_if_stopped, setup_distributed
from checkpoint import checkpoint_kind


# -----------------------------------------------------------------------------------------------------------
# yardsticks: chance / trivial baselines, and the same splits scored by simpler models


def baselines(data_dir):
    """Chance and trivial baselines on the test splits, computed the same way as the model's numbers: chance
    ranks for retrieval, 1 in 5 for QA, all background for COIN, evenly spaced steps for CrossTask, and the
    most frequent training caption for every clip for captioning."""
    out = {}
    for ds in ("msrvtt", "youcook2"):
        recs, _ = readers.load_retrieval(data_dir, ds, "test")
        n = len(recs)  # chance: the true video ranked uniformly at random among n
        out[f"retrieval-{ds}"] = {"R1": 100 / n, "R5": min(100.0, 500 / n), "R10": min(100.0, 1000 / n),
                                  "MedR": (n + 1) / 2}
    out["qa"] = {"acc": 20.0}
    recs, _, _ = readers.load_coin(data_dir, "test")
    labels = [np.asarray(r["labels"]) for r in recs]
    out["segmentation"] = {"acc": frame_accuracy([np.zeros_like(l) for l in labels], labels)["acc"]}  # all background
    recs, _, _ = readers.load_crosstask(data_dir, "test")
    out["localization"] = {"recall": even_steps_recall(recs)}  # evenly spaced steps (i.i.d. noise sits below)
    train, _ = readers.load_captioning(data_dir, "train")
    test, _ = readers.load_captioning(data_dir, "test")
    words = {}
    for r in train:
        words[r["text"].lower()] = words.get(r["text"].lower(), 0) + 1
    common = max(sorted(words), key=words.get)  # the most frequent training caption, for every clip
    out["captioning"] = paper_scale(caption_metrics({r["clip_id"]: [r["text"].lower()] for r in test},
                                                    {r["clip_id"]: common for r in test}))
    return out


# a linear floor below the transformer and a roof above it, on the same splits (docs/log.md, "Yardsticks")


def _bag_of_words(tok, texts):
    """(N, V) word-piece counts of each text (the linear floor's text side)."""
    ids, _ = data.encode_texts(tok, texts)
    bow = torch.zeros(len(ids), tok.get_vocab_size())
    for i, t in enumerate(ids):
        bow[i].index_add_(0, torch.as_tensor(t, dtype=torch.long), torch.ones(len(t)))
    return bow


def linear_floor(data_dir, tok, task="retrieval", dataset="youcook2", dim=256, steps=400, lr=1e-3, seed=0):
    """The simplest model that can learn the task: mean-pooled video features and bag-of-words text, one
    linear map each, cosine similarity / 0.05 and in-batch InfoNCE (text -> video; video -> text for QA) on
    the task's training split, Adam for `steps` steps of 128 pairs; the retrieval or MC test metric."""
    g = torch.Generator().manual_seed(seed)
    dataset = "msrvtt" if task == "qa" else dataset
    recs, store = readers.load_retrieval(data_dir, dataset, "train")
    vids = torch.stack([torch.as_tensor(record_clip(store, r)).mean(0) for r in recs])  # (N, 512)
    first = torch.tensor(np.cumsum([0] + [len(r["texts"]) for r in recs[:-1]]))  # (N,) first caption of video
    count = torch.tensor([len(r["texts"]) for r in recs])
    bow = _bag_of_words(tok, [t for r in recs for t in r["texts"]])  # (all captions, V)
    fv, ft = nn_linear(512, dim, g), nn_linear(bow.shape[1], dim, g)
    opt = torch.optim.Adam(list(fv.parameters()) + list(ft.parameters()), lr=lr)
    for _ in range(steps):
        pick = torch.randperm(len(recs), generator=g)[:128]  # 128 videos, one random caption each
        caps = first[pick] + (torch.rand(len(pick), generator=g) * count[pick]).long()  # one caption each
        v, t = F.normalize(fv(vids[pick]), dim=-1), F.normalize(ft(bow[caps]), dim=-1)
        logits = (v @ t.T if task == "qa" else t @ v.T) / 0.05
        loss = F.cross_entropy(logits, torch.arange(len(pick)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        if task == "qa":
            recs, store = readers.load_mc(data_dir)
            v = F.normalize(fv(torch.stack([torch.as_tensor(record_clip(store, r)).mean(0) for r in recs])), dim=-1)
            t = F.normalize(ft(_bag_of_words(tok, [c for r in recs for c in r["candidates"]])), dim=-1)
            scores = torch.einsum("nh,nkh->nk", v, t.view(len(recs), 5, -1))
            return {"acc": mc_accuracy(scores.numpy(), np.array([r["answer"] for r in recs]))}
        recs, store = readers.load_retrieval(data_dir, dataset, "test")
        v = F.normalize(fv(torch.stack([torch.as_tensor(record_clip(store, r)).mean(0) for r in recs])), dim=-1)
        t = F.normalize(ft(_bag_of_words(tok, [r["texts"][0] for r in recs])), dim=-1)
        return retrieval_metrics((t @ v.T).numpy())


def nn_linear(n_in, n_out, g):
    """nn.Linear with its weights drawn from generator g (reproducible without touching the global RNG)."""
    m = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        m.weight.uniform_(-n_in ** -0.5, n_in ** -0.5, generator=g)
        m.bias.zero_()
    return m


def caption_roof(data_dir, tok):
    """An upper yardstick where the MSR-VTT-like world has it: each test video described by its OTHER
    captions (MSRVTT_data.json holds 20 per video). A query (or an MC answer) is compared by tf-idf cosine of
    word-piece counts with the sum of the video's captions, leaving out the query's own string (for MC, every
    candidate's string). -> {"retrieval-msrvtt": retrieval metrics, "qa": {"acc"}}."""
    d = os.path.join(data_dir, "msrvtt")
    _, sents = readers.read_msrvtt_json(os.path.join(d, "MSRVTT_data.json"))
    recs, _ = readers.load_retrieval(data_dir, "msrvtt", "test")
    mc, _ = readers.load_mc(data_dir)
    all_caps = [c for r in recs for c in sents.get(r["video_id"], [])]
    idf = torch.log(len(all_caps) / (1.0 + (_bag_of_words(tok, all_caps) > 0).float().sum(0)))  # (V,)

    def describe(vid, leave_out):
        caps = [c for c in sents.get(vid, []) if c not in leave_out]
        if not caps:
            raise ValueError(f"{d}/MSRVTT_data.json: video {vid!r} has no caption besides the query")
        return _bag_of_words(tok, caps).sum(0)

    unit = lambda x: F.normalize(x * idf, dim=-1)
    q = unit(_bag_of_words(tok, [r["texts"][0] for r in recs]))  # (N, V)
    out = {}
    # each query is left out of its own video's description; every other video keeps all its captions
    docs = torch.stack([describe(r["video_id"], set()) for r in recs])
    own = unit(torch.stack([describe(r["video_id"], {r["texts"][0]}) for r in recs]))
    sim = q @ unit(docs).T
    sim[torch.arange(len(recs)), torch.arange(len(recs))] = (q * own).sum(-1)
    out["retrieval-msrvtt"] = retrieval_metrics(sim.numpy())
    cand = unit(_bag_of_words(tok, [c for r in mc for c in r["candidates"]])).view(len(mc), 5, -1)
    desc = unit(torch.stack([describe(r["video_id"], set(r["candidates"])) for r in mc]))
    scores = torch.einsum("nv,nkv->nk", desc, cand).numpy()  # (N, 5)
    out["qa"] = {"acc": mc_accuracy(scores, np.array([r["answer"] for r in mc]))}
    return out


def number(v, k):
    """A score as the tables print it: CIDEr to 4 places, MedR to 1, percentages to 2."""
    return f"{v:.4f}" if k == "CIDEr" else (f"{v:.1f}" if k == "MedR" else f"{v:.2f}")


def results_table(results):
    """The paper's Tables 2-7 layout in Markdown: baselines, zero-shot, from scratch, VLM, and the paper.
    results: {row key: {table key: metrics}}, as run_all / run_frames_all write them (plus "<row>_std", "seeds")."""
    def f(x, k):  # one cell; "-" when missing
        return "-" if x is None or x.get(k) is None else number(x[k], k)

    # (label, row key) top to bottom; then one section per task: (title, table key, columns)
    rows = [("chance / trivial baseline", "baselines"), ("linear floor (mean-pooled features, bag of words)", "floor"),
            ("roof (each test video described by its other captions)", "roof"),
            ("zero-shot (pre-trained, no fine-tuning)", "zero_shot"),
            ("from scratch (no pre-training)", "scratch"), ("VLM (pre-trained + fine-tuned)", "pretrained"),
            ("All-in-One, raw frames, from scratch", "allinone_scratch"),
            ("All-in-One, raw frames (pre-trained + fine-tuned)", "allinone"), ("paper, real dataset", "paper")]
    sections = [("Text-video retrieval, MSR-VTT-like (Table 2)", "retrieval-msrvtt", ["R1", "R5", "R10", "MedR"]),
                ("Text-video retrieval, YouCook2-like (Table 3)", "retrieval-youcook2", ["R1", "R5", "R10", "MedR"]),
                ("Action segmentation, COIN-like (Table 4): frame accuracy", "segmentation", ["acc"]),
                ("Step localization, CrossTask-like (Table 5): average recall", "localization", ["recall"]),
                ("Multiple-choice QA, MSR-VTT-MC-like (Table 6): accuracy", "qa", ["acc"]),
                ("Captioning, YouCook2-like (Table 7)", "captioning",
                 ["BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"])]
    src = dict(results, paper=PAPER)  # the paper's numbers are one more row
    lines = ["Measured on the built-in synthetic world, NOT on the real datasets; the paper's rows are the real-data "
             "numbers of Xu et al. 2021, for orientation only.", ""]
    if results.get("seeds"):
        lines[-1:] = [f"From scratch and VLM rows: mean +- standard deviation over fine-tuning seeds "
                      f"{results['seeds']}.", ""]
    for title, key, cols in sections:
        lines += [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for label, r in rows:
            x = src.get(r, {}).get(key)
            if r == "paper" and key == "localization":
                zs = PAPER["localization-zero-shot"]["recall"]
                x = {"recall": f"{PAPER['localization']['recall']} (zero-shot {zs})"}
                lines.append(f"| {label} | {x['recall']} |")
                continue
            if x is None and r in ("zero_shot", "floor", "roof", "allinone", "allinone_scratch"):
                continue
            sd = src.get(r + "_std", {}).get(key)
            cells = [f(x, c) + (f" +- {f(sd, c)}" if sd and sd.get(c) is not None else "") for c in cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if key == "segmentation":
            extra = [(lab, src.get(r, {}).get(key)) for lab, r in rows if r in ("scratch", "pretrained")]
            lines += ["", "Without background frames: " + ", ".join(
                f"{lab}: {f(x, 'acc_no_bg')}" for lab, x in extra) + "."]
        lines.append("")
    return "\n".join(lines + verdicts(results))


HEADLINE = [("retrieval-msrvtt", "R1"), ("retrieval-youcook2", "R1"), ("qa", "acc"), ("segmentation", "acc"),
            ("localization", "recall"), ("captioning", "CIDEr")]


def verdicts(results):
    """The table's lesson, computed from its own numbers: VLM against from scratch on each task's headline score
    (all higher-is-better; with seeds, beyond the spread when the gap exceeds the sum of the two rows' standard
    deviations, and "no spread" where one is missing), and each row against the linear floor where there is one.
    Lines of Markdown; none without both rows."""
    def get(row, key, m):
        return ((results.get(row) or {}).get(key) or {}).get(m)

    keys = [(k, m) for k, m in HEADLINE if get("pretrained", k, m) is not None and get("scratch", k, m) is not None]
    if not keys:
        return []
    seeds = results.get("seeds")
    out, wins = ["### What this run shows", ""], 0
    for key, m in keys:
        a, b = get("pretrained", key, m), get("scratch", key, m)
        fmt = lambda x: number(x, m)  # noqa: E731
        sds = [get(r + "_std", key, m) for r in ("pretrained", "scratch")]
        side, how = ("above" if a > b else "below" if a < b else "level with"), ""
        if seeds and None not in sds:
            spread = sum(sds)
            side = side if abs(a - b) > spread else "level with"
            how = f" (gap {fmt(abs(a - b))}, seed spread {fmt(spread)})"
        elif seeds:
            how = " (no spread recorded)"
        wins += side == "above"
        line = f"- {key} {m}: VLM {fmt(a)} is {side} from scratch {fmt(b)}{how}"
        floor = get("floor", key, m)
        if floor is not None:
            line += "; linear floor {}: VLM {}, from scratch {}".format(
                fmt(floor), *("at or above it" if x >= floor else "under it" for x in (a, b)))
        out.append(line + ".")
    tail = (f"over seeds {seeds}" if seeds else "at one seed, where a gap of a few points can be noise "
            "(`--seeds 0,1,2` adds the spread)")
    return out + ["", f"VLM pre-training is above from scratch on {wins} of these {len(keys)} scores, {tail}.", ""]


# -----------------------------------------------------------------------------------------------------------
# every task at once (`python experiments.py`): both rows, zero-shot and yardsticks, then the table

# (task, dataset) of each fine-tuning run, in the order they run; retrieval is one run per dataset
JOBS = [("retrieval", "msrvtt"), ("retrieval", "youcook2"), ("qa", "msrvtt"), ("segmentation", None),
        ("localization", None), ("captioning", None)]


def run_all(cfg, dist_state):
    """Every task fine-tuned from the pre-trained model and from scratch (finetune.run, once per seed), the
    zero-shot rows and the yardsticks, then one results table (OUT/results.md and OUT/results.json)."""
    results = {"pretrained": {}, "scratch": {}}
    t0 = time.time()
    seeds = [int(x) for x in cfg.seeds.split(",") if x.strip()] or [cfg.seed]
    for row, scratch in (("pretrained", False), ("scratch", True)):
        runs = {}  # table key -> [metrics of each seed]
        for seed in seeds:
            out = os.path.join(cfg.out, f"seed{seed}") if len(seeds) > 1 else cfg.out
            c = dataclasses.replace(cfg, scratch=scratch, seed=seed, out=out)
            for task, ds in JOBS:
                key = f"retrieval-{ds}" if task == "retrieval" else task
                runs.setdefault(key, []).append(finetune.run(c, task, dist_state, dataset=ds))
                if StopFlag().stop:  # Ctrl-C / SIGTERM: no further task, and no table that looks complete
                    results[row] = {k: v[-1] for k, v in runs.items()}
                    if dist_state[1] == 0:
                        _say_stopped(results)
                    return None
        if dist_state[1] == 0:
            results[row], spread = seed_mean(runs)
            if len(seeds) > 1:
                results[row + "_std"], results["seeds"] = spread, seeds
    if dist_state[1] != 0:  # other DDP ranks: the table is rank 0's
        return None
    results.update(reference_rows(cfg, dist_state[3]))
    aio = os.path.join(cfg.out, "allinone.json")
    if os.path.exists(aio):  # the frames model's rows (run_frames_all), beside VLM's on the same test sets
        with open(aio) as f:
            results.update(json.load(f))
    results["seconds"] = time.time() - t0
    table = results_table(results)
    print(table)
    with open(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {os.path.join(cfg.out, 'results.md')} and results.json ({results['seconds']:.0f}s)")
    return results


def _say_stopped(results):
    """After a stop: which (row, task) runs finished and which are missing (--resume goes on)."""
    keys = [(r, f"retrieval-{d}" if t == "retrieval" else t) for r in ("pretrained", "scratch") for t, d in JOBS]
    done = [f"{r}/{k}" for r, k in keys if results[r].get(k) is not None]
    missing = [f"{r}/{k}" for r, k in keys if results[r].get(k) is None]
    print(f"stopped: results.md / results.json not written; done: {', '.join(done) or 'none'}; "
          f"missing: {', '.join(missing)}. Rerun with --resume to go on.")


def reference_rows(cfg, device):
    """The rows that need no fine-tuning: zero-shot from the pre-trained model (paper Table 5, first VLM row;
    retrieval too), the chance / trivial baselines, the linear floor and the caption roof."""
    _, ctx, _ = amp_setup(cfg.dtype, device)
    model = load_model(cfg.init).to(device).eval()
    tok = trained_tokenizer(cfg.init, cfg.data, model.config)
    rows = {"zero_shot": {  # straight from pre-training
        "retrieval-msrvtt": evaluate.run_task("retrieval", model, cfg.data, "test", tok, "msrvtt", device, ctx),
        "retrieval-youcook2": evaluate.run_task("retrieval", model, cfg.data, "test", tok, "youcook2", device, ctx),
        "localization": evaluate.run_task("localization", model, cfg.data, "test", tok, device=device, ctx=ctx)}}
    rows["baselines"] = baselines(cfg.data)
    rows["floor"] = {key: linear_floor(cfg.data, tok, task, ds or "youcook2", seed=cfg.seed)
                     for task, ds, key in [("retrieval", "msrvtt", "retrieval-msrvtt"),
                                           ("retrieval", "youcook2", "retrieval-youcook2"), ("qa", None, "qa")]}
    rows["roof"] = caption_roof(cfg.data, tok)
    return rows


def seed_mean(runs):
    """{task: [metrics of each seed]} -> ({task: mean metrics}, {task: standard deviation over seeds})."""
    mean, std = {}, {}
    for key, ms in runs.items():
        ms = [m for m in ms if m]  # None: a run stopped early (--resume goes on)
        if not ms:
            mean[key] = std[key] = None
            continue
        ks = [k for k, v in ms[0].items() if isinstance(v, (int, float))]
        mean[key] = {k: float(np.mean([m[k] for m in ms])) for k in ks}
        mean[key].update({k: v for k, v in ms[0].items() if k not in ks})  # non-numbers: the first seed's
        std[key] = {k: float(np.std([m[k] for m in ms], ddof=1)) if len(ms) > 1 else 0.0 for k in ks}
    return mean, std


def run_frames_all(cfg, dist_state):
    """Retrieval and QA from frames, pre-trained and from scratch -> OUT/allinone.json; the results table
    (OUT/results.md) is rewritten with these rows beside VLM's when OUT/results.json exists."""
    t0, res = time.time(), {"allinone": {}, "allinone_scratch": {}}
    for row, scratch in (("allinone", False), ("allinone_scratch", True)):
        for task in ("retrieval", "qa"):
            key = "retrieval-msrvtt" if task == "retrieval" else task
            res[row][key] = finetune.run(dataclasses.replace(cfg, scratch=scratch), task, dist_state)
            if StopFlag().stop:  # no further run, and no table that looks complete
                print("stopped: allinone.json / results.md not written")
                return None
    if dist_state[1] != 0:
        return None
    res["baselines"] = baselines(cfg.data)  # the chance row of the table, on the same test sets
    res["allinone_seconds"] = time.time() - t0
    with open(os.path.join(cfg.out, "allinone.json"), "w") as f:
        json.dump(res, f, indent=1)
    path = os.path.join(cfg.out, "results.json")
    merged = dict(res)
    if os.path.exists(path):
        with open(path) as f:
            merged = {**json.load(f), **res}
    table = results_table(merged)
    print(table)
    with open(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(f"All-in-One rows: {os.path.join(cfg.out, 'allinone.json')} ({res['allinone_seconds']:.0f}s)")
    return res


# -----------------------------------------------------------------------------------------------------------
# the ablations (sec. 5.4.1, Tables 8-9): pre-train each variant, fine-tune retrieval and captioning on YouCook2

VARIANTS = {  # name -> (label, pre-training flags)
    "mmm50": ("w/ MMM 50%", ["--mmm_prob", "0.5"]),
    "mmm0": ("w/ MMM 0%", ["--mmm_prob", "0.0"]),
    "mmm30": ("w/ MMM 30%", ["--mmm_prob", "0.3"]),
    "mmm70": ("w/ MMM 70%", ["--mmm_prob", "0.7"]),
    "min16": ("w/ min. 16 text tokens", ["--min_text_len", "16"]),
    "mfm_mlm": ("w/ L_MFM-MLM", ["--loss", "mfm_mlm"]),
}
RET = ["R1", "R5", "R10", "MedR"]
CAP = ["BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
# paper Tables 8-9 (real YouCook2); the default variant's row is Tables 3 and 7's (PAPER)
PAPER_RET = {"mmm50": tuple(float(PAPER["retrieval-youcook2"][k]) for k in RET), "mmm0": (15.12, 39.47, 52.81, 9.0),
             "mmm30": (25.30, 54.80, 68.96, 4.0), "mmm70": (25.17, 54.98, 69.11, 4.0),
             "min16": (25.84, 54.43, 68.29, 5.0), "mfm_mlm": (26.93, 55.92, 69.86, 4.0)}
PAPER_CAP = {"mmm50": tuple(float(PAPER["captioning"][k]) for k in CAP), "mmm0": (15.47, 10.54, 16.49, 38.83, 1.2163),
             "mmm30": (16.57, 11.30, 17.55, 40.76, 1.3215), "mmm70": (16.94, 11.68, 17.67, 41.24, 1.3739),
             "min16": (17.25, 12.00, 17.67, 40.62, 1.3076), "mfm_mlm": (16.66, 11.53, 17.34, 40.36, 1.3224)}


def ablation_table(title, results, variants, cols, paper):
    """Mean (and spread over seeds, when more than one) beside the paper's number, one row per variant."""
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " | paper (real YouCook2) |",
             "|---" * (len(cols) + 2) + "|"]
    for v in variants:
        runs = results[v]
        cells = []
        for c in cols:
            xs = np.array([r[c] for r in runs if r.get(c) is not None], dtype=float)
            fmt = "{:.4f}" if c == "CIDEr" else "{:.2f}"
            cell = fmt.format(xs.mean()) if len(xs) else "-"
            if len(xs) > 1:
                cell += " ± " + fmt.format(xs.std())
            cells.append(cell)
        lines.append(f"| {VARIANTS[v][0]} | " + " | ".join(cells) + " | " + " / ".join(map(str, paper[v])) + " |")
    return "\n".join(lines) + "\n"


def run_ablation(argv=None):
    """`python experiments.py --ablation ...`: every variant x seed pre-trained by train.py and fine-tuned by
    finetune.py (train.py's / finetune.py's defaults unless --pretrain_args / --finetune_args change them);
    both tables printed and written to OUT/ablation.{md,json}."""
    p = argparse.ArgumentParser(description="The paper's ablations (sec. 5.4.1, Tables 8-9) on the built-in world.")
    p.add_argument("--ablation", action="store_true", help="run the ablations (this command line)")
    p.add_argument("--data", default="data/world", help="data directory (built if missing)")
    p.add_argument("--out", default="out/ablation", help="output directory")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="which rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="pre-training and fine-tuning seeds")
    p.add_argument("--pretrain_args", default="", help="extra train.py flags, one quoted string")
    p.add_argument("--finetune_args", default="", help="extra finetune.py flags, one quoted string")
    a = p.parse_args(argv)
    pre_extra, ft_extra = shlex.split(a.pretrain_args), shlex.split(a.finetune_args)
    results = {v: [] for v in a.variants}
    dist_state = (False, 0, 1, setup_distributed()[3])
    for seed in a.seeds:
        for v in a.variants:
            run_dir = os.path.join(a.out, f"{v}-seed{seed}")
            train.main(["--data", a.data, "--out", os.path.join(run_dir, "pretrain"), "--seed", str(seed)]
                       + VARIANTS[v][1] + pre_extra)
            cfg = parse_config(finetune.FinetuneConfig, ["--data", a.data, "--seed", str(seed),
                                        "--init", os.path.join(run_dir, "pretrain", "model"),
                                        "--out", os.path.join(run_dir, "finetune")] + ft_extra)
            r = {**finetune.run(cfg, "retrieval", dist_state, dataset="youcook2"),
                 **finetune.run(cfg, "captioning", dist_state)}
            results[v].append(r)
            print(f"{VARIANTS[v][0]}, seed {seed}: " + ", ".join(f"{k} {r[k]:.3f}" for k in RET + CAP
                                                              if r.get(k) is not None))
    md = (f"Measured on the built-in world (YouCook2-like data), seeds {a.seeds}; the paper's numbers are on "
          f"the real YouCook2.\n\n"
          + ablation_table("Table 8: text-video retrieval", results, a.variants, RET, PAPER_RET) + "\n"
          + ablation_table("Table 9: captioning", results, a.variants, CAP, PAPER_CAP))
    print(md)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ablation.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "ablation.json"), "w") as f:
        json.dump({"seeds": a.seeds, "results": results}, f, indent=1)
    return results


# -----------------------------------------------------------------------------------------------------------
# command line


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--ablation" in argv:
        return run_ablation(argv)
    if any(x == "--task" or x.startswith("--task=") for x in argv):
        raise SystemExit("experiments.py runs every task; fine-tune one with python finetune.py --task TASK")
    cfg = parse_config(finetune.FinetuneConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.seeds and not all(x.strip().isdigit() for x in cfg.seeds.split(",")):
        raise SystemExit(f"--seeds {cfg.seeds!r}: give comma-separated non-negative integers, e.g. 0,1,2")
    StopFlag()  # from here on Ctrl-C / SIGTERM stop the run at the next step (with a checkpoint)
    dist_state = setup_distributed()
    kind = checkpoint_kind(cfg.init) if cfg.model == "auto" else cfg.model
    train.ensure_world(cfg.data, cfg.synth_size, cfg.seed, dist_state[1] == 0, dist_state[0],
                       video=kind == "allinone")
    # raw frames: MSR-VTT-like retrieval and multiple-choice QA; VLM: all five tasks
    result = run_frames_all(cfg, dist_state) if kind == "allinone" else run_all(cfg, dist_state)
    exit_if_stopped()
    return result


if __name__ == "__main__":
    cli(main, errors=(data.DataError, CheckpointError))
