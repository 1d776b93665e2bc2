// Backstage scaffolder actions backed by a stackpass broker: `stackpass:decide`
// and `stackpass:run`, acting as the user who started the task.

export { scaffolderModuleStackpass as default } from './module';
export { createStackpassDecideAction } from './actions/decide';
export { createStackpassRunAction } from './actions/run';
export { LineRedactor, REDACTED } from './redact';
