// The adapter panel: every adapter with load/unload buttons, and its card (GET /v1/adapters/{name}) on demand.
// Card fields are text from files in the adapter folder: all inserted with textContent.
import { blobUrl, getJson, postJson } from "./api.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined || v === "") return "-";
  if (Array.isArray(v)) return v.length ? v.join(", ") : "-";
  if (typeof v === "number" && !Number.isInteger(v)) return String(Number(v.toPrecision(4)));
  return String(v);
}

function facts(rows) {
  const dl = el("dl", "facts");
  for (const [key, value] of rows) {
    const dt = el("dt", null, key);
    const dd = el("dd", null, fmt(value));
    dd.dataset.key = key;
    dl.append(dt, dd);
  }
  return dl;
}

function table(t) {
  const wrap = el("div", "eval-table");
  wrap.append(el("h4", null, t.title));
  const tab = el("table");
  const head = el("tr");
  for (const c of t.columns) head.append(el("th", null, c));
  tab.append(head);
  for (const row of t.rows) {
    const tr = el("tr");
    for (const c of row) tr.append(el("td", null, c));
    tab.append(tr);
  }
  wrap.append(tab);
  return wrap;
}

let plotUrl = null;

export async function showCard(box, name, report) {
  box.hidden = false;
  box.replaceChildren(el("p", "muted", `loading the card of ${name}...`));
  let card;
  try {
    card = await getJson(`/v1/adapters/${encodeURIComponent(name)}`);
  } catch (e) {
    box.replaceChildren(el("p", "error", `${name}: ${e.message}`));
    report(e);
    return;
  }
  const close = el("button", "close", "Close");
  close.type = "button";
  close.addEventListener("click", () => { box.hidden = true; });
  const t = card.training, d = card.data, l = card.lora;
  const known = (v) => v !== null && v !== undefined;
  const evalFirst = known(t.eval_loss_first) ? `${fmt(t.eval_loss_first)} -> ` : "";
  const parts = [close, el("h3", "card-name", card.name), facts([
    ["base", card.base], ["base revision", card.base_revision], ["quantization", card.quant],
    ["r", l.r], ["alpha", l.alpha], ["dropout", l.dropout], ["targets", l.target_modules],
    ["data source", d.source], ["data revision", d.revision], ["curation", d.curation], ["filters", d.filters],
    ["train / validation rows", `${fmt(d.train_rows)} / ${fmt(d.val_rows)}`],
    ["steps", t.steps], ["learning rate", t.learning_rate], ["train loss", t.train_loss],
    ["eval loss", known(t.eval_loss) ? evalFirst + fmt(t.eval_loss) : "-"],
    ["eval perplexity", t.eval_perplexity], ["resident", card.resident ? "yes" : "no"],
  ])];
  if (card.evaluation) {
    for (const note of card.evaluation.notes) parts.push(el("p", "muted", note));
    for (const t2 of card.evaluation.tables) parts.push(table(t2));
  } else {
    parts.push(el("p", "muted", "no evaluation yet (lora-eval writes one into the adapter's card)"));
  }
  for (const p of card.problems) parts.push(el("p", "error", p));
  const img = el("img", "plot");
  img.alt = `training loss of ${card.name}`;
  if (card.plot) parts.push(img);
  box.replaceChildren(...parts);
  if (card.plot) {
    try {
      if (plotUrl) URL.revokeObjectURL(plotUrl);
      plotUrl = await blobUrl(card.plot);
      img.src = plotUrl;
    } catch (e) {
      img.replaceWith(el("p", "error", `loss plot: ${e.message}`));
    }
  }
}

// The adapter list with Card / Load / Unload; `changed()` refreshes the model list after a load or unload.
export function renderAdapters(list, box, adapters, resident, { changed, report }) {
  list.replaceChildren();
  if (!adapters.length) list.append(el("p", "muted", "no adapters in adapters_dir"));
  for (const name of adapters) {
    const row = el("div", "adapter");
    row.dataset.name = name;
    const label = el("span", "adapter-name", name);
    const loaded = resident.includes(name);
    const badge = el("span", "badge", loaded ? "loaded" : "on disk");
    const buttons = [["Card", "card-btn"], ["Load", "load"], ["Unload", "unload"]].map(([text, cls]) => {
      const b = el("button", cls, text);
      b.type = "button";
      return b;
    });
    buttons[1].hidden = loaded; // only the action the adapter's state allows: Load on disk, Unload when loaded
    buttons[2].hidden = !loaded;
    buttons[0].addEventListener("click", () => showCard(box, name, report));
    for (const [b, action] of [[buttons[1], "load"], [buttons[2], "unload"]]) {
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await postJson(`/admin/adapters/${action}`, { name });
        } catch (e) {
          report(e, `${action} ${name}`);
        }
        b.disabled = false;
        await changed();
      });
    }
    row.append(label, badge, ...buttons);
    list.append(row);
  }
}
