// An S3 bucket, deployed with credentials from stackpass:
//
//   PULUMI_STACK=acme/payments/dev stackpass run -- pulumi up
//
// The program names no credentials: `stackpass run` serves them to pulumi on
// 127.0.0.1 as AWS container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI
// + AWS_CONTAINER_AUTHORIZATION_TOKEN), renewed while it runs, and the AWS
// provider's SDK fetches them from there.
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
