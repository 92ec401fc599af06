"""Self-contained SVG plots with no plotting package: line charts of training logs and attention heat maps.

    line_chart(panels, path)                       curves from log.jsonl (use.py plot-log)
    heatmap(matrix, rows, cols, path, title=...)   one attention map (use.py attention, the paper's Fig. 4)

The SVG opens in any browser. Only the standard library; nothing here knows about the model. Used by use.py
(plot-log, attention, figures). Tests: python -m pytest -q tests/test_use.py
"""
import math
from html import escape

FONT = "font-family='DejaVu Sans, Arial, sans-serif'"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"plots.py: axis range [{lo}, {hi}] is not finite")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:  # a flat curve: an axis one unit wide around it
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]
    return [round(t, 12) for t in ticks]


def _fmt(v):
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.2e}"


def _text(x, y, s, size=12, anchor="middle", extra=""):
    return (f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' {FONT} {extra}>"
            f"{escape(str(s))}</text>")


def _panel(p, x0, y0, w, h):
    """One chart: p = {"title", "xlabel", "ylabel", "series": [(name, xs, ys), ...]} in a w-wide box at (x0, y0)."""
    pts = [(x, y) for _, xs, ys in p["series"] for x, y in zip(xs, ys)]
    if not pts:
        raise ValueError(f"plots.py: panel {p['title']!r} has no points")
    xt = nice_ticks(min(x for x, _ in pts), max(x for x, _ in pts))
    yt = nice_ticks(min(y for _, y in pts), max(y for _, y in pts))
    L, R, T, B = x0 + 70, x0 + w - 15, y0 + 35, y0 + 305  # plotting area
    sx = lambda x: L + (x - xt[0]) / (xt[-1] - xt[0]) * (R - L)
    sy = lambda y: B - (y - yt[0]) / (yt[-1] - yt[0]) * (B - T)
    out = [f"<rect x='{L}' y='{T}' width='{R - L}' height='{B - T}' fill='white' stroke='#333'/>",
           _text((L + R) / 2, y0 + 20, p["title"], 14, extra="font-weight='bold'"),
           _text((L + R) / 2, B + 40, p["xlabel"], 12),
           _text(x0 + 18, (T + B) / 2, p["ylabel"], 12, extra=f"transform='rotate(-90 {x0 + 18} {(T + B) / 2})'")]
    for t in xt:
        out += [f"<line x1='{sx(t):.1f}' y1='{T}' x2='{sx(t):.1f}' y2='{B + 5}' stroke='#ddd'/>",
                _text(sx(t), B + 19, _fmt(t), 11)]
    for t in yt:
        out += [f"<line x1='{L - 5}' y1='{sy(t):.1f}' x2='{R}' y2='{sy(t):.1f}' stroke='#ddd'/>",
                _text(L - 8, sy(t) + 4, _fmt(t), 11, anchor="end")]
    for i, (name, xs, ys) in enumerate(p["series"]):
        c = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        out.append(f"<polyline points='{path}' fill='none' stroke='{c}' stroke-width='2'/>")
        if len(xs) <= 30:  # few points (validation): mark each one
            out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3' fill='{c}'/>" for x, y in zip(xs, ys)]
        ly = B + 62 + 16 * i  # legend below the x axis label, clear of the curves
        out += [f"<line x1='{L}' y1='{ly - 4}' x2='{L + 20}' y2='{ly - 4}' stroke='{c}' stroke-width='3'/>",
                _text(L + 26, ly, name, 11, anchor="start")]
    return out


def line_chart(panels, path, width=520):
    """Panels side by side, each with its own axes and its legend below; writes one SVG file."""
    W, height = width * len(panels), 375 + 16 * max(len(p["series"]) for p in panels)
    body = [f"<rect width='{W}' height='{height}' fill='white'/>"]
    for i, p in enumerate(panels):
        body += _panel(p, i * width, 0, width, height)
    _write(path, W, height, body)


def _shade(v):
    """0 -> white, 1 -> dark blue (darker = higher weight, as in the paper's Fig. 4)."""
    v = min(max(v, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * v) for c in (8, 48, 107))
    return f"rgb({r},{g},{b})"


def heatmap(matrix, rows, cols, path, title="", cell=14, vmin=None, vmax=None):
    """A matrix (list of rows of floats) as coloured cells; rows / cols label each row / column.
    The colour scale runs from vmin to vmax (default: the matrix minimum and maximum); a colour bar shows it;
    hovering a cell shows its value."""
    n, m = len(matrix), len(matrix[0]) if matrix else 0
    if n != len(rows) or m != len(cols) or any(len(r) != m for r in matrix):
        raise ValueError(f"plots.py heatmap: matrix is {n} x {m} but {len(rows)} row and {len(cols)} column labels")
    vmin = min(min(r) for r in matrix) if vmin is None else vmin
    vmax = max(max(r) for r in matrix) if vmax is None else vmax
    span = (vmax - vmin) or 1.0
    lw = 8 + 7 * max(len(s) for s in rows + cols)  # room for the longest label
    L, T = lw, 40 + lw
    W, H = max(L + m * cell + 90, 16 + 9 * len(title)), T + n * cell + 20  # wide enough for the title
    body = [f"<rect width='{W}' height='{H}' fill='white'/>",
            _text(8, 22, title, 14, anchor="start", extra="font-weight='bold'")]
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            tip = f"{escape(rows[i])} -> {escape(cols[j])}: {v:.3f}"  # shown on hover
            body.append(f"<rect x='{L + j * cell}' y='{T + i * cell}' width='{cell}' height='{cell}' "
                        f"fill='{_shade((v - vmin) / span)}'><title>{tip}</title></rect>")
    for i, s in enumerate(rows):
        body.append(_text(L - 4, T + i * cell + cell * 0.75, s, cell - 4, anchor="end"))
    for j, s in enumerate(cols):  # column labels written upwards above the grid
        x, y = L + j * cell + cell * 0.72, T - 4
        body.append(_text(x, y, s, cell - 4, anchor="start", extra=f"transform='rotate(-90 {x:.1f} {y:.1f})'"))
    body.append(f"<rect x='{L}' y='{T}' width='{m * cell}' height='{n * cell}' fill='none' stroke='#333'/>")
    bx, steps = L + m * cell + 20, 50  # colour bar
    for k in range(steps):
        body.append(f"<rect x='{bx}' y='{T + (steps - 1 - k) * 4}' width='14' height='4' "
                    f"fill='{_shade(k / (steps - 1))}'/>")
    body += [_text(bx + 18, T + 8, f"{vmax:.3g}", 11, anchor="start"),
             _text(bx + 18, T + steps * 4, f"{vmin:.3g}", 11, anchor="start")]
    _write(path, W, H, body)


def _write(path, W, H, body):
    with open(path, "w") as f:
        f.write(f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}'>\n")
        f.write("\n".join(body))
        f.write("\n</svg>\n")
