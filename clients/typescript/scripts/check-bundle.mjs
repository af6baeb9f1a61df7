// Checks that clients/web-demo/gamerelay-client.js (committed, served by the node at /demo)
// is exactly what `npm run bundle:demo` builds from src/ now.
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const pkg = JSON.parse(readFileSync(here("../package.json"), "utf8"));
const banner = /--banner:js="([^"]*)"/.exec(pkg.scripts["bundle:demo"])[1];
const result = await build({
  entryPoints: [here("../src/index.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  legalComments: "eof",
  banner: { js: banner },
  write: false,
  outfile: here("../../web-demo/gamerelay-client.js"),
  absWorkingDir: here(".."),
  logLevel: "error",
});
const built = result.outputFiles[0].text;
const committed = readFileSync(here("../../web-demo/gamerelay-client.js"), "utf8");
if (built !== committed) {
  console.error("clients/web-demo/gamerelay-client.js is out of date with clients/typescript/src: run `npm run bundle:demo` in clients/typescript and commit it");
  process.exit(1);
}
console.log("clients/web-demo/gamerelay-client.js matches clients/typescript/src");
