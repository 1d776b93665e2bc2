// The one error type the actions throw: a message fit for the task log (the
// person who started the task reads it), never a secret.

export class StackpassError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StackpassError';
  }
}
