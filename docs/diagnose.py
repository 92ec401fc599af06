"""Why pre-training from scratch stays at word frequencies: two measurements (docs/log.md, "Why the default
pre-training does not ground"). Run from the repository root, after the built-in world exists (python world.py):

  python docs/diagnose.py mlm [--steps 400 --batch 64 --lr 1e-3 --word_init 0.02 --pos_init bert]
  python docs/diagnose.py rows [train.py's flags, e.g. --max_steps 100 --layers 2 --hidden 128 --heads 2]

mlm:  plain BERT masked language modelling (15% of the pieces, all replaced by [MASK]) with this project's encoder
      and tied head on windows of the world's pre-training narration, no video at all. Held-out top-1 is printed
      every --every steps beside two yardsticks computed on the same held-out narration: always the most frequent
      piece, and a lookup table of the (previous piece, next piece) pair built from the training narration.
rows: train.py's own setup and L_VLM step (MMM included), printing on one fixed held-out batch, masked as plain
      MFM-MLM (15% / 15%): text-row top-1 with the video visible and zeroed, video-row top-1 and cross-entropy
      against log(number of candidates), and the mean cosine between the video tokens V' (1 = collapsed).
"""
import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import vlm  # noqa: E402
from common import parse_config  # noqa: E402
from engine import lr_at, set_lr  # noqa: E402
from losses import gather_masked  # noqa: E402
from masking import mask_batch  # noqa: E402
from tokens import load_tokenizer, special_ids  # noqa: E402


def sinusoidal_(table):
    """Fill a (P, H) position table with the sin / cos code of "Attention is all you need" (std ~0.7)."""
    P, H = table.shape
    angle = torch.arange(P)[:, None].float() / 10000 ** (torch.arange(0, H, 2).float() / H)  # (P, H/2)
    with torch.no_grad():
        table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)


def narration(data):
    """Every pre-training video's narration as one list of word-piece ids, split 90 / 10 by video."""
    tok = load_tokenizer(data)
    with open(os.path.join(data, "howto100m", "raw_caption.json")) as f:
        caps = json.load(f)
    ids = [tok.encode(" ".join(caps[v]["text"]), add_special_tokens=False).ids for v in sorted(caps)]
    random.Random(0).shuffle(ids)
    cut = len(ids) * 9 // 10
    return tok, ids[:cut], ids[cut:]


def yardsticks(train_ids, test_ids):
    """(most frequent piece, (previous, next) lookup) top-1 on every 7th inner piece of the held-out narration."""
    table, freq = defaultdict(Counter), Counter()
    for s in train_ids:
        for i in range(1, len(s) - 1):
            table[s[i - 1], s[i + 1]][s[i]] += 1
            freq[s[i]] += 1
    top = freq.most_common(1)[0][0]
    hits_top = hits_pair = n = 0
    for s in test_ids:
        for i in range(1, len(s) - 1, 7):
            guess = table[s[i - 1], s[i + 1]].most_common(1)[0][0] if (s[i - 1], s[i + 1]) in table else top
            hits_top, hits_pair, n = hits_top + (s[i] == top), hits_pair + (s[i] == guess), n + 1
    return 100.0 * hits_top / n, 100.0 * hits_pair / n


