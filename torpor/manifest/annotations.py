"""Revision-template annotations -> ``AutoscalingSpec``.

``autoscaling.knative.dev/*`` keys keep Knative's meaning, names (including the older camelCase
spellings Knative still reads) and bounds, as in knative/serving
``pkg/apis/autoscaling/annotation_validation.go``: a manifest torpor accepts is one Knative accepts.
Settings Knative only has in its ``config-autoscaler`` ConfigMap, and torpor's own knobs, live
under ``torpor.dev/``; an unknown ``torpor.dev/`` key is an error, because a typo there would
otherwise be a silently ignored setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torpor.manifest.durations import parse_go_duration
from torpor.manifest.errors import ManifestError
from torpor.manifest.limits import DEFAULT_MAX_SCALE_PER_REVISION
from torpor.manifest.names import check_dns1123_subdomain
from torpor.spec import DEFAULT_AUTOSCALER_CLASS, DEFAULT_QUEUE_DEPTH, AutoscalingSpec

KNATIVE = "autoscaling.knative.dev/"
TORPOR = "torpor.dev/"

KPA_CLASS = "kpa.autoscaling.knative.dev"
HPA_CLASS = "hpa.autoscaling.knative.dev"

WINDOW_MIN_S = 6.0
WINDOW_MAX_S = 3600.0
TARGET_MIN = 0.01
MAX_INT32 = 2**31 - 1
MAX_QUEUE_DEPTH = 100_000
SUSPENDED_MAX_S = 86400.0  # a day: longer parks a replica's memory past any idle pattern

# Knative's kebab-case names first, then the camelCase spellings it still accepts.
_ALIASES: dict[str, tuple[str, ...]] = {
    "min-scale": ("minScale",),
    "max-scale": ("maxScale",),
    "initial-scale": ("initialScale",),
    "target-utilization-percentage": ("targetUtilizationPercentage",),
    "target-burst-capacity": ("targetBurstCapacity",),
    "scale-to-zero-pod-retention-period": ("scaleToZeroPodRetentionPeriod",),
    "panic-window-percentage": ("panicWindowPercentage",),
    "panic-threshold-percentage": ("panicThresholdPercentage",),
    "scale-down-delay": ("scaleDownDelay",),
    "metric-aggregation-algorithm": ("metricAggregationAlgorithm",),
}

TORPOR_KEYS = frozenset(
    {
        "scale-to-zero-grace-period",
        "max-scale-up-rate",
        "max-scale-down-rate",
        "kv-cache-target",
        "queue-depth",
        "api-keys-secret",
        "suspend-after",
        "stop-suspended-after",
        "lora-adapters",  # torpor.manifest.lora
        "lora-idle-window",
        "keepalive",  # "learned" (default) or "fixed": AutoscalingSpec.keepalive
        "keepalive-wait-value",
        "keepalive-cold-start",
        "keepalive-prewarm",
        "keepalive-min-gaps",
    }
)

# Metrics each autoscaler class understands; None means "any" (a class torpor does not run).
_TORPOR_METRICS = ("llm", "concurrency")
_KPA_METRICS = ("concurrency", "rps")

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class TemplateAnnotations:
    """What the revision template's annotations configure."""

    autoscaling: AutoscalingSpec
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    api_keys_secret: str | None = None


