// The playground: choose models, send one prompt (or continue a chat) to all of them at once, compare the answers.
import { ApiError, getJson, getKey, setKey, streamChat } from "./api.js";
import { renderAdapters } from "./cards.js";
import { Column, shuffled } from "./columns.js";
import { comparisonMarkdown, comparisonRecord, download } from "./export.js";

const $ = (id) => document.getElementById(id);
let current = null;  // the comparison on screen: {created, prompt, settings, blind, favourite, columns, ...}
let controller = null;

function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

// A failed call: a missing/wrong key opens the key form, anything else is shown as the server worded it.
function report(error, what) {
  if (error instanceof ApiError && error.status === 401) {
    $("key-form").hidden = false;
    $("key-input").focus();
  }
  notice(`${what ? what + ": " : ""}${error.message}`);
}

function checkbox(name, detail, checked) {
  const label = document.createElement("label");
  label.className = "model";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = name;
  box.checked = checked;
  const text = document.createElement("span");
  text.textContent = name;
  const small = document.createElement("small");
  small.className = "muted";
  small.textContent = detail;
  label.append(box, text, small);
  return label;
}

async function refresh() {
  let models, admin;
  try {
    models = (await getJson("/v1/models")).data;
    admin = await getJson("/admin/adapters");
  } catch (e) {
    report(e, "listing models");
    return;
  }
  notice("");
  $("key-form").hidden = true;
  const listed = document.querySelectorAll("#models input").length > 0;
  const chosen = new Set([...document.querySelectorAll("#models input:checked")].map((b) => b.value));
  $("base-name").textContent = `base: ${admin.base}`;
  // The first listing ticks the first two models (the base and an adapter): Send compares something at once.
  // Later listings (after a load or unload) keep what the user ticked.
  $("models").replaceChildren(...models.map((m, i) => checkbox(
    m.id, i === 0 ? "base, no adapter" : (m.resident ? "loaded" : "on disk"), listed ? chosen.has(m.id) : i < 2)));
  renderAdapters($("adapters"), $("card"), admin.adapters, admin.resident, { changed: refresh, report });
}

function number(id, parse, what) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const v = parse(raw);
  if (!Number.isFinite(v)) throw new Error(`${what} must be a number (got "${raw}")`);
  return v;
}

function readSettings(count) {
  const temperature = number("temperature", parseFloat, "temperature") ?? 0;
  const top_p = number("top_p", parseFloat, "top_p") ?? 1;
  const max_tokens = number("max_tokens", (s) => parseInt(s, 10), "max_tokens") ?? 64;
  let seed = number("seed", (s) => parseInt(s, 10), "seed");
  const stop = $("stop-strings").value.split("|").filter((s) => s.length > 0);
  const same = $("same-seed").checked;
  // Same seed: every column samples with one seed, so the columns differ only by adapter.
  if (same && seed === null) seed = Math.floor(Math.random() * 2 ** 31);
  const seeds = Array.from({ length: count }, (_, i) => (seed === null ? null : same ? seed : seed + i));
  return { temperature, top_p, max_tokens, stop, same_seed: same, seeds };
}

function finished() {
  $("send").disabled = false;
  $("stop").disabled = true;
  controller = null;
  const c = current;
  if (c.blind && !c.favourite) {
    for (const col of c.columns) col.pickButton.hidden = false;
    notice("Pick the answer you like best to see which model wrote which.");
  }
  refresh();  // generating may have loaded adapters: show them as loaded
  const ready = !c.blind || c.favourite;
  $("export-json").disabled = !ready;
  $("export-md").disabled = !ready;
}

function pick(col) {
  current.favourite = `${col.label}: ${col.model}`;
  for (const other of current.columns) other.reveal(other === col);
  notice(`Your pick: ${col.label} was ${col.model}.`);
  $("export-json").disabled = false;
  $("export-md").disabled = false;
}

async function runColumn(col, settings, seed, signal) {
  const messages = col.history;
  const body = { model: col.model, messages, stream: true, stream_options: { include_usage: true },
    temperature: settings.temperature, top_p: settings.top_p, max_tokens: settings.max_tokens };
  if (seed !== null) body.seed = seed;
  if (settings.stop.length) body.stop = settings.stop;
  col.start();
  try {
    col.finishWith(await streamChat(body, { signal, onText: (t) => col.append(t) }));
  } catch (e) {
    if (e.name === "AbortError") col.finishWith({ finish: "stopped", usage: null });
    else col.fail(e instanceof ApiError && e.status ? `${e.status}: ${e.message}` : e.message);
  }
}

async function send() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) return notice("Write a prompt first.");
  const previous = current && $("chat-mode").checked ? current : null;
  let models = previous ? previous.columns.map((c) => c.model)
    : [...document.querySelectorAll("#models input:checked")].map((b) => b.value);
  if (!models.length) return notice("Choose at least one model on the left.");
  let settings;
  try {
    settings = readSettings(models.length);
  } catch (e) {
    return notice(e.message);
  }
  const blind = previous ? previous.blind : $("blind").checked;
  if (blind && !previous) models = shuffled(models);
  const columns = models.map((model, i) => {
    const before = previous ? previous.columns[i].messages() : [];
    const label = blind ? (previous ? previous.columns[i].label : String.fromCharCode(65 + i)) : model;
    return new Column(model, label, before.concat([{ role: "user", content: prompt }]));
  });
  current = { created: new Date().toISOString(), prompt, settings, blind, favourite: null, columns };
  for (const col of columns) col.pickButton.addEventListener("click", () => pick(col));
  $("columns").replaceChildren(...columns.map((c) => c.root));
  notice("");
  $("send").disabled = true;
  $("stop").disabled = false;
  $("export-json").disabled = true;
  $("export-md").disabled = true;
  controller = new AbortController();
  const signal = controller.signal;
  await Promise.all(columns.map((col, i) => runColumn(col, settings, settings.seeds[i], signal)));
  finished();
  if (columns.some((c) => c.error && c.error.startsWith("401"))) {
    report(new ApiError(401, "the server wants an API key"));
  }
}

function init() {
  $("key-button").addEventListener("click", () => {
    $("key-form").hidden = !$("key-form").hidden;
    $("key-input").value = getKey();
  });
  $("key-save").addEventListener("click", () => {
    setKey($("key-input").value.trim());
    refresh();
  });
  $("key-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("key-save").click(); });
  $("send").addEventListener("click", send);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
  $("stop").addEventListener("click", () => controller && controller.abort());
  // One file name per comparison (its start time), so exports of several comparisons never overwrite each other.
  const name = (ext) => `comparison-${current.created.replace(/[:.]/g, "-")}.${ext}`;
  $("export-json").addEventListener("click", () => download(
    name("json"), JSON.stringify(comparisonRecord(current), null, 2), "application/json"));
  $("export-md").addEventListener("click", () => download(name("md"), comparisonMarkdown(current), "text/markdown"));
  refresh();
}

init();
