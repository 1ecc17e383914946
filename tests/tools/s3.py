"""An independent S3 client (boto3, and pyarrow for Parquet) for the integration tests.

Usage:
  s3.py create-bucket <endpoint> <bucket>
  s3.py read <endpoint> <bucket> [prefix]
      prints {"objects": [{"key": "...", "format": "jsonl" | "parquet", "rows": [...]}]}
"""
import io
import json
import os
import sys

import boto3
import pyarrow.parquet as pq


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def read(s3, bucket, prefix=""):
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if key.endswith(".parquet"):
                rows = pq.read_table(io.BytesIO(body)).to_pylist()
                fmt = "parquet"
            else:
                rows = [json.loads(line) for line in body.decode().splitlines() if line]
                fmt = "jsonl"
            objects.append({"key": key, "format": fmt, "rows": rows})
    json.dump({"objects": objects}, sys.stdout, default=str)


def main():
    command, endpoint, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    s3 = client(endpoint)
    if command == "create-bucket":
        s3.create_bucket(Bucket=args[0])
    elif command == "read":
        read(s3, *args)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
    # pyarrow's thread pool can abort the interpreter's teardown ("terminate called
    # without an active exception", seen once in CI on a busy machine) after the work is
    # done: leave without it.
    sys.stdout.flush()
    os._exit(0)
