"""Options risk: batch Black-76 / Black-Scholes-Merton greeks and per-account margin in integer
ticks, computed by kernels/risk.h so every backend returns the same bytes. Units, conversions and
every margin parameter: docs/RISK.md."""
from __future__ import annotations

import copy
import decimal
import math
import numbers
from collections.abc import Mapping, Set as AbcSet
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np

from . import dispatch

# Instrument flags (kernels/black76.h, kernels/margin.h): kind = PUT | CALL | FUTURE, plus INVERSE.
PUT, CALL, INVERSE, FUTURE = 0, 1, 2, 8
_SPOT = 4
_KINDS = (PUT, CALL, FUTURE, PUT | INVERSE, CALL | INVERSE, FUTURE | INVERSE)
_IS_KIND = np.isin(np.arange(256), _KINDS)  # by uint8 kind: a lookup costs a tenth of np.isin
_MAX_MOVES = _MAX_EXT = 16  # RK_MAX_MOVES, RK_MAX_EXT
_MAX_SHOCK_LOG = 700.0  # the largest vol shock is e^700 (finite, so 0 * it is 0)
_GPU_CHUNK = 1 << 20  # options per chunk on a GPU: copies of one overlap the kernel of another
_DBL_MAX = 1.7976931348623157e308
_MAX_EXP_ARG = 700.0  # B76_MAX_EXP_ARG: |r t|, |(r-q) t| bound keeping discount and growth finite
_P_RATE, _P_INDEX = 12, 13  # RK_P_RATE, RK_P_INDEX
# id(params) -> (params, its checked _layout(), its field values): a clearing block margins with the same parameters dozens of
# times. By identity, not equality: equal parameters may differ in the sign of a zero. Holding params
# keeps its id from being reused.
_layouts: dict[int, tuple] = {}


class Greeks(NamedTuple):
    price: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    vega: np.ndarray
    theta: np.ndarray
    rho: np.ndarray


class MarginResult(NamedTuple):
    initial: np.ndarray  # int64 ticks
    maintenance: np.ndarray  # int64 ticks
    worst: np.ndarray  # int32 scenario index, see MarginParams.scenario


