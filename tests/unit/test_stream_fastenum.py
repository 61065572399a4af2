"""stream.fastenum: categorical strings msgspec decodes to shared objects (kept strings, coded slots), with
pseudo-members for other strings, bounded; repr that never raises; pickling refused; the version guard and
the decoder's fall-back to plain strings when the mechanism is not available."""

from __future__ import annotations

import json
import logging
import pickle
from typing import Any

import msgspec
import numpy as np
import pytest

from detectors.reference import CategoricalProfile
from stream import fastenum
from stream.decode import CodedColumn, EventDecoder
from stream.fastenum import PSEUDO_MEMBERS, coded_strings, kept_strings
from tests.unit.test_stream_decode import REF, T0, VARIED, _config, assert_same, decoder, ev

pytestmark = pytest.mark.unit

PROFILE = REF.features["c"]
assert isinstance(PROFILE, CategoricalProfile)
KEPT = [*PROFILE.categories, *PROFILE.other_values]


def coded() -> tuple[Any, Any]:
    return coded_strings("c", KEPT, PROFILE.bucket_of, PROFILE.n_bins)


def test_kept_strings_are_shared_members_equal_to_their_strings() -> None:
    kind: Any = kept_strings("c", KEPT)
    got = msgspec.json.Decoder(list[kind]).decode(json.dumps(["a", "a", "zz", "zz", ""]).encode())
    a1, a2, z1, z2, empty = got
    assert (
        type(a1) is kind and type(z1) is kind and a1.name == f"v{KEPT.index('a')}" and z1.name is None
    )  # z1: a pseudo-member
    assert a1 is a2 and z1 is z2  # one object per value, not one per event
    assert (a1, z1, empty) == ("a", "zz", "") and isinstance(a1, str) and str(a1) == "a" and f"{z1}" == "zz"
    assert hash(a1) == hash("a") and hash(z1) == hash("zz") and json.dumps([a1, z1]) == '["a", "zz"]'
    assert repr(a1) == "<Kept_c 'a'>" and repr(z1) == "<Kept_c 'zz'>"
    assert {"a": 1}[a1] == 1 and a1.value == "a" and z1.value == "zz"


def test_coded_strings_are_their_slots_with_their_strings_as_values() -> None:
    kind, absent = coded()
    for text in [*PROFILE.categories, "", "never-seen", "A", "true", "1"]:
        member = kind(text)
        assert float(member) == PROFILE.bucket_of(text) and member.value == text
        assert repr(member) == f"<Coded_c {text!r}: slot {PROFILE.bucket_of(text)}>"
    assert float(absent) == PROFILE.bucket_of(None) == PROFILE.n_bins and absent.value is None
    assert repr(absent) == f"<Coded_c None: slot {PROFILE.n_bins}>"
    got = msgspec.json.Decoder(list[kind]).decode(b'["a","zz","","a"]')
    slots = np.fromiter(got, dtype=np.float64)  # (what the decoder's batch path does)
    assert slots.tolist() == [float(PROFILE.bucket_of(v)) for v in ["a", "zz", "", "a"]]
    assert got[0] is got[3]


@pytest.mark.parametrize("which", ["kept", "coded"])
def test_pseudo_members_are_cached_up_to_a_bound(which: str) -> None:
    kind = kept_strings("c", KEPT) if which == "kept" else coded()[0]
    first = [kind(f"new-{i}") for i in range(PSEUDO_MEMBERS + 10)]
    again = [kind(f"new-{i}") for i in range(PSEUDO_MEMBERS + 10)]
    assert all(x is y for x, y in zip(first[:PSEUDO_MEMBERS], again, strict=False))
    beyond = zip(first[PSEUDO_MEMBERS:], again[PSEUDO_MEMBERS:], strict=True)
    assert all(x is not y and x.value == y.value and x == y for x, y in beyond)
    assert len(fastenum._MAKERS[kind][1]) == PSEUDO_MEMBERS
    assert len(kind) == len(dict.fromkeys(KEPT))  # (pseudo-members are no members)


@pytest.mark.parametrize("which", ["kept", "coded"])
def test_none_and_non_strings_are_not_values(which: str) -> None:
    kind = kept_strings("c", KEPT) if which == "kept" else coded()[0]
    for bad in (None, 1, 2.5, True, b"a"):
        with pytest.raises(ValueError):
            kind(bad)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.Decoder(kind).decode(b"null")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.Decoder(kind).decode(b"1")


@pytest.mark.parametrize("which", ["kept", "coded"])
def test_members_and_pseudo_members_refuse_to_be_pickled(which: str) -> None:
    kind = kept_strings("c", KEPT) if which == "kept" else coded()[0]
    for obj in (kind("a"), kind("never-seen")):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)


def test_the_mechanism_is_available_here() -> None:
    """The suite runs on a checked Python and msgspec: the fast path is what it tests."""
    assert fastenum._why_not() is None and fastenum.available()


@pytest.mark.parametrize("what", ["python", "msgspec", "self-check"])
def test_outside_the_checked_versions_the_decoder_reads_plain_strings(
    what: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastenum, "_AVAILABLE", None)
    if what == "python":
        monkeypatch.setattr(fastenum, "PYTHON_VERSIONS", ((3, 99),))
    elif what == "msgspec":
        monkeypatch.setattr(fastenum, "MSGSPEC_VERSIONS", ((9, 9),))
    else:
        monkeypatch.setattr(fastenum, "_self_check", lambda: "coded strings are not their slots")
    with caplog.at_level(logging.WARNING, logger="streamdrift.decode"):
        assert not fastenum.available()
    assert "binned by lookup" in caplog.text and (
        "3.99" in caplog.text or "9.9" in caplog.text or "slots" in caplog.text
    )
    # the decoder still equals the reference semantics, with plain strings and no slots from msgspec
    strict = [json.dumps(ev(T0 + i, features={"x": 1.0, "y": 2.0, "c": c})).encode() for i, c in enumerate("abzab")]
    for msgs in (VARIED, strict):
        assert_same(msgs, _config())
        assert_same(msgs, _config(features_field=None, segment_fields=[]))
    cols, _ = decoder(_config()).decode(strict)
    assert not isinstance(cols.features["c"], CodedColumn) and all(type(c) is str for c in cols.features["c"])
    assert EventDecoder(_config(), REF, ["x", "y", "c"])._features_tuple is False


def test_with_the_mechanism_the_strict_decoder_bins_while_decoding() -> None:
    strict = [json.dumps(ev(T0 + i, features={"x": 1.0, "y": 2.0, "c": c})).encode() for i, c in enumerate("abzab")]
    cols, _ = decoder(_config()).decode(strict)
    assert isinstance(cols.features["c"], CodedColumn)
    assert list(cols.features["c"]) == ["a", "b", "z", "a", "b"]
