// A comparison as a file: JSON (every field) or Markdown (for a report), downloaded from a blob: URL.

export function comparisonRecord(c) {
  return {
    created: c.created,
    prompt: c.prompt,
    settings: c.settings,
    blind: c.blind,
    favourite: c.favourite,
    columns: c.columns.map((col) => ({
      label: col.label,
      model: col.model,
      messages: col.history,
      text: col.text,
      finish_reason: col.finish,
      completion_tokens: col.tokens,
      seconds: col.seconds === null ? null : Number(col.seconds.toFixed(3)),
      error: col.error,
    })),
  };
}

function fence(text) {
  const longest = Math.max(2, ...(text.match(/`+/g) || []).map((s) => s.length));
  const ticks = "`".repeat(longest + 1);
  return `${ticks}text\n${text}\n${ticks}`;
}

export function comparisonMarkdown(c) {
  const s = c.settings;
  const lines = ["# Comparison", "", `${c.created}`, "", "## Prompt", "", fence(c.prompt), "", "## Settings", "",
    "| temperature | top_p | max_tokens | seed | stop |", "| --- | --- | --- | --- | --- |",
    `| ${s.temperature} | ${s.top_p} | ${s.max_tokens} | ${s.seeds.join(", ") || "random"} | ${
      (s.stop.join(" / ") || "-").replace(/\|/g, "\\|")} |`, ""];
  if (c.blind) lines.push(`Blind comparison; favourite: ${c.favourite ?? "none picked"}`, "");
  for (const col of c.columns) {
    const name = col.label === col.model ? col.model : `${col.label}: ${col.model}`;
    const numbers = `${col.tokens ?? 0} tokens, ${col.seconds === null ? "-" : col.seconds.toFixed(2) + " s"}` +
      (col.finish ? `, finish: ${col.finish}` : "");
    lines.push(`## ${name}`, "", `_${numbers}_`, "");
    if (col.error) lines.push(`**Error:** ${col.error}`, "");
    lines.push(fence(col.text), "");
  }
  return lines.join("\n");
}

export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
