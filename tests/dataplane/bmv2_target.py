"""bmv2 adapter for the data-plane cases (docs/dataplane-tests.md).

Creates a network namespace with veth pairs ``h<p>``/``s<p>`` for every port,
starts ``simple_switch_grpc --priority-queues 8`` inside it on the ``s<p>`` ends
(gRPC on a unix socket, reachable from any namespace), pushes mfs.json + the
P4Info over P4Runtime (a minimal client on finsy's stubs, below), and sends and
receives frames with AF_PACKET sockets opened inside the namespace.
The level of an output copy is recovered from the MfsEgress.queue_counter delta
of its port. ``close()`` stops bmv2 and deletes the namespace (veths go with it).
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from finsy.proto import p4i, p4r, p4r_grpc
from google.protobuf import text_format

from mfs import levels
from mfs.p4info import CPU_PORT, P4Schema
from mfs.tools import find_tool
from topo.embedded.pipeline import stat_index
from topo.netns import keep_vlan_tags, recv_frame

CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
THRIFT_PORT = 9090  # inside the adapter's own netns, so it cannot collide with another bmv2
QUIET_S = 0.3      # no more output for this long = the packet's copies are all out
MAX_WAIT_S = 3.0   # generous: the machine is loaded


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _in_netns(ns: str, fn):
    """Run fn() on a thread that has joined network namespace ns; return its result."""
    box: dict = {}

    def body():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            box["v"] = fn()
        except BaseException as e:  # handed back to the caller
            box["e"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


class Bmv2Target:
    def __init__(self, bmv2_json: Path, p4info: Path, ports=(1, 2, 3, 4, 70), device_id: int = 1):
        self.exe = find_tool("simple_switch_grpc")
        if not self.exe:
            raise RuntimeError("simple_switch_grpc not found")
        self.schema = P4Schema.load(p4info)
        self._p4info_text = Path(p4info).read_text()
        self.json = Path(bmv2_json).read_bytes()
        self.ports, self.device_id = tuple(ports), device_id
        self.ns = f"mfsbm{os.getpid() % 100000}"
        self.tmp = Path(tempfile.mkdtemp(prefix="mfs-bmv2-"))
        self.proc = None
        self.channel = None
        self._digests: list[dict] = []
        self._groups: set[int] = set()
        self.idle_notifications: queue.Queue = queue.Queue()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        _run("ip", "netns", "add", self.ns)
        for p in self.ports:
            _run("ip", "-n", self.ns, "link", "add", f"h{p}", "type", "veth", "peer", "name", f"s{p}")
            for end in (f"h{p}", f"s{p}"):
                _run("ip", "-n", self.ns, "link", "set", end, "up")
                subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-q", "-w",
                                f"net.ipv6.conf.{end}.disable_ipv6=1"], capture_output=True)
        _run("ip", "-n", self.ns, "link", "set", "lo", "up")
        sock_path = self.tmp / "p4rt.sock"
        cmd = ["ip", "netns", "exec", self.ns, self.exe, "--no-p4", "--device-id", str(self.device_id)]
        for p in self.ports:
            cmd += ["-i", f"{p}@s{p}"]
        cmd += ["--thrift-port", str(THRIFT_PORT), "--", "--grpc-server-addr", f"unix://{sock_path}", "--priority-queues",
                str(levels.NUM_QUEUES), "--cpu-port", str(CPU_PORT)]
        self.log = open(self.tmp / "bmv2.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not sock_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simple_switch_grpc did not start: {(self.tmp / 'bmv2.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.address = f"unix://{sock_path}"   # P4Runtime, reachable from any namespace
        self.channel = grpc.insecure_channel(self.address)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self._requests: queue.Queue = queue.Queue()
        self._stream = self.stub.StreamChannel(iter(self._requests.get, None))
        self._requests.put(p4r.StreamMessageRequest(arbitration=p4r.MasterArbitrationUpdate(
            device_id=self.device_id, election_id=p4r.Uint128(high=0, low=1))))
        first = next(self._stream)
        if first.arbitration.status.code != 0:
            raise RuntimeError(f"not primary: {first.arbitration.status}")
        threading.Thread(target=self._read_stream, daemon=True).start()
        self.socks = _in_netns(self.ns, self._open_sockets)
        self.reset()

    def _open_sockets(self) -> dict:
        socks = {}
        for p in self.ports:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((f"h{p}", 0))
            keep_vlan_tags(s)  # the veth's rx VLAN offload strips the outer tag: ask for it back
            s.setblocking(False)
            socks[p] = s
        return socks

    def _read_stream(self) -> None:
        try:
            for msg in self._stream:
                if msg.HasField("idle_timeout_notification"):
                    self.idle_notifications.put(msg.idle_timeout_notification)
                if msg.HasField("digest"):
                    for data in msg.digest.data:
                        names = [m.name for m in self.schema.info.type_info.structs["mfs_miss_t"].members]
                        vals = [int.from_bytes(m.bitstring, "big") for m in data.struct.members]
                        self._digests.append(dict(zip(names, vals)))
                    self._requests.put(p4r.StreamMessageRequest(digest_ack=p4r.DigestListAck(
                        digest_id=msg.digest.digest_id, list_id=msg.digest.list_id)))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        if getattr(self, "_requests", None) is not None:
            self._requests.put(None)
        if self.channel is not None:
            self.channel.close()
        for s in getattr(self, "socks", {}).values():
            s.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def cli(self, commands: str) -> str:
        """Run simple_switch_CLI commands (Thrift: queue rates/depths, which P4Runtime lacks)
        against this switch; returns the CLI's output. RuntimeError says what is missing."""
        exe = find_tool("simple_switch_CLI")
        if exe is None:
            raise RuntimeError("simple_switch_CLI not found on PATH and $BMV2_CLI is not set")
        # the CLI's modules live next to bmv2's install: <prefix>/lib/python3.X/site-packages
        pydirs = sorted(Path(exe).resolve().parents[1].glob("lib/python3*/site-packages"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(d) for d in pydirs)}
        r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, exe, "--thrift-port", str(THRIFT_PORT)],
                           input=commands, capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0 or "Error" in r.stdout or "Could not connect" in r.stdout:
            raise RuntimeError(f"simple_switch_CLI failed ({r.returncode}): {r.stdout[-1500:]}{r.stderr[-1500:]}")
        return r.stdout

    # ------------------------------------------------------------ DataplaneTarget
    def reset(self) -> None:
        # Groups go first: a new pipeline resets PI's view of the replication engine but not
        # bmv2's, so a group left behind would replicate a second time next to a re-inserted one.
        for g in sorted(self._groups):
            self._write(p4r.Update.DELETE, p4r.Entity(packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
                multicast_group_entry=p4r.MulticastGroupEntry(multicast_group_id=g))))
        self._groups.clear()
        info = text_format.Parse(self._p4info_text, p4i.P4Info())
        self.stub.SetForwardingPipelineConfig(p4r.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, election_id=p4r.Uint128(high=0, low=1),
            action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
            config=p4r.ForwardingPipelineConfig(p4info=info, p4_device_config=self.json)))
        dg = self.schema.digest("mfs_miss_t")
        self._write(p4r.Update.INSERT, p4r.Entity(digest_entry=p4r.DigestEntry(
            digest_id=dg.id, config=p4r.DigestEntry.Config(max_timeout_ns=0, max_list_size=1,
                                                           ack_timeout_ns=1_000_000_000))))
        self._digests.clear()
        for s in self.socks.values():
            self._drain(s)

    def write(self, setup_items: list[dict]) -> None:
        for item in setup_items:
            if "register" in item:
                re_ = p4r.RegisterEntry(register_id=self.schema.register(item["register"]).id,
                                        index=p4r.Index(index=item["index"]))
                v = item["value"]
                re_.data.bitstring = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
                self._write(p4r.Update.MODIFY, p4r.Entity(register_entry=re_))
                continue
            if "multicast_group" in item:
                g = item["multicast_group"]
                grp = p4r.MulticastGroupEntry(multicast_group_id=g)
                for i, port in enumerate(item["ports"]):
                    grp.replicas.add(egress_port=port, instance=i + 1)
                self._write(p4r.Update.INSERT, p4r.Entity(
                    packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(multicast_group_entry=grp)))
                self._groups.add(g)
                continue
            default = item.get("default", False)
            te = self.schema.table_entry(item["table"], None if default else item.get("match"), item["action"],
                                         item.get("params"), item.get("priority", 0), default=default)
            te.idle_timeout_ns = item.get("idle_timeout_ns", 0)
            self._write(p4r.Update.MODIFY if default else p4r.Update.INSERT, p4r.Entity(table_entry=te))

    def _write(self, kind, entity) -> None:
        req = p4r.WriteRequest(device_id=self.device_id, election_id=p4r.Uint128(high=0, low=1))
        req.updates.add(type=kind, entity=entity)
        self.stub.Write(req)

    def _queue_counts(self) -> dict[int, int]:
        ctr = self.schema.counter("MfsEgress.queue_counter")
        req = p4r.ReadRequest(device_id=self.device_id)
        req.entities.add(counter_entry=p4r.CounterEntry(counter_id=ctr.id))
        out = {}
        for resp in self.stub.Read(req):
            for e in resp.entities:
                out[e.counter_entry.index.index] = e.counter_entry.data.packet_count
        return out

    @staticmethod
    def _drain(s) -> None:
        while select.select([s], [], [], 0)[0]:
            s.recv(65535)

    def send(self, port: int, frame: bytes) -> list[tuple[int, bytes, int | None]]:
        before = self._queue_counts()
        self.socks[port].send(frame)
        outs: list[tuple[int, bytes]] = []
        start = last = time.monotonic()
        while time.monotonic() - start < MAX_WAIT_S and time.monotonic() - last < QUIET_S:
            ready, _, _ = select.select(list(self.socks.values()), [], [], 0.05)
            for s in ready:
                data, addr = recv_frame(s)
                if addr[2] == PACKET_OUTGOING:
                    continue
                p = next(k for k, v in self.socks.items() if v is s)
                outs.append((p, data))
                last = time.monotonic()
        after = self._queue_counts()
        result = []
        for p, data in outs:
            lv = [lv for lv in range(levels.NUM_QUEUES)
                  if after.get(stat_index(p, lv), 0) > before.get(stat_index(p, lv), 0)]
            result.append((p, data, lv[0] if len(lv) == 1 else None))
        return result

    def counter(self, name: str, index: int) -> tuple[int, int]:
        ctr = self.schema.counter(name)
        req = p4r.ReadRequest(device_id=self.device_id)
        req.entities.add(counter_entry=p4r.CounterEntry(counter_id=ctr.id, index=p4r.Index(index=index)))
        for resp in self.stub.Read(req):
            for e in resp.entities:
                return e.counter_entry.data.packet_count, e.counter_entry.data.byte_count
        return 0, 0

    def register(self, name: str, index: int) -> int:
        """PI has no P4Runtime register reads (UNIMPLEMENTED): read the cell through bmv2's Thrift
        CLI (`register_read`), which needs simple_switch_CLI and the Python package thrift."""
        out = self.cli(f"register_read {self.schema.register(name).name} {index}\n")
        m = re.search(r"\]\s*=\s*(\d+)", out)
        if m is None:
            raise RuntimeError(f"simple_switch_CLI register_read {name} {index}: no value in {out[-500:]!r}")
        return int(m.group(1))

    def register_write(self, name: str, index: int, value: int) -> None:
        """bmv2's Thrift CLI `register_write` (PI refuses P4Runtime RegisterEntry writes)."""
        self.cli(f"register_write {self.schema.register(name).name} {index} {value}\n")

    def packet_out(self, values: dict) -> None:
        self._requests.put(p4r.StreamMessageRequest(packet=self.schema.packet_out(values)))

    def digests(self) -> list[dict]:
        deadline = time.monotonic() + 1.0   # digests arrive asynchronously
        while time.monotonic() < deadline and not self._digests:
            time.sleep(0.05)
        time.sleep(0.2)   # and a straggler would arrive right after the first (digest_count)
        return list(self._digests)
