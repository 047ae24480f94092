// Parses an AsyncAPI document with the AsyncAPI parser (@asyncapi/parser, its default
// ruleset) and fails on any diagnostic of severity error, printing every diagnostic.
//   node tools/asyncapi-check/check.mjs services/common/asyncapi.yaml
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { DiagnosticSeverity, Parser } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node check.mjs DOCUMENT');
  process.exit(2);
}
const source = resolve(path);
const { document, diagnostics } = await new Parser().parse(await readFile(source, 'utf8'), {
  source,
});
const severities = { 0: 'error', 1: 'warning', 2: 'info', 3: 'hint' };
for (const d of diagnostics) {
  console.log(`${severities[d.severity]} ${d.code} at ${d.path.join('.') || '(root)'}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
if (errors > 0 || document === undefined) {
  console.error(`${path}: ${errors} error(s): not a valid AsyncAPI document`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${document.version()} (${diagnostics.length} other diagnostics)`);
