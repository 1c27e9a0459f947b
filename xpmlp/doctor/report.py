"""What the doctor says: a :class:`Report` of :class:`Finding` s, and how it compares arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RTOL, ATOL = 1e-6, 1e-9


@dataclass(frozen=True)
class Finding:
    """One diagnosis: ``code`` (e.g. ``sign_flipped``), where (``parameter``, 1-based ``layer``
    in your numbering, or None for the whole network) and a ``message`` saying how to fix it."""

    code: str
    message: str
    parameter: str | None = None
    layer: int | None = None


@dataclass
class Report:
    """What the doctor found: ``ok`` when nothing; ``findings`` otherwise."""

    findings: list[Finding] = field(default_factory=list)
    subject: str = "gradients"  # what was checked: gradients, forward pass, batches
    notes: list[str] = field(default_factory=list)  # conventions seen, not bugs
    loss_check: dict[str, float] = field(default_factory=dict)  # parameter: max relative error
    skipped: str | None = None  # why this check did not run

    @property
    def ok(self) -> bool:
        return not self.findings  # a skipped check found nothing

    @property
    def codes(self) -> set[str]:
        return {finding.code for finding in self.findings}

    def __str__(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.ok:
            verb = "matches" if self.subject == "forward pass" else "match"
            lines = [f"your {self.subject} {verb} xpmlp's float64 reference: no bug found"]
        else:
            lines = [f"{len(self.findings)} problem(s) in your {self.subject}:"]
        for finding in self.findings:
            where = f" [{finding.parameter}]" if finding.parameter else ""
            lines.append(f"- {finding.code}{where}: {finding.message}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def close(a, b) -> bool:
    """Whether a user's array ``a`` equals the reference ``b`` (same shape, float64 tolerance)."""
    return a is not None and a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL)


def relative_error(a, b) -> float:
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale)
