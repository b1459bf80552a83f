#!/usr/bin/env python3
"""Network faults (SPEC B64): the demo drains through loss, rate limits, delay, jitter,
stalls and clients that vanish, and every deadline holds.

    faults.py DEMO [--rounds N]

The demo runs in a network namespace made here, reached over a veth pair from this host's
side, where the clients (and a fault-injecting TCP proxy) run:

    clients, faultproxy (host)  10.213.0.1 --veth-- 10.213.0.2  demo (namespace)

Faults: loss with nftables (`numgen random` drops, both ways, on the host's end of the
pair), a rate limit with `tbf` (both ways), delay, jitter and stalls with the proxy below
(the kernel may have no `netem`), and a client that vanishes: every packet to and from its
own source address (10.213.0.3 to .5) dropped.

Scenarios, each asserting its figures (one line per check, "FAIL" for a failed one):
  1. slow clients: 2% loss and 32 Mbit/s each way, stop timeout 6 s. The slow responses
     finish whole, and the downloads and uploads too but for two at most (loss can slow
     one past the deadline), which are then cut at the stop deadline, not before; two
     downloads too large for the deadline are cut, not before it; the report says
     forced, with as many connections as were cut, in 6 s and a little.
  2. vanished clients, stop timeout 3 s: one vanishes mid-download (the server's writes
     block on a full socket buffer), one mid-response (the handler sleeps), one while its
     keep-alive connection is idle; a well-behaved request finishes; the report says
     forced, 2 connections and 2 requests, the process is gone by the stop deadline and a
     little (not the kill deadline).
  3. delay, jitter and stalls through the proxy, with 1% loss, stop timeout 8 s: every
     request finishes whole and the report says drained.
In each, the demo exits 0 and its report counts the connections and requests there were
at drain start.

Needs root, `ip` (iproute2), `nft` (nftables) and `tc`. Where the machine does not let
it make a namespace (permission denied), the whole suite says why and skips; any other
failure to make one is a failure. Where tc lacks `tbf`, scenario 1 runs without the rate
limit (and with downloads too large for any link) and says so. Everything made here
(namespace, veth pair, nft table, demo processes) is removed on exit, on SIGTERM too, and
by the next run if a run was killed; one run at a time on a machine. Every wait is
bounded; a wait that times out is a failed check.
"""

import argparse
import asyncio
import random
import re
import signal
import socket
import subprocess
import sys
import time

TABLE = "httpdown_faults"
HOST_IP, NS_IP = "10.213.0.1", "10.213.0.2"
VANISH_IPS = ["10.213.0.3", "10.213.0.4", "10.213.0.5"]
PORT = 8080
CHUNK = 64 * 1024


def log(message):
    print(message, flush=True)


def run(*args, check=True, ns=None):
    """Runs a command (in the namespace with ns=NAME); returns its result."""
    if ns:
        args = ("ip", "netns", "exec", ns) + args
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result