@dataclass(frozen=True)
class MarginParams:
    """Margin model parameters, defaults after Deribit's BTC-USD portfolio margin; docs/RISK.md
    explains and cites each. Fractions are of the index price."""
    moves: tuple = (-0.16, -0.12, -0.08, -0.04, 0.0, 0.04, 0.08, 0.12, 0.16)
    vol_up: float = 0.5
    vol_down: float = 0.25
    vol_ref_days: float = 30.0
    vol_exponent: float = 0.3  # shock exponent under vol_ref_days to expiry
    vol_exponent_long: float = 0.13  # from vol_ref_days to expiry on
    vol_up_floor: float = 0.5  # the vol shocked up is at least this (an absolute volatility)
    vol_down_floor: float = 0.1  # the vol-down multiplier is at least this
    days_per_year: float = 365.0
    extended_moves: tuple = (-0.66, -0.33, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
    extended_weight: float = 1.0  # fraction of an extended-move loss that counts, before the dampener
    extended_reference_move: float = 0.16  # dampener: a move m counts min(1, this / |m|) of that
    short_option_contingency: float = 0.01  # per net short option per strike, of the index
    future_contingency: float = 0.01  # of the underlying value of offsetting futures
    initial_multiplier: float = 1.3
    tick: float = 1e-8
    option_initial: float = 0.15
    option_initial_floor: float = 0.10
    option_maintenance: float = 0.075
    future_initial: float = 0.02
    future_maintenance: float = 0.01

    def __post_init__(self):
        for name in ("moves", "extended_moves"):  # lists and arrays are fine too; keep it hashable
            value = getattr(self, name)
            if isinstance(value, (AbcSet, Mapping)):  # a dict's keys, a set in hash order: not what was meant
                raise ValueError(f"MarginParams.{name} must be a sequence of numbers in order, "
                                 f"not a {type(value).__name__}")
            try:
                items = list(value)
            except TypeError:
                raise ValueError(f"MarginParams.{name} must be a sequence of numbers, not {value!r}") from None
            if not all(isinstance(m, numbers.Real) and not isinstance(m, (bool, np.bool_)) for m in items):
                raise ValueError(f"MarginParams.{name} must be finite numbers, not {value!r}")
            try:
                object.__setattr__(self, name, tuple(float(m) for m in items))
            except OverflowError:
                raise ValueError(f"MarginParams.{name} must be finite numbers, not {value!r}") from None
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("moves", "extended_moves"):
                if not all(_finite_real(v) for v in value):
                    raise ValueError(f"MarginParams.{f.name} must be finite numbers, not {value!r}")
                continue
            # Each scalar read once as a plain float, kept and checked as that: a subclass's
            # __float__ may answer differently on every call (checked as one number, laid out for
            # the kernels as another), and _array caches a layout only for plain floats.
            if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
                raise ValueError(f"MarginParams.{f.name} must be finite numbers, not {value!r}")
            plain = _plain_float(value)
            if plain is None:
                raise ValueError(f"MarginParams.{f.name} must be finite numbers, not {value!r}")
            object.__setattr__(self, f.name, plain)
        if not 1 <= len(self.moves) <= _MAX_MOVES or not len(self.extended_moves) <= _MAX_EXT:
            raise ValueError(f"MarginParams: 1..{_MAX_MOVES} moves and at most {_MAX_EXT} extended moves")
        if min(self.moves + self.extended_moves) <= -1.0:
            raise ValueError("MarginParams: every move must be above -1 (-100%)")
        if not 0.0 < self.vol_down_floor <= 1.0:
            raise ValueError(f"MarginParams.vol_down_floor must be in (0, 1], not {self.vol_down_floor}")
        # The shock (vol_ref_days / DTE) ** vol_exponent is largest a day from expiry: an infinite
        # one made vol_up 0 times it NaN, an up state no longer above the vol, and a short option
        # (margined in its up state) was margined at its intrinsic value.
        if self.vol_exponent * math.log(max(self.vol_ref_days, 1.0)) > _MAX_SHOCK_LOG:
            raise ValueError(f"MarginParams: the vol shock of a 1-day option, vol_ref_days ** vol_exponent = "
                             f"{self.vol_ref_days!r} ** {self.vol_exponent!r}, must stay below e^{_MAX_SHOCK_LOG:g}")
        if self.initial_multiplier < 1.0:
            raise ValueError(f"MarginParams.initial_multiplier must be >= 1, not {self.initial_multiplier}")
        for name in ("vol_ref_days", "days_per_year", "tick"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"MarginParams.{name} must be > 0, not {getattr(self, name)}")
        for f in fields(self):
            if not isinstance(getattr(self, f.name), tuple) and getattr(self, f.name) < 0.0:
                raise ValueError(f"MarginParams.{f.name} must be >= 0, not {getattr(self, f.name)}")

    @property
    def extended_weights(self) -> tuple[float, ...]:
        """Weight of each extended move's loss: extended_weight * min(1, extended_reference_move / |m|)."""
        return tuple(self.extended_weight * min(1.0, self.extended_reference_move / abs(m)) if m else
                     self.extended_weight for m in self.extended_moves)

    @property
    def n_scenarios(self) -> int:
        """The standard moves, the extended moves, then the gaps between adjacent moves (margin.h)."""
        return len(self.moves) + len(self.extended_moves) + len(self.moves) - 1

    def scenario(self, i: int) -> tuple:
        """(underlying move, vol state) of scenario i as reported in MarginResult.worst; for a gap
        between two adjacent moves ((move, next move), vol state). The vol state of a standard move
        and of a gap is "worst": each position in its own worst state, down for a long option and up
        for a short one (vols moving apart are covered); the extended moves' is "up"."""
        n, ne = len(self.moves), len(self.extended_moves)
        if not 0 <= i < self.n_scenarios:
            raise ValueError(f"scenario index {i} outside 0..{self.n_scenarios - 1}")
        if i >= n + ne:
            k = i - n - ne
            return (self.moves[k], self.moves[k + 1]), "worst"
        if i >= n:
            return self.extended_moves[i - n], "up"
        return self.moves[i], "worst"

    def _array(self, index: float, rate: float) -> np.ndarray:
        """The kernel's parameter array (layout: RK_P_* in kernels/margin.h).

        Built from a checked copy of the fields: a frozen dataclass can still be changed with
        object.__setattr__, and unpickling (copy, pickle, a snapshot) skips __post_init__, so the
        fields may hold what __post_init__ refuses. More than RK_MAX_MOVES moves sent the kernels
        past their per-account scenario array (a crash, or other memory read as losses), a NaN
        shock or a negative tick became margins. A cached layout is reused only while every field
        is still the very object it was built from (a few identity tests a call)."""
        names = _PARAM_FIELDS
        values = tuple(getattr(self, name, None) for name in names)  # unpickled: may lack one
        hit = _layouts.get(id(self))
        if hit is None or any(a is not b for a, b in zip(hit[2], values)):
            checked = MarginParams(**dict(zip(names, values)))  # __post_init__ again: ValueError naming the field
            hit = self, checked._layout(), values
            # Cached only while the fields are immutable, plain floats and tuples of them (what
            # __post_init__ leaves): a list set with object.__setattr__ is the same object after
            # it is changed in place, and a stale layout would be used.
            if all(type(v) is float or (type(v) is tuple and all(type(m) is float for m in v)) for v in values):
                if len(_layouts) >= 64:
                    _layouts.clear()
                _layouts[id(self)] = hit
        arr = hit[1].copy()
        arr[_P_RATE], arr[_P_INDEX] = rate, index
        return arr

    def _layout(self) -> np.ndarray:
        """_array with rate and index left 0: the rest depends on the frozen fields alone."""
        head = [len(self.moves), len(self.extended_moves), self.vol_up, self.vol_down, self.vol_ref_days,
                self.vol_exponent, self.vol_down_floor, self.days_per_year, self.extended_weight,
                self.short_option_contingency, self.initial_multiplier, self.tick, 0.0, 0.0,  # rate, index
                self.option_initial, self.option_initial_floor, self.option_maintenance,
                self.future_initial, self.future_maintenance, self.vol_exponent_long, self.vol_up_floor,
                self.future_contingency]
        return np.array(head + list(self.moves) + list(self.extended_moves) + list(self.extended_weights), np.float64)


_PARAM_FIELDS = tuple(f.name for f in fields(MarginParams))


@dataclass(frozen=True)
class Portfolio:
    """Positions of many accounts: account a holds rows offsets[a]..offsets[a+1]-1 of
    (instrument, size); size in contracts, negative = short (USD notional for inverse futures)."""
    offsets: np.ndarray
    instrument: np.ndarray
    size: np.ndarray

    def __post_init__(self):
        # own read-only copies: the caller's arrays may change later (a reused buffer), and these
        # are what the kernels index with (_margin_inputs checks their shape again per call)
        object.__setattr__(self, "offsets", _sealed(_int_array("offsets", self.offsets, np.int64)))
        object.__setattr__(self, "instrument", _sealed(_int_array("instrument", self.instrument, np.int32)))
        object.__setattr__(self, "size", _sealed(_float_array("size", self.size)))
        off, n = self.offsets, len(self.instrument)
        if len(off) == 0 or off[0] != 0 or off[-1] != n:
            raise ValueError(f"offsets must start at 0 and end at the number of positions ({n})")
        drops = off[1:] < off[:-1]
        if drops.any():
            _first_bad("offsets", np.concatenate([[False], drops]), off, "must not decrease")
        if len(self.size) != n:
            raise ValueError(f"size has {len(self.size)} entries, instrument has {n}")
        finite = np.isfinite(self.size)
        if not finite.all():
            _first_bad("size", ~finite, self.size, "must be finite")


@dataclass(frozen=True)
class Marks:
    """Instrument table with its marks: one row per instrument; kind is PUT, CALL or FUTURE, plus
    INVERSE for coin-settled ones. expiry in years, vol and rate per year; strike and vol are
    ignored for futures. index is the underlying index price."""
    index: float
    rate: float
    forward: np.ndarray
    strike: np.ndarray
    expiry: np.ndarray
    vol: np.ndarray
    kind: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "index", _real_scalar("index", self.index))
        object.__setattr__(self, "rate", _real_scalar("rate", self.rate))
        if not (np.isfinite(self.index) and self.index > 0):
            raise ValueError(f"index must be finite and > 0, not {self.index!r}")
        if not np.isfinite(self.rate):
            raise ValueError(f"rate must be finite, not {self.rate!r}")
        for name in ("forward", "strike", "expiry", "vol"):
            object.__setattr__(self, name, _sealed(_float_array(name, getattr(self, name))))
        object.__setattr__(self, "kind", _sealed(_int_array("kind", self.kind, np.uint8)))
        m = len(self.kind)
        for name in ("forward", "strike", "expiry", "vol"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, kind has {m}")
        _first_bad("kind", ~_IS_KIND[self.kind], self.kind, f"must be one of {_KINDS}")
        option = (self.kind & FUTURE) == 0
        _positive("forward", self.forward)
        _first_bad("strike", option & ~_is_positive(self.strike), self.strike, "must be finite and > 0 for an option")
        _first_bad("vol", option & ~_is_positive(self.vol), self.vol, "must be finite and > 0 for an option")
        _first_bad("expiry", ~_is_nonnegative(self.expiry), self.expiry, "must be finite and >= 0")
        with np.errstate(over="ignore"):  # an overflow is inf, refused here (not a warning: review s22)
            rt = np.abs(self.rate * self.expiry)
        _first_bad("expiry", rt > _MAX_EXP_ARG, self.expiry, f"makes |rate * expiry| exceed {_MAX_EXP_ARG}")


def greeks(forward_or_spot, strike, t, r, vol, is_call, *, q=None, inverse=False, index=None,
           backend=None) -> Greeks:
    """Price, delta, gamma, vega, theta, rho of European options, per 1.00 (docs/RISK.md).

    q=None: Black-76, the first argument is the forward. Otherwise Black-Scholes-Merton: the first
    argument is the spot and q the dividend / carry yield (F = S exp((r - q) t)), greeks by spot.
    inverse: coin-settled, every output divided by `index` (default: the first argument).
    Scalars broadcast; arrays must share one length. t = 0 is expiry (intrinsic value).
    Raises ValueError naming the first bad input."""
    values = {"forward_or_spot": forward_or_spot, "strike": strike, "t": t, "r": r,
              "q": r if q is None else q, "vol": vol,  # Black-76 is BSM with q = r
              "index": forward_or_spot if index is None else index}
    n = _common_length(values | {"is_call": is_call, "inverse": inverse})
    arrays = [_float_array(name, np.atleast_1d(v)) for name, v in values.items()]
    call, inv = _flag_array("is_call", is_call), _flag_array("inverse", inverse)
    _same_lengths(n, dict(zip(values, arrays)) | {"is_call": call, "inverse": inv})
    flags = (call * np.uint8(CALL) | inv * np.uint8(INVERSE) | np.uint8(0 if q is None else _SPOT)).astype(np.uint8)
    arrays.append(flags)
    # bit j: input j has one element for all options (kernels/risk.h, greeks_item)
    scalars = sum(1 << j for j, a in enumerate(arrays) if len(a) == 1 and n != 1)
    if n == 0:
        return Greeks(*np.empty((6, 0)))

    def work(b):
        def step(lo, hi):
            out = b.empty((6, hi - lo), np.float64)
            b.launch("greeks", hi - lo, *(b.to_device(a if len(a) == 1 else a[lo:hi]) for a in arrays),
                     np.uint32(scalars), out)
            return out
        return b.chunked(n, _GPU_CHUNK if b.is_gpu else n, step, axis=1)

    out = dispatch.run(backend, work, n, "risk")
    if np.isnan(out[0]).any():  # the kernel marks invalid input and overflow; name the first one
        inputs = dict(zip(values, arrays))
        _validate_greeks(n, inputs)
        i = int(np.flatnonzero(np.isnan(out[0]))[0])
        at = ", ".join(f"{name}={float(a[0 if len(a) == 1 else i])!r}" for name, a in inputs.items())
        raise ValueError(f"greeks: option {i} ({at}) gives a result beyond double precision; "
                         "no backend returns NaN or infinity for it")
    return Greeks(*out)


def _flag_array(name, value) -> np.ndarray:
    """A bool array from bools or 0/1 integers; strings, floats and other values are errors."""
    _refuse_masked(name, value)
    a = np.atleast_1d(np.asarray(value))
    if a.dtype == bool:
        return a
    if a.size == 0 and a.dtype.kind in "fiu":  # [] is float64 to NumPy: no options, no flags
        return a.astype(bool)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be bool or 0/1 integers, not {a.dtype}")
    _first_bad(name, (a != 0) & (a != 1), a, "must be 0 or 1")
    return a.astype(bool)


def _validate_greeks(n, a):
    x, k, t, r, q, vol, index = (np.broadcast_to(v, (n,)) for v in a.values())
    _positive("forward_or_spot", x)
    _positive("strike", k)
    _positive("vol", vol)
    _positive("index", index)
    _first_bad("t", ~_is_nonnegative(t), t, "must be finite and >= 0")
    _first_bad("r", ~np.isfinite(r), r, "must be finite")
    _first_bad("q", ~np.isfinite(q), q, "must be finite")
    with np.errstate(over="ignore", invalid="ignore"):  # (an overflow is what is refused: inf > the bound)
        rt, qt = np.abs(r * t), np.abs((r - q) * t)
    _first_bad("r", rt > _MAX_EXP_ARG, r, f"makes |r * t| exceed {_MAX_EXP_ARG}")
    _first_bad("q", qt > _MAX_EXP_ARG, q, f"makes |(r - q) * t| exceed {_MAX_EXP_ARG}")


def portfolio_margin(portfolio, marks, params: MarginParams | None = None, backend=None,
                     checked: bool = True) -> MarginResult:
    """Per-account initial and maintenance margin (int64 ticks) and worst scenario (int32) under
    the portfolio model: the worst loss of the scenarios and of the gaps between adjacent moves,
    plus the short option contingency (docs/RISK.md).

    portfolio: a Portfolio (or a dict of its fields): account a holds the positions
      offsets[a]..offsets[a+1]-1, each an instrument index into marks and a size in contracts
      (negative = short; USD notional for inverse futures).
    marks: a Marks (or dict): per instrument its kind (PUT, CALL or FUTURE, plus INVERSE for
      coin-settled), forward, strike, expiry in years and vol, with the underlying's index price
      and the rate.
    params: MarginParams (default: the documented defaults, docs/RISK.md).
    Returns MarginResult(initial, maintenance, worst); a tick is params.tick of the settlement
    currency, rounded up. Raises ValueError naming the first bad input, an account whose margin
    does not fit int64 ticks, or one whose scenario loss is not finite; with checked=False such
    accounts get the kernel's negative codes instead (-1: does not fit, -2: not finite), so one
    account cannot fail a batch."""
    pf, mk, pp = _margin_inputs(portfolio, marks, params)
    n = len(pf.offsets) - 1

    def work(b):
        im, mm, worst = b.empty(n, np.int64), b.empty(n, np.int64), b.empty(n, np.int32)
        b.launch("portfolio_margin", n, *_margin_buffers(b, pf, mk, pp), im, mm, worst)
        return b.to_host(im), b.to_host(mm), b.to_host(worst)

    im, mm, worst = dispatch.run(backend, work, n, "risk")
    if checked:
        _check_ticks(mm, im)
    return MarginResult(im, mm, worst)


def standard_margin(portfolio, marks, params: MarginParams | None = None, backend=None):
    """Per-account (initial, maintenance) in int64 ticks without the portfolio model: per short
    option and per future, summed (docs/RISK.md)."""
    pf, mk, pp = _margin_inputs(portfolio, marks, params)
    n = len(pf.offsets) - 1

    def work(b):
        im, mm = b.empty(n, np.int64), b.empty(n, np.int64)
        b.launch("standard_margin", n, *_margin_buffers(b, pf, mk, pp), im, mm)
        return b.to_host(im), b.to_host(mm)

    im, mm = dispatch.run(backend, work, n, "risk")
    _check_ticks(mm, im)
    return im, mm


def _margin_inputs(portfolio, marks, params):
    # A Portfolio and a Marks hold read-only copies of their arrays, checked when built. What the
    # kernels index with is checked again on every call, cheaply: an object whose arrays were
    # swapped (object.__setattr__) or made writeable and changed would otherwise hand them offsets
    # past their arrays (a crash) or lengths that differ (each backend reading other memory).
    # Anything out of shape is checked in full (dataclasses.replace reruns __post_init__), which
    # names the bad input.
    # The checks and the kernels see private copies of the arrays (a few microseconds against the
    # valuations): read-only is a flag another thread may set back, and changing an offset or an
    # instrument id between a check of the caller's object and the kernel reading it (the C
    # fallback releases the GIL) sent the kernel past the arrays.
    # A subclass is read once, field by field, into the class itself: its __post_init__ may skip
    # the checks (replace() would build the subclass again), its attributes may answer
    # differently at every read, and its methods (_array) are its own.
    pf, pf_copied = _private(portfolio) if type(portfolio) is Portfolio else (_exact(Portfolio, portfolio), True)
    mk, mk_copied = _private(marks) if type(marks) is Marks else (_exact(Marks, marks), True)
    if not (pf_copied and mk_copied and _intact(pf, mk)):
        pf, mk = replace(pf), replace(mk)
    params = MarginParams() if params is None else params
    if not isinstance(params, MarginParams):
        raise TypeError(f"params must be a MarginParams, not {type(params).__name__}")
    inst = pf.instrument
    if inst.size and (inst.min() < 0 or inst.max() >= len(mk.kind)):
        _first_bad("instrument", (inst < 0) | (inst >= len(mk.kind)), inst,
                   f"must index the {len(mk.kind)} instruments of marks")
    return pf, mk, MarginParams._array(params, float(mk.index), float(mk.rate))  # not a subclass's _array


def _exact(cls, value):
    """A cls (Portfolio or Marks) built and checked from a dict of its fields, or from the fields
    of an instance of a subclass, each read once."""
    if isinstance(value, cls):
        value = {f.name: getattr(value, f.name) for f in fields(cls)}
    return cls(**value)


_LAYOUT = {"offsets": np.int64, "instrument": np.int32, "size": np.float64, "forward": np.float64,
           "strike": np.float64, "expiry": np.float64, "vol": np.float64, "kind": np.uint8}


def _sealed(arr: np.ndarray) -> np.ndarray:
    """A read-only copy of arr that owns its memory."""
    out = np.array(arr, copy=True, order="C")
    out.flags.writeable = False
    return out


def _private(obj):
    """(a shallow copy of a Portfolio or Marks whose arrays are sealed copies of obj's, whether
    every one was copied), so no other thread can change what is checked and then read. Arrays
    made writeable again (a book changed in place) and attributes that are not the kernels' arrays
    are left as they are and the caller checks everything in full, on copies: such an array's flag
    may be set back before _intact looks at it, and the array changed after."""
    out, copied = copy.copy(obj), True
    for f in fields(obj):
        if f.name not in _LAYOUT:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray) and value.dtype == _LAYOUT[f.name] and not value.flags.writeable:
            object.__setattr__(out, f.name, _sealed(value))
        else:
            copied = False
    return out, copied


