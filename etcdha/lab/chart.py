"""The lab's chart as SVG (pure Python): VIP and DIP ownership, the leader in etcd,
and every client request over time, with the steps marked.

Lanes, top to bottom: the steps; for each director whether it holds the VIP
and the DIP; the leader key in etcd; which director took each answered
request; one row per client outcome (rs1, rs2, the fallback page, no answer),
each request a tick at the time it was sent; the measured gap of each step
under the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

from etcdha.lab.labrun import LabRecord

NODE_COLOURS = {"node1": "#1f77b4", "node2": "#ff7f0e", "node3": "#8c564b"}
OUTCOME_ROWS = (
    ("rs1", "client got rs1", "#2ca02c"),
    ("rs2", "client got rs2", "#17becf"),
    ("fallback", 'client got "Sorry"', "#9467bd"),
    ("error", "no answer", "#d62728"),
)
LEFT = 190
WIDTH = 1400
LANE = 18
MERGE = 0.03  # ticks closer than this (s) are drawn as one bar


def _spans(times: Iterable[float], tick: float) -> list[tuple[float, float]]:
    """Merge sorted instants into (start, end) spans, each at least `tick` wide."""
    spans: list[tuple[float, float]] = []
    for t in sorted(times):
        if spans and t - spans[-1][1] <= MERGE:
            spans[-1] = (spans[-1][0], t + tick)
        else:
            spans.append((t, t + tick))
    return spans


class _Svg:
    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = max(end, start + 1.0)
        self.parts: list[str] = []

    def x(self, t: float) -> float:
        return LEFT + (t - self.start) / (self.end - self.start) * (WIDTH - LEFT - 20)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, extra: str = "") -> None:
        self.parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.6):.1f}" height="{h:.1f}" '
            f'fill="{fill}"{extra}/>'
        )

    def span(self, a: float, b: float, y: float, h: float, fill: str) -> None:
        self.rect(self.x(a), y, self.x(b) - self.x(a), h, fill)

    def text(self, x: float, y: float, s: str, size: int = 12, extra: str = "") -> None:
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}"{extra}>{escape(s)}</text>'
        )

    def line(
        self, x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = ""
    ) -> None:
        self.parts.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}"{extra}/>'
        )


def render_chart(rec: LabRecord) -> str:
    t0 = rec.t0
    nodes = sorted({n for _, v, d in rec.holdings for n in (*v, *d)} | {"node1", "node2"})
    # From just before the first director held the VIP (the agents start before the client).
    held = [t - t0 for t, vip, _ in rec.holdings if vip]
    first = min(held[0] - 1.0, 0.0) if held else 0.0
    svg = _Svg(first, rec.ended - t0)
    y = 30.0
    svg.text(
        10,
        20,
        "etcdha lab: the Heartbeat + ldirectord reference setup, a client request "
        f"through the VIP every {rec.options.interval * 1000:g} ms "
        f"(lease TTL {rec.lease_ttl:g} s; times in s since the client started)",
        14,
        ' font-weight="bold"',
    )
    # steps: labels on two alternating rows, a line down the whole chart
    top = y
    y += 4 * 15 + 6
    lanes_top = y
    rows: list[tuple[str, float]] = []
    for node in nodes:
        rows += [(f"{node} holds VIP", y), (f"{node} holds DIP", y + LANE + 2)]
        y += 2 * (LANE + 2) + 6
    leader_y = y
    rows.append(("leader in etcd", y))
    y += LANE + 8
    taken_y = y
    rows.append(("request taken by", y))
    y += LANE + 8
    outcome_y: dict[str, float] = {}
    for key, label, _ in OUTCOME_ROWS:
        outcome_y[key] = y
        rows.append((label, y))
        y += LANE + 2
    gaps_y = y + 14
    bottom = y + 38

    for label, ry in rows:
        svg.rect(LEFT, ry, WIDTH - LEFT - 20, LANE, "#f4f4f4")
        svg.text(10, ry + LANE - 5, label, 12)

    # Behind the lanes' contents: each step settling, from its action (its command
    # starting) to the client getting what it should; in a slow guest most of it
    # is the command's own start-up.
    for res in rec.results:
        if res.settled is not None:
            x = svg.x(res.started - t0)
            svg.rect(x, lanes_top - 2, svg.x(res.settled - t0) - x, gaps_y - 16 - lanes_top,
                     "#f2c94c", ' fill-opacity="0.25"')  # fmt: skip

    end = rec.ended - t0
    for i, (t, vip, dip) in enumerate(rec.holdings):
        until = rec.holdings[i + 1][0] - t0 if i + 1 < len(rec.holdings) else end
        for n in vip:
            svg.span(t - t0, until, lanes_top + nodes.index(n) * (2 * (LANE + 2) + 6), LANE,
                     NODE_COLOURS.get(n, "#555"))  # fmt: skip
        for n in dip:
            ny = lanes_top + nodes.index(n) * (2 * (LANE + 2) + 6) + LANE + 2
            svg.span(t - t0, until, ny, LANE, NODE_COLOURS.get(n, "#555"))
    for i, (t, leader) in enumerate(rec.leaders):
        until = rec.leaders[i + 1][0] - t0 if i + 1 < len(rec.leaders) else end
        if leader:
            svg.span(t - t0, until, leader_y, LANE, NODE_COLOURS.get(leader, "#555"))
            svg.text(svg.x(t - t0) + 3, leader_y + LANE - 5, leader, 11, ' fill="white"')

    tick = rec.options.interval
    by_director: dict[str, list[float]] = {}
    by_outcome: dict[str, list[float]] = {k: [] for k, _, _ in OUTCOME_ROWS}
    for r in rec.requests:
        by_outcome[r.outcome if r.outcome in by_outcome else "error"].append(r.sent - t0)
        if r.director:
            by_director.setdefault(r.director, []).append(r.sent - t0)
    for director, times in by_director.items():
        for a, b in _spans(times, tick):
            svg.span(a, b, taken_y, LANE, NODE_COLOURS.get(director, "#555"))
    for key, _, colour in OUTCOME_ROWS:
        for a, b in _spans(by_outcome[key], tick):
            svg.span(a, b, outcome_y[key], LANE, colour)

    for i, res in enumerate(rec.results):
        x = svg.x(res.started - t0)
        svg.line(x, top + 4, x, bottom, "#333", ' stroke-dasharray="3,3"')
        label = f"{i + 1}. {res.step.title}" + ("" if res.ok else " (NOT AS EXPECTED)")
        svg.text(x + 3, top + 12 + (i % 4) * 15, label, 11)
        if res.gap >= 0.1:
            gx = svg.x(res.gap_began - t0)
            svg.line(gx, gaps_y - 10, svg.x(res.gap_began - t0 + res.gap), gaps_y - 10, "#d62728",
                     ' stroke-width="3"')  # fmt: skip
            svg.text(gx, gaps_y + 4 + (i % 2) * 13, f"gap {res.gap:.2f} s", 11,
                     ' fill="#d62728"')  # fmt: skip

    # time axis
    span = svg.end - svg.start
    step = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300) if span / s <= 25)
    t = (int(svg.start) // step) * step
    axis_y = bottom + 8
    svg.line(LEFT, axis_y, WIDTH - 20, axis_y, "#333")
    while t <= svg.end:
        if t >= svg.start:
            svg.line(svg.x(t), axis_y, svg.x(t), axis_y + 5, "#333")
            svg.text(svg.x(t) - 6, axis_y + 18, f"{t:g}", 11)
        t += step
    svg.text(WIDTH - 60, axis_y + 32, "time (s)", 11)

    # legend
    ly = axis_y + 48
    lx = float(LEFT)
    for name in nodes:
        svg.rect(lx, ly - 10, 12, 12, NODE_COLOURS.get(name, "#555"))
        svg.text(lx + 16, ly, name, 12)
        lx += 80
    for _, label, colour in OUTCOME_ROWS:
        svg.rect(lx, ly - 10, 12, 12, colour)
        svg.text(lx + 16, ly, label, 12)
        lx += 150
    svg.rect(lx, ly - 10, 12, 12, "#f2c94c", ' fill-opacity="0.4"')
    svg.text(lx + 16, ly, "a step settling: from its action to the expected outcome", 12)
    ly += 20
    lx = float(LEFT)
    verdict = "every step as expected" if rec.ok else "NOT every step as expected"
    svg.text(lx + 10, ly, verdict, 12, ' font-weight="bold"')

    height = ly + 16
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="white"/>'
    )
    return head + "\n".join(svg.parts) + "</svg>\n"


def write_chart(rec: LabRecord, path: Path) -> None:
    path.write_text(render_chart(rec))
