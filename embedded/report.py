"""``torpor status``: the rows (pure, from specs and autoscaler statuses) and the table."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from torpor.spec import ServiceSpec
from torpor.status import CrashLoopStatus, RevisionStatus


def status_document(
    services: Sequence[ServiceSpec],
    statuses: Sequence[RevisionStatus],
    *,
    activator_url: str,
) -> dict[str, Any]:
    """One JSON object: a ``revisions`` list with every revision some traffic can reach."""
    by_key = {s.revision: s for s in statuses}
    rows: list[dict[str, Any]] = []
    for service in services:
        for revision in service.routed_revisions():
            key = revision.ref.key
            st = by_key.get(key)
            targets = [t for t in service.traffic if t.revision == revision.ref.name]
            tags = sorted(t.tag for t in targets if t.tag)
            cold = st.last_cold_start if st else None
            rows.append(
                {
                    "name": revision.ref.name,
                    "service": service.name,
                    "namespace": service.namespace,
                    "traffic_percent": sum(t.percent for t in targets),
                    "tags": tags,
                    "url": f"{activator_url}/{service.namespace}/{service.name}",
                    "host": f"{service.name}.{service.namespace}.{service.domain}",
                    "state": st.state if st else "scaled-to-zero",
                    "reason": st.reason if st else None,
                    "crash_loop": _crash_loop(st.crash_loop) if st else None,
                    "decision": st.decision if st else "",
                    "desired_replicas": st.desired_replicas if st else 0,
                    "ready_replicas": st.ready_replicas if st else 0,
                    "starting_replicas": st.starting_replicas if st else 0,
                    "draining_replicas": st.draining_replicas if st else 0,
                    "suspended_replicas": st.suspended_replicas if st else 0,
                    "queued_requests": st.queued_requests if st else 0,
                    "in_flight_requests": st.in_flight_requests if st else 0,
                    "panic": st.panic if st else False,
                    "replica_urls": list(st.replicas) if st else [],
                    # LoRA adapters (issue 16): per replica, loaded or loading; idle or failed
                    # (with the replica's answer): none.
                    "adapters": [
                        {
                            "name": a.name,
                            "state": a.state,
                            "replica_id": a.replica_id,
                            "reason": a.reason,
                        }
                        for a in st.adapters
                    ]
                    if st
                    else [
                        {"name": a.name, "state": "idle", "replica_id": None}
                        for a in (revision.lora.adapters if revision.lora else ())
                    ],
                    "min_scale": revision.autoscaling.min_scale,
                    "max_scale": revision.autoscaling.max_scale,
                    "last_cold_start": None
                    if cold is None
                    else {
                        "replica_id": cold.replica_id,
                        "started_at": cold.started_at,
                        "total_seconds": round(cold.total_s, 3),
                        "warm": cold.warm,
                        "phases": {name: round(s, 3) for name, s in cold.phases},
                        "engine": cold.engine,  # the engine path the replica took, and why
                    },
                }
            )
    return {"revisions": rows}


def _crash_loop(c: CrashLoopStatus | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "restarts": c.restarts,
        "last_error": c.last_error,
        "next_try_at": c.next_try_at,
        "backoff_seconds": c.backoff_s,
        "backing_off": c.backing_off,
    }


def crash_loop_note(c: Mapping[str, Any], starting: int = 0) -> str:
    """``crash-loop: back-off 40s (restart 4 at 21:14:05): <the replica's last error line>``,
    the time in this machine's zone; after the back-off, the restart starting or due."""
    at = time.strftime("%H:%M:%S", time.localtime(c["next_try_at"]))
    if c["backing_off"]:
        when = f"back-off {c['backoff_seconds']:g}s (restart {c['restarts']} at {at})"
    elif starting:
        when = f"restart {c['restarts']} starting"
    else:
        when = f"back-off over since {at} (the next request starts restart {c['restarts']})"
    return f"crash-loop: {when}: {c['last_error']}"


_COLUMNS = (
    ("NAMESPACE", "namespace"),
    ("SERVICE", "service"),
    ("REVISION", "name"),
    ("TRAFFIC", "traffic"),
    ("STATE", "state"),
    ("READY", "ready"),
    ("QUEUED", "queued_requests"),
    ("IN-FLIGHT", "in_flight_requests"),
    ("LAST COLD START", "cold"),
)


