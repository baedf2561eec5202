"""Compare two results stores cell by cell: every metric and every per-image row, exactly.

Made for refactors that must not change results: run the same benchmark with the old and the
new code, each into its own store and cache, then

    python bench/compare_stores.py OLD.db NEW.db            # the latest run of each
    python bench/compare_stores.py OLD.db NEW.db --run-a 1 --run-b 1

Cells are matched by their content hash (the cache key), metrics by (name, subset), image rows
by (cell key, idx). Timing metrics (seconds, attack_seconds, images_per_second, and the subset
search's seconds_per_1000, each operation's measured prediction time) are left out;
every other value must be equal to the last bit (NaN equals NaN). A metric the new store has and
the old lacks is listed (``--allow-new`` accepts such additions); anything else that differs
fails. Reads the SQLite files directly, so stores of any advbench schema compare (the old
``attack``/``transform`` cell columns and the new ones alike). Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
from collections import Counter

TIMING = {"seconds", "attack_seconds", "images_per_second", "seconds_per_1000"}
# Note: a subset cell breaks a tie of dev accuracy between operations by their measured cost, so
# two runs under different load may choose differently there (and report it as a difference).
IMAGE_FIELDS = ("source", "origin", "split", "y", "truth", "score", "decision", "label", "logit_0", "logit_1")


def _latest(db: sqlite3.Connection) -> int:
    return db.execute("select id from runs order by started_at desc, id desc limit 1").fetchone()[0]


def metrics(db: sqlite3.Connection, run: int) -> dict[str, dict[tuple[str, str], float | None]]:
    out: dict[str, dict[tuple[str, str], float | None]] = {}
    for key, status, name, subset, value in db.execute(
            "select c.key, c.status, m.name, m.subset, m.value from cells c left join metrics m on m.cell_id = c.id "
            "where c.run_id = ?", (run,)):
        cell = out.setdefault(key, {("status", ""): status})  # type: ignore[dict-item]
        if name is not None and name not in TIMING:
            cell[(name, subset)] = value
    return out


def images(db: sqlite3.Connection, run: int) -> dict[tuple[str, int], tuple]:
    columns = {row[1] for row in db.execute("pragma table_info(images)")}
    fields = [f for f in IMAGE_FIELDS if f in columns]
    rows = db.execute(f"select s.cell_key, i.idx, {', '.join('i.' + f for f in fields)} from images i "
                      "join image_sets s on s.id = i.set_id join cells c on c.key = s.cell_key where c.run_id = ?",
                      (run,))
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(a: sqlite3.Connection, b: sqlite3.Connection, run_a: int, run_b: int, allow_new: bool,
            show: int) -> list[str]:
    problems: list[str] = []
    ma, mb = metrics(a, run_a), metrics(b, run_b)
    stages = dict(b.execute("select key, stage from cells where run_id = ?", (run_b,)).fetchall())
    stages |= dict(a.execute("select key, stage from cells where run_id = ?", (run_a,)).fetchall())
    only_a, only_b = sorted(set(ma) - set(mb)), sorted(set(mb) - set(ma))
    problems += [f"cell only in A: {stages[k]} {k}" for k in only_a]
    problems += [f"cell only in B: {stages[k]} {k}" for k in only_b]
    added: Counter[str] = Counter()
    compared = 0
    for key in sorted(set(ma) & set(mb)):
        for name in sorted(set(ma[key]) | set(mb[key])):
            if name not in mb[key]:
                problems.append(f"{stages[key]} {key}: metric {name} only in A ({ma[key][name]!r})")
            elif name not in ma[key]:
                added[f"{stages[key]}: {name[0]}"] += 1
                if not allow_new:
                    problems.append(f"{stages[key]} {key}: metric {name} only in B ({mb[key][name]!r})")
            elif not same(ma[key][name], mb[key][name]):
                problems.append(f"{stages[key]} {key}: {name}: A {ma[key][name]!r} != B {mb[key][name]!r}")
            else:
                compared += 1
    ia, ib = images(a, run_a), images(b, run_b)
    differing = [k for k in set(ia) & set(ib) if not all(same(x, y) for x, y in zip(ia[k], ib[k]))]
    problems += [f"image row only in A: {k}" for k in sorted(set(ia) - set(ib))[:show]]
    problems += [f"image row only in B: {k}" for k in sorted(set(ib) - set(ia))[:show]]
    problems += [f"image row {k} differs: A {ia[k]} != B {ib[k]}" for k in sorted(differing)[:show]]
    print(f"A run {run_a}: {len(ma)} cells; B run {run_b}: {len(mb)} cells; {compared} metric values equal; "
          f"{len(set(ia) & set(ib)) - len(differing)} of {len(ia)} / {len(ib)} image rows equal")
    for what, n in sorted(added.items()):
        print(f"new in B ({'accepted' if allow_new else 'a difference'}): {what} in {n} cells")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the reference store (SQLite file)")
    parser.add_argument("b", help="the store to check against it")
    parser.add_argument("--run-a", type=int, help="run id in A (default: the latest)")
    parser.add_argument("--run-b", type=int, help="run id in B (default: the latest)")
    parser.add_argument("--allow-new", action="store_true", help="metrics only B has are additions, not differences")
    parser.add_argument("--show", type=int, default=30, help="differences printed at most (default 30)")
    args = parser.parse_args(argv)
    a, b = sqlite3.connect(f"file:{args.a}?mode=ro", uri=True), sqlite3.connect(f"file:{args.b}?mode=ro", uri=True)
    problems = compare(a, b, args.run_a or _latest(a), args.run_b or _latest(b), args.allow_new, args.show)
    for line in problems[:args.show]:
        print(line)
    if len(problems) > args.show:
        print(f"... and {len(problems) - args.show} more")
    print("same results" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
