// An S3 bucket, deployed with credentials from stackpass:
//
//   PULUMI_STACK=acme/payments/dev stackpass run -- pulumi up
//
// The program names no credentials: `stackpass run` puts AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN in pulumi's environment, and the
// AWS provider reads them from there.
import * as pulumi from "@pulumi/pulumi";
import * as aws from "@pulumi/aws";

const stack = pulumi.getStack();

const bucket = new aws.s3.Bucket("artifacts", {
    forceDestroy: stack !== "prod",
    tags: { component: "payments", environment: stack },
});

new aws.s3.BucketPublicAccessBlock("artifacts", {
    bucket: bucket.id,
    blockPublicAcls: true,
    blockPublicPolicy: true,
    ignorePublicAcls: true,
    restrictPublicBuckets: true,
});

export const bucketName = bucket.bucket;
export const bucketArn = bucket.arn;