class Net:
    """The namespace, the veth pair and the fault knobs."""

    # Fixed names: what a run killed before its cleanup left behind is removed by the
    # next (one run at a time on a machine).
    ns, host_if, ns_if = "httpdown-faults", "hdfaults0", "hdfaults1"

    def __init__(self):
        self.made = False
        self.tbf = True

    def make(self):
        """Makes the namespace and the pair; False if the machine does not let us."""
        self.remove(leftovers=True)
        made = run("ip", "netns", "add", self.ns, check=False)
        if made.returncode != 0:
            if "Operation not permitted" in made.stderr or "Permission denied" in made.stderr:
                self.denied = made.stderr.strip()
                return False
            raise RuntimeError(f"ip netns add {self.ns}: {made.stderr.strip()}")
        self.made = True
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.ns)
        run("ip", "addr", "add", f"{HOST_IP}/24", "dev", self.host_if)
        for ip in VANISH_IPS:
            run("ip", "addr", "add", f"{ip}/24", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "addr", "add", f"{NS_IP}/24", "dev", self.ns_if, ns=self.ns)
        run("ip", "link", "set", self.ns_if, "up", ns=self.ns)
        run("ip", "link", "set", "lo", "up", ns=self.ns)
        return True

    def remove(self, leftovers=False):
        run("nft", "delete", "table", "inet", TABLE, check=False)
        if self.made or leftovers:
            # Deleting the namespace deletes the pair (and its addresses) too.
            run("ip", "link", "del", self.host_if, check=False)
            run("ip", "netns", "del", self.ns, check=False)
            self.made = False

    def faults(self, loss_per_mille=0, rate=None):
        """Sets loss (both ways) and a rate limit (both ways), replacing earlier ones."""
        run("nft", "delete", "table", "inet", TABLE, check=False)
        rules = ""
        if loss_per_mille:
            rules = (
                f'iifname "{self.host_if}" numgen random mod 1000 < {loss_per_mille} drop\n'
                f'oifname "{self.host_if}" numgen random mod 1000 < {loss_per_mille} drop\n'
            )
        ruleset = (
            f"table inet {TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept;\n"
            f"    {rules.splitlines()[0] if rules else ''}\n  }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept;\n"
            f"    {rules.splitlines()[1] if rules else ''}\n  }}\n"
            f"}}\n"
        )
        subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
        for dev, ns in ((self.host_if, None), (self.ns_if, self.ns)):
            run("tc", "qdisc", "del", "dev", dev, "root", check=False, ns=ns)
            if rate and self.tbf:
                run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "32kb", "latency", "200ms", ns=ns)

    def vanish(self, ip):
        """Every packet to and from ip is dropped from now on."""
        run("nft", "add", "rule", "inet", TABLE, "input", "ip", "daddr", ip, "drop")
        run("nft", "add", "rule", "inet", TABLE, "output", "ip", "saddr", ip, "drop")


# --- HTTP/1.1 clients ------------------------------------------------------------------


class Job:
    """One request on its own connection, and what its client saw."""

    def __init__(self, name, method, path, upload=0, src=None, expect=None):
        self.name, self.method, self.path = name, method, path
        self.upload, self.src, self.expect = upload, src, expect
        self.first_byte = None  # when the first response byte came
        self.end = None  # when the response ended, or the connection did
        self.received = 0  # body bytes
        self.body = b""  # the first 4 KiB of the body
        self.complete = False  # the body's framing ended (and it was what was expected)
        self.error = None
        self.uploaded = 0
        self.reader = self.writer = None

    def head(self, keep_alive=False):
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: demo"]
        if self.upload:
            lines.append(f"Content-Length: {self.upload}")
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def connect(self, host, port):
        local = (self.src, 0) if self.src else None
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=local), 10
        )

    async def send(self, keep_alive=False):
        self.writer.write(self.head(keep_alive))
        await self.writer.drain()
        block = b"u" * 16384
        while self.uploaded < self.upload:
            n = min(len(block), self.upload - self.uploaded)
            self.writer.write(block[:n])
            await self.writer.drain()
            self.uploaded += n

    async def response(self, stop_after=None):
        """Reads one response; stop_after: return (without closing) once that many body
        bytes have come, leaving the rest unread."""
        r = self.reader
        head = await r.readuntil(b"\r\n\r\n")
        self.first_byte = time.monotonic()
        status = int(head.split(b" ", 2)[1])
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().lower()] = v.strip()
        self.status = status

        def take(data):
            if len(self.body) < 4096:
                self.body += data[: 4096 - len(self.body)]
            self.received += len(data)

        if b"content-length" in headers:
            left = int(headers[b"content-length"])
            while left:
                data = await r.read(min(left, 65536))
                if not data:
                    raise EOFError(f"closed with {left} bytes of the body unread")
                take(data)
                left -= len(data)
                if stop_after and self.received >= stop_after:
                    return
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await r.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                take(await r.readexactly(size))
                await r.readexactly(2)
                if stop_after and self.received >= stop_after:
                    return
        else:
            while data := await r.read(65536):
                take(data)
        self.complete = status == 200 and (self.expect is None or self.expect(self))
        if not self.complete and self.error is None:
            self.error = f"status {status}, body {self.body[:80]!r}"

    async def run(self, host, port):
        try:
            await self.connect(host, port)
            await self.send()
            await self.response()
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.end = time.monotonic()
            if self.writer:
                self.writer.close()


