#!/usr/bin/env python3
"""Counts the HTTP/2 frames on the wire, for the h2 scenario of .ci/reliability.sh.

    h2frames.py capture PORT PCAP   capture TCP to and from 127.0.0.1:PORT on the loopback
                                    until SIGTERM or SIGINT, write it to PCAP, then count
    h2frames.py count PCAP PORT     count a capture written before (or by tcpdump -w)

`capture` reads the loopback through an AF_PACKET socket (root or CAP_NET_RAW) and says
"h2frames: capturing" on stderr once it does. On SIGTERM it reads on until every
connection it saw has ended both ways (FIN or RST; at most STOP_WAIT seconds: the last
packets of a connection may still be on their way through the loopback), then what the
kernel still holds for it. Its socket buffer is made large enough to hold a whole round
even if this process gets no CPU, and the kernel's drop count is reported (`dropped`).

Counting: every TCP connection to PORT is reassembled in both directions from its SYN,
and its HTTP/2 frames (cleartext, prior knowledge) are decoded from their 9-octet frame
headers (RFC 9113 section 4.1: a frame's type is a number on the wire, so nothing here
depends on the wording of any program's log). One `name=value` line a figure:

    captured, dropped     packets captured; packets the kernel dropped (capture only)
    connections           TCP connections to PORT seen whole (see problems)
    c2s.TYPE, s2c.TYPE    frames of TYPE (DATA, HEADERS, RST_STREAM, GOAWAY, ...) sent by
                          the client, by the server
    streams_opened        streams the client opened (a HEADERS frame on a new stream id)
    streams_completed     ... whose response the server ended (END_STREAM on HEADERS/DATA)
    streams_reset         ... reset by the server (RST_STREAM), whatever the error code
    streams_above_goaway  ... not ended nor reset, with an id above the last stream id of
                          the server's final GOAWAY on that connection (declared
                          unprocessed: retryable)
    streams_unanswered    ... neither ended nor reset nor above the GOAWAY: cut by a
                          closed connection
    goaway_errors         GOAWAY frames from the server with an error code other than 0
    problems              connections that cannot be counted: seen without their SYN or
                          their end (FIN or RST) in both directions, a gap in a byte
                          stream, no client preface, bytes after the last whole frame;
                          each is described on stderr

Exit status 0 when the counts were printed (problems may still be > 0), 2 when not.
"""

import signal
import socket
import struct
import sys
import time
from collections import defaultdict

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_TYPES = [
    "DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS",
    "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION",
]
END_STREAM = 0x1
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_STATISTICS, PACKET_OUTGOING = 263, 6, 4
SO_RCVBUFFORCE = 33
CAPTURE_BUFFER = 256 << 20  # kernel memory charged per packet: a round needs tens of MB
STOP_WAIT = 3.0


# --- capture ------------------------------------------------------------------------------

