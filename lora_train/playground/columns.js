// One column per chosen model: its label, its conversation, the answer streaming in, and its numbers.
// Everything here is inserted with textContent / text nodes: model output is text, never markup.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// finish_reason as a reader understands it ("stopped" is the page's own: the user pressed Stop).
const FINISH = { length: "hit max_tokens", stop: "ended (EOS or a stop string)", stopped: "stopped by you",
  cancelled: "cancelled by the server" };

export function shuffled(items) {
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

export class Column {
  // model: the name sent as `model`; label: what the header shows ("A" in blind mode); history: earlier turns.
  constructor(model, label, history) {
    this.model = model;
    this.label = label;
    this.history = history;
    this.text = "";
    this.tokens = null;
    this.pieces = 0;
    this.seconds = null;
    this.finish = null;
    this.error = null;
    this.root = el("article", "column");
    const head = el("div", "column-head");
    this.title = el("h3", "label", label);
    this.stats = el("span", "stats muted", "waiting");
    head.append(this.title, this.stats);
    this.turns = el("div", "turns");
    for (const m of history) this.turns.append(el("div", "turn " + m.role, m.content));
    this.out = el("pre", "out");
    this.errorBox = el("p", "error");
    this.errorBox.hidden = true;
    const tools = el("div", "column-tools");
    this.copyButton = el("button", "copy", "Copy");
    this.copyButton.type = "button";
    this.copyButton.addEventListener("click", () => this.copy());
    this.pickButton = el("button", "pick", "Pick as best");
    this.pickButton.type = "button";
    this.pickButton.hidden = true;
    tools.append(this.copyButton, this.pickButton);
    this.root.append(head, this.turns, this.out, this.errorBox, tools);
  }

  start() {
    this.started = performance.now();
    this.stats.textContent = "generating...";
    this.root.classList.add("busy");
  }

  append(piece) {
    this.text += piece;
    this.pieces += 1;
    this.out.append(document.createTextNode(piece));
    this.stats.textContent = `${this.pieces} tokens so far`;
  }

  finishWith({ finish, usage }) {
    this.seconds = (performance.now() - this.started) / 1000;
    this.finish = finish;
    this.tokens = usage ? usage.completion_tokens : this.pieces;
    this.root.classList.remove("busy");
    this.root.classList.add("done");
    this.showStats();
  }

  fail(message) {
    this.seconds = this.started ? (performance.now() - this.started) / 1000 : null;
    this.error = message;
    this.errorBox.textContent = message;
    this.errorBox.hidden = false;
    this.root.classList.remove("busy");
    this.root.classList.add("failed", "done");
    this.tokens = this.pieces;
    this.showStats();
  }

  showStats() {
    const parts = [`${this.tokens ?? 0} tokens`];
    if (this.seconds !== null) parts.push(`${this.seconds.toFixed(2)} s`);
    if (this.finish) parts.push(FINISH[this.finish] || this.finish);
    if (this.error) parts.push("error");
    this.stats.textContent = parts.join(" · ");
  }

  reveal(favourite) {
    this.title.textContent = `${this.label}: ${this.model}`;
    if (favourite) this.root.classList.add("favourite");
    this.pickButton.hidden = true;
  }

  async copy() {
    try {
      await navigator.clipboard.writeText(this.text);
      this.copyButton.textContent = "Copied";
    } catch (e) {  // no clipboard permission: select the text so the user can copy it
      const range = document.createRange();
      range.selectNodeContents(this.out);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      this.copyButton.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { this.copyButton.textContent = "Copy"; }, 1500);
  }

  // The conversation including this turn's answer (for "continue the chat").
  messages() {
    return this.history.concat(this.text ? [{ role: "assistant", content: this.text }] : []);
  }
}
