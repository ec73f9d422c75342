"""spark-submit entry point: the ingest stage.

spark-submit jobs/ingest.py --config conf/local.yaml [--set key=value ...]
"""

import sys

from amazon_recs.cli import job_main


def main(argv=None) -> int:
    return job_main(["ingest"], argv)


if __name__ == "__main__":
    sys.exit(main())
