"""Checks made on a Plan before it may be applied: mass deletes, and saved plans whose
inputs moved. They read the plan only; refusing is raising ApplyRefused (or reporting)."""

from __future__ import annotations

from bpsync.errors import ApplyRefused
from bpsync.plan import Plan


def check_mass_delete(plan: Plan, allow: bool) -> None:
    flagged = [t for t in plan.tables if t.mass_delete]
    if flagged and not allow:
        lines = [
            f"{t.name}: removes {t.rows_removed} of {t.old_rows} rows (limit "
            f"{t.max_delete_fraction:.0%})"
            for t in flagged
        ]
        raise ApplyRefused(
            "refusing a mass delete: " + "; ".join(lines),
            hint="review the plan; if intended, apply with --allow-mass-delete",
        )


def describe_moved(saved: Plan, fresh: Plan) -> list[str]:
    """What moved between a saved plan and now: manifests, tables, state."""
    moved = []
    # A plan file written before environments records no endpoint: only its environment
    # (None) can be compared.
    endpoint_moved = saved.endpoint is not None and saved.endpoint != fresh.endpoint
    if saved.environment != fresh.environment or endpoint_moved:
        moved.append(f"the plan was made for {where(saved)}, this command runs for {where(fresh)}")
    for kind, old, new in (
        ("manifest", saved.inputs.manifests, fresh.inputs.manifests),
        ("table", saved.inputs.tables, fresh.inputs.tables),
    ):
        for path in sorted(set(old) | set(new)):
            if old.get(path) != new.get(path):
                what = "added" if path not in old else "removed" if path not in new else "changed"
                moved.append(f"{kind} {path} {what}")
    if saved.inputs.state != fresh.inputs.state:
        moved.append("the state changed (another apply ran since the plan)")
    if saved.inputs.deleted != fresh.inputs.deleted:
        moved.append("the set of deleted manifests changed")
    return moved


def where(plan: Plan) -> str:
    """`environment 'prod' at https://api.bigpanda.io (API v2.1)`, or the endpoint alone."""
    endpoint = plan.endpoint or "an unrecorded endpoint"
    return f"environment {plan.environment!r} at {endpoint}" if plan.environment else endpoint
