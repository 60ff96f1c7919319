// Builds every flow described in a JSON spec with @pgflow/dsl and prints
// {flow_slug: compileFlow(flow)} as JSON.
//
// usage: node compile_flows.mjs <unpacked @pgflow/dsl package dir> <flows.json>
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [packageDir, specPath] = process.argv.slice(2);
const { Flow, compileFlow } = await import(
  pathToFileURL(join(packageDir, 'dist', 'index.js')).href
);

const identity = (input) => input;
const compiled = {};
for (const spec of JSON.parse(readFileSync(specPath, 'utf8'))) {
  let flow = new Flow({ slug: spec.slug, ...spec.options });
  for (const step of spec.steps) {
    const options = { slug: step.slug, ...(step.options ?? {}) };
    if (step.kind === 'map') {
      if (step.array !== undefined) options.array = step.array;
      flow = flow.map(options, identity);
    } else {
      if (step.dependsOn !== undefined) options.dependsOn = step.dependsOn;
      flow = step.kind === 'array' ? flow.array(options, identity) : flow.step(options, identity);
    }
  }
  compiled[spec.slug] = compileFlow(flow);
}
process.stdout.write(JSON.stringify(compiled));
