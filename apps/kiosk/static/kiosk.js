// The kiosk page's logic: ask the same-origin edgemoe server, stream the answer, forget idle
// visitors. Plain JS with no dependencies, so the page works with no network beyond the server.
//
// Page settings come from the URL, e.g. /ui/?idle=60&maxlen=300&tokens=96:
//   idle     seconds without a touch or key before the conversation is wiped (default 120)
//   maxlen   characters a question may have (default 500)
//   tokens   max_tokens per answer (default 128)
//   turns    question/answer pairs sent back as context (default 6)
//   title    heading text; system: the system prompt
(() => {
  "use strict";

  const params = new URLSearchParams(window.location.search);

  function numberParam(name, fallback, low, high) {
    const raw = params.get(name);
    const value = raw === null || raw.trim() === "" ? NaN : Number(raw);
    return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : fallback;
  }

  const config = Object.freeze({
    idleMs: numberParam("idle", 120, 1, 86400) * 1000,
    maxInput: Math.floor(numberParam("maxlen", 500, 1, 4000)),
    maxTokens: Math.floor(numberParam("tokens", 128, 1, 4096)),
    maxTurns: Math.floor(numberParam("turns", 6, 1, 50)),
    temperature: numberParam("temperature", 0.3, 0, 2),
    system: params.get("system") || "You are the information kiosk. Answer briefly and politely.",
    title: params.get("title") || "Ask me anything",
  });

  const API = "/v1";
  const DEFAULT_RETRY_S = 5;
  const MAX_RETRY_S = 120;
  const MESSAGES = Object.freeze({
    busy: (s) => `Lots of people are asking right now. Please try again in ${s} s.`,
    ready: "Ready again. Tap Send to ask.",
    offline: "I can't reach my answer engine right now. Please try again in a moment.",
    failed: "Sorry, I couldn't answer that. Please try again.",
    loading: "I'm still waking up. Please try again in a few seconds.",
  });

  const $ = (id) => document.getElementById(id);
  const ui = {
    title: $("title"),
    conversation: $("conversation"),
    welcome: $("welcome"),
    messages: $("messages"),
    notice: $("notice"),
    form: $("ask"),
    question: $("question"),
    counter: $("counter"),
    send: $("send"),
    reset: $("reset"),
  };

  let history = []; // [{role, content}] of this visitor, trimmed to maxTurns pairs
  let modelId = null;
  let inFlight = null; // AbortController of the running request
  let lastActivity = Date.now();
  let busyUntil = 0; // no request before this time (the server's Retry-After)
  let busyTimer = null;

  // --- state shown on screen ------------------------------------------------------------------
  function setState(state) {
    document.body.dataset.state = state;
    document.body.dataset.turns = String(history.length);
    const cooling = Date.now() < busyUntil;
    ui.send.disabled = state === "waiting" || state === "streaming" || cooling;
  }

  function showNotice(kind, text) {
    ui.notice.className = kind;
    ui.notice.textContent = text;
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.notice.textContent = "";
    ui.notice.className = "";
  }

  function addMessage(role, text) {
    const item = document.createElement("li");
    item.className = role;
    item.textContent = text; // never innerHTML: answers are untrusted text
    ui.messages.appendChild(item);
    ui.welcome.hidden = true;
    scrollToEnd();
    return item;
  }

  function scrollToEnd() {
    ui.conversation.scrollTop = ui.conversation.scrollHeight;
  }

  function updateCounter() {
    const n = ui.question.value.length;
    ui.counter.textContent = `${n} / ${config.maxInput}`;
    ui.counter.classList.toggle("full", n >= config.maxInput);
  }

  // --- idle reset -----------------------------------------------------------------------------
  function touch() {
    lastActivity = Date.now();
  }

  function resetConversation() {
    if (inFlight) inFlight.abort();
    inFlight = null;
    history = [];
    ui.messages.replaceChildren();
    ui.welcome.hidden = false;
    ui.question.value = "";
    updateCounter();
    hideNotice();
    if (Date.now() < busyUntil) showBusy(); // the server is still busy: keep saying so
    setState("ready");
    touch();
  }

  function checkIdle() {
    const used = history.length > 0 || ui.question.value !== "" || !ui.notice.hidden ||
      ui.messages.childElementCount > 0;
    if (used && !inFlight && Date.now() - lastActivity >= config.idleMs) resetConversation();
  }

  // --- busy: wait for Retry-After -------------------------------------------------------------
  function retryAfterSeconds(response) {
    const raw = response.headers.get("Retry-After");
    let seconds = raw === null ? NaN : Number(raw);
    if (!Number.isFinite(seconds) && raw) seconds = (Date.parse(raw) - Date.now()) / 1000;
    if (!Number.isFinite(seconds) || seconds <= 0) seconds = DEFAULT_RETRY_S;
    return Math.min(MAX_RETRY_S, Math.ceil(seconds));
  }

  function showBusy() {
    const left = Math.max(0, Math.ceil((busyUntil - Date.now()) / 1000));
    if (left > 0) {
      showNotice("busy", MESSAGES.busy(left));
      ui.send.textContent = `Wait ${left} s`;
      return;
    }
    clearInterval(busyTimer);
    busyTimer = null;
    ui.send.textContent = "Send";
    if (ui.notice.classList.contains("busy")) showNotice("busy ready", MESSAGES.ready);
    setState(document.body.dataset.state === "busy" ? "ready" : document.body.dataset.state);
  }

  function startBusy(seconds) {
    busyUntil = Date.now() + seconds * 1000;
    clearInterval(busyTimer);
    busyTimer = setInterval(showBusy, 250);
    showBusy();
    setState("busy");
  }

  // --- talking to the server ------------------------------------------------------------------
  class AnswerError extends Error {} // its message is what the visitor is shown

  async function servedModel() {
    if (modelId) return modelId;
    const response = await fetch(`${API}/models`, { cache: "no-store" });
    if (!response.ok) {
      throw new AnswerError(response.status === 503 ? MESSAGES.loading : MESSAGES.failed);
    }
    const body = await response.json();
    modelId = body.data[0].id;
    return modelId;
  }

  // Server-sent events from a fetch body: calls onData(text) per `data:` event and returns
  // true once `[DONE]` arrives, false if the stream ends without it.
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data === "") continue; // a comment or keep-alive
          if (data === "[DONE]") return true;
          onData(data);
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  function conversation() {
    return [{ role: "system", content: config.system }, ...history];
  }

  function forgetQuestion(question, bubbles) {
    // The unanswered question leaves the history and goes back into the field, so the visitor
    // can send it again with one tap.
    if (history.length && history[history.length - 1].role === "user") history.pop();
    for (const b of bubbles) b.remove();
    if (!ui.messages.childElementCount) ui.welcome.hidden = false;
    if (!ui.question.value) ui.question.value = question;
    updateCounter();
  }

  // One request for the current history; returns the Response, or null if the visitor's reset
  // aborted it. Throws on network failure.
  async function post(controller) {
    const model = await servedModel();
    return fetch(`${API}/chat/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({
        model,
        messages: conversation(),
        max_tokens: config.maxTokens,
        temperature: config.temperature,
        stream: true,
      }),
      cache: "no-store",
      signal: controller.signal,
    });
  }

  async function contextTooLong(response) {
    if (response.status !== 400) return false;
    try {
      const body = await response.json();
      return body.error && body.error.code === "context_length_exceeded";
    } catch (err) {
      return false;
    }
  }

  async function ask(question) {
    touch();
    hideNotice();
    history.push({ role: "user", content: question });
    history = history.slice(-(2 * config.maxTurns - 1));
    const asked = addMessage("user", question);
    const answer = addMessage("assistant", "");
    answer.classList.add("pending");
    const text = answer.appendChild(document.createTextNode(""));
    const controller = new AbortController();
    const current = () => inFlight === controller; // false once the visitor reset the screen
    inFlight = controller;
    setState("waiting");
    let response;
    try {
      for (;;) {
        response = await post(controller);
        // A long conversation outgrows the context window: forget its oldest pair and retry.
        if (history.length > 1 && (await contextTooLong(response))) {
          history = history.slice(2);
          continue;
        }
        break;
      }
    } catch (err) {
      if (!current()) return;
      const message = err instanceof AnswerError ? err.message : MESSAGES.offline;
      finish(question, [asked, answer], "error", message);
      return;
    }
    if (!current()) return;
    if (response.status === 429) {
      finish(question, [asked, answer], "busy");
      startBusy(retryAfterSeconds(response));
      return;
    }
    if (!response.ok || !response.body) {
      const message = response.status === 503 ? MESSAGES.loading : MESSAGES.failed;
      finish(question, [asked, answer], "error", message);
      return;
    }
    setState("streaming");
    let complete = false;
    try {
      complete = await readEvents(response.body, (data) => {
        const chunk = JSON.parse(data);
        if (chunk.error) throw new AnswerError(MESSAGES.failed); // the server's text is for logs
        let piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
        if (piece && !text.data) piece = piece.replace(/^\s+/, ""); // no blank first line
        if (piece) {
          text.appendData(piece);
          touch(); // an answer being read is activity too
          scrollToEnd();
        }
      });
    } catch (err) {
      if (!current()) return;
      controller.abort(); // close the connection of a stream that went wrong
      complete = false;
    }
    if (!current()) return;
    answer.classList.remove("pending");
    if (complete) {
      history.push({ role: "assistant", content: text.data });
      inFlight = null;
      setState("ready");
      touch();
      return;
    }
    if (text.data) {
      // Keep what arrived, marked as cut off; the pair stays in the history as shown.
      answer.classList.add("interrupted");
      history.push({ role: "assistant", content: text.data });
      inFlight = null;
      showNotice("error", MESSAGES.failed);
      setState("error");
      return;
    }
    finish(question, [asked, answer], "error", MESSAGES.failed);
  }

  function finish(question, bubbles, state, message) {
    inFlight = null;
    forgetQuestion(question, bubbles);
    if (message) showNotice("error", message);
    setState(state);
    touch();
  }

  // --- wiring ---------------------------------------------------------------------------------
  function submit(event) {
    if (event) event.preventDefault();
    touch();
    if (ui.send.disabled) return;
    const question = ui.question.value.replace(/\s+/g, " ").trim().slice(0, config.maxInput);
    if (!question) {
      ui.question.focus();
      return;
    }
    ui.question.value = "";
    updateCounter();
    ask(question);
  }

  function setup() {
    ui.title.textContent = config.title;
    document.title = config.title;
    ui.question.maxLength = config.maxInput;
    updateCounter();
    ui.form.addEventListener("submit", submit);
    ui.question.addEventListener("input", () => {
      if (ui.question.value.length > config.maxInput) {
        ui.question.value = ui.question.value.slice(0, config.maxInput); // pasted text
      }
      updateCounter();
    });
    ui.question.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submit(event);
    });
    ui.reset.addEventListener("click", resetConversation);
    for (const type of ["pointerdown", "keydown", "input", "wheel", "touchstart"]) {
      document.addEventListener(type, touch, { passive: true, capture: true });
    }
    setInterval(checkIdle, 500);
    setState("ready");
  }

  setup();
})();
