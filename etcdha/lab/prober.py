"""The lab's client: an HTTP request through the VIP every 10 ms, every outcome recorded.

    ip netns exec <client> python -m etcdha.lab.prober --vip 192.0.2.200

Runs inside the client's namespace until SIGTERM or SIGINT. Each request is
started on schedule whether or not the previous ones have finished (a lost
SYN must not hold the next requests back) and gets ``--timeout`` to finish.
Each outcome is one JSON line on stdout::

    {"sent": 1700000000.123, "done": 1700000000.125, "outcome": "rs1",
     "detail": "", "port": 40312, "seq": 17}

``outcome`` is the real server named by the index page (``rs1``, ``rs2``),
``fallback`` (the director's "Sorry" page; ``detail`` names the director), or
``refused``, ``reset``, ``timeout``, ``error``. ``port`` is the client's port,
by which :mod:`etcdha.lab.capture` tells which director took the connection.
``seq`` numbers the requests in the order they were sent (from 0), so a
reader can tell which are still in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence

from etcdha.lab.webservers import FALLBACK_WORD

ERRORS = ("refused", "reset", "timeout", "error")


def classify(body: bytes) -> tuple[str, str]:
    """(outcome, detail): which real server's index page came, or the fallback page
    (detail: the director that served it)."""
    text = body.decode("latin-1")
    if FALLBACK_WORD in text:
        return "fallback", text.rsplit("fallback page of ", 1)[-1].split("<", 1)[0]
    for name in ("rs1", "rs2"):
        if f"<h1>{name}</h1>" in text:
            return name, ""
    return "error", text[:60]


async def probe_once(vip: str, port: int, limit: float, seq: int = 0) -> dict[str, object]:
    sent = time.time()
    outcome, detail, local = "error", "", 0
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(vip, port)
            local = writer.get_extra_info("sockname")[1]
            writer.write(f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
            body = await reader.read()
            outcome, detail = classify(body)
    except TimeoutError:
        outcome = "timeout"
    except ConnectionRefusedError:
        outcome = "refused"
    except ConnectionResetError:
        outcome = "reset"
    except OSError as e:
        outcome, detail = "error", str(e)
    finally:
        if writer is not None:
            writer.close()
    record: dict[str, object] = {
        "sent": round(sent, 4),
        "done": round(time.time(), 4),
        "outcome": outcome,
        "detail": detail,
        "port": local,
        "seq": seq,
    }
    return record


async def run(vip: str, port: int, interval: float, limit: float, count_max: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(seq: int) -> None:
        record = await probe_once(vip, port, limit, seq)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    start = loop.time()
    count = 0
    while not stop.is_set() and (count_max == 0 or count < count_max):
        task = asyncio.create_task(one(count))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        count += 1
        # On a fixed schedule; a late loop catches up rather than drifting.
        delay = max(0.0, start + count * interval - loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    if in_flight:
        await asyncio.wait(in_flight, timeout=limit + 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m etcdha.lab.prober",
        description="Send an HTTP request through the VIP every interval; "
        "print each outcome as a JSON line.",
    )
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args(argv)
    asyncio.run(run(args.vip, args.port, args.interval, args.timeout, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
