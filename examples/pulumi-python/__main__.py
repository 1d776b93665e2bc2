"""An S3 bucket, deployed with credentials from stackpass:

    PULUMI_STACK=acme/payments/dev stackpass run -- pulumi up

The program names no credentials: `stackpass run` serves them to pulumi on
127.0.0.1 as AWS container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI +
AWS_CONTAINER_AUTHORIZATION_TOKEN), renewed while it runs, and the AWS
provider's SDK fetches them from there.
"""

import pulumi
import pulumi_aws as aws

stack = pulumi.get_stack()

bucket = aws.s3.Bucket(
    "statements",
    force_destroy=stack != "prod",
    tags={"component": "payments", "environment": stack},
)

aws.s3.BucketPublicAccessBlock(
    "statements",
    bucket=bucket.id,
    block_public_acls=True,
    block_public_policy=True,
    ignore_public_acls=True,
    restrict_public_buckets=True,
)

pulumi.export("bucket_name", bucket.bucket)
pulumi.export("bucket_arn", bucket.arn)
