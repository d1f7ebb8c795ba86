/* yunmin playground: talks to this server through the public routes any client uses
 * (/v1/models, /v1/chat/completions, /v1/completions with "stream": true, /v1/adapters,
 * /v1/sessions, /metrics). Plain JavaScript, no build step, no network but this origin.
 * Model text is only ever put into the page as text (textContent), never as HTML. */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    key: "",            /* the API key: this page's memory only, never a URL or storage */
    messages: [],       /* the chat so far: {role, content} */
    sessionId: "",
    ctl: null,          /* AbortController of the running request */
    lastMetrics: null,  /* {t, gen} for the tokens/s of the load panel */
  };

  function newSessionId() {
    const b = new Uint8Array(9);
    crypto.getRandomValues(b);
    return "pg-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  state.sessionId = newSessionId();

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (state.key) h["Authorization"] = "Bearer " + state.key;
    return h;
  }

  /* An API error as one line: "401: missing or unknown API key: ... (invalid_api_key)". */
  async function apiError(resp) {
    let msg = resp.statusText || "error";
    let code = null;
    try {
      const body = await resp.json();
      if (body && body.error) {
        msg = body.error.message || msg;
        code = body.error.code || body.error.type || null;
      }
    } catch (e) { /* not JSON: keep the status text */ }
    const err = new Error(resp.status + ": " + msg + (code ? " (" + code + ")" : ""));
    err.status = resp.status;
    return err;
  }

  function notice(text) {
    const n = $("notice");
    n.textContent = text || "";
    n.hidden = !text;
  }

  function needKey(err) {
    notice(err.message);
    $("keyform").hidden = false;
    $("key").focus();
  }

  /* ---- the model and adapter picker ------------------------------------------------ */
  async function loadModels(select) {
    let resp;
    try {
      resp = await fetch("/v1/models", { headers: headers(false) });
    } catch (e) {
      notice("The server cannot be reached: " + e.message);
      return false;
    }
    if (!resp.ok) {
      const err = await apiError(resp);
      if (resp.status === 401) needKey(err); else notice(err.message);
      return false;
    }
    const body = await resp.json();
    const sel = $("model");
    const keep = select || sel.value;
    sel.textContent = "";
    for (const m of body.data || []) {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.parent ? m.id + " (adapter of " + m.parent + ")" : m.id;
      sel.appendChild(o);
    }
    if (keep && Array.from(sel.options).some((o) => o.value === keep)) sel.value = keep;
    return true;
  }

  /* ---- the conversation ---------------------------------------------------------- */
  function mode() {
    return document.querySelector("input[name=mode]:checked").value;
  }

  function addMessage(role, text, cls) {
    const div = document.createElement("div");
    div.className = "msg " + (cls || role);
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role;
    const t = document.createElement("div");
    t.className = "text";
    if (text) t.textContent = text;
    div.append(who, t);
    $("log").appendChild(div);
    $("log").scrollTop = $("log").scrollHeight;
    return div;
  }

  function numberField(id, body, name, integer) {
    const v = $(id).value.trim();
    if (v === "") return;
    const x = integer ? parseInt(v, 10) : parseFloat(v);
    if (!Number.isNaN(x)) body[name] = x;
  }

  function requestBody() {
    const body = { model: $("model").value || undefined, stream: true,
                   stream_options: { include_usage: true } };
    numberField("temperature", body, "temperature", false);
    numberField("top_p", body, "top_p", false);
    numberField("top_k", body, "top_k", true);
    numberField("max_tokens", body, "max_tokens", true);
    numberField("seed", body, "seed", true);
    if ($("session").checked) body.session_id = state.sessionId;
    return body;
  }

  /* Reads a server-sent event stream; calls onEvent with each data payload's JSON. */
  async function readSSE(resp, onEvent) {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = ev.split("\n").filter((l) => l.startsWith("data:"))
                       .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data === "" ) continue;           /* a ": ping" comment */
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  function fmtStats(s) {
    const parts = [];
    if (s.ttft != null) parts.push("time to first token " + Math.round(s.ttft) + " ms");
    if (s.tps != null) parts.push(s.tps.toFixed(1) + " tokens/s");
    if (s.tokens != null) parts.push(s.tokens + " tokens");
    if (s.prompt != null) parts.push("prompt " + s.prompt);
    if (s.cached != null) parts.push("cached_tokens " + s.cached);
    if (s.finish) parts.push("finish " + s.finish);
    return parts.join(" · ");
  }

  async function send() {
    const text = $("prompt").value;
    if (state.ctl || text.trim() === "") return;
    const chat = mode() === "chat";
    const body = requestBody();
    let path;
    if (chat) {
      const sys = $("system").value.trim();
      state.messages.push({ role: "user", content: text });
      body.messages = (sys ? [{ role: "system", content: sys }] : []).concat(state.messages);
      path = "/v1/chat/completions";
      addMessage("user", text);
    } else {
      body.prompt = text;
      path = "/v1/completions";
    }
    $("prompt").value = "";
    const msg = addMessage((chat ? "assistant" : "completion") + " · " + ($("model").value || "model"),
                           "", "bot streaming");
    msg.setAttribute("aria-busy", "true");
    const out = msg.querySelector(".text");
    if (!chat) {
      const p = document.createElement("span");
      p.className = "prompt";
      p.textContent = text;
      out.appendChild(p);
    }
    const gen = document.createTextNode("");
    out.appendChild(gen);
    const stats = document.createElement("div");
    stats.className = "stats";
    msg.appendChild(stats);

    const ctl = new AbortController();
    state.ctl = ctl;
    setBusy(true);
    const t0 = performance.now();
    let tFirst = null, tLast = null, chunks = 0, answer = "";
    const s = {};
    /* The page shows the stream once per frame, not once per token: a forced layout per token
       (scrolling the log) kept the main thread busy at a few hundred tokens/s, and everything
       else on the page waited behind it. */
    let pending = "", frame = 0;
    const flush = () => {
      if (frame) cancelAnimationFrame(frame);
      frame = 0;
      if (pending) {
        gen.appendData(pending);
        pending = "";
        $("log").scrollTop = $("log").scrollHeight;
      }
      stats.textContent = fmtStats(s);
    };
    const show = () => { if (!frame) frame = requestAnimationFrame(flush); };
    try {
      const resp = await fetch(path, { method: "POST", headers: headers(true),
                                       body: JSON.stringify(body), signal: ctl.signal });
      if (!resp.ok) throw await apiError(resp);
      await readSSE(resp, (ev) => {
        if (ev.error) {
          const e = new Error((ev.error.message || "error") +
                              (ev.error.code ? " (" + ev.error.code + ")" : ""));
          throw e;
        }
        for (const c of ev.choices || []) {
          const piece = chat ? (c.delta && c.delta.content) || "" : c.text || "";
          if (piece) {
            const now = performance.now();
            if (tFirst === null) {
              tFirst = now;
              s.ttft = now - t0;
            }
            tLast = now;
            chunks++;
            answer += piece;
            pending += piece;
          }
          if (c.finish_reason) s.finish = c.finish_reason;
        }
        if (ev.usage) {
          s.tokens = ev.usage.completion_tokens;
          s.prompt = ev.usage.prompt_tokens;
          const d = ev.usage.prompt_tokens_details;
          s.cached = d && d.cached_tokens != null ? d.cached_tokens : 0;
        }
        show();
      });
      const n = s.tokens != null ? s.tokens : chunks;
      const end = performance.now();
      if (tFirst !== null && n > 1 && end > tFirst)
        s.tps = (n - 1) / ((end - tFirst) / 1000); /* tokens after the first, per second */
      if (chat) state.messages.push({ role: "assistant", content: answer });
    } catch (e) {
      flush();
      if (e.name === "AbortError") {
        s.finish = "stopped";
        if (tFirst !== null && tLast > tFirst && chunks > 1)
          s.tps = (chunks - 1) / ((tLast - tFirst) / 1000);
        if (chat && answer) state.messages.push({ role: "assistant", content: answer });
        else if (chat) state.messages.pop();
      } else {
        if (chat) state.messages.pop(); /* the turn did not happen */
        msg.className = "msg error";
        msg.querySelector(".who").textContent = "error";
        gen.appendData((answer ? "\n" : "") + e.message);
        if (e.status === 401) needKey(e);
      }
    } finally {
      flush();
      msg.classList.remove("streaming");
      msg.removeAttribute("aria-busy");
      state.ctl = null;
      setBusy(false);
      $("prompt").focus();
    }
  }

  /* Stop: closing the connection makes the server cancel the request at its next step. */
  function stop() {
    if (state.ctl) state.ctl.abort();
  }

  async function reset() {
    stop();
    const old = state.sessionId;
    state.messages = [];
    state.sessionId = newSessionId();
    $("log").textContent = "";
    if ($("session").checked) /* forget the old state on the server; a 404 is fine */
      fetch("/v1/sessions/" + encodeURIComponent(old),
            { method: "DELETE", headers: headers(false) }).catch(() => {});
    $("prompt").focus();
  }

  /* ---- adapter upload ------------------------------------------------------------ */
  async function upload(ev) {
    ev.preventDefault();
    const name = $("upname").value.trim();
    const files = $("upfiles").files;
    const st = $("upstatus");
    if (!name || files.length === 0) return;
    const form = new FormData();
    for (const f of files)
      /* A file picked from inside a folder keeps its path below the adapter's folder, so
       * an adapter set's lora/ and ia3/ parts get their names. */
      form.append((f.webkitRelativePath || f.name).split("/").slice(1).join("/") || f.name, f);
    st.textContent = "Uploading…";
    try {
      const resp = await fetch("/v1/adapters/" + encodeURIComponent(name),
                               { method: "PUT", headers: headers(false), body: form });
      if (!resp.ok) throw await apiError(resp);
      const a = await resp.json();
      await loadModels(a.id); /* and select it */
      st.textContent = "Uploaded " + a.id + (a.type ? " (" + a.type + ")" : "") +
                       "; it is now in the model list.";
    } catch (e) {
      st.textContent = "Upload failed: " + e.message;
      if (e.status === 401) needKey(e);
    }
  }

  /* ---- the load panel -------------------------------------------------------------- */
  function metric(text, name) {
    const m = text.match(new RegExp("^" + name + " ([0-9.eE+-]+)$", "m"));
    return m ? Number(m[1]) : null;
  }

  async function pollMetrics() {
    if (document.hidden) return;
    try {
      const resp = await fetch("/metrics");
      if (!resp.ok) return;
      const text = await resp.text();
      const t = performance.now();
      const gen = metric(text, "yunmin_generation_tokens_total");
      const show = (id, v) => { $(id).textContent = v == null ? "–" : String(v); };
      show("m-running", metric(text, "yunmin_running_sequences"));
      show("m-queue", metric(text, "yunmin_queue_depth"));
      show("m-cancelled", metric(text, "yunmin_requests_cancelled_total"));
      if (state.lastMetrics && gen != null && t > state.lastMetrics.t)
        show("m-tps", Math.round((gen - state.lastMetrics.gen) / ((t - state.lastMetrics.t) / 1000)));
      state.lastMetrics = { t, gen };
    } catch (e) { /* the panel just keeps its last values */ }
  }

  /* ---- wiring ------------------------------------------------------------------ */
  function onMode() {
    const chat = mode() === "chat";
    $("prompt-label").textContent = chat ? "Message" : "Prompt";
    $("prompt").placeholder = chat ? "Good morrow, fair maid." : "ROMEO:";
    $("system-field").hidden = !chat;
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (window.matchMedia("(max-width: 700px)").matches) $("settings").open = false;
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send();
      }
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.ctl) {
        e.preventDefault();
        stop();
      }
    });
    $("stop").addEventListener("click", stop);
    $("reset").addEventListener("click", reset);
    $("upform").addEventListener("submit", upload);
    for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", onMode);
    $("keyform").addEventListener("submit", async (e) => {
      e.preventDefault();
      state.key = $("key").value.trim();
      $("key").value = "";
      if (await loadModels()) {
        notice("");
        $("keyform").hidden = true;
        $("prompt").focus();
      }
    });
    onMode();
    loadModels();
    pollMetrics();
    setInterval(pollMetrics, 2000);
  });
})();
