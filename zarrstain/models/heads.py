"""Output heads: what a network's last layer predicts per target, and the channels written.

A head sits between an architecture's raw output and the channels the engine writes. It owns
three things: how many raw channels the module produces per target, the training loss on
them, and how they become output channels (:meth:`OutputHead.reduce`), which runs **inside
each block**, per voxel, so exact tiling still holds.

- :class:`ValueHead`: one value per target (pytorch_fnet's regression, MSE).
- :class:`BinsHead`: In silico labeling's per-pixel distribution over ``bins`` intensity bins
  of the target's normalized range, trained with cross-entropy on the binned target; written
  as its mean and standard deviation (and on request its mode, median, and an interval).
- :class:`QuantileHead`: lower / median / upper quantiles at α/2, 0.5, 1 − α/2 trained with
  the pinball loss (FluoGen's uncertainty heads). The bounds are parameterised as the median
  minus / plus a softplus, so they never cross.

A head is stored as ``kwargs["head"]`` of a model card (absent for a value head, so cards of
earlier models are unchanged) and may carry a :class:`Calibration` (see
:mod:`zarrstain.uncertainty.calibrate`), applied to its interval in :meth:`OutputHead.reduce`.

Channel labels are the model's output label per target followed by the output's suffix:
``"DNA (predicted)"``, ``"DNA (predicted) std"``, ``"DNA (predicted) lower"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from zarrstain.errors import ParameterError, option
from zarrstain.models.architecture import Head

if TYPE_CHECKING:
    import torch

__all__ = [
    "HEADS",
    "BinsHead",
    "Calibration",
    "OutputHead",
    "QuantileHead",
    "ValueHead",
    "head_from_kwargs",
    "make_head",
]

#: optional outputs of a bins head, beyond its mean and std
BIN_EXTRAS = ("mode", "median")


@dataclass(frozen=True)
class Calibration:
    """A conformal adjustment of a head's interval, per target, in normalized units.

    Attributes
    ----------
    method
        ``"cqr"`` (both bounds moved out by ``adjustment``) or ``"rcps"`` (the interval's
        distances from the median scaled by ``adjustment``).
    alpha
        Nominal miscoverage: the interval is meant to hold the target with probability 1 − α.
    adjustment
        Per target: CQR's margin q (normalized units, may be negative) or RCPS's λ ≥ 0.
    delta
        RCPS: the bound holds with probability 1 − δ over calibration sets.
    scenes, units
        The calibration scenes, and how many calibration units (pixels for CQR, images for
        RCPS) the adjustment came from.
    sampling
        Sampled models: the sampler settings the calibration predicted with (``sampler``,
        ``steps``); the interval is calibrated for those.
    """

    method: str
    alpha: float
    adjustment: tuple[float, ...]
    delta: float | None = None
    scenes: tuple[str, ...] = ()
    units: int = 0
    sampling: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            method=str(d["method"]),
            alpha=float(d["alpha"]),
            adjustment=tuple(float(a) for a in d["adjustment"]),
            delta=None if d.get("delta") is None else float(d["delta"]),
            scenes=tuple(d.get("scenes", ())),
            units=int(d.get("units", 0)),
            sampling=dict(d["sampling"]) if d.get("sampling") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "adjustment": list(self.adjustment), "scenes": list(self.scenes)}

    def apply(self, median, lower, upper, target: int, scale: float = 1.0):
        """The calibrated (lower, upper) of one target's channels.

        Arithmetic only, so it serves torch tensors inside blocks and numpy or dask arrays of
        written channels alike; ``scale`` is the target's intensity scale when the channels
        are in the target's units (CQR's margin is stored in normalized units).
        """
        a = self.adjustment[target]
        if self.method == "cqr":  # widened (or narrowed) by q, never past the median
            q = a * scale
            return median - _positive(median - lower + q), median + _positive(upper + q - median)
        # distances from the centre, never negative (as conformal.lambda_star counts them)
        return median - a * _positive(median - lower), median + a * _positive(upper - median)


def _positive(x):
    """max(x, 0) for any array type."""
    return x * (x > 0)


@dataclass(frozen=True)
class OutputHead:
    """Base class of output heads (see the module docstring)."""

    kind: str = ""
    #: names the training loss in provenance
    loss_name: str = ""
    calibration: Calibration | None = None

    @property
    def raw_channels(self) -> int:
        """Channels the module predicts per target."""
        raise NotImplementedError

    @property
    def outputs(self) -> tuple[Head, ...]:
        """The channels written per target, in order; the first is the target's value."""
        raise NotImplementedError

    @property
    def has_interval(self) -> bool:
        """Writes ``lower`` and ``upper`` channels."""
        return any(h.kind == "lower" for h in self.outputs)

    def reduce(self, raw: torch.Tensor) -> torch.Tensor:
        """(N, targets·raw_channels, …) → (N, targets·len(outputs), …), voxel by voxel."""
        raise NotImplementedError

    def loss(
        self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean training loss over the (N, targets, …) voxels that ``mask`` (N, targets) keeps."""
        raise NotImplementedError

    def to_kwargs(self) -> dict[str, Any] | None:
        """The ``kwargs["head"]`` entry of a model card (None: nothing to store)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("loss_name", "calibration")}
        if self.calibration is not None:
            d["calibration"] = self.calibration.to_dict()
        return _jsonable(d)

    def _per_target(self, raw: torch.Tensor) -> list[torch.Tensor]:
        n = raw.shape[1] // self.raw_channels
        return [raw[:, i * self.raw_channels : (i + 1) * self.raw_channels] for i in range(n)]


