"""Categorical strings that msgspec decodes straight to shared objects: the decoder's enum mechanism, in one place.

Why it exists: msgspec decodes a JSON string into a member of an :class:`enum.Enum` whose values
are strings with one lookup in C, and makes no new string. The decoder (:mod:`stream.decode`)
uses two kinds of such enums per categorical feature of the reference:

* :func:`kept_strings`: a ``StrEnum`` with a member per string the reference kept. A member is
  equal to its string (``==``, ``hash``, ``str``), exists once, and its hash is computed once, so
  binning it later is one dict hit (the lenient decoder's categoricals);
* :func:`coded_strings`: an enum whose members are ``float`` objects: the string's *slot* in the
  reference (``profile.bucket_of``), with the string as ``member.value``. The same
  ``np.fromiter`` that reads the numeric features reads them, so decoding a batch also bins its
  categoricals (the strict decoder; see the README's performance notes).

What is not ordinary enum use, and lives only here:

* a string the reference did not keep decodes through the enum's ``_missing_`` hook (defined in
  the base classes below) to a *pseudo-member*: an object of the enum's class that is not one of
  its members (``name`` is None), made by :func:`_pseudo` with the base type's ``__new__``, the way
  the standard library makes the pseudo-members of ``enum.Flag``. Pseudo-members are cached per
  enum up to :data:`PSEUDO_MEMBERS` strings, so memory stays bounded whatever the stream sends;
  beyond that each decode makes a new one (equal, not the same object);
* the classes are made per reference at run time, so their members cannot be pickled: pickling
  raises ``TypeError`` (nothing in streamdrift pickles them: checkpoints hold counts, not values).

Both rely on how ``enum`` builds members and on msgspec calling ``_missing_``: they are used only
on the versions they were checked on (:data:`PYTHON_VERSIONS`, :data:`MSGSPEC_VERSIONS`) and
when a self-check with msgspec passes (:func:`available`); otherwise the decoder reads
categoricals as plain strings and bins them by dict lookup (slower, same results).
"""

from __future__ import annotations

import enum
import logging
import sys
import weakref
from collections.abc import Callable, Sequence
from importlib.metadata import version as _dist_version
from typing import Any, NoReturn

import msgspec
import numpy as np

log = logging.getLogger("streamdrift.decode")

#: Python (major, minor) versions the mechanism is checked on (the test suite runs on them)
PYTHON_VERSIONS = ((3, 11),)
#: msgspec (major, minor) versions it is checked on
MSGSPEC_VERSIONS = ((0, 23),)
#: distinct strings an enum keeps as cached pseudo-members beyond the reference's own
PSEUDO_MEMBERS = 1024

# per enum class: how a pseudo-member is made from a string, and the cache of those made
_MAKERS: weakref.WeakKeyDictionary[type, tuple[Callable[[str], Any], dict[str, Any]]] = weakref.WeakKeyDictionary()


def _refuse_pickle(obj: Any) -> NoReturn:
    raise TypeError(
        f"{type(obj).__name__} values cannot be pickled: the class is made per reference profile at run time "
        "(stream.fastenum); use the string (member.value)"
    )


def _missing(cls: type, value: object) -> Any:
    """The ``_missing_`` hook: a string the enum has no member for becomes a (cached) pseudo-member."""
    if not isinstance(value, str):
        return None
    got = _MAKERS.get(cls)
    if got is None:
        return None
    make, cache = got
    member = cache.get(value)
    if member is None:
        member = make(value)
        if len(cache) < PSEUDO_MEMBERS:
            cache[value] = member
    return member


