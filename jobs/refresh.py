"""spark-submit entry point: the refresh stage (fresh lists for the users who acted
since the last run, between two runs; see amazon_recs.pipeline.refresh).

spark-submit jobs/refresh.py --config conf/local.yaml [--set key=value ...] [--every SECONDS [--rounds N]]
"""

import sys

from amazon_recs.cli import refresh_main


def main(argv=None) -> int:
    return refresh_main(argv)


if __name__ == "__main__":
    sys.exit(main())
