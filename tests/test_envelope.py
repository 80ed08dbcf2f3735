"""The envelope: round trips, and every tampering the packet-format issue lists is rejected."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hub.protocol import codec, envelope
from hub.protocol.certs import NATION_CODES, NATION_RE
from hub.protocol.envelope import open_packet, seal, verify
from hub.protocol.errors import DecodeError, IntelhubError, InvalidPacket, UntrustedSigner
from hub.protocol.federation import Federation
from hub.protocol.keys import SigningKey, signing_input
from hub.protocol.suites import CLASSIC, HYBRID, SUITES, Suite
from hub.protocol.trust import Trust

from .conftest import NOW, sample_alert

TOPIC = "alerts.entity.migrant_smuggling"


def make(fed: Federation, suite: Suite = HYBRID, sender: str = "IT", to: tuple[str, ...] = ("FR", "DE", "GB"),
         content: dict[str, Any] | None = None, now: int = NOW) -> bytes:
    m = fed.members[sender]
    return seal(content or sample_alert(), signer=m.officer, signer_cert=m.officer_cert,
                recipients=[fed.members[c].node_cert for c in to], topic=TOPIC, now=now, suite=suite)


def opens(fed: Federation, trust: Trust, raw: bytes, nation: str = "FR") -> dict[str, Any]:
    return open_packet(raw, nation=nation, kem=fed.members[nation].node_kem, trust=trust, now=NOW).content


def rebuild(raw: bytes, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> bytes:
    """Decode a packet and its header, let ``edit`` change them, re-encode canonically."""
    p = codec.decode(raw)
    h = codec.decode(p["header"])
    edit(p, h)
    p["header"] = codec.encode(h)
    return codec.encode(p)


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("suite", [HYBRID, CLASSIC], ids=lambda s: s.id)
def test_round_trip_every_recipient(fed: Federation, trust: Trust, suite: Suite) -> None:
    raw = make(fed, suite)
    v = verify(raw, trust, NOW)
    assert v.header.sender == "IT" and v.header.nations == ("DE", "FR", "GB")
    assert v.header.suite is suite and v.signer.fp == fed.members["IT"].officer_cert.fp
    for nation in ("FR", "DE", "GB"):
        assert opens(fed, trust, raw, nation) == sample_alert()
    assert envelope.parse_packet(raw).raw == raw
    assert codec.encode(codec.decode(raw)) == raw


def test_commitment_lets_an_auditor_check_disclosed_plaintext(fed: Federation, trust: Trust) -> None:
    raw = make(fed)
    o = open_packet(raw, nation="FR", kem=fed.members["FR"].node_kem, trust=trust, now=NOW)
    assert envelope.check_disclosure(o.header, o.salt, o.content_bytes) == sample_alert()
    with pytest.raises(InvalidPacket):
        envelope.check_disclosure(o.header, o.salt, codec.encode({**sample_alert(), "severity": "low"}))


def test_packet_ids_are_unique_and_time_ordered(fed: Federation) -> None:
    a = envelope.parse_packet(make(fed, now=NOW)).header.id
    b = envelope.parse_packet(make(fed, now=NOW + 1)).header.id
    assert a != b and a < b


# -- who can read --------------------------------------------------------------


def test_non_recipient_cannot_open(fed: Federation, trust: Trust) -> None:
    raw = make(fed)
    with pytest.raises(InvalidPacket):
        opens(fed, trust, raw, "US")
    with pytest.raises(InvalidPacket):  # FR's entry with US's key
        open_packet(raw, nation="FR", kem=fed.members["US"].node_kem, trust=trust, now=NOW)


# -- tampering with the signed header or what it covers -------------------------


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


HEADER_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "topic": lambda h: h.update(topic="alerts.other"),
    "created": lambda h: h.update(created=h["created"] - 1),
    "expires": lambda h: h.update(expires=h["expires"] + 1),
    "id": lambda h: h.update(id=_flip(h["id"])),
    "ct digest": lambda h: h.update(ct=_flip(h["ct"])),
    "commit": lambda h: h.update(commit=_flip(h["commit"])),
    "recipient key": lambda h: h["to"][0].update(key=_flip(h["to"][0]["key"])),
    "wrap digest": lambda h: h["to"][1].update(wrap=_flip(h["to"][1]["wrap"])),
}


@pytest.mark.parametrize("field", HEADER_EDITS)
def test_changed_header_field_fails(fed: Federation, trust: Trust, field: str) -> None:
    raw = rebuild(make(fed), lambda p, h: HEADER_EDITS[field](h))
    with pytest.raises(InvalidPacket):
        verify(raw, trust, NOW)


def test_changed_ciphertext_fails(fed: Federation, trust: Trust) -> None:
    raw = rebuild(make(fed), lambda p, h: p.update(ct=p["ct"][:-1] + bytes([p["ct"][-1] ^ 1])))
    with pytest.raises(InvalidPacket):
        verify(raw, trust, NOW)


def test_swapped_wrapped_keys_fail(fed: Federation, trust: Trust) -> None:
    raw = rebuild(make(fed), lambda p, h: p.update(keys=[p["keys"][1], p["keys"][0], p["keys"][2]]))
    with pytest.raises(InvalidPacket):
        verify(raw, trust, NOW)


def test_removed_or_added_wrapped_key_fails(fed: Federation, trust: Trust) -> None:
    removed = rebuild(make(fed), lambda p, h: p.update(keys=p["keys"][:2]))
    added = rebuild(make(fed), lambda p, h: p.update(keys=p["keys"] + [p["keys"][0]]))
    for raw in (removed, added):
        with pytest.raises(DecodeError, match="one wrapped key per recipient"):
            verify(raw, trust, NOW)


def test_wrapped_key_copied_from_another_packet_fails(fed: Federation, trust: Trust) -> None:
    other = codec.decode(make(fed))
    # Even with the digest updated to match (which breaks the signature), the key is bound to its packet.
    raw = rebuild(make(fed), lambda p, h: p["keys"].__setitem__(1, other["keys"][1]))
    with pytest.raises(InvalidPacket):
        verify(raw, trust, NOW)


def test_recipient_cannot_readdress_to_another_nation(fed: Federation, trust: Trust) -> None:
    """FR, a recipient, adds US to the header with a key it wrapped itself: the signature breaks."""
    raw = make(fed)
    fr = open_packet(raw, nation="FR", kem=fed.members["FR"].node_kem, trust=trust, now=NOW)
    us = fed.members["US"].node_cert

    def edit(p: dict[str, Any], h: dict[str, Any]) -> None:
        wrapped = HYBRID.hpke().encrypt(b"k" * 32, us.kem.for_suite(HYBRID), info=b"x")  # type: ignore[union-attr]
        h["to"].append({"nation": "US", "key": us.fp, "wrap": hashlib.sha256(wrapped).digest()})
        p["keys"].append(wrapped)

    with pytest.raises(InvalidPacket):
        verify(rebuild(raw, edit), trust, NOW)
    assert fr.content == sample_alert()


def _reseal_plaintext(fed: Federation, plaintext: bytes, salt: bytes, content_bytes: bytes) -> bytes:
    """FR's own packet to US, honestly signed, whose encrypted plaintext is ``plaintext`` exactly."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    p = codec.decode(make(fed, sender="FR", to=("US",)))
    h = codec.decode(p["header"])
    key = b"\x02" * 32
    us = fed.members["US"].node_cert
    p["ct"] = AESGCM(key).encrypt(bytes(12), plaintext, envelope._aad(h))
    p["keys"] = [HYBRID.hpke().encrypt(key, us.kem.for_suite(HYBRID),  # type: ignore[union-attr]
                                       info=envelope._info(HYBRID.id, h["id"], h["sender"], "US", us.fp))]
    h["ct"] = hashlib.sha256(p["ct"]).digest()
    h["to"][0]["wrap"] = hashlib.sha256(p["keys"][0]).digest()
    h["commit"] = envelope.commitment(salt, content_bytes)
    p["header"] = codec.encode(h)
    p["sig"] = fed.members["FR"].officer.sign(signing_input("packet", p["header"]))
    return codec.encode(p)


