"""spark-submit entry point: every stage in order, ingest to export.

spark-submit jobs/pipeline.py --config conf/local.yaml [--set key=value ...]
"""

import sys

from amazon_recs.cli import STAGE_ORDER, job_main


def main(argv=None) -> int:
    return job_main(STAGE_ORDER, argv)


if __name__ == "__main__":
    sys.exit(main())
