"""Many shops: `python -m bench.shops` (50 shops of 1,000 orphans each) or `--quick` (the size its
test runs).

Each shop is a PostgreSQL database of its own (``<database of --url>_NN``, created when missing and
rebuilt: the Laravel tables, ours, its orphans). One schedule tick asks for a run of every shop at
once; ``N`` runs go at a time, as ``max_concurrent_runs: N`` with one run per shop lets them, each
run a process of its own (as a run launcher starts one), the next shop taken as soon as a run
ends. For N = 1, 2 and 4 it prints: every shop's orphans over the time from the tick to the last
shop fixed (total orders/s), the worst and the median shop's lag from the tick to its run's end,
and the share of a run spent starting its process. One JSON line per figure, then the table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass

import sqlalchemy as sa

from bench import shopgen
from bench.run import ensure_database, git_commit
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.demo.shop import shop_tables

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/regbench_shops"
CONCURRENCY = (1, 2, 4)


@dataclass(frozen=True)
class Size:
    shops: int
    orphans: int


FULL, QUICK = Size(50, 1000), Size(4, 50)


def shop_urls(url: str, shops: int) -> list[str]:
    base = sa.engine.make_url(url)
    return [
        base.set(database=f"{base.database}_{i:02d}").render_as_string(hide_password=False)
        for i in range(shops)
    ]


def build(url: str, orphans: int) -> list[int]:
    """A fresh shop in ``url``: the Laravel tables, ours, and ``orphans`` orphans; their ids."""
    ensure_database(url)
    engine = create_app_engine(url)
    try:
        md = sa.MetaData()
        md.reflect(engine)
        md.drop_all(engine)
        shop_tables(SchemaMapping(), with_indexes=True).metadata.create_all(engine)
        migrations.upgrade(engine, "regularization_")
        return shopgen.add_orphans(engine, orphans, seed=5)
    finally:
        engine.dispose()


def _shop_run(index: int, url: str, limit: int, results) -> None:
    """One shop's run in a process of its own: the shop's run lock, then every orphan."""
    began = time.time()  # the interpreter and the project's modules are loaded by now
    engine = create_app_engine(url)
    try:
        schema = bind_schema(engine, SchemaMapping())
        summary = Regularizer(engine, schema, sleeper=lambda _s: None).run(
            RunOptions(sleep=0, limit=limit, batch_size=1000)
        )
        results.put((index, summary.regularized, began, time.time()))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        results.put((index, repr(exc), began, time.time()))
    finally:
        engine.dispose()


def one_tick(urls: list[str], orphans: int, concurrent: int) -> dict[str, float]:
    """Every shop run once from one tick, ``concurrent`` at a time: the figures of that tick."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    waiting, running, done = deque(range(len(urls))), {}, {}
    tick = time.time()
    launched: dict[int, float] = {}
    while waiting or running:
        while waiting and len(running) < concurrent:
            index = waiting.popleft()
            launched[index] = time.time()
            running[index] = ctx.Process(
                target=_shop_run, args=(index, urls[index], orphans, results)
            )
            running[index].start()
        index, regularized, began, ended = results.get(timeout=900)
        running.pop(index).join(timeout=60)
        if regularized != orphans:
            raise AssertionError(f"shop {index}: {regularized!r} of {orphans} orphans regularized")
        done[index] = (launched[index], began, ended)
    lags = [ended - tick for _launched, _began, ended in done.values()]
    starts = [began - launched for launched, began, _ended in done.values()]
    runs = [ended - launched for launched, _began, ended in done.values()]
    return {
        "orders_per_s": orphans * len(urls) / max(lags),
        "worst_lag_s": max(lags),
        "median_lag_s": statistics.median(lags),
        "start_share": sum(starts) / sum(runs),
    }


def reset(urls: list[str], ids: dict[str, list[int]]) -> None:
    """Every shop's orphans pending again, their events and audit rows gone, for the next tick."""
    for url in urls:
        engine = create_app_engine(url)
        try:
            shopgen.reset_orphans(engine, ids[url])
        finally:
            engine.dispose()


def drop(urls: list[str]) -> None:
    admin_url = sa.engine.make_url(urls[0]).set(database="postgres")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for url in urls:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}"'))
    admin.dispose()


def table(rows: dict[int, dict[str, float]], size: Size) -> str:
    lines = [
        f"{size.shops} shops x {size.orphans:,} orphans, one tick, each run its own process:",
        "",
        "| concurrent runs | total orders/s | worst shop's lag | median shop's lag | start-up share |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrent, f in rows.items():
        lines.append(
            f"| {concurrent} | {f['orders_per_s']:,.0f} | {f['worst_lag_s']:.1f} s "
            f"| {f['median_lag_s']:.1f} s | {f['start_share']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.shops} small shops")
    parser.add_argument("--url", default=DEFAULT_URL, help="the shops' server and name prefix")
    parser.add_argument("--drop", action="store_true", help="drop the shops' databases at the end")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    began = time.perf_counter()
    urls = shop_urls(args.url, size.shops)
    ids = {url: build(url, size.orphans) for url in urls}
    print(f"# {size.shops} shops built in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    rows: dict[int, dict[str, float]] = {}
    commit = git_commit()
    try:
        for concurrent in CONCURRENCY:
            reset(urls, ids)
            rows[concurrent] = one_tick(urls, size.orphans, concurrent)
            for name, value in rows[concurrent].items():
                figure = {"name": f"shops_{name}", "value": round(value, 3), "runs": concurrent}
                figure.update(shops=size.shops, orphans=size.orphans, commit=commit)
                print(json.dumps(figure), flush=True)
    finally:
        if args.drop:
            drop(urls)
    print(table(rows, size))
    print(f"# the benchmark took {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
