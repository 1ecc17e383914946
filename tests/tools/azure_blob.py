"""An independent Azure Blob Storage client (azure-storage-blob, and pyarrow for Parquet)
for the integration tests, against Azurite's well-known development account.

Usage:
  azure_blob.py create-container <blob endpoint> <container>
  azure_blob.py read <blob endpoint> <container> [prefix]
      prints {"objects": [{"key": "...", "format": "jsonl" | "parquet", "rows": [...]}]}
"""
import io
import json
import os
import sys

import pyarrow.parquet as pq
from azure.storage.blob import BlobServiceClient

ACCOUNT = "devstoreaccount1"
# Azurite's published development key.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def main():
    command, endpoint, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    service = BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={endpoint};"
    )
    if command == "create-container":
        service.create_container(args[0])
        return
    container = service.get_container_client(args[0])
    prefix = args[1] if len(args) > 1 else None
    objects = []
    for blob in container.list_blobs(name_starts_with=prefix):
        body = container.download_blob(blob.name).readall()
        if blob.name.endswith(".parquet"):
            rows, fmt = pq.read_table(io.BytesIO(body)).to_pylist(), "parquet"
        else:
            rows = [json.loads(line) for line in body.decode().splitlines() if line]
            fmt = "jsonl"
        objects.append({"key": blob.name, "format": fmt, "rows": rows})
    json.dump({"objects": objects}, sys.stdout, default=str)


if __name__ == "__main__":
    main()
    # As in s3.py: pyarrow's thread pool can abort the interpreter's teardown.
    sys.stdout.flush()
    os._exit(0)
