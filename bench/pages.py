"""Which processes share each physical page: what removing or changing one process would save.

PSS tells what each process costs on average, not what the stack would save without it: a page
two processes map counts half in each, and it stays if one of them goes. This reads every present
page's frame number from ``/proc/<pid>/pagemap`` (root only: other users see zeros) and groups the
pages by the set of processes that map them. The pages only one process maps are what its exit
would free (its USS, split here into anonymous memory and file pages); the pages only a group maps
(a runner's zygote and its training child) are what the stack saves if the group's work moves
elsewhere. ``python -m bench.footprint --pages`` prints it at the end of the run.
"""

from __future__ import annotations

import collections
import struct

PAGE = 4096
MIB = 2**20
_PFN = (1 << 55) - 1
_PRESENT = 1 << 63
_FILE = 1 << 61  # a file page or shared anonymous memory


def frames(pid: int) -> dict[int, bool]:
    """Each present page of ``pid``: its frame number -> whether it is a file page."""
    out: dict[int, bool] = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            span = line.split(maxsplit=1)[0]
            low, high = (int(x, 16) for x in span.split("-"))
            try:
                pagemap.seek(low // PAGE * 8)
                data = pagemap.read((high - low) // PAGE * 8)
            except OSError:  # [vsyscall] and the like
                continue
            for (entry,) in struct.iter_unpack("<Q", data):
                if entry & _PRESENT and entry & _PFN:
                    out[entry & _PFN] = bool(entry & _FILE)
    return out


def page_sets(pids: dict[str, int], top: int = 12) -> dict[str, object]:
    """Pages of the processes ``pids`` (label -> pid) by who maps them, MiB.

    ``alone``: each process's pages no other of them maps (anonymous, file); ``groups``: the
    largest sets of several processes that alone map some pages; ``total``: distinct pages.
    Empty when the frame numbers are hidden (not root).
    """
    owners: dict[int, set[str]] = collections.defaultdict(set)
    is_file: dict[int, bool] = {}
    for label, pid in pids.items():
        try:
            for frame, file_page in frames(pid).items():
                owners[frame].add(label)
                is_file[frame] = file_page
        except OSError:  # exited meanwhile, or no permission
            continue
    if not owners:
        return {}
    alone: dict[str, list[float]] = {label: [0.0, 0.0] for label in pids}
    groups: collections.Counter[frozenset[str]] = collections.Counter()
    for frame, labels in owners.items():
        if len(labels) == 1:
            alone[next(iter(labels))][1 if is_file[frame] else 0] += PAGE / MIB
        else:
            groups[frozenset(labels)] += 1
    return {
        "total": round(len(owners) * PAGE / MIB, 1),
        "alone": {label: {"anon": round(a, 1), "file": round(f, 1)} for label, (a, f) in alone.items()},
        "groups": [{"mib": round(n * PAGE / MIB, 1), "processes": sorted(labels)} for labels, n in groups.most_common(top) if n],
    }
