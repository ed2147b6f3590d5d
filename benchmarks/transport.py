"""Transport: hook (FrameSender) -> daemon-side ingest, against bare pyzmq PUSH/PULL.

Both sides run in separate processes, over ipc:// and tcp:// loopback, with the
same 2048x2048 uint16 frames. The baseline is the best ZeroMQ can do: zero-copy
PUSH/PULL with no protocol, no validation, no acks. The lowdose figure includes
everything the real path does on the wire: msgpack header, validation of every
message (`protocol.decode`), acks, the credit window, the keep-until-acked
bookkeeping. The receiver does not write to disk (that is `raw_path.py`).

    python benchmarks/transport.py --frames 400
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import numpy as np
import zmq

SHAPE = (2048, 2048)


def _frames(n_unique: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(100 + rng.poisson(10, SHAPE)).astype(np.uint16) for _ in range(n_unique)]


# -- baseline: bare PUSH/PULL ---------------------------------------------------------


def _bare_sink(endpoint: str, n: int, out: mp.Queue) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 8)
    s.bind(endpoint)
    out.put("ready")
    s.recv(copy=False)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        s.recv(copy=False)
    out.put(time.perf_counter() - t0)
    s.close(linger=0)
    ctx.term()


def bare(endpoint: str, n: int) -> float:
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=_bare_sink, args=(endpoint, n, out))
    proc.start()
    out.get()
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 8)
    s.connect(endpoint)
    frames = _frames()
    for i in range(n):
        s.send(frames[i % len(frames)], copy=False)
    elapsed = out.get()
    proc.join()
    s.close(linger=0)
    ctx.term()
    return (n - 1) / elapsed


# -- lowdose: FrameSender -> validating, acking ROUTER --------------------------------


def _ingest_sink(endpoint: str, n: int, out: mp.Queue) -> None:
    from lowdose.wire.protocol import Ack, Frame, Start, decode, encode, ranges_from_seqs

    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.RCVHWM, 16)
    s.bind(endpoint)
    out.put("ready")
    got: set[int] = set()
    t0 = None
    while len(got) < n:
        # like the daemon's write loop: take what has arrived, then one ack for the batch
        batch: dict[bytes, list[int]] = {}
        flags = 0
        for _ in range(32):
            try:
                ident, *parts = s.recv_multipart(flags, copy=False)
            except zmq.Again:
                break
            flags = zmq.NOBLOCK
            msg, payload = decode(parts)
            if isinstance(msg, Start):
                s.send_multipart([ident.bytes, *encode(Ack(run=msg.run, ranges=[]))])
            elif isinstance(msg, Frame):
                if t0 is None:
                    t0 = time.perf_counter()
                got.add(msg.seq)
                batch.setdefault(ident.bytes, []).append(msg.seq)
        for ident_b, seqs in batch.items():
            s.send_multipart([ident_b, *encode(Ack(run="bench", ranges=ranges_from_seqs(seqs)))])
    out.put(time.perf_counter() - t0)
    # keep answering (End and stragglers) until the sender is done
    end = time.monotonic() + 5
    while time.monotonic() < end and s.poll(500):
        ident, *parts = s.recv_multipart()
        msg, _ = decode(parts)
        if msg.kind == "end":
            s.send_multipart([ident, *encode(Ack(run=msg.run, ranges=ranges_from_seqs(list(got)), finished=True))])
            break
    s.close(linger=0)
    ctx.term()


def hooked(endpoint: str, n: int, spool: str, window: int = 8) -> float:
    from lowdose.wire.hook_config import HookConfig
    from lowdose.wire.protocol import FrameIndex, Start
    from lowdose.plugins.acquisition.sender import FrameSender

    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=_ingest_sink, args=(endpoint, n, out))
    proc.start()
    out.get()
    cfg = HookConfig(endpoint=endpoint, spool_dir=spool, memory_mb=16384, window_frames=window)
    sender = FrameSender(cfg, Start(run="bench", shape=SHAPE, dtype="uint16"))
    sender.start()
    frames = _frames()
    # all frames queued at once (references to a few arrays, so no RAM is used up):
    # the figure is then the sender thread's own pace, like the bare PUSH loop's
    for i in range(n):
        sender.submit(frames[i % len(frames)], FrameIndex(t=i))
    elapsed = out.get()
    sender.close(timeout=10)
    proc.join()
    return (n - 1) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--window", type=int, default=8, help="hook.window_frames")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    args = ap.parse_args()
    mb = SHAPE[0] * SHAPE[1] * 2 / 1e6
    tmp = tempfile.mkdtemp(prefix="lowdose-bench-")
    print(f"window {args.window} frames, median of {args.repeats} interleaved repeats")
    print(f"{args.frames} frames of {SHAPE[0]}x{SHAPE[1]} uint16 ({mb:.1f} MB each)")
    print(f"{'transport':10s} {'bare fps':>9s} {'bare MB/s':>10s} {'hook fps':>9s} {'hook MB/s':>10s} {'ratio':>6s}")
    ratios: dict[str, float] = {}
    for name, ep in (("ipc", f"ipc://{tmp}/t.sock"), ("tcp", "tcp://127.0.0.1:5599")):
        bs, hs = [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            bs.append(bare(ep, args.frames))
            hs.append(hooked(ep.replace("t.sock", "h.sock").replace("5599", "5598"), args.frames,
                             f"{tmp}/spool", args.window))
        b, h = float(np.median(bs)), float(np.median(hs))
        print(f"{name:10s} {b:9.1f} {b * mb:10.0f} {h:9.1f} {h * mb:10.0f} {h / b:6.2f}")
        ratios[name] = h / b
    print(f"transport: {ratios['ipc']:.2f} hook/bare frames/s over ipc (tcp {ratios['tcp']:.2f}); target >= 0.9")


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