class _Reader:
    def __init__(self, annotations: Mapping[str, str], path: str) -> None:
        self._a = annotations
        self._path = path

    def field(self, key: str) -> str:
        return f'{self._path}["{key}"]'

    def error(self, key: str, reason: str) -> ManifestError:
        return ManifestError(self.field(key), reason)

    def get(self, short: str, prefix: str = KNATIVE) -> tuple[str, str] | None:
        names = [prefix + short] + [prefix + alias for alias in _ALIASES.get(short, ())]
        present = [n for n in names if n in self._a]
        if len(present) > 1:
            raise self.error(present[1], f"set only one of {', '.join(present)}")
        return (present[0], self._a[present[0]]) if present else None

    def key(self, short: str, prefix: str = KNATIVE) -> str:
        """The spelling the manifest used for ``short`` (for error paths)."""
        found = self.get(short, prefix)
        return found[0] if found is not None else prefix + short

    def int32(
        self, short: str, *, prefix: str = KNATIVE, low: int = 0, high: int = MAX_INT32
    ) -> int | None:
        found = self.get(short, prefix)
        if found is None:
            return None
        key, value = found
        if not _INT.fullmatch(value):
            raise self.error(key, f"must be a whole number, got {value!r}")
        number = int(value)
        if number < low or number > high:
            raise self.error(key, f"must be between {low} and {high}, got {value}")
        return number

    def number(
        self,
        short: str,
        *,
        prefix: str = KNATIVE,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
    ) -> float | None:
        found = self.get(short, prefix)
        if found is None:
            return None
        key, value = found
        if not _FLOAT.fullmatch(value):
            raise self.error(key, f"must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self.error(key, f"must be a finite number, got {value!r}")
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and number > high
        if too_low or too_high:
            raise self.error(key, f"must be {_bounds(low, high, low_open)}, got {value}")
        return number

    def duration(
        self,
        short: str,
        *,
        prefix: str = KNATIVE,
        low: float = 0.0,
        high: float = WINDOW_MAX_S,
        whole_seconds: bool = False,
    ) -> float | None:
        found = self.get(short, prefix)
        if found is None:
            return None
        key, value = found
        try:
            seconds = parse_go_duration(value)
        except ValueError as e:
            raise self.error(key, f"must be a duration like '30s' or '1m30s': {e}") from None
        if seconds < low or seconds > high:
            raise self.error(
                key, f"must be between {_fmt_s(low)} and {_fmt_s(high)}, got {value!r}"
            )
        if whole_seconds and seconds != math.floor(seconds):
            raise self.error(key, f"must be whole seconds, got {value!r}")
        return seconds


def _bounds(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"{'above' if low_open else 'at least'} {low:g} and at most {high:g}"
    if low is not None:
        return f"{'greater than' if low_open else 'at least'} {low:g}"
    return f"at most {high:g}"


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    return f"{seconds:g}s"


def reject_autoscaling_keys(annotations: Mapping[str, str], path: str) -> None:
    """Knative rejects autoscaling annotations on the Service itself; torpor's are the same kind."""
    for key in annotations:
        if key.startswith(KNATIVE) or key.startswith(TORPOR):
            raise ManifestError(
                f'{path}["{key}"]',
                "autoscaling annotations must be put under spec.template.metadata.annotations",
            )


def parse_template_annotations(
    annotations: Mapping[str, str],
    path: str,
    *,
    max_scale_limit: int = DEFAULT_MAX_SCALE_PER_REVISION,
) -> TemplateAnnotations:
    """Validate and read the annotations of ``spec.template.metadata`` (at ``path``).

    ``max_scale_limit`` is the platform's cap per revision (``torpor.manifest.limits``): no scale
    annotation may exceed it, and an unbounded ``max-scale`` (0 or none) becomes it.
    """
    r = _Reader(annotations, path)
    for key in sorted(annotations):
        if key.startswith(TORPOR) and key.removeprefix(TORPOR) not in TORPOR_KEYS:
            known = ", ".join(TORPOR + k for k in sorted(TORPOR_KEYS))
            raise r.error(key, f"unknown torpor.dev annotation (known: {known})")

    defaults = AutoscalingSpec()
    autoscaler_class = DEFAULT_AUTOSCALER_CLASS
    found = r.get("class")
    if found is not None:
        key, autoscaler_class = found
        if not autoscaler_class.strip():
            raise r.error(key, "must not be empty")
        if autoscaler_class.endswith(".knative.dev") and autoscaler_class not in (
            KPA_CLASS,
            HPA_CLASS,
        ):
            raise r.error(
                key,
                f"{autoscaler_class!r} is not a Knative autoscaler class (only {KPA_CLASS} and "
                f"{HPA_CLASS} end in .knative.dev); torpor's class is {DEFAULT_AUTOSCALER_CLASS}",
            )
    metric = _metric(r, autoscaler_class, defaults.metric)

    target = r.number("target", low=TARGET_MIN)
    utilization = r.number("target-utilization-percentage", low=1, high=100)
    # Knative's burst capacity means nothing to torpor's activator, but Knative validates it.
    burst = r.number("target-burst-capacity")
    if burst is not None and burst < 0 and burst != -1:
        raise r.error(
            r.key("target-burst-capacity"), f"must be -1 (unlimited) or at least 0, got {burst:g}"
        )

    min_scale = _capped(r, "min-scale", r.int32("min-scale"), max_scale_limit)
    max_scale = _capped(r, "max-scale", r.int32("max-scale"), max_scale_limit)
    lo = min_scale if min_scale is not None else defaults.min_scale
    hi = max_scale if max_scale is not None else defaults.max_scale
    hi = hi or max_scale_limit  # Knative's 0, "no upper bound", is the platform's cap here
    if hi != 0 and hi < lo:
        raise r.error(r.key("max-scale"), f"max-scale={hi} is less than min-scale={lo}")

    initial = _capped(r, "initial-scale", r.int32("initial-scale"), max_scale_limit)
    if initial is not None and hi != 0 and initial > hi:
        raise r.error(
            r.key("initial-scale"), f"initial-scale={initial} is more than max-scale={hi}"
        )

    activation = _capped(r, "activation-scale", r.int32("activation-scale", low=1), max_scale_limit)
    if activation is not None:
        key = r.key("activation-scale")
        if lo > activation:
            raise r.error(key, f"min-scale={lo} is greater than activation-scale={activation}")
        if hi != 0 and hi < activation:
            raise r.error(key, f"max-scale={hi} is less than activation-scale={activation}")

    window = r.duration("window", low=WINDOW_MIN_S, whole_seconds=True)
    panic_window = r.number("panic-window-percentage", low=1, high=100)
    panic_threshold = r.number("panic-threshold-percentage", low=110, high=1000)
    scale_down_delay = r.duration("scale-down-delay", whole_seconds=True)
    retention = r.duration("scale-to-zero-pod-retention-period")
    algorithm = r.get("metric-aggregation-algorithm")
    algorithms = ("linear", "weighted-exponential", "weightedExponential")
    if algorithm is not None and autoscaler_class == KPA_CLASS and algorithm[1] not in algorithms:
        raise r.error(algorithm[0], f"unknown algorithm {algorithm[1]!r}")

    grace = r.duration("scale-to-zero-grace-period", prefix=TORPOR)
    up_rate = r.number("max-scale-up-rate", prefix=TORPOR, low=1, low_open=True)
    down_rate = r.number("max-scale-down-rate", prefix=TORPOR, low=1, low_open=True)
    kv_target = r.number("kv-cache-target", prefix=TORPOR, low=0, high=1, low_open=True)
    queue_depth = r.int32("queue-depth", prefix=TORPOR, low=1, high=MAX_QUEUE_DEPTH)
    # Suspended replicas (AutoscalingSpec.suspend_after_s): off unless asked for.
    suspend_after = r.duration("suspend-after", prefix=TORPOR)
    stop_suspended = r.duration(
        "stop-suspended-after", prefix=TORPOR, low=1.0, high=SUSPENDED_MAX_S
    )
    # The learned keep-alive (AutoscalingSpec.keepalive*, autoscaler/keepalive.py).
    keepalive = r.get("keepalive", prefix=TORPOR)
    if keepalive is not None and keepalive[1] not in ("learned", "fixed"):
        raise r.error(keepalive[0], f"must be 'learned' or 'fixed', not {keepalive[1]!r}")
    wait_value = r.duration("keepalive-wait-value", prefix=TORPOR)
    ka_cold = r.duration("keepalive-cold-start", prefix=TORPOR)
    prewarm = r.get("keepalive-prewarm", prefix=TORPOR)
    if prewarm is not None and prewarm[1] not in ("true", "false"):
        raise r.error(prewarm[0], f"must be 'true' or 'false', not {prewarm[1]!r}")
    min_gaps = r.int32("keepalive-min-gaps", prefix=TORPOR, low=1, high=100_000)
    secret = r.get("api-keys-secret", prefix=TORPOR)
    if secret is not None:
        check_dns1123_subdomain(secret[1], r.field(secret[0]))

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    spec = AutoscalingSpec(
        autoscaler_class=autoscaler_class,
        metric=metric,
        target=pick(target, defaults.target),
        target_utilization=pick(utilization, defaults.target_utilization * 100) / 100,
        min_scale=lo,
        max_scale=hi,
        initial_scale=defaults.initial_scale if initial is None else initial,
        activation_scale=defaults.activation_scale if activation is None else activation,
        window_s=pick(window, defaults.window_s),
        panic_window_percentage=pick(panic_window, defaults.panic_window_percentage),
        panic_threshold_percentage=pick(panic_threshold, defaults.panic_threshold_percentage),
        scale_down_delay_s=pick(scale_down_delay, defaults.scale_down_delay_s),
        scale_to_zero_grace_s=pick(grace, defaults.scale_to_zero_grace_s),
        scale_to_zero_retention_s=pick(retention, defaults.scale_to_zero_retention_s),
        max_scale_up_rate=pick(up_rate, defaults.max_scale_up_rate),
        max_scale_down_rate=pick(down_rate, defaults.max_scale_down_rate),
        kv_cache_target=pick(kv_target, defaults.kv_cache_target),
        suspend_after_s=pick(suspend_after, defaults.suspend_after_s),
        stop_suspended_after_s=pick(stop_suspended, defaults.stop_suspended_after_s),
        keepalive=defaults.keepalive if keepalive is None else keepalive[1],
        keepalive_wait_value_s=pick(wait_value, defaults.keepalive_wait_value_s),
        keepalive_cold_start_s=pick(ka_cold, defaults.keepalive_cold_start_s),
        keepalive_prewarm=defaults.keepalive_prewarm if prewarm is None else prewarm[1] == "true",
        keepalive_min_gaps=defaults.keepalive_min_gaps if min_gaps is None else min_gaps,
    )
    return TemplateAnnotations(
        autoscaling=spec,
        queue_depth=DEFAULT_QUEUE_DEPTH if queue_depth is None else queue_depth,
        api_keys_secret=None if secret is None else secret[1],
    )


def _capped(r: _Reader, short: str, value: int | None, limit: int) -> int | None:
    if value is not None and value > limit:
        raise r.error(
            r.key(short),
            f"{short}={value} is above the platform's limit of {limit} replicas per revision "
            "(torpor up --max-scale-per-revision)",
        )
    return value


def _metric(r: _Reader, autoscaler_class: str, default: str) -> str:
    found = r.get("metric")
    allowed: tuple[str, ...] | None
    if autoscaler_class == KPA_CLASS:
        allowed, fallback = _KPA_METRICS, "concurrency"
    elif autoscaler_class == HPA_CLASS:
        allowed, fallback = None, "cpu"
    elif autoscaler_class == DEFAULT_AUTOSCALER_CLASS:
        allowed, fallback = _TORPOR_METRICS, default
    else:
        allowed, fallback = None, default
    if found is None:
        return fallback
    key, metric = found
    if not metric:
        raise r.error(key, "must not be empty")
    if allowed is not None and metric not in allowed:
        raise r.error(
            key,
            f"{metric!r} is not a metric of class {autoscaler_class} "
            f"(one of: {', '.join(allowed)})",
        )
    return metric
