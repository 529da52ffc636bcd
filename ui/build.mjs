// Bundles src/main.ts (with xterm.js and its CSS) into src/hutch/web/static: assets/main-<hash>.js,
// assets/main-<hash>.css, index.html naming them, and the bundled packages' licences.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "..", "src", "hutch", "web", "static");
const assets = path.join(out, "assets");

await rm(out, { recursive: true, force: true });
await mkdir(assets, { recursive: true });
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  outdir: assets,
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});
const name = (file) => path.basename(file);
const [js, meta] = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint === "src/main.ts");
if (!meta.cssBundle) throw new Error("esbuild made no CSS bundle");
const html = (await readFile(path.join(here, "index.html"), "utf8"))
  .replace("%JS%", name(js))
  .replace("%CSS%", name(meta.cssBundle));
await writeFile(path.join(out, "index.html"), html);

const licences = [];
for (const pkg of ["@xterm/xterm", "@xterm/addon-fit"]) {
  const dir = path.join(here, "node_modules", pkg);
  const { version } = JSON.parse(await readFile(path.join(dir, "package.json"), "utf8"));
  licences.push(`${pkg} ${version}\n\n${await readFile(path.join(dir, "LICENSE"), "utf8")}`);
}
await writeFile(path.join(assets, "THIRD-PARTY-LICENSES.txt"), licences.join("\n\n"));
console.log(`web UI built into ${path.relative(path.join(here, ".."), out)}`);
