"""A checkpoint's training record and metrics as lines a person reads (`lqae info`; `--format json`
keeps the record as stored).

The record of a checkpoint trained from another (`lqae train --init`) holds the earlier one's record
under "init", so the history is a chain, newest first; it is printed oldest first, one phase a line."""
from __future__ import annotations

PHASE_KEYS = {"step", "steps", "images_seen", "world_size", "device", "precision", "wall_time_s", "data", "lr",
              "batch_size", "mask_ratio", "trained", "grown", "checkpoint", "init", "gpu_retrain", "seed",
              "preset", "smooth_share", "mask_policy"}
RETRAIN_KEYS = {"script", "device", "batch_size", "lr", "border_weight", "mask_ratio", "whole_steps", "decoder_steps",
                "whole_seconds", "decoder_seconds", "images_seen", "seed"}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _rest(record: dict, known: set) -> list[str]:
    return [f"{k} {_number(v)}" for k, v in record.items() if k not in known]


def _phase(record: dict) -> str:
    what = record.get("trained", "whole model")
    steps = record.get("steps", record.get("step"))
    parts = [what if steps is None else f"{what}, {_number(steps)} steps"]
    if "batch_size" in record:
        parts.append(f"batch {record['batch_size']}")
    if "lr" in record:
        parts.append(f"lr {_number(record['lr'])}")
    if record.get("mask_policy") == "detail":
        parts.append("detail masks")
    elif record.get("mask_ratio"):
        parts.append(f"mask {_number(record['mask_ratio'])}")
    if record.get("smooth_share"):
        parts.append(f"smooth share {_number(record['smooth_share'])}")
    where = " ".join(str(record[k]) for k in ("device", "precision") if k in record)
    if record.get("world_size", 1) > 1:
        where += f" x{record['world_size']}"
    if where:
        parts.append(where)
    if "wall_time_s" in record:
        parts.append(_duration(record["wall_time_s"]))
    grown = record.get("grown")
    if isinstance(grown, dict):
        changed = [f"{k} {a} -> {b}" for k, (a, b) in ((k, v) for k, v in grown.items() if isinstance(v, list) and len(v) == 2) if a != b]
        parts.append("grown: " + ", ".join(changed or ["same size"]))
    if record.get("data"):
        data = record["data"]
        parts.append("on " + (" ".join(map(str, data)) if isinstance(data, list) else str(data)))
    return ", ".join(parts + _rest(record, PHASE_KEYS))


def _retrain(record: dict) -> str:
    parts = [f"whole model, {_number(record.get('whole_steps', '?'))} steps, then decoder only, "
             f"{_number(record.get('decoder_steps', '?'))} steps", f"batch {record.get('batch_size', '?')}"]
    parts += [f"{name} {_number(record[k])}" for k, name in (("lr", "lr"), ("mask_ratio", "mask"), ("border_weight", "border weight"))
              if k in record]
    if "device" in record:
        parts.append(str(record["device"]))
    seconds = record.get("whole_seconds", 0) + record.get("decoder_seconds", 0)
    if seconds:
        parts.append(_duration(seconds))
    line = ", ".join(parts + _rest(record, RETRAIN_KEYS))
    return f"{line} ({record['script']})" if "script" in record else line


def phases(training: dict) -> list[tuple[str, dict]]:
    """The training record as (kind, record) pairs, oldest first: kind "train" for an `lqae train` run,
    "retrain" for a GPU phase recorded under "gpu_retrain" after it."""
    chain, record = [], training
    while isinstance(record, dict) and record:
        chain.append(record)
        record = record.get("init")
    out = []
    for record in reversed(chain):
        out.append(("train", record))
        out += [("retrain", r) for r in record.get("gpu_retrain", []) if isinstance(r, dict)]
    return out


def training_lines(training: dict) -> list[str]:
    """One summary line, then one line per phase, oldest first (["none recorded"] for an empty record)."""
    steps = phases(training)
    if not steps:
        return ["none recorded"]
    images = sum(r.get("images_seen", 0) for _, r in steps)
    seconds = sum(r.get("wall_time_s", 0) + r.get("whole_seconds", 0) + r.get("decoder_seconds", 0) for _, r in steps)
    summary = [f"{len(steps)} phase{'s' if len(steps) != 1 else ''}"]
    if images:
        summary.append(f"{images:,} images seen")
    if seconds:
        summary.append(_duration(seconds))
    lines = [", ".join(summary)]
    if len(steps) > 1 or steps[0][1].keys() - {"steps", "step"}:
        width = len(str(len(steps)))
        lines += [f"{i:>{width}}. " + (_phase(r) if kind == "train" else _retrain(r)) for i, (kind, r) in enumerate(steps, 1)]
    return lines


def metric_lines(metrics: dict) -> list[str]:
    """One "name value" line per metric, numbers rounded to 4 decimals."""
    return [f"{k} {round(v, 4) if isinstance(v, float) else v}" for k, v in metrics.items()]