def _intact(pf, mk) -> bool:
    """Whether pf and mk still have the layout their checks established: kernel dtypes, 1-D,
    contiguous, read-only, consistent lengths, offsets from 0 to the positions never decreasing,
    instrument kinds known (instrument ids are range-checked by the caller on every call)."""
    for obj, names in ((pf, ("offsets", "instrument", "size")), (mk, ("forward", "strike", "expiry", "vol", "kind"))):
        for name in names:
            a = getattr(obj, name)
            if not (isinstance(a, np.ndarray) and a.dtype == _LAYOUT[name] and a.ndim == 1
                    and a.flags.c_contiguous and not a.flags.writeable):
                return False
    off, n, m = pf.offsets, len(pf.instrument), len(mk.kind)
    if len(off) == 0 or off[0] != 0 or off[-1] != n or len(pf.size) != n:
        return False
    if any(len(getattr(mk, name)) != m for name in ("forward", "strike", "expiry", "vol")):
        return False
    if (off[1:] < off[:-1]).any() or not _IS_KIND[mk.kind].all():
        return False
    # The values too (a few vectorised passes): an array swapped for another read-only one, or an
    # index or rate set with object.__setattr__, carried a negative index or forward, a NaN or
    # negative vol or expiry, a string index or a NaN size to the kernels, which margined them
    # silently (standard margin skipped a NaN size).
    index, rate = mk.index, mk.rate
    if type(index) is not float or type(rate) is not float or not (0.0 < index <= _DBL_MAX and abs(rate) <= _DBL_MAX):
        return False
    option = (mk.kind & FUTURE) == 0
    with np.errstate(all="ignore"):
        return bool(np.isfinite(pf.size).all() and _is_positive(mk.forward).all()
                    and (_is_positive(mk.strike) | ~option).all() and (_is_positive(mk.vol) | ~option).all()
                    and _is_nonnegative(mk.expiry).all() and (np.abs(rate * mk.expiry) <= _MAX_EXP_ARG).all())


