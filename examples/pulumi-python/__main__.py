"""An S3 bucket, deployed with credentials from stackpass:

    PULUMI_STACK=acme/payments/dev stackpass run -- pulumi up

The program names no credentials: `stackpass run` puts AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN in pulumi's environment, and the
AWS provider reads them from there.
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
