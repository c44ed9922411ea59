/* primechat's chat page: talks to `primechat serve` over its OpenAI-compatible API.
 *
 * - Streams answers from POST /v1/chat/completions (or /v1/completions for a base model) as server-sent events,
 *   renders them as markdown (marked), sanitised (DOMPurify) with highlighted code (highlight.js).
 * - Stats for nerds under every answer: time to first token, tokens/s, token counts, finish reason, model
 *   (a live "~" estimate while streaming, the server's measured figures once it ends), and a note under an answer
 *   when the conversation outgrew the context the model was trained on (context_length in GET /v1/models).
 * - Conversations, settings and the chosen model live in this browser's localStorage.
 * - nanochat's behaviours: Enter sends, Shift+Enter is a new line, click a question to edit it, click an answer to
 *   regenerate it, slash commands (/help), a health check on load.
 * Plain JavaScript, no build step. Everything the model writes goes through DOMPurify before it touches the page.
 */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  // Until GET /health gives the server's own sampling defaults (`primechat serve -t/-k/-m`), which then apply to every
  // setting this browser has not changed.
  const DEFAULTS = { temperature: 0.8, topK: 50, maxTokens: 512, system: "", showStats: true, theme: "auto", apiKey: "" };
  const SERVER_DEFAULTS = { temperature: "temperature", top_k: "topK", max_tokens: "maxTokens" }; // API name: ours
  const KEYS = {
    settings: "primechat.settings",
    conversations: "primechat.conversations",
    current: "primechat.current",
    model: "primechat.model",
  };
  const HELP = [
    "Commands:",
    "  /temperature [t]   show or set the temperature (0 to 2)",
    "  /topk [k]          show or set top-k (1 to 200, 0 = off)",
    "  /maxtokens [n]     show or set the longest answer, in tokens (1 to 4096)",
    "  /system [text]     show or set the system prompt (/system clear removes it)",
    "  /model [name|n]    list the models, or switch this conversation to one",
    "  /stats             show or hide the stats for nerds",
    "  /theme [light|dark|auto]",
    "  /new               start a new conversation",
    "  /clear             clear this conversation",
    "  /help              this list",
    "",
    "Enter sends, Shift+Enter starts a new line, Esc stops an answer, Ctrl+Shift+N starts a new chat.",
    "Click one of your messages to edit it; click an answer to write it again.",
  ].join("\n");

  // ------------------------------------------------------------------------------------------------ storage

  function load(key, fallback) {
    try {
      const value = JSON.parse(localStorage.getItem(key));
      return value === null || value === undefined ? fallback : value;
    } catch (e) {
      return fallback;
    }
  }

  function store(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch (e) {
      showError("Could not save to this browser's storage: " + e.message);
    }
  }

  const stored = load(KEYS.settings, {});
  const chosen = stored && typeof stored === "object" ? stored : {}; // what this browser changed; only this is stored
  const state = {
    chosen,
    defaults: Object.assign({}, DEFAULTS),
    settings: Object.assign({}, DEFAULTS, chosen),
    conversations: load(KEYS.conversations, []), // [{id, title, model, created, updated, messages}]
    current: null, // the conversation on screen (not in `conversations` until it has a message)
    models: [], // from GET /v1/models, default first
    generating: null, // {controller, conv, msg} while an answer streams
  };
  if (!Array.isArray(state.conversations)) state.conversations = [];

  const hasContent = (conv) => conv.messages.some((m) => m.role === "user" || m.role === "assistant");

  function saveConversations() {
    store(KEYS.conversations, state.conversations.filter(hasContent));
    if (state.current) store(KEYS.current, state.current.id);
  }

  function saveSettings() {
    store(KEYS.settings, state.chosen);
  }

  // ------------------------------------------------------------------------------------------------ conversations

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }

  function defaultModel() {
    const last = load(KEYS.model, null);
    if (last && state.models.some((m) => m.id === last)) return last;
    return state.models.length ? state.models[0].id : last;
  }

  function newConversation() {
    const now = Date.now();
    return { id: newId(), title: "New chat", model: defaultModel(), created: now, updated: now, messages: [] };
  }

  /** Mark a conversation changed: it joins the saved list once it holds a message, and gets a title. */
  function touch(conv) {
    if (conv.deleted) return;
    conv.updated = Date.now();
    if (hasContent(conv) && !state.conversations.includes(conv)) state.conversations.unshift(conv);
    if (!hasContent(conv)) state.conversations = state.conversations.filter((c) => c !== conv);
    const first = conv.messages.find((m) => m.role === "user");
    if (!first) conv.title = "New chat"; // its question was edited away: the next one names it
    if (first && (conv.title === "New chat" || !conv.title)) {
      const text = first.content.replace(/\s+/g, " ").trim();
      conv.title = text.length > 48 ? text.slice(0, 47) + "…" : text || "New chat";
    }
    saveConversations();
    renderSidebar();
  }

  function openConversation(conv) {
    if (state.generating) stopGenerating();
    state.current = conv;
    if (!conv.model) conv.model = defaultModel();
    store(KEYS.current, conv.id);
    renderModels();
    renderAll();
    renderSidebar();
    closeSidebar();
  }

  function startNewChat() {
    openConversation(newConversation());
    $("input").focus();
  }

  function deleteConversation(conv) {
    if (state.generating && state.generating.conv === conv) stopGenerating();
    conv.deleted = true; // an answer still streaming into it must not bring it back
    state.conversations = state.conversations.filter((c) => c !== conv);
    saveConversations();
    if (state.current === conv) {
      openConversation(state.conversations[0] || newConversation());
    } else {
      renderSidebar();
    }
  }

  // ------------------------------------------------------------------------------------------------ rendering

  /** Model text → safe HTML: markdown by marked, then DOMPurify removes scripts, handlers and the like. */
  function markdownToSafeHtml(text) {
    if (!window.marked || !window.DOMPurify) return null;
    // GSM8K's answer line "#### 42", which the models learn to write, is an answer, not a heading
    const answersKept = text.replace(/^#### (?=[-+$]*\d[\d.,]*[ \t]*$)/gm, "\\#### ");
    const html = window.marked.parse(answersKept, { gfm: true, breaks: true, async: false });
    return window.DOMPurify.sanitize(html, {
      FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "video", "audio"],
      FORBID_ATTR: ["style"],
    });
  }

  if (window.DOMPurify) {
    // Links the model writes open in a new tab and learn nothing about this page.
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
  }

  function renderMarkdownInto(bubble, text, final) {
    const html = markdownToSafeHtml(text);
    if (html === null) {
      // the vendored libraries did not load: plain text is still safe and readable
      bubble.textContent = text;
      bubble.style.whiteSpace = "pre-wrap";
      return;
    }
    bubble.innerHTML = html;
    bubble.querySelectorAll("pre > code").forEach((code) => decorateCode(code, final));
  }

  /** Highlight one code block and give it a header with its language and a Copy button. */
  function decorateCode(code, final) {
    const pre = code.parentElement;
    const match = /language-([\w+#.-]+)/.exec(code.className);
    const lang = match ? match[1] : "";
    if (window.hljs) {
      const known = lang && window.hljs.getLanguage(lang);
      // guessing the language of an unlabelled block is slowish: only once the answer is complete
      if (known || (final && !lang)) {
        try {
          window.hljs.highlightElement(code);
        } catch (e) {
          /* leave it plain */
        }
      }
    }
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const name = document.createElement("span");
    name.textContent = lang || (code.result && code.result.language) || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.title = "Copy code";
    copy.addEventListener("click", (event) => {
      event.stopPropagation();
      copyText(code.textContent, copy);
    });
    head.append(name, copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "–";
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
  }

  function statSpan(key, label, value, approx, unitAfter) {
    const span = document.createElement("span");
    span.dataset.stat = key;
    const b = document.createElement("b");
    b.textContent = (approx ? "~" : "") + value;
    if (unitAfter) span.append(b, " " + label);
    else span.append(label + " ", b);
    return span;
  }

  function renderStats(el, msg) {
    let stats = el.querySelector(".stats");
    if (!msg.stats) {
      if (stats) stats.remove();
      return;
    }
    if (!stats) {
      stats = document.createElement("div");
      stats.className = "stats";
      stats.title = "Stats for nerds (~ = estimated in the browser)";
      el.append(stats);
    }
    const s = msg.stats;
    const parts = [statSpan("ttft", "TTFT", formatMs(s.ttft_ms), s.ttftApprox)];
    if (s.tokens_per_second !== null && s.tokens_per_second !== undefined) {
      parts.push(statSpan("tps", "tok/s", s.tokens_per_second.toFixed(1), s.tpsApprox, true));
    }
    if (s.prompt_tokens !== undefined) parts.push(statSpan("prompt", "prompt", s.prompt_tokens));
    if (s.completion_tokens !== undefined) parts.push(statSpan("completion", "completion", s.completion_tokens, s.completionApprox));
    if (s.total_tokens !== undefined) parts.push(statSpan("total", "total", s.total_tokens));
    if (s.total_ms !== undefined && s.total_ms !== null) parts.push(statSpan("time", "time", formatMs(s.total_ms), s.timeApprox));
    if (msg.finish) parts.push(statSpan("finish", "finish", msg.finish));
    if (msg.model) parts.push(statSpan("model", "model", msg.model));
    stats.replaceChildren(...parts);
  }

  function actionButton(label, title, cls, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.title = title;
    button.className = cls;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      onClick(button);
    });
    return button;
  }

  /** The element for conversation message number `index`. */
  function messageElement(msg, index) {
    const el = document.createElement("div");
    el.className = "msg " + msg.role;
    el.dataset.index = String(index);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    el.append(bubble);

    if (msg.role === "user") {
      bubble.textContent = msg.content;
      bubble.title = "Click to edit";
      bubble.addEventListener("click", () => editMessage(msg));
      const actions = document.createElement("div");
      actions.className = "msg-actions";
      actions.append(
        actionButton("Copy", "Copy this message", "copy-msg", (b) => copyText(msg.content, b)),
        actionButton("Edit", "Edit this message (it and everything after it go back to the input)", "edit-msg", () => editMessage(msg)),
      );
      el.append(actions);
    } else if (msg.role === "assistant") {
      fillAssistant(el, msg, true);
      bubble.addEventListener("click", (event) => {
        // nanochat: clicking an answer writes it again; not when selecting text or using a link or code
        if (state.generating) return;
        if (String(window.getSelection() || "").length) return;
        if (event.target.closest("a, pre, button, code")) return;
        regenerate(msg);
      });
      const actions = document.createElement("div");
      actions.className = "msg-actions";
      const label = document.createElement("span");
      label.className = "model-label";
      actions.append(
        actionButton("Copy", "Copy this answer (markdown)", "copy-msg", (b) => copyText(msg.content, b)),
        actionButton("Regenerate", "Write this answer again (it and everything after it are replaced)", "regen-msg", () => regenerate(msg)),
        label,
      );
      el.append(actions);
      updateModelLabel(el, msg);
      renderStats(el, msg);
    } else {
      bubble.textContent = msg.content;
    }
    return el;
  }

  function updateModelLabel(el, msg) {
    const label = el.querySelector(".model-label");
    if (label) label.textContent = msg.model || "";
  }

  function fillAssistant(el, msg, final) {
    const bubble = el.querySelector(".bubble");
    const streaming = state.generating && state.generating.msg === msg;
    el.classList.toggle("streaming", !!streaming);
    bubble.title = streaming ? "" : "Click to write this answer again";
    if (!msg.content && streaming) {
      bubble.innerHTML = '<span class="typing" aria-label="Thinking"><i></i><i></i><i></i></span>';
      return;
    }
    renderMarkdownInto(bubble, msg.content, final);
    if (!msg.content) {
      const note = document.createElement("span");
      note.className = "empty-note";
      note.textContent = "(empty answer)";
      bubble.append(note);
    }
    if (msg.stopped) {
      const note = document.createElement("div");
      note.className = "stopped-note";
      note.textContent = "(stopped)";
      bubble.append(note);
    }
    if (msg.overContext) {
      // the server answers up to 10× the trained context (nanochat's RoPE tables), so say when that happened
      const note = document.createElement("div");
      note.className = "context-note";
      note.textContent = `This conversation is longer than the ${msg.overContext.toLocaleString("en-US")} tokens ` +
        "the model was trained on: answers get worse; start a new chat.";
      bubble.append(note);
    }
  }

  function renderAll() {
    const box = $("messages");
    const conv = state.current;
    box.replaceChildren(...conv.messages.map((m, i) => messageElement(m, i)));
    $("welcome").hidden = conv.messages.length > 0;
    scrollToBottom(true);
  }

  function elementOf(msg) {
    const index = state.current.messages.indexOf(msg);
    return index < 0 ? null : $("messages").querySelector(`.msg[data-index="${index}"]`);
  }

  function renderSidebar() {
    const nav = $("conversations");
    const items = state.conversations
      .slice()
      .sort((a, b) => b.updated - a.updated)
      .map((conv) => {
        const item = document.createElement("div");
        item.className = "conv-item" + (conv === state.current ? " active" : "");
        item.dataset.id = conv.id;
        const open = document.createElement("button");
        open.type = "button";
        open.className = "conv-open";
        open.textContent = conv.title || "New chat";
        open.title = conv.title || "";
        open.addEventListener("click", () => openConversation(conv));
        const del = document.createElement("button");
        del.type = "button";
        del.className = "conv-delete";
        del.textContent = "✕";
        del.title = "Delete this conversation";
        del.setAttribute("aria-label", "Delete conversation " + (conv.title || ""));
        del.addEventListener("click", () => deleteConversation(conv));
        item.append(open, del);
        return item;
      });
    nav.replaceChildren(...items);
    const title = state.current && hasContent(state.current) ? state.current.title : "";
    document.title = title ? title + " · primechat" : "primechat";
  }

  function renderModels() {
    const select = $("model");
    const conv = state.current;
    const options = state.models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.chat === false ? m.id + " (base: completes text)" : m.id;
      return option;
    });
    if (conv && conv.model && !state.models.some((m) => m.id === conv.model)) {
      // a conversation saved with a model this server no longer has: show it, and say so
      const option = document.createElement("option");
      option.value = conv.model;
      option.textContent = conv.model + " (not available)";
      options.push(option);
    }
    if (!options.length) {
      // none listed yet (a wrong API key, a server still starting): say so rather than show an empty box
      const option = document.createElement("option");
      option.value = "";
      option.textContent = "no models";
      options.push(option);
    }
    select.replaceChildren(...options);
    if (conv && conv.model) select.value = conv.model;
    select.disabled = !!state.generating || !select.value;
  }

  let nearBottom = true;
  function scrollToBottom(force) {
    const scroller = $("scroller");
    if (force || nearBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  // ------------------------------------------------------------------------------------------------ little helpers

  let errorIsHealth = false;
  function showError(text, fromHealth) {
    $("error-text").textContent = text;
    $("error").hidden = false;
    errorIsHealth = !!fromHealth;
  }

  function hideError() {
    $("error").hidden = true;
    errorIsHealth = false;
  }

  function flash(button, text) {
    const old = button.dataset.label || button.textContent;
    button.dataset.label = old;
    button.textContent = text;
    clearTimeout(button._flash);
    button._flash = setTimeout(() => (button.textContent = old), 1500);
  }

  /** Copy to the clipboard: the Clipboard API where the page may use it (https, localhost, 127.0.0.1), otherwise the
   *  old execCommand way, which also works on a phone reaching the server by its LAN address over http. */
  async function copyText(text, button) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
      } else {
        const area = document.createElement("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.style.position = "fixed";
        area.style.opacity = "0";
        document.body.append(area);
        area.select();
        const ok = document.execCommand("copy");
        area.remove();
        if (!ok) throw new Error("the browser refused");
      }
      if (button) flash(button, "Copied");
    } catch (e) {
      if (button) flash(button, "Copy failed");
      showError("Could not copy: " + e.message);
    }
  }

  function autoresize() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 200) + "px";
    updateSendButton();
  }

  function updateSendButton() {
    $("send").disabled = !!state.generating || !$("input").value.trim();
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("model").disabled = busy || !$("model").value;
    updateSendButton();
  }

  function openSidebar() {
    document.body.classList.add("sidebar-open");
    $("backdrop").hidden = false;
  }

  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    $("backdrop").hidden = true;
  }

  // ------------------------------------------------------------------------------------------------ settings, theme

  const darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function resolvedTheme() {
    const t = state.settings.theme;
    if (t === "light" || t === "dark") return t;
    return darkQuery && darkQuery.matches ? "dark" : "light";
  }

  function applySettings() {
    const s = state.settings;
    document.documentElement.dataset.theme = resolvedTheme();
    document.body.classList.toggle("hide-stats", !s.showStats);
    $("toggle-stats").setAttribute("aria-pressed", String(!!s.showStats));
    $("set-temperature").value = s.temperature;
    $("temperature-value").textContent = Number(s.temperature).toFixed(2);
    $("set-topk").value = s.topK;
    $("set-max-tokens").value = s.maxTokens;
    $("set-theme").value = s.theme;
    $("set-show-stats").checked = !!s.showStats;
    if (document.activeElement !== $("set-system")) $("set-system").value = s.system;
    if (document.activeElement !== $("set-api-key")) $("set-api-key").value = s.apiKey || "";
  }

  function setSetting(key, value) {
    state.settings[key] = state.chosen[key] = value;
    saveSettings();
    applySettings();
  }

  function clampInt(value, lo, hi, fallback) {
    const n = Math.round(Number(value));
    return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
  }

  // ------------------------------------------------------------------------------------------------ talking to the server

  /** The conversation as the API wants it: the system prompt first, console notes and empty answers left out, and
   *  two messages in a row from the same side (after a failed request) joined, so that turns alternate. */
  function requestMessages(messages) {
    const out = [];
    const system = state.settings.system.trim();
    if (system) out.push({ role: "system", content: system });
    for (const m of messages) {
      if ((m.role !== "user" && m.role !== "assistant") || !m.content) continue;
      const last = out[out.length - 1];
      if (last && last.role === m.role) last.content += "\n\n" + m.content;
      else out.push({ role: m.role, content: m.content });
    }
    return out;
  }

  /** Headers for the API: JSON, and the API key when one is set (`primechat serve --api-key`). */
  function apiHeaders(extra) {
    const headers = Object.assign({}, extra);
    if (state.settings.apiKey) headers.Authorization = "Bearer " + state.settings.apiKey;
    return headers;
  }

  async function errorMessage(response) {
    if (response.status === 401) {
      return "This server wants an API key: enter it in the settings (the sliders button, top right).";
    }
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      if (body && body.error) return body.error.message || JSON.stringify(body.error);
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) {
      /* not JSON */
    }
    return `HTTP ${response.status} ${response.statusText}${text ? ": " + text.slice(0, 300) : ""}`;
  }

  /** Read a text/event-stream body, calling onEvent with each `data:` line's parsed JSON until [DONE]. */
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  /** Stream a new answer to the end of the current conversation. */
  async function generate() {
    const conv = state.current;
    const modelId = conv.model || defaultModel();
    const info = state.models.find((m) => m.id === modelId);
    const isChat = !info || info.chat !== false;
    const history = requestMessages(conv.messages);
    const lastUser = [...conv.messages].reverse().find((m) => m.role === "user");
    if (!lastUser) return;

    const msg = { role: "assistant", content: "", model: modelId, stats: null, finish: null };
    conv.messages.push(msg);
    const controller = new AbortController();
    state.generating = { controller, conv, msg };
    touch(conv);
    hideError();
    setBusy(true);
    $("welcome").hidden = true;
    const el = messageElement(msg, conv.messages.length - 1);
    $("messages").append(el);
    scrollToBottom(true);

    const s = state.settings;
    const body = {
      model: modelId,
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number(s.temperature),
      top_k: Number(s.topK),
      max_tokens: Number(s.maxTokens),
    };
    let url = "/v1/chat/completions";
    if (isChat) body.messages = history;
    else {
      url = "/v1/completions";
      body.prompt = lastUser.content;
    }

    const started = performance.now();
    let firstAt = null;
    let pieces = 0;
    let measured = false; // the server's timings arrived
    let counted = false; // and its token counts
    let frame = 0;
    const redraw = () => {
      frame = 0;
      if (elementOf(msg) !== el) return; // another conversation is on screen
      fillAssistant(el, msg, false);
      updateModelLabel(el, msg);
      renderStats(el, msg);
      scrollToBottom(false);
    };
    const schedule = () => {
      if (!frame) frame = requestAnimationFrame(redraw);
    };
    const liveStats = () => {
      if (measured) return;
      const now = performance.now();
      const decodeSeconds = firstAt === null ? 0 : (now - firstAt) / 1000;
      msg.stats = Object.assign({}, msg.stats, {
        live: true,
        ...(counted ? {} : { completion_tokens: pieces, completionApprox: true }), // a chunk is about a token
        ttft_ms: firstAt === null ? null : firstAt - started,
        ttftApprox: true,
        tokens_per_second: pieces > 1 && decodeSeconds > 0 ? (pieces - 1) / decodeSeconds : null,
        tpsApprox: true,
        total_ms: now - started,
        timeApprox: true,
      });
    };

    let failure = null;
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: apiHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      await readEvents(response.body, (event) => {
        if (event.error) throw new Error(event.error.message || JSON.stringify(event.error));
        if (event.model) msg.model = event.model;
        const choice = event.choices && event.choices[0];
        if (choice) {
          const piece = choice.delta ? choice.delta.content : choice.text;
          if (piece) {
            if (firstAt === null) firstAt = performance.now();
            pieces += 1;
            msg.content += piece;
          }
          if (choice.finish_reason) msg.finish = choice.finish_reason;
        }
        liveStats();
        if (event.usage) {
          counted = true;
          Object.assign(msg.stats, {
            completionApprox: false,
            live: false,
            prompt_tokens: event.usage.prompt_tokens,
            completion_tokens: event.usage.completion_tokens,
            total_tokens: event.usage.total_tokens,
          });
          const trained = info && info.context_length;
          if (trained && event.usage.total_tokens > trained) msg.overContext = trained;
        }
        if (event.timings) {
          measured = true;
          const t = event.timings;
          Object.assign(msg.stats, {
            ttft_ms: t.ttft_ms,
            ttftApprox: false,
            tokens_per_second: t.tokens_per_second,
            tpsApprox: false,
            total_ms: t.total_ms,
            timeApprox: false,
          });
        }
        schedule();
      });
    } catch (e) {
      if (e.name === "AbortError") {
        msg.stopped = true;
        msg.finish = "stopped";
      } else {
        failure = e;
      }
    }
    if (frame) cancelAnimationFrame(frame);
    liveStats();
    msg.stats.live = false;
    state.generating = null;

    const onScreen = elementOf(msg) === el;
    if (!msg.content && (failure || msg.stopped)) {
      // nothing came: drop the empty answer; a stop before the first token puts the question back in the input,
      conv.messages.splice(conv.messages.indexOf(msg), 1);
      // and so does a failure (a wrong API key, say), so that a retry does not send the question twice
      if (conv.messages[conv.messages.length - 1] === lastUser && onScreen && !$("input").value) {
        conv.messages.pop();
        $("input").value = lastUser.content;
        autoresize();
      }
      if (onScreen) renderAll();
    } else if (onScreen) {
      fillAssistant(el, msg, true);
      updateModelLabel(el, msg);
      renderStats(el, msg);
      scrollToBottom(false);
    }
    touch(conv);
    setBusy(false);
    if (failure) showError(failure.message || String(failure));
    if (onScreen && !isTouchDevice()) $("input").focus();
  }

  function isTouchDevice() {
    return window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
  }

  function stopGenerating() {
    if (state.generating) state.generating.controller.abort();
  }

  // ------------------------------------------------------------------------------------------------ actions

  function send() {
    const input = $("input");
    const text = input.value.trim();
    if (!text || state.generating) return;
    input.value = "";
    autoresize();
    if (text.startsWith("/")) {
      runCommand(text);
      return;
    }
    state.current.messages.push({ role: "user", content: text });
    touch(state.current);
    renderAll();
    generate();
  }

  /** Removes msg and everything after it from the conversation; false while generating or if msg is not there. */
  function cutFrom(msg) {
    if (state.generating) return false;
    const conv = state.current;
    const index = conv.messages.indexOf(msg);
    if (index < 0) return false;
    conv.messages.splice(index);
    touch(conv);
    renderAll();
    return true;
  }

  /** nanochat: clicking a question puts its text back in the input and removes it and everything after it. */
  function editMessage(msg) {
    if (!cutFrom(msg)) return;
    const input = $("input");
    input.value = msg.content;
    autoresize();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  /** nanochat: clicking an answer removes it and everything after it, and asks for a new one. */
  function regenerate(msg) {
    if (cutFrom(msg)) generate();
  }

  function consoleMessage(text) {
    state.current.messages.push({ role: "console", content: text });
    renderAll();
  }

  function runCommand(line) {
    const word = line.split(/\s+/)[0];
    const arg = line.slice(word.length).trim();
    const command = word.toLowerCase();
    const s = state.settings;
    const say = (text) => consoleMessage(line + "\n" + text);

    if (command === "/help" || command === "/?") {
      say(HELP);
    } else if (command === "/temperature" || command === "/temp") {
      if (!arg) return say(`Temperature is ${s.temperature}.`);
      const t = Number(arg);
      if (!Number.isFinite(t) || t < 0 || t > 2) return say("Temperature must be a number from 0 to 2.");
      setSetting("temperature", t);
      say(`Temperature set to ${t}.`);
    } else if (command === "/topk" || command === "/top_k") {
      if (!arg) return say(`Top-k is ${s.topK}${Number(s.topK) === 0 ? " (off)" : ""}.`);
      const k = Number(arg);
      if (!Number.isInteger(k) || k < 0 || k > 200) return say("Top-k must be a whole number from 1 to 200 (0 turns it off).");
      setSetting("topK", k);
      say(k === 0 ? "Top-k is off." : `Top-k set to ${k}.`);
    } else if (command === "/maxtokens" || command === "/max_tokens") {
      if (!arg) return say(`Answers stop after ${s.maxTokens} tokens.`);
      const n = Number(arg);
      if (!Number.isInteger(n) || n < 1 || n > 4096) return say("Max tokens must be a whole number from 1 to 4096.");
      setSetting("maxTokens", n);
      say(`Max tokens set to ${n}.`);
    } else if (command === "/system") {
      if (!arg) return say(s.system ? `System prompt:\n${s.system}` : "No system prompt.");
      if (arg === "clear" || arg === "off" || arg === "none") {
        setSetting("system", "");
        return say("System prompt removed.");
      }
      setSetting("system", arg);
      say("System prompt set.");
    } else if (command === "/model" || command === "/models") {
      if (!arg) {
        const list = state.models.map((m, i) => `  ${i + 1}. ${m.id}${m.chat === false ? " (base)" : ""}${m.id === state.current.model ? "  ← this conversation" : ""}`);
        return say(list.length ? "Models:\n" + list.join("\n") : "The server lists no models.");
      }
      const byNumber = /^\d+$/.test(arg) ? state.models[Number(arg) - 1] : null;
      const found = byNumber || state.models.find((m) => m.id === arg) || state.models.find((m) => m.id.includes(arg));
      if (!found) return say(`No model matches "${arg}". /model lists them.`);
      chooseModel(found.id);
      say(`This conversation now uses ${found.id}.`);
    } else if (command === "/stats") {
      setSetting("showStats", !s.showStats);
      say(s.showStats ? "Stats for nerds shown." : "Stats for nerds hidden.");
    } else if (command === "/theme") {
      const theme = arg || (resolvedTheme() === "dark" ? "light" : "dark");
      if (!["light", "dark", "auto"].includes(theme)) return say("Theme is light, dark or auto.");
      setSetting("theme", theme);
      say(`Theme: ${theme}.`);
    } else if (command === "/clear") {
      const conv = state.current;
      conv.messages = [];
      conv.title = "New chat";
      touch(conv);
      renderAll();
      consoleMessage("Conversation cleared.");
    } else if (command === "/new") {
      startNewChat();
    } else {
      say(`Unknown command ${word}. Type /help for the list.`);
    }
  }

  function chooseModel(id) {
    state.current.model = id;
    store(KEYS.model, id);
    if (hasContent(state.current)) touch(state.current);
    renderModels();
  }

  // ------------------------------------------------------------------------------------------------ start-up

  async function checkHealth() {
    let ok = false;
    let ready = true;
    try {
      const response = await fetch("/health", { cache: "no-store" });
      const body = response.ok ? await response.json() : null;
      ok = !!body && body.status === "ok";
      ready = !body || body.ready !== false;
      if (ok && body.sampling_defaults) useServerDefaults(body.sampling_defaults);
    } catch (e) {
      ok = false;
    }
    if (!ok) {
      showError("Engine not running. Start it with `primechat serve` and this page reconnects by itself.", true);
    } else if (!ready) {
      showError("The engine is starting: it answers once a model is loaded.", true);
    } else if (errorIsHealth) {
      hideError();
      if (!state.models.length) loadModels();
    }
    if (!ok || !ready) setTimeout(checkHealth, 5000);
  }

  function useServerDefaults(given) {
    for (const [name, key] of Object.entries(SERVER_DEFAULTS)) {
      if (typeof given[name] !== "number") continue;
      state.defaults[key] = given[name];
      if (!(key in state.chosen)) state.settings[key] = given[name];
    }
    applySettings();
  }

  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { cache: "no-store", headers: apiHeaders() });
      if (!response.ok) throw new Error(await errorMessage(response));
      const body = await response.json();
      state.models = Array.isArray(body.data) ? body.data : [];
    } catch (e) {
      state.models = [];
      showError("Could not list the models: " + e.message);
    }
    const conv = state.current;
    if (conv && (!conv.model || (!hasContent(conv) && !state.models.some((m) => m.id === conv.model)))) {
      conv.model = defaultModel();
    }
    renderModels();
  }

  function bindEvents() {
    const input = $("input");
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      send();
    });
    input.addEventListener("input", autoresize);
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        send();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.generating) {
        event.preventDefault();
        stopGenerating();
      } else if ((event.ctrlKey || event.metaKey) && event.shiftKey && (event.key === "N" || event.key === "n")) {
        event.preventDefault();
        startNewChat();
      }
    });
    $("stop").addEventListener("click", stopGenerating);
    $("new-chat").addEventListener("click", startNewChat);
    $("new-chat-top").addEventListener("click", startNewChat);
    $("model").addEventListener("change", (event) => chooseModel(event.target.value));
    $("error-close").addEventListener("click", hideError);
    $("open-sidebar").addEventListener("click", openSidebar);
    $("close-sidebar").addEventListener("click", closeSidebar);
    $("backdrop").addEventListener("click", closeSidebar);
    $("scroller").addEventListener("scroll", () => {
      const el = $("scroller");
      nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    });

    $("toggle-stats").addEventListener("click", () => setSetting("showStats", !state.settings.showStats));
    $("toggle-theme").addEventListener("click", () => setSetting("theme", resolvedTheme() === "dark" ? "light" : "dark"));
    if (darkQuery && darkQuery.addEventListener) darkQuery.addEventListener("change", applySettings);

    const panel = $("settings");
    const toggleSettings = (open) => {
      panel.hidden = !open;
      $("open-settings").setAttribute("aria-expanded", String(open));
    };
    $("open-settings").addEventListener("click", () => toggleSettings(panel.hidden));
    $("close-settings").addEventListener("click", () => toggleSettings(false));
    $("reset-settings").addEventListener("click", () => {
      state.chosen = { apiKey: state.settings.apiKey }; // the key is not a preference
      state.settings = Object.assign({}, state.defaults, state.chosen);
      saveSettings();
      $("set-system").value = "";
      applySettings();
    });
    $("set-temperature").addEventListener("input", (e) => setSetting("temperature", Number(e.target.value)));
    $("set-topk").addEventListener("change", (e) => setSetting("topK", clampInt(e.target.value, 0, 200, state.defaults.topK)));
    $("set-max-tokens").addEventListener("change", (e) => setSetting("maxTokens", clampInt(e.target.value, 1, 4096, state.defaults.maxTokens)));
    $("set-theme").addEventListener("change", (e) => setSetting("theme", e.target.value));
    $("set-show-stats").addEventListener("change", (e) => setSetting("showStats", e.target.checked));
    $("set-api-key").addEventListener("change", (e) => {
      setSetting("apiKey", e.target.value.trim());
      hideError();
      loadModels();
    });
    $("set-system").addEventListener("input", (e) => {
      state.settings.system = state.chosen.system = e.target.value;
      saveSettings();
    });
  }

  function start() {
    bindEvents();
    applySettings();
    const currentId = load(KEYS.current, null);
    const saved = state.conversations.find((c) => c.id === currentId);
    state.current = saved || newConversation();
    renderAll();
    renderSidebar();
    renderModels();
    autoresize();
    loadModels();
    checkHealth();
    if (!isTouchDevice()) $("input").focus();
  }

  start();
})();
