"""Runs the Pulumi Python example (examples/pulumi-python/__main__.py) under
Pulumi's own unit-test mocks (pulumi.runtime.set_mocks): the program really
executes and registers its resources with the SDK, with no engine, CLI or cloud
behind it. Prints the registered resources as JSON on stdout.

argv: EXAMPLE_DIR PROJECT STACK
"""

import json
import runpy
import sys

import pulumi

example_dir, project, stack = sys.argv[1:4]
registered = []


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        registered.append({"type": args.typ, "name": args.name, "inputs": args.inputs})
        state = dict(args.inputs)
        state.setdefault("bucket", f"{args.name}-mock")
        state["arn"] = f"arn:aws:s3:::{args.name}-mock"
        return [f"{args.name}-id", state]

    def call(self, args):
        return {}


pulumi.runtime.set_mocks(Mocks(), project=project, stack=stack, preview=False)


outputs = {}


@pulumi.runtime.test
def run_program():
    program = runpy.run_path(f"{example_dir}/__main__.py")
    bucket = program["bucket"]
    return pulumi.Output.all(bucket.bucket, bucket.arn).apply(
        lambda values: outputs.update(bucket_name=values[0], bucket_arn=values[1])
    )


# The decorator returns once every outstanding registration has finished, so
# resources whose inputs waited on others are in `registered` by now.
run_program()
print(json.dumps({"registered": registered, "outputs": outputs}))
