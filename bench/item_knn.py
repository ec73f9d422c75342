"""Our item-kNN neighbours (``amazon_recs.models.item_knn``, Spark) beside scipy's.

On a run's own train split (``silver/interactions``) this fits the neighbours with
our Spark model and, in the same process, with the plain scipy computation of
``bench/compare.py`` (``cosine_neighbours``: blocks of the item x item product,
one thread, no cap on heavy users), and reports both times and how many of the
reference's neighbours ours has (the two differ by our sampling of the heaviest
users' items, ``max_user_items``; with no user above it they agree exactly).

    python bench/item_knn.py --size 1m --out BENCHMARKS.md   # data/scale-1m, from make bench-scale
    python bench/item_knn.py --config conf/ml-latest-small.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from compare import cosine_neighbours
from report_block import write_block
from scale import folder_settings, git_commit, machine
from threadpoolctl import threadpool_limits

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.features.split import TRAIN
from amazon_recs.models.item_knn import ItemKnnParams, fit_item_knn
from amazon_recs.schemas import ITEM_IDX, SPLIT, USER_IDX
from amazon_recs.spark import get_spark

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--size", help="a make bench-scale shop: data/scale-<size>")
    where.add_argument("--config", help="a run's config, e.g. conf/ml-latest-small.yaml")
    parser.add_argument("--neighbours", type=int, default=ItemKnnParams.neighbours)
    parser.add_argument("--shrinkage", type=float, default=ItemKnnParams.shrinkage)
    parser.add_argument("--max-user-items", type=int, default=ItemKnnParams.max_user_items)
    parser.add_argument("--out", type=Path, help="Markdown file to write the block into")
    return parser.parse_args(argv)


def main(argv) -> int:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    args = parse_args(argv)
    if args.size:
        name = f"scale-{args.size}"
        config = load_config(ROOT / "conf" / "scale.yaml", folder_settings(ROOT / "data" / name))
    else:
        name = Path(args.config).stem
        config = load_config(args.config, [])
    spark = get_spark(config)
    train = (
        io.read_table(spark, config, "silver/interactions")
        .filter(f"{SPLIT} = '{TRAIN}'")
        .select(USER_IDX, ITEM_IDX)
        .cache()
    )
    pairs = train.distinct().toPandas()
    params = ItemKnnParams(
        neighbours=args.neighbours, shrinkage=args.shrinkage, max_user_items=args.max_user_items
    )
    per_user = pairs.groupby(USER_IDX).size()
    heavy = per_user[per_user > params.max_user_items]

    started = time.perf_counter()
    ours = fit_item_knn(train, params).toPandas()
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    n_items = int(pairs[ITEM_IDX].max()) + 1
    binary = sp.csr_matrix(
        (np.ones(len(pairs)), (pairs[USER_IDX].to_numpy(), pairs[ITEM_IDX].to_numpy())),
        shape=(int(pairs[USER_IDX].max()) + 1, n_items),
    )
    with threadpool_limits(1, "blas"):
        reference = cosine_neighbours(binary, params.neighbours, params.shrinkage).tocoo()
    reference_s = time.perf_counter() - started

    expected = pd.DataFrame(
        {ITEM_IDX: reference.row, "neighbour_idx": reference.col, "similarity": reference.data}
    )
    found = expected.merge(ours[[ITEM_IDX, "neighbour_idx"]], how="inner")
    recall = len(found) / max(len(expected), 1)
    # Where the pairs differ, are they ties? Each item's kept similarities, sorted, compared.
    kept = {
        side: frame.sort_values([ITEM_IDX, "similarity"]).groupby(ITEM_IDX)["similarity"].apply(np.asarray)
        for side, frame in (("ours", ours), ("reference", expected))
    }
    same = [
        item
        for item, sims in kept["reference"].items()
        if item in kept["ours"].index
        and len(kept["ours"][item]) == len(sims)
        and np.allclose(kept["ours"][item], sims, rtol=1e-9, atol=0)
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"`python bench/item_knn.py {' '.join(argv)}`"
    body = "\n\n".join(
        [
            f"### item-kNN neighbours on {name}, max_user_items {params.max_user_items}",
            f"{command}, {when}, commit {git_commit()}, {machine()}, {config.require('spark.master')}.",
            f"Train split: {len(pairs):,} distinct (user, item) pairs, {pairs[USER_IDX].nunique():,} users, "
            f"{pairs[ITEM_IDX].nunique():,} items; {len(heavy):,} users above max_user_items "
            f"{params.max_user_items} (the heaviest has {int(per_user.max()):,} items). "
            f"Settings: {params.neighbours} neighbours, shrinkage {params.shrinkage:g}.",
            "| | seconds | neighbour rows |\n|---|---:|---:|\n"
            f"| ours: `models.item_knn.fit_item_knn` (Spark, collected) | {ours_s:.1f} | {len(ours):,} |\n"
            f"| reference: scipy `cosine_neighbours` of bench/compare.py (one thread, uncapped) "
            f"| {reference_s:.1f} | {reference.nnz:,} |\n"
            f"| ratio ours / reference | {ours_s / reference_s:.2f}x | |",
            f"Ours has {100 * recall:.2f}% of the reference's (item, neighbour) pairs; "
            f"{len(same):,} of its {len(kept['reference']):,} items keep the same similarities in both: "
            "where their pairs differ, it is in ties at the last place, which the reference breaks "
            "arbitrarily (argpartition) and ours by item. The other items differ through the cap on "
            "heavy users.",
        ]
    )
    print(body)
    if args.out:
        cap = "" if params.max_user_items == ItemKnnParams.max_user_items else f":cap-{params.max_user_items}"
        write_block(args.out, f"item-knn:{name}{cap}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
