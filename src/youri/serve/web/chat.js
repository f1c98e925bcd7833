// youri web chat: keeps the conversation in the page, streams replies from /v1/chat/completions (SSE).
"use strict";
const $ = (id) => document.getElementById(id);
let history = [];      // [{role, content}] without the persona (it is sent as the system message)
let modelId = null;
let busy = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "ユーザー" : role === "assistant" ? "システム" : "error";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return body;
}

async function loadModel() {
  const res = await fetch("/v1/models", { headers: headers() });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
  modelId = data.data[0].id;
  $("model").textContent = modelId;
}

// Parse "data: ..." events out of a fetch body stream; calls onData for each JSON payload.
async function readSSE(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return;
        onData(JSON.parse(payload));
      }
    }
  }
}

async function send(text) {
  if (!modelId) await loadModel();
  const persona = $("persona").value.trim();
  const messages = (persona ? [{ role: "system", content: persona }] : []).concat(history,
    [{ role: "user", content: text }]);
  bubble("user", text);
  const out = bubble("assistant", "");
  const res = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: modelId, messages, stream: true,
                           temperature: Number($("temperature").value),
                           max_tokens: Number($("max_tokens").value) }),
  });
  if (!res.ok) {
    const data = await res.json().catch(() => ({}));
    throw new Error(data.error ? data.error.message : res.statusText);
  }
  let reply = "";
  let finish = null;
  await readSSE(res, (chunk) => {
    if (chunk.error) throw new Error(chunk.error.message);
    const choice = chunk.choices[0];
    if (choice && choice.delta && choice.delta.content) {
      reply += choice.delta.content;
      out.textContent = reply;
    }
    if (choice && choice.finish_reason) finish = choice.finish_reason;
  });
  out.parentElement.dataset.finish = finish || "";
  history.push({ role: "user", content: text }, { role: "assistant", content: reply });
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || busy) return;
  busy = true;
  $("send").disabled = true;
  $("input").value = "";
  $("status").textContent = "generating…";
  try {
    await send(text);
    $("status").textContent = "";
  } catch (err) {
    bubble("error", String(err.message || err));
    $("status").textContent = "";
  } finally {
    busy = false;
    $("send").disabled = false;
    $("input").focus();
  }
});

$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("form").requestSubmit();
  }
});

$("reset").addEventListener("click", () => {
  history = [];
  $("log").replaceChildren();
  $("status").textContent = "conversation cleared";
});

loadModel().catch((err) => { $("status").textContent = "model list: " + err.message; });