def capture(port, path):
    """Captures Ethernet frames on lo until SIGTERM/SIGINT; writes them to a pcap file."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CAPTURE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_BUFFER)
    sock.bind(("lo", 0))
    sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # (reading them resets them)
    sock.settimeout(0.05)
    print("h2frames: capturing", file=sys.stderr, flush=True)
    records = []
    open_ends = {}  # client port -> the directions not ended yet ({"c2s", "s2c"})

    def keep(frame, addr):
        # The loopback hands every packet to the socket twice: once going out, once in.
        if addr[2] == PACKET_OUTGOING or len(frame) < 54 or frame[12:14] != b"\x08\x00":
            return
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 6:
            return
        sport, dport = struct.unpack("!HH", frame[14 + ihl:14 + ihl + 4])
        if port not in (sport, dport):
            return
        records.append((time.time(), frame))
        flags = frame[14 + ihl + 13]
        client, side = (sport, "c2s") if dport == port else (dport, "s2c")
        if flags & TCP_SYN and not flags & 0x10:  # a SYN without ACK: a new connection
            open_ends[client] = {"c2s", "s2c"}
        if client in open_ends:
            if flags & TCP_RST:
                open_ends[client].clear()
            elif flags & TCP_FIN:
                open_ends[client].discard(side)

    while not stop:
        try:
            keep(*sock.recvfrom(1 << 18))
        except (socket.timeout, InterruptedError):
            pass
    deadline = time.monotonic() + STOP_WAIT
    while any(open_ends.values()) and time.monotonic() < deadline:
        try:
            keep(*sock.recvfrom(1 << 18))
        except (socket.timeout, InterruptedError):
            pass
    sock.setblocking(False)
    while True:  # what the kernel queued before the signal
        try:
            keep(*sock.recvfrom(1 << 18))
        except (BlockingIOError, InterruptedError):
            break
    _, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    sock.close()
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 18, 1))
        for ts, frame in records:
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)))
            f.write(frame)
    return len(records), dropped


# --- reading a capture ---------------------------------------------------------------------

def packets(path):
    """Yields the IPv4 or IPv6 packet of every record in a classic pcap file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError("not a pcap file (too short)")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a classic pcap file (pcapng is not read)")
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    pos = 24
    while pos + 16 <= len(data):
        _, _, incl, orig = struct.unpack(endian + "IIII", data[pos:pos + 16])
        pos += 16
        frame = data[pos:pos + incl]
        pos += incl
        if incl < orig:
            raise ValueError("a packet was truncated by the snapshot length")
        if linktype == 1:  # Ethernet (what Linux gives for lo)
            ethertype, payload = struct.unpack("!H", frame[12:14])[0], frame[14:]
        elif linktype == 113:  # Linux cooked v1
            ethertype, payload = struct.unpack("!H", frame[14:16])[0], frame[16:]
        elif linktype == 276:  # Linux cooked v2
            ethertype, payload = struct.unpack("!H", frame[0:2])[0], frame[20:]
        elif linktype in (12, 101):  # raw IP
            ethertype = 0x86DD if frame and frame[0] >> 4 == 6 else 0x0800
            payload = frame
        else:
            raise ValueError(f"link type {linktype} is not read")
        if ethertype in (0x0800, 0x86DD):
            yield payload


def tcp_segments(path):
    """Yields ((src, sport), (dst, dport), seq, flags, payload) for every TCP segment."""
    for ip in packets(path):
        version = ip[0] >> 4
        if version == 4:
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            if ip[9] != 6:
                continue
            src, dst = ip[12:16], ip[16:20]
            tcp = ip[ihl:total]
        elif version == 6:
            if ip[6] != 6:  # extension headers are not expected on the loopback
                continue
            plen = struct.unpack("!H", ip[4:6])[0]
            src, dst = ip[8:24], ip[24:40]
            tcp = ip[40:40 + plen]
        else:
            continue
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        offset = (tcp[12] >> 4) * 4
        yield (src, sport), (dst, dport), seq, tcp[13], tcp[offset:]


class Direction:
    """One direction of a TCP connection: its bytes, placed by sequence number."""

    def __init__(self):
        self.isn = None
        self.segments = []  # (seq, payload)
        self.ended = False  # FIN or RST seen

    def add(self, seq, flags, payload):
        if flags & TCP_SYN:
            self.isn = seq
        if flags & (TCP_FIN | TCP_RST):
            self.ended = True
        if payload:
            self.segments.append((seq, payload))

    def stream(self):
        """The reassembled bytes, or None and why."""
        if self.isn is None:
            return None, "no SYN"
        out = bytearray()
        placed = sorted(((seq - self.isn - 1) % (1 << 32), p) for seq, p in self.segments)
        for off, payload in placed:
            if off > len(out):
                return None, f"gap at byte {len(out)}"
            out += payload[len(out) - off:]
        if not self.ended:
            return None, "no FIN or RST"
        return bytes(out), None


def frames(data):
    """Yields (type, flags, stream_id, payload) for every whole frame in data."""
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if pos + 9 + length > len(data):
            break
        stream = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        yield data[pos + 3], data[pos + 4], stream, data[pos + 9:pos + 9 + length]
        pos += 9 + length


