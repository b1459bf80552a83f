#!/usr/bin/env python3
"""A TCP load balancer whose endpoint list lags, as kube-proxy's does (B63).

    lagproxy.py LISTEN_PORT CONTROL_PORT BACKEND_PORT...

Listens on 127.0.0.1:LISTEN_PORT and sends each new client connection to the next
backend (127.0.0.1:BACKEND_PORT, round robin) that is in its endpoint list, piping bytes
both ways. A connect that fails is not retried: the client's connection is closed, and
the failure counted (what a client behind kube-proxy sees when it is sent to a pod that
no longer accepts).

On 127.0.0.1:CONTROL_PORT it takes one command per connection:
    leave INDEX SECONDS   the backend leaves the endpoint list SECONDS from now (the
                          endpoint update lags the pod's SIGTERM by that long)
    join INDEX            the backend is in the list again (a pending leave is dropped)
and answers "ok". On SIGTERM it prints "connections=N failed=M" (M: connects that
failed, by backend as failed.INDEX=K) on stdout and exits.

Only 127.0.0.1 is used.
"""

import asyncio
import signal
import sys


async def main() -> None:
    listen_port, control_port = int(sys.argv[1]), int(sys.argv[2])
    backends = [int(p) for p in sys.argv[3:]]
    routable = [True] * len(backends)
    leaving = [None] * len(backends)
    failed = [0] * len(backends)
    state = {"next": 0, "connections": 0}
    loop = asyncio.get_running_loop()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                writer.close()

    async def client(reader, writer):
        state["connections"] += 1
        candidates = [i for i in range(len(backends)) if routable[i]]
        if not candidates:
            writer.close()
            return
        index = candidates[state["next"] % len(candidates)]
        state["next"] += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", backends[index]), timeout=5
            )
        except (OSError, asyncio.TimeoutError):
            failed[index] += 1
            writer.transport.abort()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        writer.close()
        up_writer.close()

    async def control(reader, writer):
        words = (await reader.readline()).decode().split()
        if words[:1] == ["leave"]:
            index, lag = int(words[1]), float(words[2])
            leaving[index] = loop.call_later(lag, lambda: routable.__setitem__(index, False))
        elif words[:1] == ["join"]:
            index = int(words[1])
            if leaving[index] is not None:
                leaving[index].cancel()
                leaving[index] = None
            routable[index] = True
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(client, "127.0.0.1", listen_port, backlog=1024)
    controller = await asyncio.start_server(control, "127.0.0.1", control_port)
    print("lagproxy: listening", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    controller.close()
    parts = " ".join(f"failed.{i}={n}" for i, n in enumerate(failed))
    print(f"connections={state['connections']} failed={sum(failed)} {parts}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