def _margin_buffers(b, pf, mk, pp):
    arrays = (pf.offsets, pf.instrument, pf.size, mk.forward, mk.strike, mk.expiry, mk.vol, mk.kind, pp)
    return [b.to_device(a) for a in arrays]


_OVERFLOW, _NOT_FINITE = -1, -2  # RK_OVERFLOW, RK_NOT_FINITE in kernels/margin.h


def _check_ticks(*results):
    for res in results:
        bad = np.flatnonzero(res < 0)
        if bad.size:
            a = int(bad[0])
            if res[a] == _NOT_FINITE:
                raise ValueError(f"account {a}: a scenario loss is not a finite number (its positions' values "
                                 "overflow double precision); no margin can be computed for it")
            raise ValueError(f"account {a}: margin does not fit in int64 ticks; raise MarginParams.tick")


def _common_length(args: dict) -> int:
    n = None
    for name, value in args.items():
        # an ndarray's own shape: a subclass (or any object's .shape, which np.shape reads) may
        # claim another; _same_lengths checks the converted arrays against n as well
        shape = np.ndarray.view(value, np.ndarray).shape if isinstance(value, np.ndarray) else np.shape(value)
        if len(shape) > 1:
            raise ValueError(f"{name} must be a scalar or 1-D, has shape {shape}")
        if shape:
            if n is not None and shape[0] != n[1]:
                raise ValueError(f"{name} has {shape[0]} entries, {n[0]} has {n[1]}")
            n = n or (name, shape[0])
    return 1 if n is None else n[1]


