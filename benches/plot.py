#!/usr/bin/env python3
"""Draws the JSON lines of `aoc-bench write` runs as SVG charts.

Usage: python3 benches/plot.py [RUNS.jsonl ...] [--out DIR]

Reads JSON lines from the files given (standard input when none), keeps
those of `aoc-bench write` (they carry clients, value_bytes, ops_per_sec,
p50_us and p99_us; anything else is skipped), and writes into DIR (default
the current directory):

- latency_vs_clients.svg: p50 (solid) and p99 (dashed) write latency in ms
  against the number of clients, one colour per value size;
- throughput_vs_value_size.svg: writes/s (solid) and MB/s of values
  (dotted, right axis) against the value size, one colour per client count.

Several runs of the same point are drawn at their median. Python 3
standard library only: no matplotlib needed.
"""

import argparse
import json
import math
import statistics
import sys
from xml.sax.saxutils import escape

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
           "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 80, 50, 60
WRITE_FIELDS = ("clients", "value_bytes", "ops_per_sec", "p50_us", "p99_us")


def read_runs(paths):
    """The `aoc-bench write` records of the given files (or stdin)."""
    runs = []
    sources = paths or ["-"]
    for path in sources:
        handle = sys.stdin if path == "-" else open(path, encoding="utf-8")
        with handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    print(f"plot.py: {path}:{number}: not JSON ({e}); skipped",
                          file=sys.stderr)
                    continue
                if all(isinstance(record.get(f), (int, float))
                       for f in WRITE_FIELDS) and record["clients"] > 0 \
                        and record["value_bytes"] > 0:
                    runs.append(record)
    return runs


def median_by(runs, series_key, x_key, y_key):
    """{series: [(x, median y), ...] sorted by x}. When some series has two
    points or more, the single-point series are left out (a sweep of the
    other variable made them; they would only clutter the chart)."""
    points = {}
    for r in runs:
        points.setdefault(r[series_key], {}).setdefault(r[x_key], []).append(
            r[y_key])
    series = {s: sorted((x, statistics.median(ys)) for x, ys in xs.items())
              for s, xs in points.items()}
    if any(len(p) > 1 for p in series.values()):
        series = {s: p for s, p in series.items() if len(p) > 1}
    return series