def sleeps(duration):
    """The sleep route's whole body for `duration`."""
    pattern = re.compile(
        rf"going to sleep {duration} with pid \d+\nslept {duration} with pid \d+\n".encode()
    )
    return lambda job: pattern.fullmatch(job.body) is not None


def sleep_job(name, duration, **kw):
    return Job(name, "GET", f"/?duration={duration}", expect=sleeps(duration), **kw)


def download_job(name, size, **kw):
    return Job(name, "GET", f"/download?size={size}",
               expect=lambda job: job.received == size, **kw)


def upload_job(name, size, **kw):
    return Job(name, "POST", "/?duration=0s", upload=size, expect=sleeps("0s"), **kw)


# --- a fault-injecting TCP proxy -------------------------------------------------------


class FaultProxy:
    """Forwards each connection to the demo in chunks of at most 16 KiB, each held
    `delay` plus a uniform `jitter`, reading the next only once the last is written; the
    server-to-client direction of a connection stalls once for `stall` seconds after its
    first 64 KiB, with probability `stall_p`. Its sockets' buffers are small (16 KiB), so
    that the server feels the delays and stalls as backpressure rather than handing a
    whole response to the kernel. Connections: counted; the ones whose upstream connect
    failed too."""

    BUFFER = 16384

    def __init__(self, delay, jitter, stall, stall_p, seed):
        self.delay, self.jitter, self.stall, self.stall_p = delay, jitter, stall, stall_p
        self.random = random.Random(seed)
        self.connections = self.connected = self.failed = self.stalls = 0
        self.tasks = set()

    def small(self, sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.BUFFER)
        return sock

    async def start(self):
        listening = self.small(socket.socket())
        listening.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(
            self.client, sock=listening, limit=self.BUFFER)
        self.port = listening.getsockname()[1]

    async def close(self):
        self.server.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)
        for task in self.tasks:
            task.cancel()

    async def pipe(self, reader, writer, stall_after=None):
        forwarded = 0
        stalled = stall_after is None
        try:
            while data := await reader.read(16384):
                await asyncio.sleep(self.delay + self.random.uniform(0, self.jitter))
                if not stalled and forwarded >= stall_after:
                    stalled = True
                    if self.random.random() < self.stall_p:
                        self.stalls += 1
                        await asyncio.sleep(self.stall)
                writer.write(data)
                await writer.drain()
                forwarded += len(data)
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()

    async def client(self, reader, writer):
        self.connections += 1
        self.tasks.add(asyncio.current_task())
        upstream = self.small(socket.socket())
        upstream.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(upstream, (NS_IP, PORT)), 5)
            up_reader, up_writer = await asyncio.open_connection(
                sock=upstream, limit=self.BUFFER)
            self.connected += 1
        except (OSError, asyncio.TimeoutError):
            self.failed += 1
            upstream.close()
            writer.close()
            self.tasks.discard(asyncio.current_task())
            return
        await asyncio.gather(
            self.pipe(reader, up_writer),
            self.pipe(up_reader, writer, stall_after=65536),
        )
        writer.close()
        up_writer.close()
        self.tasks.discard(asyncio.current_task())


# --- the demo --------------------------------------------------------------------------


class Demo:
    running = []  # every demo started, killed at the end of its scenario if still up

    def __init__(self, binary, net, stop, kill):
        self.binary, self.net, self.stop, self.kill = binary, net, stop, kill

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.net.ns, self.binary,
            "--addr", f"{NS_IP}:{PORT}", "--stop-timeout", f"{self.stop}s",
            "--kill-timeout", f"{self.kill}s",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        Demo.running.append(self.proc)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        if not line.startswith(b"serving on "):
            raise RuntimeError(f"the demo did not start: {line!r}")
        self.stderr = asyncio.ensure_future(self.proc.stderr.read())

    async def terminate(self):
        """SIGTERM; returns (seconds to exit, exit status, report line)."""
        self.signalled = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        bound = self.stop + self.kill + 10
        try:
            status = await asyncio.wait_for(self.proc.wait(), bound)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            status = "killed after it did not exit"
        exited = time.monotonic() - self.signalled
        err = (await self.stderr).decode(errors="replace")
        report = next((l for l in err.splitlines() if l.startswith("shutdown ")), "")
        return exited, status, report