def _plain_float(v) -> float | None:
    """The int or float v read once as a plain finite float, or None (a __float__ that returns
    something else, or a value beyond double precision). float(-0.0) keeps the sign."""
    try:
        f = float(v)
    except (OverflowError, TypeError, ValueError):
        return None
    return f if type(f) is float and math.isfinite(f) else None


def _same_lengths(n: int, arrays: dict) -> None:
    """Every converted input has n entries or one (a scalar): n came from the inputs' shapes, which
    an object may state falsely (an array of 3 forwards claiming 2**26 sent the kernels 2**26
    items past its end: a segfault)."""
    for name, a in arrays.items():
        if len(a) != n and len(a) != 1:
            raise ValueError(f"{name} has {len(a)} entries, expected {n} (or one for all)")


def _finite_real(v) -> bool:
    """Whether the int or float v is finite as a double (a huge int is not)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _refuse_masked(name, value) -> None:
    """np.asarray drops a masked array's mask: its hidden entries would be read as data."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        raise ValueError(f"{name} has masked entries; pass plain values")


def _real_values(name, value) -> np.ndarray:
    """value as a float64 array of any shape, from real numbers only: integer and float arrays
    and scalars, and Python objects that are real numbers. Everything else is a ValueError naming
    `name`: a long double nonzero but below double's range (it would become 0: an option of
    t = 1e-4000 priced as expired), a complex array (NumPy would drop the imaginary part with a mere warning), datetimes
    and timedeltas (NumPy would read them as counts of their unit), strings (NumPy would parse
    them), bools, None, a masked array with masked entries (the mask would be dropped) and an
    integer beyond double precision (an OverflowError otherwise)."""
    _refuse_masked(name, value)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    kind = arr.dtype.kind
    if kind == "f" and arr.dtype.itemsize > 8:  # long double: one outside double's range would become 0 or inf
        with np.errstate(over="ignore"):  # (the cast's overflow warning is an error under -W error: review s22)
            out = np.ascontiguousarray(arr, np.float64)
        for lost, what in (((out == 0) & (arr != 0), "nonzero but below double precision's range (it would be read as 0)"),
                           (np.isinf(out) & np.isfinite(arr), "beyond double precision's range")):
            lost = np.flatnonzero(lost)
            if lost.size:
                i = int(lost[0])
                raise ValueError(f"{name}[{i}] = {np.format_float_scientific(arr.reshape(-1)[i])}: {what}")
        return out
    if kind in "fiu":
        return np.ascontiguousarray(arr, np.float64)
    if kind == "O":
        flat = arr.ravel()
        for i, v in enumerate(flat):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, decimal.Decimal)):
                raise ValueError(f"{name} must be numeric: element {i} is {type(v).__name__}")
        try:
            return np.array([float(v) for v in flat], np.float64).reshape(arr.shape)
        except (OverflowError, ValueError, TypeError) as exc:
            raise ValueError(f"{name} must be numeric: {exc}") from None
    raise ValueError(f"{name} must be real numbers (integer or float), not {arr.dtype}")


