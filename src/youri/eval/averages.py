"""Which average a set of JP-8 results may be called (protocol section 7; rinna's Youri table).

"JP-8 average" is the Stability leaderboard's number: the plain mean of the eight tasks' scores (acc x
100, exact match, ROUGE-2), only when all eight ran. Any other selection is "average of N tasks (list)".
rinna's cards also published 4-task and 6-task averages; those are given where all their tasks ran.
"""

from __future__ import annotations

from typing import Any, Mapping

from youri.eval import tasks

JP8 = tuple(t.name for t in tasks.JP8)  # jcommonsenseqa, jnli, marc_ja, jsquad, jaqket_v2, xlsum_ja, xwinograd_ja, mgsm
JP8_NAME = "JP-8 average"
# compute_average_from_json.py --mode jglue: rinna's "4-task" column.
RINNA_4 = ("jcommonsenseqa", "jnli", "marc_ja", "jsquad")
# rinna's "6-task" column: the four plus JAQKET v2 and XWinograd-ja. Not documented by rinna; inferred from
# its table (8 x avg8 - 6 x avg6 equals XL-Sum + MGSM for the published rows).
RINNA_6 = RINNA_4 + ("jaqket_v2", "xwinograd_ja")
RINNA_SUBSETS = {
    "rinna 4-task average (JGLUE: " + ", ".join(RINNA_4) + ")": RINNA_4,
    "rinna 6-task average (JGLUE + jaqket_v2, xwinograd_ja; membership inferred)": RINNA_6,
}


def task_name(key: str) -> str:
    """``jcommonsenseqa-1.1-0.3`` -> ``jcommonsenseqa``; unknown keys stay as they are."""
    return next((name for name in JP8 if key == name or key.startswith(name + "-")), key)


def average_name(keys: list[str]) -> str:
    names = [task_name(k) for k in keys]
    if len(names) == len(JP8) and set(names) == set(JP8):
        return JP8_NAME
    return f"average of {len(keys)} task{'s' if len(keys) != 1 else ''} ({', '.join(keys) or 'none'})"


def averages(scores: Mapping[str, float], custom_from: str = "") -> dict[str, Any]:
    """``{average, average_name, average_over, subsets}`` for task-key -> score (0-100, unrounded).
    ``custom_from``: the preset a custom run started from (other keys or shots); its averages say so and are
    never named "JP-8 average"."""
    keys = list(scores)
    mean = round(sum(scores.values()) / len(keys), 2) if keys else None
    if custom_from:
        return {
            "average": mean,
            "average_name": f"custom run (from preset {custom_from}): "
            + average_name(keys).replace(JP8_NAME, "average of the 8 tasks"),
            "average_over": keys,
            "subsets": {},  # rinna's subset columns were published for its own runs only
        }
    by_name: dict[str, list[float]] = {}
    for key, value in scores.items():
        by_name.setdefault(task_name(key), []).append(value)
    subsets = {}
    for label, members in RINNA_SUBSETS.items():
        # Only when every member ran exactly once: two versions of one task would make the number ambiguous.
        if all(len(by_name.get(m, [])) == 1 for m in members):
            subsets[label] = {
                "value": round(sum(by_name[m][0] for m in members) / len(members), 2),
                "tasks": list(members),
            }
    return {"average": mean, "average_name": average_name(keys), "average_over": keys, "subsets": subsets}