def nice_ticks(lo, hi, count=5):
    """Round tick values covering [lo, hi] (lo >= 0)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10)
                if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def size(v):
    """A byte count as a label: 256 B, 4 KiB, 1 MiB."""
    label = fmt(v)
    return label + "B" if label.endswith("i") else label + " B"


def fmt(v):
    """A short label for a number."""
    if v >= 1024 and v % 1024 == 0:
        return f"{int(v // 1024)}Ki" if v < 1 << 20 else f"{int(v >> 20)}Mi"
    if v == int(v):
        return str(int(v))
    return f"{v:g}"


class Chart:
    """One SVG line chart: a log2 x axis and linear y axes."""

    def __init__(self, title, x_label, y_label, y2_label=None):
        self.title, self.x_label = title, x_label
        self.y_label, self.y2_label = y_label, y2_label
        self.lines = []  # (points, colour, dash, label, axis)

    def add(self, points, colour, dash, label, axis=1):
        if points:
            self.lines.append((points, colour, dash, label, axis))

    def svg(self):
        xs = [x for pts, *_ in self.lines for x, _ in pts]
        if not xs:
            return None
        x_lo, x_hi = math.log2(min(xs)), math.log2(max(xs))
        if x_hi == x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        axes = {}
        for axis in (1, 2):
            ys = [y for pts, _, _, _, a in self.lines if a == axis
                  for _, y in pts]
            if ys:
                ticks = nice_ticks(0, max(ys))
                axes[axis] = (ticks, ticks[-1] or 1)
        w = WIDTH - LEFT - RIGHT
        h = HEIGHT - TOP - BOTTOM

        def px(x):
            return LEFT + (math.log2(x) - x_lo) / (x_hi - x_lo) * w

        def py(y, axis):
            return TOP + h - y / axes[axis][1] * h

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
               f'height="{HEIGHT}" font-family="sans-serif" font-size="12">',
               f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
               f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" '
               f'font-size="15">{escape(self.title)}</text>']
        # Axes and grid.
        out.append(f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" '
                   'fill="none" stroke="#333"/>')
        for x in sorted(set(xs)):
            out.append(f'<line x1="{px(x):.1f}" y1="{TOP}" x2="{px(x):.1f}" '
                       f'y2="{TOP + h}" stroke="#eee"/>')
            out.append(f'<text x="{px(x):.1f}" y="{TOP + h + 18}" '
                       f'text-anchor="middle">{fmt(x)}</text>')
        for axis, (ticks, _) in axes.items():
            for t in ticks:
                y = py(t, axis)
                if axis == 1:
                    out.append(f'<line x1="{LEFT}" y1="{y:.1f}" '
                               f'x2="{LEFT + w}" y2="{y:.1f}" stroke="#eee"/>')
                    out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" '
                               f'text-anchor="end">{fmt(t)}</text>')
                else:
                    out.append(f'<text x="{LEFT + w + 6}" y="{y + 4:.1f}" '
                               f'text-anchor="start">{fmt(t)}</text>')
        out.append(f'<text x="{LEFT + w / 2}" y="{HEIGHT - 15}" '
                   f'text-anchor="middle">{escape(self.x_label)}</text>')
        out.append(f'<text transform="translate(20,{TOP + h / 2}) '
                   f'rotate(-90)" text-anchor="middle">'
                   f'{escape(self.y_label)}</text>')
        if self.y2_label and 2 in axes:
            out.append(f'<text transform="translate({WIDTH - 20},'
                       f'{TOP + h / 2}) rotate(90)" text-anchor="middle">'
                       f'{escape(self.y2_label)}</text>')
        # Lines, points and the legend.
        for n, (pts, colour, dash, label, axis) in enumerate(self.lines):
            path = " ".join(f"{px(x):.1f},{py(y, axis):.1f}" for x, y in pts)
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{path}" fill="none" '
                       f'stroke="{colour}" stroke-width="2"{dash_attr}/>')
            for x, y in pts:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y, axis):.1f}" '
                           f'r="3" fill="{colour}"><title>{escape(label)}: '
                           f'{fmt(x)} -> {y:.3g}</title></circle>')
            ly = TOP + 14 + n * 16
            out.append(f'<line x1="{LEFT + 10}" y1="{ly - 4}" '
                       f'x2="{LEFT + 34}" y2="{ly - 4}" stroke="{colour}" '
                       f'stroke-width="2"{dash_attr}/>')
            out.append(f'<text x="{LEFT + 40}" y="{ly}">{escape(label)}</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(
        description="Draw `aoc-bench write` JSON lines as SVG charts.")
    parser.add_argument("files", nargs="*",
                        help="files of JSON lines (default: standard input)")
    parser.add_argument("--out", default=".",
                        help="directory for the SVG files (default: .)")
    args = parser.parse_args()
    try:
        runs = read_runs(args.files)
    except OSError as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 1
    if not runs:
        print("plot.py: no `aoc-bench write` line found (fields: "
              + ", ".join(WRITE_FIELDS) + ")", file=sys.stderr)
        return 1

    latency = Chart("Write latency against clients", "clients (log scale)",
                    "latency (ms)")
    p50 = median_by(runs, "value_bytes", "clients", "p50_us")
    p99 = median_by(runs, "value_bytes", "clients", "p99_us")
    for n, value_bytes in enumerate(sorted(p50)):
        colour = COLOURS[n % len(COLOURS)]
        latency.add([(x, y / 1000) for x, y in p50[value_bytes]], colour, None,
                    f"p50, {size(value_bytes)} values")
        latency.add([(x, y / 1000) for x, y in p99[value_bytes]], colour,
                    "6,4",
                    f"p99, {size(value_bytes)} values")

    throughput = Chart("Throughput against value size",
                       "value size in bytes (log scale)", "writes/s",
                       "MB/s of values (dotted)")
    ops = median_by(runs, "clients", "value_bytes", "ops_per_sec")
    for n, clients in enumerate(sorted(ops)):
        colour = COLOURS[n % len(COLOURS)]
        who = f"{clients} client" + ("" if clients == 1 else "s")
        throughput.add(ops[clients], colour, None, f"{who}, writes/s")
        throughput.add([(x, x * y / 1e6) for x, y in ops[clients]], colour,
                       "2,3", f"{who}, MB/s", axis=2)

    written = []
    for name, chart in (("latency_vs_clients.svg", latency),
                        ("throughput_vs_value_size.svg", throughput)):
        text = chart.svg()
        if text is None:
            continue
        path = f"{args.out.rstrip('/')}/{name}"
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            print(f"plot.py: {e}", file=sys.stderr)
            return 1
        written.append(path)
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