# --- checks ----------------------------------------------------------------------------


class Checks:
    def __init__(self):
        self.failed = []

    def __call__(self, ok, what):
        log(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)


def report_figures(report):
    """(kind, seconds, forced connections, forced requests, connections and requests at
    drain start) from the demo's report line."""
    kind = ("gave up" if report.startswith("shutdown gave up")
            else report.split(" ")[1] if report else "none")
    m = re.search(r" in ([\d.]+)(ms|s|µs)", report)
    seconds = float(m.group(1)) / {"ms": 1e3, "s": 1, "µs": 1e6}[m.group(2)] if m else -1
    forced = re.search(r"force-closed (\d+) connections? and (\d+) requests?", report)
    at = re.search(r"; (\d+) connections? and (\d+) requests? at drain start", report)
    f = tuple(int(x) for x in forced.groups()) if forced else (0, 0)
    a = tuple(int(x) for x in at.groups()) if at else (-1, -1)
    return kind, seconds, f, a


def check_demo(check, demo, exited, status, report, kind, forced, requests, connections):
    """The demo's exit and report: `forced` connections (with as many requests at most)
    closed at the stop deadline; at drain start, between `requests` (low, high) requests
    and between `connections` (low, high) connections, no fewer than the requests."""
    got_kind, seconds, got_forced, got_at = report_figures(report)
    log(f"  report: {report}")
    check(status == 0, f"exit status {status}")
    check(got_kind == kind, f"the report says {got_kind} (expected {kind})")
    # A response whose body had ended in the server while its last bytes were still in
    # the server's buffers is cut with its connection, but not counted as a request.
    check(got_forced[0] == forced and got_forced[1] <= forced,
          f"force-closed {got_forced} connections/requests (expected {forced} connections, "
          f"as many requests at most)")
    (low, high), (c_low, c_high) = requests, connections
    check(low <= got_at[1] <= high and max(c_low, got_at[1]) <= got_at[0] <= c_high,
          f"at drain start {got_at} connections/requests (expected {c_low} to {c_high} "
          f"connections, {low} to {high} requests)")
    if kind == "forced":
        check(demo.stop <= seconds <= demo.stop + 0.5,
              f"forced after {seconds:.3f} s (stop deadline {demo.stop} s)")
        check(exited <= demo.stop + 0.8,
              f"the process exited {exited:.3f} s after SIGTERM "
              f"(stop deadline {demo.stop} s, kill deadline {demo.kill} s later)")
    else:
        check(seconds < demo.stop, f"drained in {seconds:.3f} s (stop deadline {demo.stop} s)")
        check(exited < demo.stop + 0.5, f"the process exited {exited:.3f} s after SIGTERM")


def check_jobs(check, jobs, demo, may_cut=False):
    """Each job's response came whole or, with may_cut, was cut, but not before the stop
    deadline. Returns the jobs cut."""
    cut = []
    for job in jobs:
        took = job.end - demo.signalled
        detail = f"{job.received} bytes, ended {took:+.3f} s from SIGTERM"
        if job.complete:
            check(True, f"{job.name}: whole ({detail})")
        elif may_cut:
            cut.append(job)
            check(took >= demo.stop - 0.05,
                  f"{job.name}: cut not before the stop deadline ({detail}: {job.error})")
        else:
            check(False, f"{job.name}: whole ({detail}: {job.error})")
    return cut


async def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --- scenarios -------------------------------------------------------------------------


