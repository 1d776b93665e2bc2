# An S3 bucket for the search service, applied with credentials from stackpass:
#
#   stackpass run -- terraform apply
#
# `stackpass run` derives the stack terraform:acme/search-dev from the cloud
# block below (organization/workspace; TF_WORKSPACE overrides the name). The
# AWS provider names no credentials: `stackpass run` serves them to terraform
# on 127.0.0.1 as AWS container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI
# + AWS_CONTAINER_AUTHORIZATION_TOKEN), renewed while it runs.

terraform {
  required_version = ">= 1.6"

  cloud {
    organization = "acme"

    workspaces {
      name = "search-dev"
    }
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

resource "aws_s3_bucket" "index" {
  bucket_prefix = "search-dev-index-"
  force_destroy = true

  tags = {
    component   = "search"
    environment = "dev"
  }
}

resource "aws_s3_bucket_public_access_block" "index" {
  bucket                  = aws_s3_bucket.index.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

output "bucket_name" {
  value = aws_s3_bucket.index.bucket
}