def filter_status(
    document: Mapping[str, Any],
    *,
    namespace: str | None = None,
    service: str | None = None,
    active: bool = False,
) -> dict[str, Any]:
    """The document with only the revisions of ``namespace`` / ``service``, and with ``active``
    only those that are not at rest (a replica, or a request held or in flight)."""

    def keep(row: Mapping[str, Any]) -> bool:
        if namespace is not None and row["namespace"] != namespace:
            return False
        if service is not None and row["service"] != service:
            return False
        if active:
            busy = row["queued_requests"] or row["in_flight_requests"]
            return bool(row["state"] != "scaled-to-zero" or busy)
        return True

    out = dict(document)
    out["revisions"] = [r for r in document.get("revisions", []) if keep(r)]
    return out


SUMMARY_OVER = 20  # a table longer than this ends with a one-line count per state


def render_table(document: Mapping[str, Any]) -> str:
    """The document as an aligned table; under it, a line for any revision that failed or is
    scaling (the failure, or the autoscaler's reason)."""
    revisions = document.get("revisions", [])
    if not revisions:
        return "No services deployed. Deploy one with: torpor deploy -f FILE"
    cells: list[list[str]] = []
    notes: list[str] = []
    # One service's revisions (``torpor status SERVICE``): what engine path each last started on.
    single_service = len({(r["namespace"], r["service"]) for r in revisions}) == 1
    for row in revisions:
        traffic = f"{row['traffic_percent']}%"
        if row["tags"]:
            traffic += " (" + ",".join(f"tag:{t}" for t in row["tags"]) + ")"
        cold = row["last_cold_start"]
        cold_text = "-"
        if cold:
            cold_text = f"{cold['total_seconds']:.1f}s" + (" warm" if cold["warm"] else "")
        values = {
            "namespace": row["namespace"],
            "service": row["service"],
            "name": row["name"],
            "traffic": traffic,
            "state": row["state"] + (" (panic)" if row["panic"] else ""),
            "ready": f"{row['ready_replicas']}/{row['desired_replicas']}"
            + (f" +{row['suspended_replicas']} suspended" if row.get("suspended_replicas") else ""),
            "queued_requests": str(row["queued_requests"]),
            "in_flight_requests": str(row["in_flight_requests"]),
            "cold": cold_text,
        }
        cells.append([values[key] for _, key in _COLUMNS])
        if single_service and cold and cold.get("engine"):
            notes.append(f"  {row['name']}: engine: {cold['engine']}")
        for a in row.get("adapters") or ():
            where = f" on {a['replica_id']}" if a.get("replica_id") else ""
            why = f": {a['reason'].splitlines()[0]}" if a.get("reason") else ""
            notes.append(f"  {row['name']}: adapter {a['name']} {a['state']}{where}{why}")
        if row.get("crash_loop"):
            note = crash_loop_note(row["crash_loop"], row.get("starting_replicas", 0))
            notes.append(f"  {row['name']}: {note}")
        elif row["reason"]:
            notes.append(f"  {row['name']}: {row['reason']}")
        elif (
            row.get("decision")
            and row["ready_replicas"] != row["desired_replicas"]
            and not row.get("suspended_replicas")  # decide counts them: not scaling
        ):
            # Scaling in progress: say why, in the autoscaler's words.
            notes.append(
                f"  {row['name']}: scaling {row['ready_replicas']} -> {row['desired_replicas']}: "
                f"{row['decision']}"
            )
    headers = [h for h, _ in _COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    if notes:
        lines += ["", *notes]
    if len(revisions) > SUMMARY_OVER:
        states: dict[str, int] = {}
        for row in revisions:
            states[row["state"]] = states.get(row["state"], 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        lines += ["", f"{len(revisions)} revisions: {counts}"]
    pool = document.get("warm_pool")
    if pool and pool.get("size"):
        lines += ["", f"warm pool: {pool['ready']}/{pool['size']} standby runtimes ready"]
    return "\n".join(lines)
