"""Smoke test of bench.py: `python bench.py --quick` runs every section and writes bench.json.

    python -m pytest -q tests/test_bench.py
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "bench.py", "--quick", "--threads", "1", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {"date", "machine", "results", "table"} <= set(doc)
    res = doc["results"]
    for section in ("encoder", "step", "retrieval", "decode", "data", "memory", "comm"):
        assert section in res, f"bench.json has no {section!r} section"
    assert res["decode"]["identical"], "generate with and without the cache gave different tokens"
    assert res["retrieval"]["max_abs_diff"] < 1e-3
    assert res["step"]["clips_per_s"] > 0 and res["memory"]["loss"]["extra"] >= 0
    assert "what" in p.stdout and "met?" in p.stdout  # the table is printed
