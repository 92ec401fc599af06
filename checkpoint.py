"""The one checkpoint format of the project, and the one loader every script uses.

A checkpoint is either a model directory (config.json, model.pt, tokenizer.json / vocab.txt: what train.py leaves
in OUT/model and what `--init` takes) or one torch.save file (train.py's ckpt.pt with the optimizer and RNG
states for --resume; finetune.py's best.pt with the task, its head and the tokenizer). Both carry the model's
config as a dict; its "model" field, when present, says "allinone" (the frames model), else it is a VLM.

    load_checkpoint(path)  -> the raw dict (every failure a CheckpointError naming the file and what is wrong)
    load_model(path)       -> a VLM / AllInOne with its weights (and tokenizer directory) from either form
    load_finetuned(path)   -> a TaskModel from finetune.py's best.pt
    atomic_save, save_model_dir: writes that a kill at any moment cannot half-finish

Tests: python -m pytest -q tests/test_bad_input.py tests/test_train.py   (damaged files, kills mid-write)
"""
import dataclasses
import json
import os
import shutil
import zipfile

import torch
from tokenizers import Tokenizer

from allinone import AllInOne, AllInOneConfig
from tokens import load_tokenizer, special_ids
from vlm import VLM, TaskModel, VLMConfig, attach_tokenizer


class CheckpointError(Exception):
    """A checkpoint that cannot be read, written or used here; the message names the file and what is wrong."""


def atomic_save(obj, path):
    """torch.save to a temp file, fsync, rename: a kill at any moment leaves the previous file usable. On any
    failure (disk full, ...) the temp file is removed and the previous file is left as it was."""
    tmp = f"{path}.tmp.{os.getpid()}"  # per process: two ranks never write one temp file
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, Exception):  # OSError, or torch's RuntimeError from its zip writer
            raise CheckpointError(f"{path}: could not write the checkpoint ({type(e).__name__}: {e}); the "
                                  f"previous {os.path.basename(path)}, if any, is intact") from e
        raise
    # fsync the directory too, so the rename itself survives a power cut
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path, model, tokenizer=None, **state):
    """The one checkpoint file, written atomically: {"model": the encoder's weights, "model_config": its config,
    "tokenizer": the tokenizer as JSON (or None), **state}. State is what the writer needs back: optimizer,
    scaler, step, rng to resume (train.py's and finetune.py's ckpt.pt); task, head, ... for a fine-tuned
    best.pt. load_model reads any of them; a model directory (save_model_dir) holds the same three parts as files."""
    atomic_save({"model": model.state_dict(), "model_config": dataclasses.asdict(model.config),
                 "tokenizer": tokenizer.to_str() if tokenizer is not None else None, **state}, path)


