"""What every command of the project shares: one-line errors, checked numeric flags, the autocast context.

    cli(main, errors)        run a script's main(): a bad file or flag is one `error: ...` line and exit 1
    flag_type(name, int, 1)  an argparse type whose error names the flag and its range
    amp_setup(dtype, device) (dtype, autocast context, GradScaler): bf16 on a GPU that has it, fp16 + scaler
    parse_config(Config, argv) a config dataclass from the command line: a flag per field, its comment the --help

Tests: python -m pytest -q tests/test_bad_input.py   (every bad flag and file is one line naming it)
"""
import argparse
import dataclasses
import inspect
import math
import sys
from contextlib import nullcontext

import torch


def cli(main, errors=()):
    """Run a command's main(): a missing file or one of `errors` (data.DataError, checkpoint.CheckpointError) is
    printed as one line naming its culprit, without a traceback, and the process exits with status 1 (130 on a
    Ctrl-C outside a training loop)."""
    try:
        return main()
    except (FileNotFoundError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def flag_type(name, typ, low=None, high=None, low_excluded=False):
    """An argparse type for --name: a `typ` in [low, high] (low excluded if asked); the error names the range."""
    kind = "an integer" if typ is int else "a number"
    want = " and ".join(([f"> {low}" if low_excluded else f">= {low}"] if low is not None else []) +
                        ([f"<= {high}"] if high is not None else []))

    def parse(text):
        try:
            x = typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} must be {kind}, got {text!r}") from None
        if (typ is float and not math.isfinite(x)) or (low is not None and (x < low or (low_excluded and x == low))) \
                or (high is not None and x > high):
            raise argparse.ArgumentTypeError(f"--{name} must be {kind} {want}, got {text}")
        return x

    parse.__name__ = typ.__name__
    return parse


def amp_setup(dtype, device):
    """One autocast context and a GradScaler (enabled for float16 only)."""
    device_type = "cuda" if "cuda" in device else "cpu"
    if dtype == "auto":  # bf16 needs no loss scaling; CPUs train in float32 (bf16 matmuls are slow there)
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    # autocast runs matmuls in the low precision and keeps reductions (softmax, LayerNorm, losses) in float32
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # a no-op unless float16
    return dtype, ctx, scaler


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
    Numeric flags named in `ranges` ({flag: (low, high[, low excluded])}, default the class's `ranges`) are
    checked as they are parsed."""
    helps, ranges = field_help(cls), getattr(cls, "ranges", {}) if ranges is None else ranges

    def build(defaults):
        p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for f in dataclasses.fields(cls):
            default, text = defaults.get(f.name, f.default), helps.get(f.name, "")
            if f.type in (bool, "bool"):  # --flag / --no-flag
                p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=default, help=text)
                continue
            # dataclass annotations are strings under `from __future__ import annotations`
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            if f.name in ranges and typ in (int, float):
                typ = flag_type(f.name, typ, *ranges[f.name])
            p.add_argument(f"--{f.name}", type=typ, default=default, help=text)
        return p

    # parse twice when a preset is named: once to read --preset, then with its values as the defaults
    args = build({}).parse_args(argv)
    preset = getattr(args, "preset", "")
    if preset:
        if preset not in (presets or {}):
            raise SystemExit(f"--preset {preset!r}: unknown preset, choose from {sorted(presets or {})}")
        args = build(presets[preset]).parse_args(argv)
    return cls(**vars(args))
