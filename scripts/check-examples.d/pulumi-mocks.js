'use strict';
// Runs the compiled Pulumi TypeScript example (examples/pulumi-typescript/bin)
// under Pulumi's own unit-test mocks (pulumi.runtime.setMocks): the program
// really executes and registers its resources with the SDK, with no engine,
// CLI or cloud behind it. Prints the registered resources as JSON on stdout.
//
// argv: EXAMPLE_DIR PROJECT STACK
const path = require('node:path');
const [dir, project, stack] = process.argv.slice(2);
const pulumi = require(path.join(dir, 'node_modules/@pulumi/pulumi'));

const registered = [];
pulumi.runtime.setMocks(
  {
    newResource(args) {
      registered.push({ type: args.type, name: args.name, inputs: args.inputs });
      return {
        id: `${args.name}-id`,
        state: { ...args.inputs, bucket: `${args.inputs.bucketPrefix ?? args.name}-mock`, arn: `arn:aws:s3:::${args.name}-mock` },
      };
    },
    call(args) {
      return args.inputs;
    },
  },
  project,
  stack,
  false,
);

const program = require(path.join(dir, 'bin/index.js'));
let outputs = null;
pulumi.all([program.bucketName, program.bucketArn]).apply(([bucketName, bucketArn]) => {
  outputs = { bucketName, bucketArn };
});
// Resources whose inputs wait on others register later; once nothing is left
// to run, every registration has happened.
process.once('beforeExit', () => {
  process.stdout.write(JSON.stringify({ registered, outputs }) + '\n');
});
