"""
The paper's ablations (sec. 5.4.1, Tables 8-9) on the built-in world: pre-train with MMM 50% (the default),
0%, 30%, 70%, with a minimum of 16 text tokens per clip, and with L_MFM-MLM instead of L_VLM; fine-tune each
on YouCook2-like retrieval and captioning; print both tables beside the paper's.

    python ablation.py                      # all six variants, seed 0, train.py's full default pre-training
    python ablation.py --seeds 0 1 --variants mmm50 mmm0
    python ablation.py --pretrain_args "--max_steps 150 --batch_videos 4 --clips_per_video 16"   # the README's
                                            # tables: 150 steps of 4 videos x 16 clips each, 27 min on 2 cores
    python ablation.py --pretrain_args "--max_steps 150"   # the same with the default 32 x 2 batch, 23 min

Pre-training and fine-tuning settings are train.py's and finetune.py's defaults; change them with
`--pretrain_args "--max_steps 100"` and `--finetune_args "--epochs 4"`. Results go to OUT/ablation.{md,json}.
"""
import argparse
import json
import os
import shlex

import numpy as np

import finetune
import train

VARIANTS = {  # name -> (label, pre-training flags)
    "mmm50": ("w/ MMM 50%", ["--mmm_prob", "0.5"]),
    "mmm0": ("w/ MMM 0%", ["--mmm_prob", "0.0"]),
    "mmm30": ("w/ MMM 30%", ["--mmm_prob", "0.3"]),
    "mmm70": ("w/ MMM 70%", ["--mmm_prob", "0.7"]),
    "min16": ("w/ min. 16 text tokens", ["--min_text_len", "16"]),
    "mfm_mlm": ("w/ L_MFM-MLM", ["--loss", "mfm_mlm"]),
}
PAPER_RET = {"mmm50": (27.05, 56.88, 69.38, 4.0), "mmm0": (15.12, 39.47, 52.81, 9.0),
             "mmm30": (25.30, 54.80, 68.96, 4.0), "mmm70": (25.17, 54.98, 69.11, 4.0),
             "min16": (25.84, 54.43, 68.29, 5.0), "mfm_mlm": (26.93, 55.92, 69.86, 4.0)}
PAPER_CAP = {"mmm50": (17.78, 12.27, 18.22, 41.51, 1.3869), "mmm0": (15.47, 10.54, 16.49, 38.83, 1.2163),
             "mmm30": (16.57, 11.30, 17.55, 40.76, 1.3215), "mmm70": (16.94, 11.68, 17.67, 41.24, 1.3739),
             "min16": (17.25, 12.00, 17.67, 40.62, 1.3076), "mfm_mlm": (16.66, 11.53, 17.34, 40.36, 1.3224)}
RET = ["R1", "R5", "R10", "MedR"]
CAP = ["BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def table(title, results, variants, cols, paper):
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/world", help="data directory (built if missing)")
    p.add_argument("--out", default="out/ablation", help="output directory")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="which rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="pre-training and fine-tuning seeds")
    p.add_argument("--pretrain_args", default="", help="extra train.py flags, one quoted string")
    p.add_argument("--finetune_args", default="", help="extra finetune.py flags, one quoted string")
    a = p.parse_args(argv)
    pre_extra, ft_extra = shlex.split(a.pretrain_args), shlex.split(a.finetune_args)
    results = {v: [] for v in a.variants}
    dist_state = (False, 0, 1, train.setup_distributed()[3])
    for seed in a.seeds:
        for v in a.variants:
            run_dir = os.path.join(a.out, f"{v}-seed{seed}")
            train.main(["--data", a.data, "--out", os.path.join(run_dir, "pretrain"), "--seed", str(seed)]
                       + VARIANTS[v][1] + pre_extra)
            cfg = finetune.parse_config(finetune.FinetuneConfig, ["--data", a.data, "--seed", str(seed),
                                        "--init", os.path.join(run_dir, "pretrain", "model"),
                                        "--out", os.path.join(run_dir, "finetune")] + ft_extra)
            r = {**finetune.run(cfg, "retrieval", dist_state, dataset="youcook2"),
                 **finetune.run(cfg, "captioning", dist_state)}
            results[v].append(r)
            print(f"{VARIANTS[v][0]}, seed {seed}: " + ", ".join(f"{k} {r[k]:.3f}" for k in RET + CAP
                                                              if r.get(k) is not None))
    md = (f"Measured on the built-in world (YouCook2-like data), seeds {a.seeds}; the paper's numbers are on "
          f"the real YouCook2.\n\n"
          + table("Table 8: text-video retrieval", results, a.variants, RET, PAPER_RET) + "\n"
          + table("Table 9: captioning", results, a.variants, CAP, PAPER_CAP))
    print(md)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ablation.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "ablation.json"), "w") as f:
        json.dump({"seeds": a.seeds, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
