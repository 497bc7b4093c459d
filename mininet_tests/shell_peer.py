"""Run by the .venv-shell interpreter (p4runtime-shell 0.0.6): an independent P4Runtime client.

    .venv-shell/bin/python mininet_tests/shell_peer.py ADDR DEVICE_ID

Connects without pushing a pipeline (so it reads the device's P4Info), inserts one
``MfsIngress.mfs_flow`` entry, reads the table back and prints one JSON line.
"""

import json
import sys

import p4runtime_sh.shell as sh


def main():
    addr, dev = sys.argv[1], int(sys.argv[2])
    sh.setup(device_id=dev, grpc_addr=addr, election_id=(0, 5), config=None)  # config=None: fetch P4Info
    try:
        tables = sorted(t.preamble.name for t in sh.context.p4info.tables)
        te = sh.TableEntry("MfsIngress.mfs_flow")(action="MfsIngress.set_level")
        te.match["stage"] = "3"
        te.match["flow_id"] = "777"
        if "ingress_port" in te.match._fields:  # revision 2: the entry is bound to its source
            te.match["ingress_port"] = "1"
            te.match["src_addr"] = "10.0.0.1"
        te.action["level"] = "2"
        te.insert()
        back = []
        for e in sh.TableEntry("MfsIngress.mfs_flow").read():
            msg = e.msg()
            m = {f.field_id: int.from_bytes(f.exact.value, "big") for f in msg.match}
            lv = int.from_bytes(msg.action.action.params[0].value, "big")
            back.append({"match": [m[k] for k in sorted(m)], "level": lv})
        print(json.dumps({"tables": tables, "read_back": back}))
    finally:
        sh.teardown()


if __name__ == "__main__":
    main()
