"""Analysis phases and Argo's "worst phase" order."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    ERROR = "Error"
    INCONCLUSIVE = "Inconclusive"
    SKIPPED = "Skipped"  # dry run only: a provider that cannot run here (Argo's job provider)

    @property
    def completed(self) -> bool:
        return self in (Phase.SUCCESSFUL, Phase.FAILED, Phase.ERROR, Phase.INCONCLUSIVE, Phase.SKIPPED)


# Best to worst, as utils/analysis/helpers.go analysisStatusOrder.
_ORDER = [Phase.SUCCESSFUL, Phase.RUNNING, Phase.PENDING, Phase.INCONCLUSIVE, Phase.ERROR, Phase.FAILED]


def is_worse(current: Phase, new: Phase) -> bool:
    rank = {p: i for i, p in enumerate(_ORDER)}
    return rank.get(new, 0) > rank.get(current, 0)
