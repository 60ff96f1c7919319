// A flow worker's task loop driven by @pgflow/core's PgflowSqlClient, shaped like pgflow's Edge
// Worker: a postgres.js pool, a worker row with a throttled heartbeat, then forever: read a
// batch (pgmq.read_with_poll), claim its tasks (pgflow.start_tasks), run every task through a
// concurrency limit, complete each (pgflow.complete_task), and wait for the whole batch before
// polling again. Handlers do no work: each returns {step: <step slug>}.
//
// usage: node task_loop.mjs '{"dsn": "...", "flow_slug": "...", ...}'
//   max_concurrent (10), max_pg_connections (4), batch_size (10), visibility_timeout (5),
//   max_poll_seconds (2), poll_interval_ms (100): the Edge Worker's flow-worker defaults.
//   shape: the flow's shape; given, the loop starts as pgflow 0.17's worker does, through the
//   same `sql` connection: pgflow.ensure_flow_compiled (a mismatch ends it with an error),
//   pgflow.track_worker_function(name, 'process'), then its workers row with pgflow_version.
//   pgflow_version (null): what it writes there.
//   routes: [{stepSlug, queueName}] of a flow with per-step queues (pgflow 0.17), and serve: the
//   slugs of the steps the loop serves (default all), polling each one's queue and claiming with the five-argument
//   pgflow.start_tasks (0.8.1's client knows only the three-argument one); given with shape, it
//   compiles in queue mode 'step' with that route map.
// Runs until SIGTERM or stdin closes, then finishes its batch and prints one JSON line:
//   {worker_id, completed, failed, polls, compiled}
import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import { PgflowSqlClient } from '@pgflow/core';

const config = {
  max_concurrent: 10,
  max_pg_connections: 4,
  batch_size: 10,
  visibility_timeout: 5,
  max_poll_seconds: 2,
  poll_interval_ms: 100,
  ...JSON.parse(process.argv[2]),
};
const HEARTBEAT_MS = 5000;

const sql = postgres(config.dsn, {
  max: config.max_pg_connections,
  prepare: false,
  onnotice: () => {},
});
const client = new PgflowSqlClient(sql);
const workerId = randomUUID();

// The Edge Worker's execution controller: at most `limit` handlers at once.
function limiter(limit) {
  let active = 0;
  const waiting = [];
  const release = () => {
    active -= 1;
    const next = waiting.shift();
    if (next) next();
  };
  return async (job) => {
    if (active >= limit) await new Promise((resolve) => waiting.push(resolve));
    active += 1;
    try {
      return await job();
    } finally {
      release();
    }
  };
}

const handler = async (task) => ({ step: task.step_slug });
const run = limiter(config.max_concurrent);
let stopping = false;
let completed = 0;
let failed = 0;
let polls = 0;

process.on('SIGTERM', () => (stopping = true));
process.stdin.on('end', () => (stopping = true));
process.stdin.resume();

async function execute(task) {
  try {
    const output = await handler(task);
    await client.completeTask(task, output);
    completed += 1;
  } catch (error) {
    failed += 1;
    console.error(`task ${task.run_id}/${task.step_slug}[${task.task_index}] failed:`, error);
    await client.failTask(task, error).catch(() => {});
  }
}

const FUNCTION_NAME = 'pgflow-core-task-loop';
const served = config.routes?.filter((r) => !config.serve || config.serve.includes(r.stepSlug));
const queueOf = (i) => (served ? served[i].queueName : config.flow_slug);

// One poll of one step's queue, claimed as pgflow 0.17's worker claims: queue and step given.
async function pollStep(route) {
  const messages = await client.readMessages(
    route.queueName,
    config.visibility_timeout,
    config.batch_size,
    config.max_poll_seconds,
    config.poll_interval_ms,
  );
  if (messages.length === 0) return [];
  const ids = messages.map((message) => String(message.msg_id)).join(',');
  return await sql`
    select * from pgflow.start_tasks(
      ${config.flow_slug}, string_to_array(${ids}::text, ',')::bigint[],
      ${workerId}, ${route.queueName}, ${route.stepSlug})`;
}
let compiled = null;
if (config.shape) {
  const [{ result }] = config.routes
    ? await sql`
      select pgflow.ensure_flow_compiled(${config.flow_slug}, ${sql.json(config.shape)}, 'step',
                                         ${sql.json(config.routes)}) as result`
    : await sql`
      select pgflow.ensure_flow_compiled(${config.flow_slug}, ${sql.json(config.shape)}) as result`;
  compiled = result.status;
  if (compiled === 'mismatch') {
    console.error(`flow ${config.flow_slug} differs: ${result.differences.join('; ')}`);
    await sql.end({ timeout: 5 });
    process.exit(3);
  }
  await sql`select pgflow.track_worker_function(${FUNCTION_NAME}, 'process')`;
  await sql`
    insert into pgflow.workers (worker_id, queue_name, function_name, pgflow_version)
    values (${workerId}, ${queueOf(0)}, ${FUNCTION_NAME}, ${config.pgflow_version ?? null})`;
} else {
  await sql`
    insert into pgflow.workers (worker_id, queue_name, function_name)
    values (${workerId}, ${queueOf(0)}, ${FUNCTION_NAME})`;
}

let lastHeartbeat = Date.now();
while (!stopping) {
  if (Date.now() - lastHeartbeat >= HEARTBEAT_MS) {
    lastHeartbeat = Date.now();
    await sql`update pgflow.workers set last_heartbeat_at = clock_timestamp()
              where worker_id = ${workerId}`;
  }
  polls += 1;
  if (config.routes) {
    for (const route of served) {
      const tasks = await pollStep(route);
      await Promise.all(tasks.map((task) => run(() => execute(task))));
    }
    continue;
  }
  const messages = await client.readMessages(
    config.flow_slug,
    config.visibility_timeout,
    config.batch_size,
    config.max_poll_seconds,
    config.poll_interval_ms,
  );
  if (messages.length === 0) continue;
  const tasks = await client.startTasks(
    config.flow_slug,
    messages.map((message) => message.msg_id),
    workerId,
  );
  await Promise.all(tasks.map((task) => run(() => execute(task))));
}

await sql.end({ timeout: 5 });
process.stdout.write(
  JSON.stringify({ worker_id: workerId, completed, failed, polls, compiled }) + '\n',
);