def _masked_mean(per_voxel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (N, T, …) values over the (N, T) entries ``mask`` keeps."""
    if mask is None:
        return per_voxel.mean()
    m = mask.to(per_voxel.dtype).reshape(*mask.shape, *([1] * (per_voxel.dim() - 2)))
    m = m.expand_as(per_voxel)
    return (per_voxel * m).sum() / m.sum().clamp_min(1)


@dataclass(frozen=True)
class ValueHead(OutputHead):
    """One value per target, trained with the mean squared error (pytorch_fnet's)."""

    kind: str = "value"
    loss_name: str = "MSE"

    @property
    def raw_channels(self) -> int:
        return 1

    @property
    def outputs(self) -> tuple[Head, ...]:
        return (Head("value"),)

    def reduce(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def loss(self, raw, target, mask=None):
        return _masked_mean((raw - target) ** 2, mask)

    def to_kwargs(self) -> dict[str, Any] | None:
        return None  # the default: cards of value models stay as they were


@dataclass(frozen=True)
class BinsHead(OutputHead):
    """A distribution over ``bins`` equal bins of ``range`` (the normalized target) per voxel.

    Attributes
    ----------
    bins
        Number of intensity bins (In silico labeling: 256).
    range
        (low, high) of the normalized target the bins cover; targets outside fall into the
        first or last bin.
    extras
        Further outputs: ``"mode"`` (the most likely bin's centre) and ``"median"``.
    alpha
        With an interval (``interval=True`` or a calibration): its bounds are the α/2 and
        1 − α/2 quantiles of the distribution.
    interval
        Write ``lower`` / ``upper`` channels.
    """

    kind: str = "bins"
    loss_name: str = "cross-entropy over intensity bins"
    bins: int = 256
    range: tuple[float, float] = (-4.0, 4.0)
    extras: tuple[str, ...] = ()
    alpha: float = 0.1
    interval: bool = False

    def __post_init__(self) -> None:
        if int(self.bins) < 2:
            raise ParameterError(f"bins={self.bins} must be at least 2 (In silico labeling: 256)")
        lo, hi = self.range
        if not hi > lo:
            raise ParameterError(f"bins range {tuple(self.range)} is empty; it needs low < high")
        for extra in self.extras:
            if extra not in BIN_EXTRAS:
                raise ParameterError(f"bins output {extra!r} is not one of {', '.join(BIN_EXTRAS)}")
        _check_alpha(self.alpha)

    @property
    def raw_channels(self) -> int:
        return int(self.bins)

    @property
    def outputs(self) -> tuple[Head, ...]:
        heads = [Head("value"), Head("std", " std")]  # in the run's dtype, as the target
        heads += [Head("value", f" {extra}") for extra in self.extras]
        if self.interval or self.calibration is not None:
            heads += [Head("lower", " lower"), Head("upper", " upper")]
        return tuple(heads)

    def centers(self, like: torch.Tensor) -> torch.Tensor:
        import torch

        lo, hi = self.range
        width = (hi - lo) / self.bins
        return torch.linspace(lo + width / 2, hi - width / 2, self.bins, device=like.device)

    def reduce(self, raw: torch.Tensor) -> torch.Tensor:
        import torch

        out = []
        shape = (1, -1) + (1,) * (raw.dim() - 2)
        for i, logits in enumerate(self._per_target(raw.float())):
            p = torch.softmax(logits, dim=1)
            c = self.centers(raw).reshape(shape)
            mean = (p * c).sum(1, keepdim=True)
            var = (p * (c - mean) ** 2).sum(1, keepdim=True)
            out += [mean, var.clamp_min(0).sqrt()]
            cdf = None
            for extra in self.extras:
                if extra == "mode":
                    out.append(self._center_at(p.argmax(1, keepdim=True)))
                else:
                    cdf = torch.cumsum(p, 1) if cdf is None else cdf
                    out.append(self._quantile(cdf, 0.5))
            if self.interval or self.calibration is not None:
                cdf = torch.cumsum(p, 1) if cdf is None else cdf
                lower = self._quantile(cdf, self.alpha / 2)
                upper = self._quantile(cdf, 1 - self.alpha / 2)
                if self.calibration is not None:
                    lower, upper = self.calibration.apply(mean, lower, upper, i)
                out += [lower, upper]
        return torch.cat(out, 1)

    def _center_at(self, index: torch.Tensor) -> torch.Tensor:
        lo, hi = self.range
        return lo + (index.float() + 0.5) * (hi - lo) / self.bins

    def _quantile(self, cdf: torch.Tensor, q: float) -> torch.Tensor:
        """The q-quantile of the binned distribution, interpolated linearly inside its bin."""
        import torch

        k = (cdf < q).sum(1, keepdim=True).clamp_max(self.bins - 1)  # first bin with cdf ≥ q
        below = torch.where(k > 0, cdf.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(k).float())
        mass = (cdf.gather(1, k) - below).clamp_min(1e-12)
        frac = ((q - below) / mass).clamp(0, 1)
        lo, hi = self.range
        return lo + (k.float() + frac) * (hi - lo) / self.bins

    def bin_index(self, target: torch.Tensor) -> torch.Tensor:
        """The bin of each normalized target voxel (edges clipped into the first / last)."""
        lo, hi = self.range
        index = ((target - lo) / (hi - lo) * self.bins).floor().long()
        return index.clamp(0, self.bins - 1)

    def loss(self, raw, target, mask=None):
        from torch.nn import functional

        per_target = []
        for i, logits in enumerate(self._per_target(raw.float())):
            ce = functional.cross_entropy(logits, self.bin_index(target[:, i]), reduction="none")
            per_target.append(ce)
        import torch

        return _masked_mean(torch.stack(per_target, 1), mask)


@dataclass(frozen=True)
class QuantileHead(OutputHead):
    """Lower, median and upper quantiles (α/2, 0.5, 1 − α/2) with the pinball loss."""

    kind: str = "quantiles"
    loss_name: str = "pinball"
    alpha: float = 0.1

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    @property
    def raw_channels(self) -> int:
        return 3

    @property
    def outputs(self) -> tuple[Head, ...]:
        return (Head("value"), Head("lower", " lower"), Head("upper", " upper"))

    def _bounds(self, raw: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        from torch.nn import functional

        out = []
        for r in self._per_target(raw.float()):
            median = r[:, 0:1]
            lower = median - functional.softplus(r[:, 1:2])
            out.append((median, lower, median + functional.softplus(r[:, 2:3])))
        return out

    def reduce(self, raw: torch.Tensor) -> torch.Tensor:
        import torch

        out = []
        for i, (median, lower, upper) in enumerate(self._bounds(raw)):
            if self.calibration is not None:
                lower, upper = self.calibration.apply(median, lower, upper, i)
            out += [median, lower, upper]
        return torch.cat(out, 1)

    def loss(self, raw, target, mask=None):
        import torch

        levels = (0.5, self.alpha / 2, 1 - self.alpha / 2)
        per_target = []
        for i, bounds in enumerate(self._bounds(raw)):
            y = target[:, i : i + 1]
            terms = [_pinball(q, y - pred) for q, pred in zip(levels, bounds, strict=True)]
            per_target.append(sum(terms)[:, 0])
        return _masked_mean(torch.stack(per_target, 1), mask)


def _pinball(q: float, diff: torch.Tensor) -> torch.Tensor:
    """The pinball (quantile) loss of ``target - prediction`` at level q."""
    import torch

    return torch.maximum(q * diff, (q - 1) * diff)


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0 < alpha < 1) or isinstance(alpha, bool):
        raise ParameterError(
            f"alpha={alpha!r} is not in (0, 1): it is the miscoverage of the interval, e.g. 0.1 "
            f"for 90% intervals ({option('alpha=', '--alpha')})"
        )


#: head kind → class
HEADS: dict[str, type[OutputHead]] = {
    "value": ValueHead,
    "bins": BinsHead,
    "quantiles": QuantileHead,
}


def make_head(kind: str = "value", **options: Any) -> OutputHead:
    """A head by kind (``"value"``, ``"bins"``, ``"quantiles"``) with its options.

    Raises
    ------
    ParameterError
        An unknown kind, or options the kind does not take.
    """
    if kind not in HEADS:
        raise ParameterError(
            f"head {kind!r} is not one of {', '.join(HEADS)} ({option('head=', '--head')})"
        )
    cls = HEADS[kind]
    names = {f for f in cls.__dataclass_fields__ if f not in ("kind", "loss_name")}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ParameterError(
            f"head {kind!r} takes no option {', '.join(unknown)}"
            + (f"; it takes {', '.join(sorted(names - {'calibration'}))}" if names else "")
        )
    options = dict(options)
    if isinstance(options.get("calibration"), dict):
        options["calibration"] = Calibration.from_dict(options["calibration"])
    for key in ("range", "extras"):
        if key in options:
            options[key] = tuple(options[key])
    return cls(**options)


def head_from_kwargs(kwargs: dict[str, Any]) -> OutputHead:
    """The head a model card's ``kwargs`` describe (a value head when they name none)."""
    spec = kwargs.get("head")
    if not spec:
        return ValueHead()
    spec = dict(spec)
    return make_head(spec.pop("kind", "value"), **spec)


def _jsonable(value: Any) -> Any:
    """Tuples as lists, as a card's JSON reads back (so hashes agree before and after saving)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