async def slow_clients(binary, net, check, rate_note):
    net.faults(loss_per_mille=20, rate="32mbit")
    log(f"  faults: 2% loss each way, {rate_note}")
    demo = Demo(binary, net, stop=6, kill=1)
    await demo.start()
    jobs = (
        [download_job(f"download 2 MiB #{i}", 2 << 20) for i in range(4)]
        + [upload_job(f"upload 4 MiB #{i}", 4 << 20) for i in range(4)]
        + [sleep_job(f"sleep 3s #{i}", "3s") for i in range(2)]
    )
    # Too large for the stop deadline (without a rate limit: far too large).
    size = 64 << 20 if net.tbf else 64 << 30
    huge = [download_job(f"download {size >> 20} MiB #{i}", size) for i in range(2)]
    tasks = [asyncio.ensure_future(j.run(NS_IP, PORT)) for j in jobs + huge]
    # Every request under way: responses begun, uploads well into their bodies.
    await wait_for(
        lambda: all(j.first_byte or j.uploaded >= 32768 or j.end for j in jobs + huge),
        20, "the requests to start")
    before = sum(1 for j in jobs + huge if j.end)
    exited, status, report = await demo.terminate()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    # Under loss a transfer too may be slow enough to be cut (two of eight at most): then
    # at the stop deadline, and counted in the report. The slow responses finish whole.
    sleeps = [j for j in jobs if j.method == "GET" and "duration" in j.path]
    transfers = [j for j in jobs if j not in sleeps]
    check_jobs(check, sleeps, demo)
    cut = check_jobs(check, transfers + huge, demo, may_cut=True)
    check(all(job in cut for job in huge), "the downloads too large for the deadline were cut")
    cut_transfers = len(cut) - len(huge)
    check(cut_transfers <= 2, f"transfers cut at the stop deadline: {cut_transfers} of 8 (2 at most)")
    # In flight at drain start: at least the requests cut at the deadline, at most those
    # whose response had not ended at the client. A connection may be there whose request
    # the server has not begun to read (a head delayed by loss).
    open_at_signal = len(jobs + huge) - before
    check_demo(check, demo, exited, status, report, "forced", len(cut),
               (len(cut), open_at_signal), (len(cut), open_at_signal))
    return {"requests": len(jobs + huge), "whole": len(jobs + huge) - len(cut),
            "report": report_figures(report)}


async def vanished_clients(binary, net, check):
    net.faults()
    demo = Demo(binary, net, stop=3, kill=1)
    await demo.start()
    ok = sleep_job("well-behaved sleep 1s", "1s")
    download = download_job("vanishes mid-download", 256 << 20, src=VANISH_IPS[0])
    sleeper = sleep_job("vanishes mid-response", "30s", src=VANISH_IPS[1])
    idle = sleep_job("vanishes while idle", "0s", src=VANISH_IPS[2])
    # The download and the sleeper stop reading part-way; the idle one after a whole
    # response on a keep-alive connection.
    for job, after in ((download, 1 << 20), (sleeper, 10)):
        await job.connect(NS_IP, PORT)
        await job.send()
        await asyncio.wait_for(job.response(stop_after=after), 10)
    await idle.connect(NS_IP, PORT)
    await idle.send(keep_alive=True)
    await asyncio.wait_for(idle.response(), 10)
    for ip in VANISH_IPS:
        net.vanish(ip)
    task = asyncio.ensure_future(ok.run(NS_IP, PORT))
    await wait_for(lambda: ok.first_byte, 10, "the well-behaved request")
    await asyncio.sleep(0.3)
    exited, status, report = await demo.terminate()
    await asyncio.wait_for(task, 10)
    for job in (download, sleeper, idle):
        job.writer.close()
    check_demo(check, demo, exited, status, report, "forced", 2, (3, 3), (4, 4))
    check_jobs(check, [ok], demo)
    return {"report": report_figures(report), "exited": exited}


