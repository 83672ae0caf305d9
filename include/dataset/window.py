"""The dataset window and version: pure functions of the Params, the run's time and the lateness allowance."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta


@dataclass(frozen=True)
class Window:
    version: str  # YYYY-MM-DD: the window's (exclusive) end date
    start: datetime
    end: datetime

    @property
    def lookback_days(self) -> int:
        return (self.end - self.start).days

    @property
    def last_instant(self) -> datetime:
        """The latest timestamp inside the window (it is end-exclusive)."""
        return self.end - timedelta(microseconds=1)

    def as_dict(self) -> dict:
        return {"version": self.version, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "lookback_days": self.lookback_days, "end_exclusive": True}


def latest_window_end(run_time: datetime, lateness_hours: float = 0) -> date:
    """The latest Monday (00:00 UTC) whose lateness allowance has passed at `run_time`.

    Windows always end on a Monday; waiting `lateness_hours` after it lets late events land
    before the version is cut. At exactly Monday 00:00 + allowance that Monday is ready.
    """
    ready = (run_time.astimezone(UTC) - timedelta(hours=lateness_hours)).date()
    return ready - timedelta(days=ready.weekday())


def resolve_window(end_date: str | date | None, lookback_days: int, run_time: datetime | None = None,
                   lateness_hours: float = 0) -> Window:
    """[end - lookback_days, end) in UTC, whole days; version = the end date.

    `end_date` wins (any day, used as given); else the latest Monday whose allowance has passed
    at `run_time` (the run's time; default now), so a scheduled run at Monday 00:00 +
    allowance builds that Monday's version.
    """
    if lookback_days < 1:
        raise ValueError(f"lookback_days must be >= 1, got {lookback_days}")
    if end_date in (None, ""):
        day = latest_window_end(run_time or datetime.now(UTC), lateness_hours)
    elif isinstance(end_date, date):
        day = end_date
    else:
        try:
            day = date.fromisoformat(str(end_date))
        except ValueError as exc:
            raise ValueError(f"end_date must be YYYY-MM-DD, got {end_date!r}") from exc
    end = datetime.combine(day, time(0), tzinfo=UTC)
    return Window(version=day.isoformat(), start=end - timedelta(days=lookback_days), end=end)


def partition_bounds(parts: int) -> list[tuple[str, str]]:
    """Contiguous plan_id text ranges ('' = unbounded) by leading hex digits, in order."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    cuts = [f"{(256 * i) // parts:02x}" for i in range(1, parts)]
    lows = ["", *cuts]
    highs = [*cuts, ""]
    return list(zip(lows, highs))
