"""The engine's refusal: a ``ValueError`` naming what it cannot simulate and pointing to aihwkit."""

from __future__ import annotations


def _refuse(where: str, problem: str) -> ValueError:
    """``engine='torch' cannot simulate <where>: <problem>; use engine='aihwkit' for it`` (raise it)."""
    return ValueError(f"engine='torch' cannot simulate {where}: {problem}; use engine='aihwkit' for it")


refuse = _refuse
