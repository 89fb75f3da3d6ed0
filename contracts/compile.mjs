#!/usr/bin/env node
// Compile FedproofLedger.sol with the pinned solc (npm `solc`, solcjs) through its standard-JSON API and write
// <outDir>/FedproofLedger.json (default outDir: ./build next to this script).
//
//   node contracts/compile.mjs [outDir]
//
// The settings are pinned here (optimizer on, 200 runs, evmVersion cancun) rather than left to the compiler's
// defaults, so the committed artifact can be reproduced byte for byte; the output has sorted keys, two-space
// indentation and a trailing newline. Any compiler error (or a compiler that is not the pinned version) fails
// with exit code 1.

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const PINNED_VERSION = "0.8.28";
const CONTRACT = "FedproofLedger";
const SOURCE_NAME = `${CONTRACT}.sol`; // the source unit name is part of the metadata hash: keep it relative

const here = dirname(fileURLToPath(import.meta.url));
const outDir = resolve(process.argv[2] ?? join(here, "build"));
const source = readFileSync(join(here, SOURCE_NAME));

const version = solc.version();
if (!version.startsWith(`${PINNED_VERSION}+`)) {
  console.error(`error: solc ${version} is not the pinned ${PINNED_VERSION}; run \`npm ci --prefix contracts\``);
  process.exit(1);
}

const input = {
  language: "Solidity",
  sources: { [SOURCE_NAME]: { content: source.toString("utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    metadata: { bytecodeHash: "ipfs" },
    outputSelection: { [SOURCE_NAME]: { [CONTRACT]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
let failed = false;
for (const diagnostic of output.errors ?? []) {
  console.error(diagnostic.formattedMessage ?? diagnostic.message);
  if (diagnostic.severity === "error") failed = true;
}
const compiled = output.contracts?.[SOURCE_NAME]?.[CONTRACT];
if (failed || !compiled) {
  console.error(`error: ${SOURCE_NAME} did not compile`);
  process.exit(1);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((key) => [key, sortKeys(value[key])]),
    );
  }
  return value;
}

const artifact = sortKeys({
  contractName: CONTRACT,
  compiler: version,
  abi: compiled.abi,
  bytecode: `0x${compiled.evm.bytecode.object}`,
  deployedBytecode: `0x${compiled.evm.deployedBytecode.object}`,
  sourceSha256: createHash("sha256").update(source).digest("hex"),
});

mkdirSync(outDir, { recursive: true });
const target = join(outDir, `${CONTRACT}.json`);
writeFileSync(target, `${JSON.stringify(artifact, null, 2)}\n`);
console.log(`wrote ${target} (solc ${version}, runtime ${compiled.evm.deployedBytecode.object.length / 2} bytes)`);