def _write_model_dir(model, out_dir, tokenizer=None):
    """DIR/config.json (the config's fields), DIR/model.pt (state_dict), and tokenizer files: `tokenizer` (a
    tokenizers.Tokenizer or a directory) or else those of the directory the model was loaded from."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(model.config), f, indent=2)
    torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    src = tokenizer if tokenizer is not None else model.tokenizer_dir
    if src is not None and not isinstance(src, (str, os.PathLike)):
        src.save(os.path.join(out_dir, "tokenizer.json"))
    elif src is not None and os.path.abspath(src) != os.path.abspath(out_dir):
        for name in ("tokenizer.json", "vocab.txt"):
            if os.path.exists(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))


def save_model_dir(model, out_dir, tokenizer=None):
    """A model directory (a VLM or AllInOne, its config and tokenizer) written into a temp directory beside
    out_dir, then swapped in: a failure while writing leaves the previous out_dir whole (the temp is removed)."""
    tmp, old = f"{out_dir}.tmp.{os.getpid()}", f"{out_dir}.old.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_model_dir(model, tmp, tokenizer=tokenizer)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{out_dir}: could not write the model ({type(e).__name__}: {e}); the previous "
                              f"{out_dir}, if any, is intact") from e
    # two renames: the old directory steps aside, the new one takes its name, then the old one goes
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _torch_file(path):
    """torch.load of a file, or a CheckpointError saying why it is not a checkpoint (empty, truncated, other)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(4)
        # tell the usual failures apart: a zero-byte file, a zip cut short by a kill, anything else
        why = ("an empty file" if not head else
               "truncated (a zip archive without its end)" if head == b"PK\x03\x04" and not zipfile.is_zipfile(path)
               else "not a PyTorch checkpoint (or damaged)")
        raise CheckpointError(f"{path}: {why}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def load_checkpoint(path, need=("model", "model_config")):
    """Read a checkpoint of this project -> dict. `path` is a file written by torch.save (train.py's ckpt.pt,
    finetune.py's best.pt / ckpt.pt) or a model directory written by save_model_dir (config.json + model.pt, returned
    as {"model_config", "model", "dir"}); a directory holding only ckpt.pt reads that. The one loader behind
    --resume, --init (finetune.py; train.py for a model directory) and evaluate.py --ckpt: every failure is a
    CheckpointError naming the file (missing, empty, truncated, not a checkpoint, lacking a key in `need`)."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "model.pt")) \
            and os.path.exists(os.path.join(path, "ckpt.pt")):
        path = os.path.join(path, "ckpt.pt")
    if os.path.isdir(path):  # a model directory: config.json + model.pt (+ tokenizer files)
        cfg_path, pt = os.path.join(path, "config.json"), os.path.join(path, "model.pt")
        for p in (cfg_path, pt):
            if not os.path.exists(p):
                raise CheckpointError(f"{path}: not a model directory of this project: no {os.path.basename(p)}")
        try:
            with open(cfg_path) as f:
                raw = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON (truncated?): {e}") from None
        ckpt = {"model_config": raw, "model": _torch_file(pt), "dir": path}
    elif os.path.exists(path):
        ckpt = _torch_file(path)
    else:
        raise CheckpointError(f"{path}: no such checkpoint (expected a model directory or a .pt file)")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in need):
        got = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this project: needs keys {list(need)}, has {got}")
    return ckpt


def load_state_checked(module, sd, path, flags=None):
    """module.load_state_dict(sd), or a CheckpointError naming the file, the first mismatched tensors and, from
    `flags` {flag: (checkpoint value, current value)}, the command-line flags that differ."""
    own = module.state_dict()
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd
              and hasattr(sd[k], "shape") and sd[k].shape != own[k].shape]
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if shapes or missing or unexpected:
        parts = [f"{name} ({len(x)}): {', '.join(x[:3])}{', ...' if len(x) > 3 else ''}"
                 for name, x in (("shape mismatches, checkpoint vs model", shapes), ("missing keys", missing),
                                 ("unexpected keys", unexpected)) if x]
        differ = [f"--{k} {a} in the checkpoint vs {b} now" for k, (a, b) in (flags or {}).items() if a != b]
        raise CheckpointError(f"{path}: does not fit this model: " + "; ".join(parts) +
                              (f"; it was written with {', '.join(differ)}" if differ else ""))
    module.load_state_dict(sd)


def config_from_dict(raw, where="config"):
    """The config a saved dict describes: AllInOneConfig when it records model="allinone", else VLMConfig;
    unknown fields (another model's checkpoint) are a CheckpointError naming them."""
    kind = AllInOneConfig if raw.get("model") == "allinone" else VLMConfig
    try:
        return kind.from_dict(raw, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def model_from_config(raw, where="config"):
    """The model a saved config dict describes: AllInOne when it records model="allinone", else VLM."""
    cfg = config_from_dict(raw, where)
    return AllInOne(cfg) if isinstance(cfg, AllInOneConfig) else VLM(cfg)


def load_model(path):
    """A VLM or AllInOne from a checkpoint of either form, every key and shape checked; a model directory's
    tokenizer is remembered (and checked against the embeddings)."""
    ckpt = load_checkpoint(path)
    model = model_from_config(ckpt["model_config"], path)
    load_state_checked(model, ckpt["model"], path)
    if "dir" in ckpt:  # a model directory: remember (and check) its tokenizer
        try:
            attach_tokenizer(model, ckpt["dir"])
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return model


def trained_tokenizer(path, data_dir, config=None):
    """The tokenizer saved with a model (its directory, or beside a ckpt.pt), else the data directory's. The
    data's tokenizer is taken only if it fits the model (`config`, a VLMConfig, or the model directory's
    config.json): same vocabulary size and special token ids; otherwise a CheckpointError."""
    if os.path.isfile(path):  # a checkpoint file carries its tokenizer (checkpoint.save)
        text = load_checkpoint(path, need=()).get("tokenizer")
        if text:
            return Tokenizer.from_str(text)
    for d in (path if os.path.isdir(path) else os.path.dirname(path), os.path.join(os.path.dirname(path), "model"),
              data_dir):
        if any(os.path.exists(os.path.join(d, f)) for f in ("tokenizer.json", "vocab.txt")):
            try:
                tok = load_tokenizer(d)
            except ValueError as e:  # a damaged tokenizer.json (the message names it)
                raise CheckpointError(str(e)) from None
            if d == data_dir:
                _check_data_tokenizer(tok, path, data_dir, config)
            return tok
    raise FileNotFoundError(f"no tokenizer.json or vocab.txt beside {path} or in {data_dir}")


def _check_data_tokenizer(tok, path, data_dir, config):
    if config is None and os.path.exists(os.path.join(path, "config.json")):
        config = load_checkpoint(path)["model_config"]
    if config is None:
        return
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    ids = special_ids(tok)
    have = {"vocab_size": tok.get_vocab_size(), **{f"{k}_token_id": v for k, v in ids.items()}}
    bad = [f"{k} {c[k]} vs {v}" for k, v in have.items() if k in c and c[k] != v]
    if bad:
        raise CheckpointError(f"{path}: has no tokenizer, and the one in {data_dir} does not fit it (model vs "
                              f"data: {', '.join(bad)}); put the model's tokenizer.json beside it")
    print(f"note: {path} has no tokenizer; using {data_dir}'s (same size and special tokens)")


def load_finetuned(path, device="cpu", task=None):
    """A fine-tuned checkpoint written by finetune.py (best.pt): the encoder plus the task's head."""
    ck = load_checkpoint(path, need=())
    if "task" not in ck:
        raise SystemExit(f"{path}: not a fine-tuned checkpoint (no 'task' key); for zero-shot use --zero_shot")
    if task and ck["task"] != task:
        raise SystemExit(f"{path}: a {ck['task']} checkpoint, but --task is {task}")
    model = TaskModel(model_from_config(ck["model_config"], path), ck["num_classes"])
    model.cosine = ck.get("temperature", 0.0) > 0  # trained on cosine logits: rank by cosine too
    load_state_checked(model.vlm, ck["model"], path)
    if model.head is not None:
        load_state_checked(model.head, ck["head"], path)
    if ck.get("tokenizer"):
        model.tokenizer = Tokenizer.from_str(ck["tokenizer"])
    return model.to(device).eval()


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