def test_forwarding_as_own_packet_is_detected(fed: Federation, trust: Trust) -> None:
    """FR re-seals IT's decrypted plaintext (sender IT inside) under its own signature to US."""
    o = open_packet(make(fed), nation="FR", kem=fed.members["FR"].node_kem, trust=trust, now=NOW)
    inner = codec.encode({"content": o.content_bytes, "salt": o.salt,
                          "sender": {"nation": "IT", "cert": fed.members["IT"].officer_cert.fp}})
    forwarded = _reseal_plaintext(fed, inner, o.salt, o.content_bytes)
    verify(forwarded, trust, NOW)  # FR may sign its own packet...
    with pytest.raises(InvalidPacket):  # ...but the inner sender betrays the forwarding
        opens(fed, trust, forwarded, "US")


_CONTENT = codec.encode(sample_alert())
_SALT = b"s" * 32


def _inner(fed: Federation, **change: Any) -> dict[str, Any]:
    inner = {"content": _CONTENT, "salt": _SALT, "sender": {"cert": fed.members["FR"].officer_cert.fp, "nation": "FR"}}
    inner.update(change)
    return inner


_BAD_INNER: dict[str, Callable[[Federation], bytes]] = {
    "keys out of order": lambda f: msgpack.packb(dict(reversed(list(_inner(f).items()))), use_bin_type=True),
    "sender keys out of order": lambda f: msgpack.packb(
        _inner(f, sender={"nation": "FR", "cert": f.members["FR"].officer_cert.fp}), use_bin_type=True),
    "an extra field": lambda f: codec.encode(_inner(f, zz=1)),
    "no salt": lambda f: codec.encode({k: v for k, v in _inner(f).items() if k != "salt"}),
    "salt of 31 bytes": lambda f: codec.encode(_inner(f, salt=_SALT[:31])),
    "content as a string": lambda f: codec.encode(_inner(f, content="text")),
    "sender nation missing": lambda f: codec.encode(_inner(f, sender={"cert": f.members["FR"].officer_cert.fp})),
    "a trailing byte": lambda f: codec.encode(_inner(f)) + b"\x00",
    "a longer length prefix": lambda f: codec.encode(_inner(f)).replace(b"\xa4salt\xc4\x20", b"\xa4salt\xc5\x00\x20"),
    "an array": lambda f: codec.encode(list(_inner(f).values())),
}


