"""Priority numbering: the one internal convention and its conversions.

Internal convention (everywhere in Python, in P4Runtime entries and in YAML):
**level 0 is the highest priority** (the paper's P1), level K-1 the lowest.
Promotion = a smaller level. ``K <= NUM_QUEUES``.

Targets number their queues the other way round (bmv2 ``--priority-queues 8``
serves queue 7 first; Tofino TM priority 7 is highest). The conversion happens
at exactly one place per target:

* v1model (bmv2): ``standard_metadata.priority = NUM_QUEUES - 1 - level``
  in ``p4src/v1model/mfs.p4``; the embedded switch calls :func:`queue_of`.
* TNA (Tofino): ``ig_tm_md.qid = NUM_QUEUES - 1 - level`` in ``p4src/tna/mfs.p4``
  and the TM config gives queue q scheduling priority q (strict).
* DSCP on egress: the ``MfsEgress.level_dscp`` table, default :func:`default_dscp`.
"""

from __future__ import annotations

NUM_QUEUES = 8  # physical strict-priority queues per port (bmv2 priority is bit<3>)
LOWEST_LEVEL = NUM_QUEUES - 1
MAX_LEVEL_VALUE = 255  # P4 level fields are bit<8>; values above LOWEST_LEVEL are clamped


def clamp(level: int) -> int:
    """What the data plane does with an out-of-range level: clamp to the lowest."""
    return LOWEST_LEVEL if level > LOWEST_LEVEL else max(0, level)


def queue_of(level: int) -> int:
    """Physical queue id (higher is served first) for an internal level."""
    return NUM_QUEUES - 1 - clamp(level)


def level_of_queue(queue: int) -> int:
    if not 0 <= queue < NUM_QUEUES:
        raise ValueError(f"queue {queue} not in 0..{NUM_QUEUES - 1}")
    return NUM_QUEUES - 1 - queue


def default_dscp(level: int) -> int:
    """Default level->DSCP map: class selectors CS7..CS0 (level 0 -> CS7=56)."""
    return queue_of(level) << 3
