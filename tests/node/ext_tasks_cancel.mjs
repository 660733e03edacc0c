// A real client of the tasks extension against `effectd serve --http`: @modelcontextprotocol/client with
// @modelcontextprotocol/ext-tasks, wired as the MCP Inspector wires it (createTaskSessionFromClient with
// a raw dispatch and the 2026-07-28 request framing). It starts a task, reads it `working`, cancels it
// with tasks/cancel, then reads it `cancelled` through a second, new connection.
//
// usage: node ext_tasks_cancel.mjs http://127.0.0.1:PORT/mcp
// prints one JSON line per step; exits 0 when every step held.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient } from "@modelcontextprotocol/ext-tasks/client";

const url = process.argv[2];
const TASKS = "io.modelcontextprotocol/tasks";
const clientInfo = { name: "effectd-ext-tasks-test", version: "1.0.0" };
const clientCapabilities = { extensions: { [TASKS]: {} } };
let nextId = 1;

function say(step, data) {
  console.log(JSON.stringify({ step, ...data }));
}

function fail(message) {
  say("fail", { message });
  process.exit(1);
}

// The raw path for task wire shapes: one POST per request, with the 2026-07-28 routing headers.
async function rawDispatch(request, options) {
  const params = request.params ?? {};
  const name = request.method === "tools/call" ? params.name : params.taskId;
  const headers = {
    "Content-Type": "application/json",
    Accept: "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": request.method,
  };
  if (typeof name === "string") headers["Mcp-Name"] = name;
  const id = `raw-${nextId++}`;
  const response = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify({ jsonrpc: "2.0", id, ...request }),
    signal: options?.signal,
  });
  const text = await response.text();
  let message;
  if ((response.headers.get("content-type") ?? "").includes("text/event-stream")) {
    for (const line of text.split("\n")) {
      if (!line.startsWith("data:")) continue;
      const frame = JSON.parse(line.slice(5));
      if (frame.id === id) message = frame;
    }
  } else {
    message = JSON.parse(text);
  }
  if (message === undefined) throw new Error(`no response to ${request.method}: ${response.status} ${text}`);
  return message.error !== undefined ? { kind: "error", error: message.error } : { kind: "result", result: message.result };
}

async function connect() {
  const client = new Client(clientInfo, { capabilities: clientCapabilities, versionNegotiation: { mode: "auto" } });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const session = createTaskSessionFromClient(client, {
    endpointId: "effectd-test",
    rawDispatch,
    v2RequestFraming: { protocolVersion: client.getProtocolVersion?.() ?? "2026-07-28", clientInfo, clientCapabilities },
  });
  return { client, session };
}

const script = "import time\nfor i in range(600):\n    print(f'working {i}', flush=True)\n    time.sleep(0.1)\n";
const first = await connect();
say("connected", { era: first.client.getProtocolEra(), capabilities: first.client.getServerCapabilities()?.extensions });
const execution = await first.session.callTool("dispatch_effect", { command: ["python3", "-c", script] });
if (execution.kind !== "task") fail(`dispatch_effect was not a task: ${execution.kind}`);
const taskId = execution.handle.taskId;
say("started", { taskId });

let working;
const deadline = Date.now() + 30000;
while (Date.now() < deadline) {
  working = await first.session.task(taskId).snapshot();
  if (working.status === "working" && (working.statusMessage ?? "").startsWith("working")) break;
  await new Promise((resolve) => setTimeout(resolve, 100));
}
if (working?.status !== "working" || !(working.statusMessage ?? "").startsWith("working"))
  fail(`never read working with live output: ${JSON.stringify(working)}`);
say("working", { status: working.status, statusMessage: working.statusMessage });

await first.session.cancelTask(taskId);
say("cancel_sent", {});
await execution.detach();
await first.session.close();
await first.client.close();

const second = await connect();
let cancelled;
const until = Date.now() + 30000;
while (Date.now() < until) {
  cancelled = await second.session.task(taskId).snapshot();
  if (cancelled.status !== "working") break;
  await new Promise((resolve) => setTimeout(resolve, 100));
}
if (cancelled?.status !== "cancelled") fail(`the task did not read cancelled: ${JSON.stringify(cancelled)}`);
say("cancelled", { status: cancelled.status, statusMessage: cancelled.statusMessage });
await second.session.close();
await second.client.close();
say("ok", {});