def test_a_well_formed_plaintext_resealed_opens(fed: Federation, trust: Trust) -> None:
    raw = _reseal_plaintext(fed, codec.encode(_inner(fed)), _SALT, _CONTENT)
    assert opens(fed, trust, raw, "US") == sample_alert()  # the helper builds packets that open


@pytest.mark.parametrize("make_inner", list(_BAD_INNER.values()), ids=list(_BAD_INNER))
def test_a_malformed_plaintext_is_the_opaque_error(fed: Federation, trust: Trust,
                                                   make_inner: Callable[[Federation], bytes]) -> None:
    raw = _reseal_plaintext(fed, make_inner(fed), _SALT, _CONTENT)
    verify(raw, trust, NOW)  # authentic: FR signed it
    with pytest.raises(InvalidPacket):
        opens(fed, trust, raw, "US")


def test_nation_cannot_resign_another_nations_packet(fed: Federation, trust: Trust) -> None:
    """FR keeps IT as sender but signs with its own key; or claims IT's header with FR's certificate."""
    raw = make(fed)
    fr = fed.members["FR"]
    p = codec.decode(raw)
    p["sig"] = fr.officer.sign(signing_input("packet", p["header"]))
    with pytest.raises(InvalidPacket):
        verify(codec.encode(p), trust, NOW)

    def claim(p: dict[str, Any], h: dict[str, Any]) -> None:
        h["sender"]["cert"] = fr.officer_cert.fp

    p2 = codec.decode(rebuild(raw, claim))
    p2["sig"] = fr.officer.sign(signing_input("packet", p2["header"]))
    with pytest.raises(UntrustedSigner, match="cannot sign for IT"):
        verify(codec.encode(p2), trust, NOW)


# -- suites and signature halves ------------------------------------------------