def _real_scalar(name, value) -> float:
    """One real number (see _real_values) as a Python float."""
    arr = _real_values(name, value)
    if arr.shape != () and arr.shape != (1,):
        raise ValueError(f"{name} must be a number, has shape {arr.shape}")
    return float(arr.reshape(-1)[0])


def _float_array(name, value) -> np.ndarray:
    arr = _real_values(name, value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, has shape {arr.shape}")
    return arr


def _int_array(name, value, dtype) -> np.ndarray:
    _refuse_masked(name, value)
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iub"):
        raise ValueError(f"{name} must be a 1-D integer array, has dtype {arr.dtype} and shape {arr.shape}")
    info = np.iinfo(dtype)
    # a dtype that casts safely needs no check, else two reductions; masks only name the culprit
    if arr.size and not np.can_cast(arr.dtype, dtype) and (arr.min() < info.min or arr.max() > info.max):
        _first_bad(name, (arr < info.min) | (arr > info.max), arr, f"does not fit {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype)


def _is_positive(arr):
    return np.isfinite(arr) & (arr > 0)


def _is_nonnegative(arr):
    return np.isfinite(arr) & (arr >= 0)


def _positive(name, arr):
    _first_bad(name, ~_is_positive(arr), arr, "must be finite and > 0")


def _first_bad(name, mask, values, why):
    bad = np.flatnonzero(mask)
    if bad.size:
        i = int(bad[0])
        value = values[i].item() if isinstance(values[i], np.generic) else values[i]
        raise ValueError(f"{name}[{i}] = {value!r}: {why}")
