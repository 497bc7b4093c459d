import pytest

from mfs.p4info import P4InfoError, P4Schema, decode, encode


@pytest.fixture(scope="module")
def schema():
    return P4Schema.load()


def test_canonical_encoding():
    assert encode(0, 9) == b"\x00"
    assert encode(256, 9) == b"\x01\x00"
    assert encode("10.0.0.1", 32) == bytes([10, 0, 0, 1])
    assert encode("00:00:00:00:00:01", 48) == b"\x01"
    assert decode(b"\x00\x00\x05", 8) == 5  # leading zeros accepted
    with pytest.raises(P4InfoError, match="does not fit in 9 bits"):
        encode(512, 9, "port")
    with pytest.raises(P4InfoError, match="does not fit"):
        decode(b"\x02\x00", 9)


def test_names_in_ids_out_and_back(schema):
    te = schema.table_entry("MfsIngress.mfs_flow", {"stage": 3, "flow_id": 42}, "MfsIngress.set_level", {"level": 1})
    assert te.table_id == schema.table("mfs_flow").id
    spec = schema.describe_table_entry(te)
    assert (spec.table, spec.match, spec.action, spec.params) == (
        "MfsIngress.mfs_flow", {"stage": 3, "flow_id": 42}, "MfsIngress.set_level", {"level": 1})


def test_lpm_masks_host_bits(schema):
    te = schema.table_entry("ipv4_lpm", {"dst_addr": "10.0.1.7/24"}, "route",
                            {"port": 1, "src_mac": 1, "dst_mac": 2})
    assert schema.describe_table_entry(te).match["dst_addr"] == (0x0A000100, 24)


def test_errors_name_the_problem(schema):
    with pytest.raises(P4InfoError, match="did you mean MfsIngress.mfs_flow"):
        schema.table("mfs_flw")
    with pytest.raises(P4InfoError, match="no match field 'flowid'"):
        schema.table_entry("mfs_flow", {"flowid": 1})
    with pytest.raises(P4InfoError, match=r"missing params \['level'\]"):
        schema.table_entry("mfs_flow", {"stage": 1, "flow_id": 1}, "set_level", {})
    with pytest.raises(P4InfoError, match="need a priority"):
        schema.table_entry("mfs_stage_default", {"stage": 1, "rli": (0, 3)}, "set_level", {"level": 2})
    with pytest.raises(P4InfoError, match="is not an action of table"):
        schema.table_entry("mfs_flow", {"stage": 1, "flow_id": 1}, "route", {"port": 1, "src_mac": 1, "dst_mac": 1})
    te = schema.table_entry("mfs_flow", {"stage": 1, "flow_id": 1}, "set_level", {"level": 1})
    te.match[0].field_id = 99
    with pytest.raises(P4InfoError, match="unknown match field id 99"):
        schema.describe_table_entry(te)


def test_bad_file(tmp_path):
    f = tmp_path / "x.txtpb"
    f.write_text("tables { nonsense: 1 }")
    with pytest.raises(P4InfoError, match="not a valid P4Info"):
        P4Schema.load(f)


def test_bmv2_unavailable_names_what_is_missing_or_stale(tmp_path, monkeypatch):
    """The bmv2 target is refused, saying why: no simple_switch_grpc, no JSON, or a JSON whose
    tables do not match the P4Info (one regenerated without the other)."""
    import json

    from mfs.p4info import DEFAULT_P4INFO, P4Schema, bmv2_unavailable
    fake = tmp_path / "simple_switch_grpc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BMV2_SWITCH", str(tmp_path / "absent"))
    assert "simple_switch_grpc not found" in bmv2_unavailable(tmp_path / "mfs.json")
    monkeypatch.setenv("BMV2_SWITCH", str(fake))
    assert "not built" in bmv2_unavailable(tmp_path / "mfs.json")
    # a JSON with the P4Info's tables and keys passes; one key fewer on a table is stale
    schema = P4Schema.load(DEFAULT_P4INFO)

    def bmv2_json(drop_key: bool) -> dict:
        tables = [{"name": t.name, "key": [{}] * (len(t.fields) - (drop_key and t.name == "MfsIngress.mfs_flow"))}
                  for t in schema.tables.values()]
        return {"pipelines": [{"name": "ingress", "tables": tables}],
                "counter_arrays": [{"name": n} for n in schema.counters],
                "register_arrays": [{"name": n} for n in schema.registers]}
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(bmv2_json(False)))
    bad.write_text(json.dumps(bmv2_json(True)))
    why = bmv2_unavailable(bad)
    assert why and "MfsIngress.mfs_flow" in why and "needs p4c" in why
    assert bmv2_unavailable(good) is None, bmv2_unavailable(good)