def test_suite_downgrade_fails(fed: Federation, trust: Trust) -> None:
    def downgrade(p: dict[str, Any], h: dict[str, Any]) -> None:
        h["suite"] = CLASSIC.id
        del p["sig"]["mldsa65"]

    raw = rebuild(make(fed), downgrade)
    with pytest.raises(IntelhubError):  # wrapped keys have hybrid lengths: structural or signature failure
        verify(raw, trust, NOW)


@pytest.mark.parametrize("half", ["ed25519", "mldsa65"])
def test_stripped_signature_half_fails(fed: Federation, trust: Trust, half: str) -> None:
    raw = rebuild(make(fed), lambda p, h: p["sig"].pop(half))
    with pytest.raises(InvalidPacket):
        verify(raw, trust, NOW)


def test_extra_signature_half_on_classic_fails(fed: Federation, trust: Trust) -> None:
    raw = rebuild(make(fed, CLASSIC), lambda p, h: p["sig"].update(mldsa65=b"\x00" * 3309))
    with pytest.raises(InvalidPacket):
        verify(raw, trust, NOW)


def test_suite_not_in_roster_is_refused(fed: Federation) -> None:
    from hub.protocol.federation import G7, create_federation

    strict = create_federation(G7, now=NOW, seed=b"strict")
    assert strict.roster.suites == (HYBRID.id,)
    m = strict.members["IT"]
    raw = seal(sample_alert(), signer=m.officer, signer_cert=m.officer_cert,
               recipients=[strict.members["FR"].node_cert], topic=TOPIC, now=NOW, suite=CLASSIC)
    with pytest.raises(UntrustedSigner, match="not allowed by the roster"):
        verify(raw, strict.trust(), NOW)


# -- certificates ---------------------------------------------------------------


def test_expired_certificate_fails(fed: Federation, trust: Trust) -> None:
    cert = fed.members["IT"].officer_cert
    raw = make(fed, now=cert.not_after + 10)
    with pytest.raises(UntrustedSigner, match="expired"):
        verify(raw, trust, cert.not_after + 10)


def test_revoked_certificate_fails_from_revocation_time(fed: Federation) -> None:
    m = fed.members["IT"]
    key = SigningKey.from_seed(b"it-officer-2")
    cert = fed.issue("IT", subject="it-officer-2", role="officer", signing=key, kem=None,
                     not_before=NOW - 100, not_after=NOW + 86400)
    before = seal(sample_alert(), signer=key, signer_cert=cert, recipients=[fed.members["FR"].node_cert],
                  topic=TOPIC, now=NOW)
    after = seal(sample_alert(), signer=key, signer_cert=cert, recipients=[fed.members["FR"].node_cert],
                 topic=TOPIC, now=NOW + 20)
    fed.revoke("IT", cert, at=NOW + 10)
    try:
        trust = fed.trust()
        verify(before, trust, NOW + 30)  # signed before the revocation: still evidence
        with pytest.raises(UntrustedSigner, match="revoked"):
            verify(after, trust, NOW + 30)
    finally:
        fed.extra_certs.remove(cert)
        m.revocations = fed.members["IT"].revocations


def test_wrong_nation_certificate_fails(fed: Federation, trust: Trust) -> None:
    raw = rebuild(make(fed), lambda p, h: h["sender"].update(nation="FR"))
    with pytest.raises(UntrustedSigner, match="cannot sign for FR"):
        verify(raw, trust, NOW)


def test_unknown_certificate_fails(fed: Federation, trust: Trust) -> None:
    raw = rebuild(make(fed), lambda p, h: h["sender"].update(cert=b"\x00" * 32))
    with pytest.raises(UntrustedSigner, match="unknown certificate"):
        verify(raw, trust, NOW)


def test_future_packet_fails(fed: Federation, trust: Trust) -> None:
    with pytest.raises(UntrustedSigner, match="future"):
        verify(make(fed, now=NOW + 3600), trust, NOW)


# -- strict structure --------------------------------------------------------------


def test_every_prefix_is_rejected(fed: Federation, trust: Trust) -> None:
    raw = make(fed, CLASSIC, to=("FR",))
    for n in range(len(raw)):
        with pytest.raises(DecodeError):
            envelope.parse_packet(raw[:n])


def test_trailing_bytes_rejected(fed: Federation, trust: Trust) -> None:
    raw = make(fed)
    for extra in (b"\x00", raw):
        with pytest.raises(DecodeError, match="trailing"):
            verify(raw + extra, trust, NOW)


