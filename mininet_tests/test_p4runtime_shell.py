"""p4runtime-shell (an independent P4Runtime client, its own venv) against the embedded target."""

import json
import subprocess
from pathlib import Path

import pytest

from topo.net import ROOT, Network, unique_tag
from topo.topology import load

pytestmark = pytest.mark.netns

SHELL_PY = ROOT / ".venv-shell" / "bin" / "python"
PEER = Path(__file__).resolve().parent / "shell_peer.py"


def test_p4runtime_shell_reads_p4info_inserts_and_reads_back(tmp_path):
    if not SHELL_PY.exists():
        pytest.skip(f"{SHELL_PY} missing: create it with `make shell-venv` "
                    f"(python3 -m venv .venv-shell && .venv-shell/bin/pip install p4runtime-shell==0.0.6)")
    with Network(load("line2"), tag=unique_tag(), controller=False, agents=False, logdir=tmp_path) as net:
        r = subprocess.run([str(SHELL_PY), str(PEER), net.grpc_addr("s1"), str(net.topo.switches["s1"].device_id)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert "MfsIngress.mfs_flow" in out["tables"] and "MfsIngress.ipv4_lpm" in out["tables"]
        # (stage, flow_id[, ingress_port, src_addr]) by field id, as read back by the shell
        assert any(b["match"][:2] == [3, 777] and b["level"] == 2 for b in out["read_back"]), out["read_back"]
        if len(out["read_back"][0]["match"]) == 4:  # source-bound key (p4-api revision 2)
            assert out["read_back"][0]["match"][2:] == [1, 0x0A000001]
        # and it is in the switch for everyone (read with our own client too)
        import asyncio

        from controller.p4rt.client import SwitchClient
        from mfs.p4info import DEFAULT_P4INFO, P4Schema
        schema = P4Schema.load(DEFAULT_P4INFO)

        async def read():
            c = SwitchClient(net.grpc_addr("s1"), 1, election_id=9)
            await c.open()
            try:
                return await c.read_table(schema.table("MfsIngress.mfs_flow").id)
            finally:
                await c.close()
        specs = [schema.describe_table_entry(te) for te in asyncio.run(read())]
        assert any(s.match.get("flow_id") == 777 and s.params.get("level") == 2 for s in specs), specs
