import pytest

from mfs import header as h


def test_round_trip_all_fields():
    hdr = h.MfsHeader(stage=3, flow_id=0xDEADBEEF, request_id=7, target_layer=55, rli=2, proposed=4, last=True)
    raw = hdr.pack()
    assert len(raw) == h.MFS_HEADER_LEN
    assert raw[0] == (1 << 4) | h.FLAG_PROPOSED | h.FLAG_LAST
    assert raw[1] == 3 and raw[2] == 4 and raw[3] == 0
    assert raw[4:8] == bytes.fromhex("deadbeef")
    assert h.unpack(raw) == hdr


def test_no_proposal_means_flag_clear_and_none():
    raw = h.pack(1, 5)
    assert raw[0] & h.FLAG_PROPOSED == 0
    got = h.unpack(raw)
    assert got.proposed is None and got.rli == h.RLI_UNKNOWN and not got.last


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"\x10\x01", "truncated"),
        (bytes([0x20, 1]) + bytes(14), "version=2"),
        (bytes([0x10, 0]) + bytes(14), "stage=0"),
        (bytes([0x10, 4]) + bytes(14), "stage=4"),
    ],
)
def test_malformed_is_rejected_with_the_field_named(raw, needle):
    with pytest.raises(h.MalformedHeader, match=needle):
        h.unpack(raw)


@pytest.mark.parametrize("kw, needle", [({"flow_id": 1 << 32}, "flow_id"), ({"rli": -1}, "rli"),
                                        ({"proposed": 256}, "proposed"), ({"stage": 9}, "stage")])
def test_pack_refuses_out_of_range(kw, needle):
    args = {"stage": 1, "flow_id": 1} | kw
    with pytest.raises(h.MalformedHeader, match=needle):
        h.pack(**args)


def test_stamper_writes_same_bytes_as_pack():
    hdr = h.MfsHeader(stage=2, flow_id=9, request_id=3, target_layer=4, rli=0)
    st = h.Stamper(hdr)
    buf = bytearray(100)
    st.stamp_into(buf)
    assert bytes(buf[:16]) == hdr.pack()
    st.stamp_into(buf, last=True)
    assert h.unpack(buf).last is True
    assert bytes(buf[16:]) == bytes(84)