class _Kept(enum.StrEnum):
    """Base of a categorical's kept strings (see :func:`kept_strings`)."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return _missing(cls, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._value_!r}>"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        _refuse_pickle(self)


class _Coded(float, enum.Enum):
    """Base of a categorical's slots (see :func:`coded_strings`): a member is its slot as a float, and
    its value the string it decodes from."""

    def __new__(cls, slot: int, text: str | None) -> _Coded:
        obj = float.__new__(cls, slot)
        obj._value_ = text
        return obj

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return _missing(cls, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._value_!r}: slot {float(self):g}>"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        _refuse_pickle(self)


def _pseudo(kind: Any, base_arg: Any, value: str | None) -> Any:
    """An object of the enum ``kind`` that is not one of its members: made with the base type's
    ``__new__`` from ``base_arg`` (the string itself, or the slot), ``value`` the string."""
    base = str if issubclass(kind, str) else float
    got = base.__new__(kind, base_arg)
    got._value_ = value
    got._name_ = None
    return got


def _make(
    base: Any, name: str, kept: Sequence[str], args: Callable[[str], Any], pseudo_arg: Callable[[str], Any]
) -> Any:
    """An enum on ``base`` (functional API) with a member per string of ``kept`` (made from ``args(text)``);
    other strings become pseudo-members made from ``pseudo_arg(text)``."""
    functional: Any = base  # (mypy reads the functional API as a lookup of one member)
    kind: Any = functional(name, [(f"v{i}", args(v)) for i, v in enumerate(dict.fromkeys(kept))])
    _MAKERS[kind] = (lambda text: _pseudo(kind, pseudo_arg(text), text), {})
    return kind


def kept_strings(name: str, kept: Sequence[str]) -> type[enum.StrEnum]:
    """The strings a categorical's reference kept, as a ``StrEnum`` msgspec decodes to; any other string
    decodes to a pseudo-member equal to it."""
    kind: type[enum.StrEnum] = _make(_Kept, f"Kept_{name}", kept, lambda v: v, lambda v: v)
    return kind


def coded_strings(
    name: str, kept: Sequence[str], slot_of: Callable[[str | None], int], absent_slot: int
) -> tuple[type[enum.Enum], Any]:
    """The strings of a categorical as an enum msgspec decodes to, whose members are their slots
    (``slot_of(text)``) as floats, with the string as ``value``; and the object that stands for an absent
    value (slot ``absent_slot``, value None). Any other string decodes to a pseudo-member with its own
    slot (``slot_of`` of it: unseen, other, or missing for "")."""
    kind = _make(_Coded, f"Coded_{name}", kept, lambda v: (slot_of(v), v), slot_of)
    return kind, _pseudo(kind, absent_slot, None)


def _self_check() -> str | None:
    """None if both kinds decode with this msgspec as the decoder relies on; else what differs."""
    try:
        raw = b'["a","b","zz","a","zz",""]'
        kept: Any = kept_strings("check", ["a", "b"])
        got = msgspec.json.Decoder(list[kept]).decode(raw)
        if not (got[0] is got[3] is kept("a") and got[2] is got[4] and got[:3] == ["a", "b", "zz"] and got[5] == ""):
            return "kept strings are not shared members equal to their strings"
        if str(got[2]) != "zz" or hash(got[2]) != hash("zz") or got[2].name is not None or not repr(got[2]):
            return "a pseudo-member is not its string"
        slots = {"a": 0, "b": 1}
        coded: Any
        coded, absent = coded_strings("check", ["a", "b"], lambda v: slots.get(v or "", 3 if v == "" else 2), 3)
        got = msgspec.json.Decoder(list[coded]).decode(raw)
        if np.fromiter(got, dtype=np.float64).tolist() != [0.0, 1.0, 2.0, 0.0, 2.0, 3.0]:
            return "coded strings are not their slots"
        if [m.value for m in got] != ["a", "b", "zz", "a", "zz", ""] or absent.value is not None or float(absent) != 3:
            return "coded strings do not keep their strings"
    except (TypeError, ValueError, AttributeError, msgspec.MsgspecError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether the decoder may use these enums here (checked once; the reason is logged when not)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        why = _why_not()
        if why is not None:
            log.warning("categoricals are decoded as plain strings and binned by lookup (slower): %s", why)
        _AVAILABLE = why is None
    return _AVAILABLE


def _why_not() -> str | None:
    py = sys.version_info[:2]
    if py not in PYTHON_VERSIONS:
        return f"the enum mechanism is checked on Python {_versions(PYTHON_VERSIONS)}, this is {py[0]}.{py[1]}"
    ms = _minor(_dist_version("msgspec"))
    if ms not in MSGSPEC_VERSIONS:
        this = _dist_version("msgspec")
        return f"the enum mechanism is checked on msgspec {_versions(MSGSPEC_VERSIONS)}, this is {this}"
    return _self_check()


def _minor(text: str) -> tuple[int, int] | None:
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _versions(vs: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{a}.{b}" for a, b in vs)
