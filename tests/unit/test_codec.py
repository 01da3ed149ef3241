import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import errors
from protocol.codec import pack, pack_msg, unpack, unpack_msg

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_client_frame_round_trip(value):
    assert unpack(pack(value)) == value


@given(st.integers(0, 255), values)
def test_internal_frame_round_trip(msg_type, body):
    assert unpack_msg(pack_msg(msg_type, body)) == (msg_type, body)


def test_bytes_stay_bytes_and_str_stays_str():
    assert unpack(pack({"key": b"k", "s": "x"})) == {"key": b"k", "s": "x"}
    assert pack({"a": 1})[0] == 1  # the version byte


@pytest.mark.parametrize("frame", [b"", b"\x02" + msgpack.packb({}), b"\x01\xc1", b"\x01\x92\x01", b"\x01" + msgpack.packb(1) + b"x"])
def test_bad_client_frames_raise_malformed(frame):
    with pytest.raises(errors.Malformed):
        unpack(frame)


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_malformed(data):
    for decode in (unpack, unpack_msg):
        try:
            decode(data)
        except errors.Malformed:
            pass


def test_errors_round_trip_through_the_wire():
    err = errors.Compacted(compact_revision=7)
    back = errors.QkvError.from_wire(err.to_wire())
    assert isinstance(back, errors.Compacted) and back.details == {"compact_revision": 7}
    assert back.message == err.message
    unknown = errors.QkvError.from_wire({"code": "from_the_future", "message": "m"})
    assert isinstance(unknown, errors.Internal) and unknown.details["code"] == "from_the_future"
    assert isinstance(errors.QkvError.from_wire("garbage"), errors.Internal)
