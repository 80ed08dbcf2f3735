"""The canonical codec: one encoding per value, and every malformed input rejected with DecodeError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.protocol import codec
from hub.protocol.errors import DecodeError, IntelhubError

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.text(max_size=20), st.binary(max_size=20),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30,
)


@given(values)
def test_round_trip_is_identity(value: object) -> None:
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert codec.encode(codec.decode(data)) == data


@given(st.binary(max_size=64))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except DecodeError:
        return
    assert codec.encode(value) == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (msgpack.packb({"a": 1}) + b"\x00", "trailing"),
        (msgpack.packb({"a": 1}) + msgpack.packb({"a": 1}), "trailing"),
        (b"\x82\xa1a\x01\xa1a\x02", "duplicate"),
        (b"\x82\xa1b\x01\xa1a\x02", "order"),
        (b"\x81\x01\x02", "not a string"),
        (b"\xcc\x05", "canonical"),  # uint8 for a fixint
        (b"\xd9\x01a", "canonical"),  # str8 for a fixstr
        (b"\xcb" + b"\x00" * 8, "floating"),
        (b"\xca" + b"\x00" * 4, "floating"),
        (b"\xd4\x01\x00", "extension"),
        (b"\xc6\xff\xff\xff\xff", "truncated"),  # a 4 GiB bin declared, 0 bytes given: no allocation
        (b"\xdd\xff\xff\xff\xff", "not valid"),  # a 4-billion-element array declared
        (b"\xa2\xff\xfe", "UTF-8"),
        (b"\x91" * 20 + b"\xc0", "nesting"),
        (b"\x91" * 5000 + b"\xc0", "nesting"),
    ],
)
def test_malformed_inputs_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        codec.decode(data)
    assert reason in str(exc.value)
    assert isinstance(exc.value, IntelhubError) and isinstance(exc.value, ValueError)


def test_oversize_rejected_before_parsing() -> None:
    with pytest.raises(DecodeError, match="over the limit"):
        codec.decode(codec.encode(b"x" * 2000), max_size=1000)


def test_every_prefix_of_a_value_is_rejected() -> None:
    data = codec.encode({"a": [1, 2, {"b": b"xyz"}], "c": "text"})
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:n])


def test_encoder_refuses_what_has_no_canonical_form() -> None:
    for bad in (1.5, {1: "a"}, object(), 1 << 70):
        with pytest.raises(ValueError):
            codec.encode(bad)


def test_the_per_thread_packer_recovers_from_a_value_it_cannot_pack() -> None:
    # codec packs with one msgpack Packer per thread; a failed pack must not leave bytes behind.
    for bad in ({"a": [1, object()]}, {"a": 2**70}):
        with pytest.raises((TypeError, OverflowError)):
            codec.pack_as_is(bad)
        assert codec.pack_as_is({"b": [1, "x"]}) == msgpack.packb({"b": [1, "x"]}, use_bin_type=True)
        assert codec.decode(codec.encode({"b": b"\x00"})) == {"b": b"\x00"}


def test_threads_pack_and_decode_at_once_without_mixing_their_bytes() -> None:
    import threading

    values = [{"n": i, "s": "x" * (i % 300), "b": bytes([i % 256]) * (i % 700)} for i in range(2000)]
    errors: list[str] = []

    def work(offset: int) -> None:
        for v in values[offset:] + values[:offset]:
            raw = codec.encode(v)
            if codec.decode(raw) != v or raw != msgpack.packb(codec.canonical(v), use_bin_type=True):
                errors.append(repr(v)[:40])

    threads = [threading.Thread(target=work, args=(k * 500,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
@pytest.mark.parametrize("with_cert, with_proof", [(False, False), (True, True), (True, False), (False, True)])
def test_deliver_frames_from_parts_equal_the_generic_canonical_encoding(size: int, with_cert: bool,
                                                                        with_proof: bool) -> None:
    from hub.protocol import frames

    packet = bytes(range(256)) * (size // 256) + bytes(size % 256)
    cert = b"c" * 300 if with_cert else None
    proof = {"v": 1, "time": 1_764_000_000, "size": 9, "path": ["aGFzaA=="]} if with_proof else None
    parts = frames.deliver_parts("main", 70_000, packet, cert, codec.encode(proof) if proof else None)
    assert any(p is packet for p in parts)  # the packet bytes themselves, not a copy
    want = frames.encode_frame("deliver", sub="main", index=70_000, packet=packet, cert=cert, proof=proof)
    assert b"".join(parts) == want
    assert codec.decode(want)["packet"] == packet