async def delay_jitter_stalls(binary, net, check, seed):
    net.faults(loss_per_mille=10)
    proxy = FaultProxy(delay=0.01, jitter=0.04, stall=1.5, stall_p=0.5, seed=seed)
    await proxy.start()
    log("  faults: 1% loss each way; each 16 KiB delayed 10-50 ms; responses stall 1.5 s once, "
        "after their first 64 KiB, with probability 1/2")
    demo = Demo(binary, net, stop=8, kill=1)
    await demo.start()
    jobs = (
        [sleep_job(f"sleep 6s #{i}", "6s") for i in range(4)]
        + [download_job(f"download 2 MiB #{i}", 2 << 20) for i in range(4)]
        + [upload_job(f"upload 2 MiB #{i}", 2 << 20) for i in range(4)]
    )
    tasks = [asyncio.ensure_future(j.run("127.0.0.1", proxy.port)) for j in jobs]
    # Every connection through to the demo, every response begun or upload under way.
    await wait_for(lambda: proxy.connected >= len(jobs) and
                   all(j.first_byte or j.uploaded >= 65536 or j.end for j in jobs),
                   20, "the requests to start")
    await asyncio.sleep(0.2)
    answering = sum(1 for j in jobs if j.first_byte and not j.end)
    ended_before = sum(1 for j in jobs if j.end)
    exited, status, report = await demo.terminate()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await proxy.close()
    # At drain start: every connection, and at least the requests already answering (an
    # upload's head may still be on its way through the proxy).
    check(ended_before == 0, f"requests ended before SIGTERM: {ended_before} (0 expected)")
    check_demo(check, demo, exited, status, report, "drained", 0, (answering, 12), (12, 12))
    check_jobs(check, jobs, demo)
    check(proxy.failed == 0, f"the proxy's connects to the demo that failed: {proxy.failed}")
    log(f"  stalls: {proxy.stalls}")
    return {"requests": len(jobs), "whole": sum(j.complete for j in jobs),
            "report": report_figures(report), "stalls": proxy.stalls}


async def scenario(name, check, summary, coroutine):
    """Runs one scenario: what it raises (a wait that timed out, a tool that failed) is a
    failed check, and a demo it left running is killed."""
    log(f"\n-- {name}")
    try:
        summary.append((name, await coroutine))
    except (RuntimeError, OSError, asyncio.TimeoutError, EOFError) as e:
        check(False, f"{name}: {type(e).__name__}: {e}")
    finally:
        for proc in Demo.running:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        Demo.running.clear()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("demo")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    # SIGTERM or SIGINT: cancelled, so that the cleanup below runs.
    task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    net = Net()
    check = Checks()
    try:
        if not net.make():
            log(f"faults: SKIPPED: this machine does not let the suite make a network "
                f"namespace (it needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN): {net.denied}")
            return 0
        rate_note = "32 Mbit/s each way (tbf)"
        probe = run("tc", "qdisc", "add", "dev", net.host_if, "root", "tbf", "rate", "1mbit",
                    "burst", "32kb", "latency", "100ms", check=False)
        if probe.returncode != 0:
            net.tbf = False
            rate_note = f"no rate limit: SKIPPED, tc has no tbf here ({probe.stderr.strip()})"
        run("tc", "qdisc", "del", "dev", net.host_if, "root", check=False)
        summary = []
        for round_ in range(1, args.rounds + 1):
            await scenario(f"round {round_}: slow clients", check, summary,
                           slow_clients(args.demo, net, check, rate_note))
            await scenario(f"round {round_}: vanished clients", check, summary,
                           vanished_clients(args.demo, net, check))
            await scenario(f"round {round_}: delay, jitter, stalls", check, summary,
                           delay_jitter_stalls(args.demo, net, check, seed=round_))
        log("\nsummary:")
        for name, figures in summary:
            log(f"  {name}: {figures}")
    finally:
        for proc in Demo.running:
            if proc.returncode is None:
                proc.kill()
        net.remove()
    if check.failed:
        log(f"\nfaults: FAILED: {len(check.failed)} checks")
        for what in check.failed:
            log(f"  {what}")
        return 1
    log("\nfaults: all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except asyncio.CancelledError:
        log("faults: stopped by a signal (everything it made is removed)")
        sys.exit(143)