def test_oversize_rejected(fed: Federation, trust: Trust) -> None:
    raw = make(fed)
    with pytest.raises(DecodeError, match="over the limit"):
        envelope.parse_packet(raw, max_size=len(raw) - 1)


def test_unknown_field_rejected(fed: Federation, trust: Trust) -> None:
    with pytest.raises(DecodeError, match="unknown field 'x'"):
        verify(rebuild(make(fed), lambda p, h: p.update(x=1)), trust, NOW)
    with pytest.raises(DecodeError, match="unknown field 'note'"):
        verify(rebuild(make(fed), lambda p, h: h.update(note="hi")), trust, NOW)


def test_duplicate_key_rejected(fed: Federation, trust: Trust) -> None:
    raw = make(fed)
    # Duplicate the "v" entry of the outer map by hand (fixmap count + 1).
    assert raw[0] == 0x85
    dup = bytes([0x86]) + raw[1:] + codec.encode("v")[0:] + codec.encode(1)
    with pytest.raises(DecodeError):
        verify(dup, trust, NOW)
    # A duplicate in canonical position: the same key twice in a row.
    with pytest.raises(DecodeError, match="duplicate"):
        codec.decode(b"\x82\xa1v\x01\xa1v\x01")


def test_deep_nesting_rejected(fed: Federation, trust: Trust) -> None:
    p = codec.decode(make(fed))
    first = codec.encode({"ct": p["ct"], "header": p["header"], "keys": p["keys"]})
    assert first[0] == 0x83
    # The same packet with "sig" replaced by nested arrays, keys still in canonical order. The
    # closed schema refuses 50 levels by shape, before any work; 5,000 trip the decoder's own limit.
    def bomb(levels: int) -> bytes:
        return b"\x85" + first[1:] + codec.encode("sig") + b"\x91" * levels + b"\xc0" + codec.encode("v") + b"\x01"

    with pytest.raises(DecodeError, match="sig a map"):
        verify(bomb(50), trust, NOW)
    with pytest.raises(DecodeError, match="nesting"):
        verify(bomb(5000), trust, NOW)


def test_too_many_recipients_rejected(fed: Federation, trust: Trust) -> None:
    def many(p: dict[str, Any], h: dict[str, Any]) -> None:
        h["to"] = [{"nation": f"A{chr(65 + i // 26)}{chr(65 + i % 26)}"[-2:], "key": b"\0" * 32, "wrap": b"\0" * 32}
                   for i in range(envelope.MAX_RECIPIENTS + 1)]

    with pytest.raises(DecodeError):
        verify(rebuild(make(fed), many), trust, NOW)


# -- property tests -----------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_mutations_only_raise_project_errors(fed: Federation, trust: Trust, data: st.DataObject) -> None:
    original = make(fed, CLASSIC, to=("FR", "DE"))
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "delete":
            del raw[i]
        elif kind == "insert":
            raw.insert(i, data.draw(st.integers(0, 255)))
        else:
            del raw[i:]
        if not raw:
            raw.append(0)
    assume(bytes(raw) != original)  # two flips of one bit cancel out
    try:
        opens(fed, trust, bytes(raw), "FR")
    except IntelhubError:
        return
    pytest.fail("a mutated packet opened")


def test_suites_are_registered() -> None:
    assert set(SUITES) == {HYBRID.id, CLASSIC.id}


def test_fast_aad_and_info_equal_the_canonical_encoding(fed: Federation) -> None:
    """The receive path packs the AEAD's associated data and HPKE ``info`` directly; they must be the
    bytes the canonical encoder gives (which is what seal() binds)."""
    h = envelope.parse_packet(make(fed, to=("FR", "DE", "GB", "US"))).header
    sender = {"nation": h.sender, "cert": h.sender_cert}
    assert envelope._aad_of(h) == codec.encode({
        "v": envelope.VERSION, "suite": h.suite.id, "id": h.id, "sender": sender,
        "to": list(h.nations), "topic": h.topic, "created": h.created, "expires": h.expires,
    })
    for r in h.to:
        assert envelope._info(h.suite.id, h.id, sender, r.nation, r.key) == signing_input("wrap", codec.encode(
            {"suite": h.suite.id, "id": h.id, "sender": sender, "recipient": {"nation": r.nation, "key": r.key}}))


