"""Create the configured bucket and upload the input files a config names.

    seed_bucket.py --config conf/local-aws.yaml --from ../shared/data/amazon-2018/gift_cards

Each s3:// input of the config (input.reviews, input.products, input.tags)
gets the file of the same name from --from. Objects already there with the same
size are left alone, so it is safe to run before every local run. Credentials
come from the environment (`bootstrap/local/services.sh env`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs.config import load_config
from amazon_recs.errors import RecsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--from", dest="source", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        s3 = boto3.client(
            "s3",
            region_name=config.require("aws.region"),
            endpoint_url=config.require("aws.s3_endpoint") or None,
        )
        bucket = config.require("aws.bucket")
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)
            print(f"created bucket {bucket}")
        for key in ("input.reviews", "input.products", "input.tags"):
            uri = urlparse(config.require(key))
            if uri.scheme != "s3":
                continue
            local = args.source / Path(uri.path).name
            if not local.is_file():
                raise RecsError(f"{local} not found (the file {key} names; download links in README.md)")
            object_key = uri.path.lstrip("/")
            try:
                if s3.head_object(Bucket=uri.netloc, Key=object_key)["ContentLength"] == local.stat().st_size:
                    continue
            except ClientError:
                pass
            s3.upload_file(str(local), uri.netloc, object_key)
            print(f"uploaded {local} to s3://{uri.netloc}/{object_key}")
    except (RecsError, BotoCoreError, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
