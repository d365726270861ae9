import boto3


def s3_client():
    return boto3.client("s3", aws_access_key_id="AKIAEXAMPLE1234567", aws_secret_access_key="wJalrXUtnFEMIK7MDENG")