def test_check_signature_refuses_a_certificate_other_than_the_headers(fed: Federation, trust: Trust) -> None:
    """The worker-process half of verify() trusts the certificate it is handed only if it is the signer's."""
    packet = envelope.parse_packet(make(fed))
    signer = envelope.check_signer(packet.header, trust, NOW)
    envelope.check_signature(packet, signer)
    other = fed.members["IT"].node_cert
    with pytest.raises(InvalidPacket):
        envelope.check_signature(packet, other)


def _packed(p: dict[str, Any], h: dict[str, Any]) -> bytes:
    """A packet packed as the dicts are ordered (not canonicalised): what a sloppy encoder sends."""
    return msgpack.packb({**p, "header": msgpack.packb(h, use_bin_type=True)}, use_bin_type=True)


def _reordered(d: dict[str, Any]) -> dict[str, Any]:
    return dict(reversed(list(d.items())))


@pytest.mark.parametrize("where", ["packet", "sig", "header", "sender", "recipient"])
def test_maps_out_of_canonical_order_are_refused(fed: Federation, trust: Trust, where: str) -> None:
    """The packet and its header are decoded without the generic tree walk (their schema is closed,
    and checks every map's key order itself): each map out of order is still refused."""
    p = codec.decode(make(fed, to=("FR", "DE")))
    h = codec.decode(p["header"])
    assert envelope.parse_packet(_packed(p, h)).raw  # packed in canonical order, it parses
    if where == "packet":
        p = _reordered(p)
    elif where == "sig":
        p["sig"] = _reordered(p["sig"])
    elif where == "header":
        h = _reordered(h)
    elif where == "sender":
        h["sender"] = _reordered(h["sender"])
    else:
        h["to"][1] = _reordered(h["to"][1])
    with pytest.raises(DecodeError, match="order"):
        envelope.parse_packet(_packed(p, h))


@pytest.mark.parametrize("field,value", [("created", 1.5e9), ("v", True), ("topic", b"alerts"), ("expires", None)])
def test_header_values_of_a_wrong_type_are_refused(fed: Federation, field: str, value: object) -> None:
    p = codec.decode(make(fed))
    h = codec.decode(p["header"])
    h[field] = value
    with pytest.raises(DecodeError, match=f"header.*{field}"):
        envelope.parse_packet(_packed(p, h))


@pytest.mark.parametrize("nation", ["fr", "F", "FRA", "F1", "ÉS", b"FR", ["FR"], {"FR": 1}, 7, None])
@pytest.mark.parametrize("where", ["sender", "recipient"])
def test_nation_codes_other_than_two_capital_letters_are_refused(fed: Federation, where: str, nation: object) -> None:
    # Unhashable values too: the set the codes are looked up in must not raise TypeError.
    p = codec.decode(make(fed, to=("FR", "DE")))
    h = codec.decode(p["header"])
    if where == "sender":
        h["sender"]["nation"] = nation
    else:
        h["to"][0]["nation"] = nation
    with pytest.raises(DecodeError, match="nation code"):
        envelope.parse_packet(_packed(p, h))


def test_packet_id_text_is_the_uuid_form() -> None:
    for pid in (bytes(16), b"\xff" * 16, envelope.new_packet_id(1_764_000_000_000), os.urandom(16)):
        assert envelope.packet_id_text(pid) == str(uuid.UUID(bytes=pid))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_peek_never_raises_and_agrees_with_every_strict_parse(fed: Federation, data: st.DataObject) -> None:
    """The node's permissive header peek (worker processes parse strictly): any bytes give a peek
    or None, never an exception; bytes the strict parse accepts peek to the same signer fields."""
    raw = bytearray(make(fed, CLASSIC, to=("FR", "DE")))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if kind == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "delete" and len(raw) > 1:
            del raw[i]
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    peek = envelope.peek_header(bytes(raw))
    try:
        header = envelope.parse_packet(bytes(raw)).header
    except IntelhubError:
        return
    assert peek is not None and envelope.peek_agrees(peek, header)