def whole_frames_length(data):
    """How many bytes of data are whole frames."""
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if pos + 9 + length > len(data):
            break
        pos += 9 + length
    return pos


def type_name(ftype):
    return FRAME_TYPES[ftype] if ftype < len(FRAME_TYPES) else f"TYPE_{ftype}"


def count(path, port):
    """The figures described at the top, as a dict."""
    conns = defaultdict(lambda: (Direction(), Direction()))  # client -> (c2s, s2c)
    for src, dst, seq, flags, payload in tcp_segments(path):
        if dst[1] == port:
            conns[src][0].add(seq, flags, payload)
        elif src[1] == port:
            conns[dst][1].add(seq, flags, payload)

    counts = defaultdict(int)
    for client, (c2s, s2c) in sorted(conns.items()):
        name = f"connection from port {client[1]}"
        up, why_up = c2s.stream()
        down, why_down = s2c.stream()
        if up is None or down is None:
            counts["problems"] += 1
            print(f"h2frames: {name}: client side {why_up or 'ok'}, server side "
                  f"{why_down or 'ok'}", file=sys.stderr)
            continue
        if not up.startswith(PREFACE):
            counts["problems"] += 1
            print(f"h2frames: {name}: no HTTP/2 client preface", file=sys.stderr)
            continue
        up = up[len(PREFACE):]
        counts["connections"] += 1
        opened, ended, reset = set(), set(), set()
        last_goaway = None
        for ftype, _, stream, _ in frames(up):
            counts["c2s." + type_name(ftype)] += 1
            if ftype == 1 and stream % 2 == 1:
                opened.add(stream)
        for ftype, fflags, stream, payload in frames(down):
            counts["s2c." + type_name(ftype)] += 1
            if ftype in (0, 1) and fflags & END_STREAM:
                ended.add(stream)
            elif ftype == 3:
                reset.add(stream)
            elif ftype == 7:
                last_goaway = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
                if int.from_bytes(payload[4:8], "big") != 0:
                    counts["goaway_errors"] += 1
        trailing_up = len(up) - whole_frames_length(up)
        trailing_down = len(down) - whole_frames_length(down)
        if trailing_up or trailing_down:
            counts["problems"] += 1
            print(f"h2frames: {name}: {trailing_up} client and {trailing_down} server bytes "
                  "after the last whole frame", file=sys.stderr)
        unended = opened - ended - reset
        above = {s for s in unended if last_goaway is not None and s > last_goaway}
        counts["streams_opened"] += len(opened)
        counts["streams_completed"] += len(opened & ended)
        counts["streams_reset"] += len(opened & reset)
        counts["streams_above_goaway"] += len(above)
        counts["streams_unanswered"] += len(unended - above)
    return counts


def main():
    args = sys.argv[1:]
    counts = defaultdict(int)
    try:
        if len(args) == 3 and args[0] == "capture":
            port, path = int(args[1]), args[2]
            counts["captured"], counts["dropped"] = capture(port, path)
        elif len(args) == 3 and args[0] == "count":
            path, port = args[1], int(args[2])
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
        counts.update(count(path, port))
    except (OSError, ValueError, struct.error, IndexError) as e:
        print(f"h2frames: {e}", file=sys.stderr)
        return 2
    fixed = ["captured", "dropped", "connections", "streams_opened", "streams_completed",
             "streams_reset", "streams_above_goaway", "streams_unanswered", "goaway_errors",
             "problems"]
    lines = [f"{key}={counts[key]}" for key in fixed]
    lines += [f"{side}.{t}={counts[side + '.' + t]}" for side in ("c2s", "s2c") for t in FRAME_TYPES]
    lines += [f"{k}={v}" for k, v in sorted(counts.items()) if k not in fixed
              and k.split(".", 1)[-1] not in FRAME_TYPES]  # frame types with no name
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
