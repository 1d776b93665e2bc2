import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineRedactor, REDACTED } from './redact';

function collect(secrets: string[]) {
  const lines: string[] = [];
  const redactor = new LineRedactor(secrets, line => lines.push(line));
  return { lines, redactor };
}

const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';

test('a secret split at every possible chunk boundary is still redacted', () => {
  const text = `before ${SECRET} after\nsecond line ${SECRET}\n`;
  for (let cut = 0; cut <= text.length; cut++) {
    for (let cut2 = cut; cut2 <= text.length; cut2 += 7) {
      const { lines, redactor } = collect([SECRET]);
      redactor.write(text.slice(0, cut));
      redactor.write(text.slice(cut, cut2));
      redactor.write(text.slice(cut2));
      redactor.end();
      assert.deepEqual(lines, [`before ${REDACTED} after`, `second line ${REDACTED}`]);
    }
  }
});

test('one byte at a time, and output without a final newline', () => {
  const { lines, redactor } = collect([SECRET]);
  for (const ch of `x=${SECRET}`) redactor.write(ch);
  assert.deepEqual(lines, []);
  redactor.end();
  assert.deepEqual(lines, [`x=${REDACTED}`]);
});

test('a secret that contains another is replaced whole; CRLF line ends are trimmed', () => {
  const inner = 'ASIAEXAMPLE123';
  const outer = `token-${inner}-tail`;
  const { lines, redactor } = collect([inner, outer]);
  redactor.write(`${outer} and ${inner}\r\n`);
  assert.deepEqual(lines, [`${REDACTED} and ${REDACTED}`]);
});

test('a very long line is emitted in pieces without ever splitting a secret', () => {
  const { lines, redactor } = collect([SECRET]);
  const filler = 'y'.repeat(1000);
  let text = '';
  for (let i = 0; i < 200; i++) text += filler + SECRET;
  // Odd-sized chunks so cuts land everywhere.
  for (let i = 0; i < text.length; i += 4093) redactor.write(text.slice(i, i + 4093));
  redactor.end();
  const joined = lines.join('');
  assert.ok(lines.length > 1, 'the long line was flushed before it ended');
  assert.ok(!joined.includes(SECRET));
  assert.ok(!joined.includes(SECRET.slice(0, 20)), 'no half of a secret leaks at a cut');
  assert.ok(!joined.includes(SECRET.slice(20)), 'no half of a secret leaks at a cut');
  assert.equal(joined.split(REDACTED).length - 1, 200);
  assert.equal(joined.replaceAll(REDACTED, '').length, 200 * 1000);
});

test('empty secrets are ignored rather than matching everywhere', () => {
  const { lines, redactor } = collect(['']);
  redactor.write('plain\n');
  assert.deepEqual(lines, ['plain']);
});