def test_the_nation_code_set_is_what_the_nation_regex_matches() -> None:
    two_letters = {chr(a) + chr(b) for a in range(32, 383) for b in range(32, 383)}
    assert {c for c in two_letters if NATION_RE.fullmatch(c)} == NATION_CODES


# -- parse_packet's two paths ----------------------------------------------------

def _edit_recipient(i: int, **change: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return lambda p, h: h["to"][i].update(change)


# Each breaks one rule the strict parse enforces beyond msgpack types and lengths.
_SEMANTIC_BREAKS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "recipients out of order": lambda p, h: h.update(to=h["to"][::-1]) or p.update(keys=p["keys"][::-1]),
    "recipient twice": lambda p, h: h.update(to=[h["to"][0]] * 2 + h["to"][2:]),
    "recipient nation not a code": _edit_recipient(0, nation="de"),
    "sender nation not a code": lambda p, h: h["sender"].update(nation="ITA"),
    "topic with capitals": lambda p, h: h.update(topic="Alerts.x"),
    "topic too long": lambda p, h: h.update(topic="a." * 64 + "a"),
    "created after expires": lambda p, h: h.update(created=h["expires"] + 1),
    "lifetime over the maximum": lambda p, h: h.update(expires=h["created"] + envelope.MAX_LIFETIME + 1),
    "created zero": lambda p, h: h.update(created=0),
    "unknown suite": lambda p, h: h.update(suite="IH1-NONE"),
    "packet version 2": lambda p, h: p.update(v=2),
    "header version 2": lambda p, h: h.update(v=2),
    "a key fewer": lambda p, h: p.update(keys=p["keys"][:-1]),
    "a wrapped key a byte short": lambda p, h: p.update(keys=[p["keys"][0][:-1], *p["keys"][1:]]),
    "ciphertext too short": lambda p, h: p.update(ct=b"x" * 15),
    "id of 15 bytes": lambda p, h: h.update(id=h["id"][:15]),
    "sender cert of 31 bytes": lambda p, h: h["sender"].update(cert=h["sender"]["cert"][:31]),
    "wrap digest of 33 bytes": _edit_recipient(1, wrap=b"w" * 33),
    "version as true": lambda p, h: h.update(v=True),
    "nation as bytes": _edit_recipient(0, nation=b"DE"),
    "an extra header field": lambda p, h: h.update(zz=1),
}


@pytest.mark.parametrize("suite", [HYBRID, CLASSIC], ids=lambda s: s.id)
def test_the_fast_parse_gives_the_strict_parse_s_packet(fed: Federation, suite: Suite) -> None:
    raw = make(fed, suite, to=("CA", "DE", "FR", "GB", "IT", "JP", "US"))
    fast = envelope._parse_fast(raw, envelope.MAX_PACKET_SIZE)
    assert fast is not None and fast == envelope._parse_strict(raw, envelope.MAX_PACKET_SIZE)
    assert envelope._parse_fast(raw, len(raw) - 1) is None  # over the size limit: the strict parse words it


@pytest.mark.parametrize("edit", list(_SEMANTIC_BREAKS.values()), ids=list(_SEMANTIC_BREAKS))
def test_the_fast_parse_leaves_every_broken_rule_to_the_strict_parse(
        fed: Federation, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    raw = rebuild(make(fed), edit)
    assert envelope._parse_fast(raw, envelope.MAX_PACKET_SIZE) is None
    with pytest.raises(DecodeError):
        envelope.parse_packet(raw)


@pytest.mark.parametrize("where", ["packet", "header", "sender", "recipient", "sig"])
def test_the_fast_parse_refuses_keys_out_of_canonical_order(fed: Federation, where: str) -> None:
    p = codec.decode(make(fed))
    h = codec.decode(p["header"])
    flip = {"packet": p, "header": h, "sender": h["sender"], "recipient": h["to"][0], "sig": p["sig"]}[where]
    reordered = _reordered(flip)
    flip.clear()
    flip.update(reordered)
    raw = _packed(p, h)
    assert envelope._parse_fast(raw, envelope.MAX_PACKET_SIZE) is None
    with pytest.raises(DecodeError):
        envelope.parse_packet(raw)
