// The official @pgflow/client over a Supabase project URL, driven by JSON lines on stdin.
//
// usage: node client_session.mjs '{"url": "...", "key": "...", "vsn": "2.0.0", "settle_ms": 300}'
//   vsn: Phoenix protocol for supabase-js's realtime (omitted: the library's default);
//   settle_ms: the client's realtimeStabilizationDelayMs (omitted: the client's default).
//
// Each command is one line {"id": n, "cmd": ..., ...}; its answer carries the same id:
//   start    {flow_slug, input, run_id?}   -> {type: "started", run_id, ms, run, steps}
//   state    {run_id, steps: [slug, ...]}  -> {type: "state", run, steps}
//   wait     {run_id, status, timeout_ms, steps} -> {type: "state", run, steps}
//   get_run  {run_id, steps}               -> {type: "state", run (null if unknown), steps}
//   dispose  {run_id}                      -> {type: "ok"}
//   exit
// Failures answer {type: "error", message, code}. Every broadcast the client receives is
// printed as {type: "event", payload, at}, and every status change its FlowRun accepts as
// {type: "typed", run_id, event_type, status, at}; `at` is wall-clock milliseconds.
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import { createClient } from '@supabase/supabase-js';
import { PgflowClient } from '@pgflow/client';
import WebSocket from 'ws';

// The client logs its subscriptions with console.log; stdout is reserved for the protocol.
console.log = console.info = console.debug = (...args) => console.error(...args);

const config = JSON.parse(process.argv[2]);
const realtime = { transport: WebSocket };
if (config.vsn) realtime.vsn = config.vsn;
const supabase = createClient(config.url, config.key, {
  realtime,
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
});
const options = {};
if (config.settle_ms !== undefined && config.settle_ms !== null) {
  options.realtimeStabilizationDelayMs = config.settle_ms;
}
const client = new PgflowClient(supabase, options);
const runs = new Map();

// Event stamps are CLOCK_MONOTONIC in ms, the clock Python's time.monotonic() reads: the
// wall clock derived from performance.timeOrigin drifts from the system's by milliseconds per
// second on some virtual machines.
const now = () => Number(process.hrtime.bigint()) / 1e6;
const emit = (message) => process.stdout.write(JSON.stringify(message) + '\n');
const iso = (date) => (date ? date.toISOString() : null);

client.onRunEvent((payload) => emit({ type: 'event', payload, at: now() }));
client.onStepEvent((payload) => emit({ type: 'event', payload, at: now() }));

function track(run) {
  runs.set(run.run_id, run);
  // A listener also keeps the run from disposing itself when it ends, so its steps stay readable.
  run.on('*', (event) =>
    emit({ type: 'typed', run_id: run.run_id, event_type: event.event_type, status: event.status, at: now() }),
  );
}

function describe(run, slugs = []) {
  if (!run) return { run: null, steps: {} };
  const steps = {};
  for (const slug of slugs) {
    const step = run.step(slug);
    steps[slug] = {
      status: step.status,
      output: step.output ?? null,
      error_message: step.error_message ?? null,
      started_at: iso(step.started_at),
      completed_at: iso(step.completed_at),
      failed_at: iso(step.failed_at),
    };
  }
  return {
    run: {
      run_id: run.run_id,
      flow_slug: run.flow_slug,
      status: run.status,
      input: run.input ?? null,
      output: run.output ?? null,
      error_message: run.error_message ?? null,
      remaining_steps: run.remaining_steps,
      started_at: iso(run.started_at),
      completed_at: iso(run.completed_at),
      failed_at: iso(run.failed_at),
    },
    steps,
  };
}

function known(runId) {
  const run = runs.get(runId);
  if (!run) throw new Error(`run ${runId} was not started or fetched by this session`);
  return run;
}

const commands = {
  async start({ flow_slug, input, run_id, steps }) {
    const started = performance.now();
    const run = await client.startFlow(flow_slug, input, run_id ?? undefined);
    const ms = performance.now() - started;
    track(run);
    return { type: 'started', run_id: run.run_id, ms, ...describe(run, steps) };
  },
  async state({ run_id, steps }) {
    return { type: 'state', ...describe(known(run_id), steps) };
  },
  async wait({ run_id, status, timeout_ms, steps }) {
    const run = known(run_id);
    await run.waitForStatus(status, { timeoutMs: timeout_ms ?? 10000 });
    return { type: 'state', ...describe(run, steps) };
  },
  async get_run({ run_id, steps }) {
    const run = await client.getRun(run_id);
    if (run) track(run);
    return { type: 'state', ...describe(run, steps) };
  },
  async dispose({ run_id }) {
    client.dispose(run_id);
    runs.delete(run_id);
    return { type: 'ok' };
  },
};

async function exit() {
  client.disposeAll();
  await supabase.removeAllChannels();
  process.exit(0);
}

const lines = createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  if (!line.trim()) return;
  const request = JSON.parse(line);
  if (request.cmd === 'exit') return exit();
  const handler = commands[request.cmd];
  try {
    if (!handler) throw new Error(`unknown command ${request.cmd}`);
    emit({ id: request.id, ...(await handler(request)) });
  } catch (error) {
    const message = error?.message ?? JSON.stringify(error);
    emit({ id: request.id, type: 'error', message, code: error?.code ?? null });
  }
});
lines.on('close', exit);