def mlm(argv):
    ap = argparse.ArgumentParser(prog="diagnose.py mlm")
    ap.add_argument("--data", default="data/world")
    for name, default in (("steps", 400), ("batch", 64), ("length", 32), ("every", 50), ("layers", 2),
                          ("hidden", 128), ("heads", 2), ("seed", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--decay", action="store_true", help="train.py's schedule: 20 warm-up steps, linear decay to 0")
    ap.add_argument("--word_init", type=float, default=0.02, help="std of the word embeddings (train.py: 0.3)")
    ap.add_argument("--pos_init", default="bert", choices=["bert", "sin"],
                    help="bert: normal(0, 0.02); sin: the sinusoidal code times --word_init")
    a = ap.parse_args(argv)
    tok, train_ids, test_ids = narration(a.data)
    train_ids = [s for s in train_ids if len(s) > a.length]
    test_ids = [s for s in test_ids if len(s) > a.length]
    ids = special_ids(tok)
    torch.manual_seed(a.seed)
    model = vlm.VLM(train.scratch_config(vlm.VLMConfig, argparse.Namespace(
        hidden=a.hidden, layers=a.layers, heads=a.heads), tok))
    train.scratch_word_init(model, a.word_init)
    if a.pos_init == "sin":
        sinusoidal_(model.bert.wpe.weight)
        model.bert.wpe.weight.data.mul_(a.word_init)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.98))

    def batch(source, rng):
        rows = []
        for _ in range(a.batch):
            s = source[rng.randrange(len(source))]
            i = rng.randrange(len(s) - a.length)
            rows.append(s[i:i + a.length])
        x = torch.tensor(rows)
        picked = torch.rand(x.shape, generator=torch.Generator().manual_seed(rng.randrange(2 ** 30))) < 0.15
        return x.masked_fill(picked, ids["mask"]), torch.where(picked, x, -100)

    rng, held = random.Random(a.seed), [batch(test_ids, random.Random(1234)) for _ in range(4)]
    top, pair = yardsticks(train_ids, test_ids)
    print(f"yardsticks on held-out narration: most frequent piece {top:.1f}%, (previous, next) lookup {pair:.1f}%")
    t0 = time.time()
    for step in range(1, a.steps + 1):
        x, labels = batch(train_ids, rng)
        if a.decay:
            set_lr(opt, lr_at(step - 1, a.lr, 20, a.steps))
        loss = F.cross_entropy(model.mlm_logits(model.bert(x)).flatten(0, 1), labels.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % a.every == 0 or step == a.steps:
            model.eval()
            with torch.no_grad():
                hits = [(model.mlm_logits(model.bert(x)).argmax(-1) == y)[y != -100] for x, y in held]
            model.train()
            acc = 100.0 * torch.cat(hits).float().mean().item()
            print(f"step {step:5d} {time.time() - t0:5.0f}s  train loss {loss.item():.2f}  held-out top-1 {acc:.1f}%")


def row_stats(model, batch):
    """Per-modality accuracies on `batch`, masked as MFM-MLM with a fixed generator."""
    c = model.config
    specials = (c.cls_token_id, c.sep_token_id, c.pad_token_id, c.mask_token_id)
    masked = mask_batch(batch, torch.Generator().manual_seed(1), 0.0, 0.15, 0.15, c.mask_token_id, c.vocab_size,
                        specials)
    hidden = dict(masked, video_in=torch.zeros_like(masked["video_in"]))
    with torch.no_grad():
        r, r0 = gather_masked(model, batch, masked), gather_masked(model, batch, hidden)
        E = model.word_embeddings
        text = (r["e_text"] @ E.T).argmax(1) == r["text_labels"]
        text0 = (r0["e_text"] @ E.T).argmax(1) == r0["text_labels"]
        pos = (r["e_video"] * r["target_video"]).sum(-1, keepdim=True)
        logits = torch.cat([pos, r["e_video"] @ r["neg_video"].T], 1)  # the MFM part of Eq. 9's video rows
        zeros = torch.zeros(len(logits), dtype=torch.long)
        unit = F.normalize(r["neg_video"], dim=-1)
    return (f"text top-1 {100 * text.float().mean():.1f}% (video zeroed {100 * text0.float().mean():.1f}%) | "
            f"video top-1 {100 * (logits.argmax(1) == 0).float().mean():.1f}% CE {F.cross_entropy(logits, zeros):.2f}"
            f" (uniform {math.log(logits.shape[1]):.2f}) | cos(V') {(unit @ unit.T).mean():.2f}")


def rows(argv):
    cfg = parse_config(train.TrainConfig, argv)
    cfg.probe = False
    s = train.setup(cfg)
    model = s.raw_model
    held = next(iter(s.val_data.loader(cfg.batch_videos, epoch=0)))
    model.eval()
    print(f"step     0 {row_stats(model, held)}")
    model.train()
    step, epoch, t0, every = 0, 0, time.time(), max(1, s.total // 10)
    while step < s.total:
        for batch in s.train_data.loader(cfg.batch_videos, epoch=epoch):
            set_lr(s.optimizer, lr_at(step, cfg.lr, cfg.warmup, s.total, cfg.decay))
            loss, _ = s.loss_fn(model, batch, s.gen)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % every == 0 or step == s.total:
                model.eval()
                print(f"step {step:5d} {time.time() - t0:4.0f}s loss {loss.item():.2f} | {row_stats(model, held)}")
                model.train()
            if step == s.total:
                break
        epoch += 1


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("mlm", "rows"):
        raise SystemExit("usage: python docs/diagnose.py mlm|rows [flags]  (see the docstring)")
    (mlm if sys.argv[1] == "mlm" else rows)(sys.argv[2:])
