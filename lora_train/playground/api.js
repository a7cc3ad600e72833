// The server's public API, with the API key the user typed (kept in this tab's session storage only).
const KEY = "lora-serve-api-key";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(json) {
  const h = {};
  const key = getKey();
  if (key) h.authorization = "Bearer " + key;
  if (json) h["content-type"] = "application/json";
  return h;
}

// The server answers errors in OpenAI's shape: {"error": {"message": ...}}; anything else is shown as it came.
async function failure(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (e) { /* not JSON: keep the status text */ }
  return new ApiError(response.status, message);
}

export async function request(path, { method = "GET", body, signal } = {}) {
  const response = await fetch(path, {
    method, signal, headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function postJson(path, body) {
  return (await request(path, { method: "POST", body })).json();
}

// An image fetched with the key, shown from a blob: URL (an <img src> could not send the key).
export async function blobUrl(path) {
  const blob = await (await request(path)).blob();
  return URL.createObjectURL(blob);
}

// POST a streaming chat completion; calls onText(piece) as text arrives and returns {finish, usage}.
// Errors (before or during the stream) are thrown as ApiError with the server's message.
export async function streamChat(body, { signal, onText }) {
  const response = await request("/v1/chat/completions", { method: "POST", body, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", finish = null, usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return { finish, usage };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(0, chunk.error.message || "the server reported an error");
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const piece = choice.delta && choice.delta.content;
          if (piece) onText(piece);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { finish, usage };
}
