"""boto3 upload_file / download_file through the gateway (multipart both ways, with boto3's
default TransferConfig: 8 MiB parts, 10 threads).

Usage: boto3_roundtrip.py ENDPOINT BUCKET SRC_FILE DST_FILE [again]
`again`: only download (again), compare, and delete the object.
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import hashlib
import sys

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    endpoint, bucket, src, dst = sys.argv[1:5]
    again = sys.argv[5:] == ["again"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    cfg = TransferConfig()
    if not again:
        s3.upload_file(src, bucket, "boto3/object.bin", Config=cfg)
        head = s3.head_object(Bucket=bucket, Key="boto3/object.bin")
        assert "-" in head["ETag"], f"expected a multipart ETag, got {head['ETag']}"
    s3.download_file(bucket, "boto3/object.bin", dst, Config=cfg)
    a, b = sha256(src), sha256(dst)
    assert a == b, f"checksums differ: {a} != {b}"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="boto3/")
    assert [o["Key"] for o in listed.get("Contents", [])] == ["boto3/object.bin"], listed
    if again:
        s3.delete_object(Bucket=bucket, Key="boto3/object.bin")
    print("boto3 round trip ok", a)

if __name__ == "__main__":
    main()
