#!/usr/bin/env python3
"""A TCP proxy for fault injection (standard library only): one per node's Redis link when
`scripts/cluster up --redis-proxies` runs, so the chaos checker can cut a node off Redis
while its players stay connected; and one in front of HAProxy for the chaos checker's slow
clients.

    python3 scripts/tcp-proxy.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
        [--slow-bytes-per-sec N]

Signals (sent with `scripts/cluster signal NAME SIG`):
    USR1  black hole: from now on nothing is forwarded in either direction; the proxy stops
          reading, so bytes wait in the kernel's buffers and the peers see silence, as in a
          network partition (connections stay open, new ones are accepted and held)
    HUP   heal: forward again; what waited is delivered late, as TCP would after a
          partition heals (unless a peer gave up on the connection meanwhile)
    USR2  reset: close every current connection with a TCP RST (new ones are forwarded)
    TTIN  slow: from now on the downstream direction (upstream -> client) is forwarded at
          --slow-bytes-per-sec (default 1024), as to a client on a bad link that reads slowly
    TTOU  fast again
    TERM  stop
"""

import argparse
import asyncio
import signal
import socket
import struct
import sys


class Proxy:
    def __init__(self, upstream):
        self.upstream = upstream
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.slow = False
        self.slow_rate = 1024
        self.conns = set()  # (client writer, upstream writer)

    async def serve(self, reader, writer):
        host, port = self.upstream
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            abort(writer)
            return
        pair = (writer, up_writer)
        self.conns.add(pair)
        try:
            await asyncio.gather(self.pump(reader, up_writer), self.pump(up_reader, writer, downstream=True))
        finally:
            self.conns.discard(pair)
            for w in pair:
                w.close()

    async def pump(self, reader, writer, downstream=False):
        try:
            while True:
                await self.flowing.wait()
                if downstream and self.slow:
                    # A tenth of a second's worth at a time.
                    chunk = max(1, self.slow_rate // 10)
                    data = await reader.read(chunk)
                    if data:
                        await asyncio.sleep(len(data) / self.slow_rate)
                else:
                    data = await reader.read(65536)
                if not data:
                    break
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

    def reset_all(self):
        for pair in list(self.conns):
            for w in pair:
                abort(w)
        self.conns.clear()


def abort(writer):
    """Closes with RST: SO_LINGER on with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, type=addr)
    ap.add_argument("--upstream", required=True, type=addr)
    ap.add_argument("--slow-bytes-per-sec", type=int, default=1024)
    args = ap.parse_args()
    proxy = Proxy(args.upstream)
    proxy.slow_rate = max(1, args.slow_bytes_per_sec)
    server = await asyncio.start_server(proxy.serve, *args.listen)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def say(msg):
        print(f"tcp-proxy {args.listen[1]}: {msg}", file=sys.stderr, flush=True)

    def set_blackhole(on):
        if on:
            proxy.flowing.clear()
        else:
            proxy.flowing.set()
        say("black hole" if on else "healed")

    loop.add_signal_handler(signal.SIGUSR1, set_blackhole, True)
    loop.add_signal_handler(signal.SIGHUP, set_blackhole, False)
    loop.add_signal_handler(signal.SIGUSR2, lambda: (proxy.reset_all(), say("reset")))

    def set_slow(on):
        proxy.slow = on
        say(f"slow ({proxy.slow_rate} B/s downstream)" if on else "fast")

    loop.add_signal_handler(signal.SIGTTIN, set_slow, True)
    loop.add_signal_handler(signal.SIGTTOU, set_slow, False)
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    say(f"forwarding to {args.upstream[0]}:{args.upstream[1]}")
    async with server:
        await stop
    proxy.reset_all()


if __name__ == "__main__":
    asyncio.run(main())
