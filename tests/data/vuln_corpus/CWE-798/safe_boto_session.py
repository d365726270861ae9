import boto3


def s3_client():
    return boto3.client("s3")
