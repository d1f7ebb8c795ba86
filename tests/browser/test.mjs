// The web playground in a real browser: Debian's chromium, headless, driven by puppeteer-core,
// against real yunmind daemons on 127.0.0.1.
//
//   node tests/browser/test.mjs BUILD_DIR [--screenshots DIR]
//
// One daemon has a tenants file (the page must ask for the key) and adapter uploads on; a
// second starts with playground = 0 in its settings file, then reloads it as 1. Checked:
//   - the files' headers: Content-Type, ETag + Cache-Control: no-cache (304 on If-None-Match),
//     CSP, nosniff; HEAD; 405 for other methods; 404 when the playground is off, 200 after a
//     SIGHUP turned it on;
//   - without a key the page shows the API's 401 message and asks for one; the key is sent as
//     a header only: never in a URL, never in localStorage or sessionStorage;
//   - every control has a label; the message box is reached and used by keyboard only;
//   - a chat answer streams in (several updates while streaming), equals the same request's
//     non-streaming answer, and shows time to first token and tokens/s;
//   - with the session toggle, the next turn shows cached_tokens > 0;
//   - Escape stops a long generation and the server cancels it (metrics);
//   - an adapter uploaded through the page's form appears in the picker, and completions with
//     it and without it equal `yunmin generate` with and without --adapter, and differ;
//   - an API error (max_tokens over the cap) is shown with the API's message;
//   - the load panel shows /metrics values; at 390x844 nothing overflows sideways.
// With --screenshots DIR the page is photographed into DIR (docs/playground/ holds the copies
// in the repository). Exit 0 when all passed, 1 otherwise, 2 on bad usage.
import { spawn, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync, existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const args = process.argv.slice(2);
if (args.length < 1) {
  console.error("usage: test.mjs BUILD_DIR [--screenshots DIR]");
  process.exit(2);
}
const build = path.resolve(args[0]);
const shotDir = args[1] === "--screenshots" && args[2] ? path.resolve(args[2]) : null;
const yunmind = path.join(build, "server", "yunmind");
const yunmin = path.join(build, "tools", "yunmin");
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const adapterDir = path.join(root, "models", "shakespeare-mamba", "adapters", "petruchio-ia3");

const tmp = mkdtempSync(path.join(tmpdir(), "yunmin-browser-"));
const daemons = [];
let browser = null;
let failed = 0;

function log(...a) { console.error("browser:", ...a); }
function check(ok, what, detail) {
  if (ok) {
    log("ok  " + what);
  } else {
    failed++;
    log("FAIL " + what + (detail !== undefined ? ": " + detail : ""));
  }
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await sleep(50);
  }
}

async function startDaemon(name, extra) {
  const p = spawn(yunmind, ["--port", "0", "--threads", "1", "--log-format", "plain", ...extra],
                  { stdio: ["ignore", "pipe", "pipe"] });
  const d = { name, p, stderr: "", url: null };
  daemons.push(d);
  p.stderr.on("data", (b) => { d.stderr = (d.stderr + b).slice(-20000); });
  let out = "";
  d.url = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(name + ": no 'listening' line in 30 s")), 30000);
    p.stdout.on("data", (b) => {
      out += b;
      const m = out.match(/yunmind: listening on (http:\/\/[^\s]+:\d+)/);
      if (m) { clearTimeout(t); resolve(m[1].replace("0.0.0.0", "127.0.0.1")); }
    });
    p.on("exit", (c) => reject(new Error(name + ": yunmind exited " + c + "\n" + d.stderr)));
  });
  await until(name + " /readyz", async () => {
    try { return (await fetch(d.url + "/readyz")).status === 200; } catch (e) { return false; }
  }, 60000);
  return d;
}

async function metrics(url) {
  return (await fetch(url + "/metrics")).text();
}
function metric(text, re) {
  const m = text.match(re);
  return m ? Number(m[1]) : null;
}

async function shot(page, name) {
  if (!shotDir) return;
  mkdirSync(shotDir, { recursive: true });
  await page.screenshot({ path: path.join(shotDir, name) });
  log("screenshot " + path.join(shotDir, name));
}

// The completion text a message of the page shows (its prompt span left out).
function answerText(page, sel) {
  return page.$$eval(sel, (els) => els.map((el) => {
    const t = el.querySelector(".text");
    const p = t.querySelector(".prompt");
    return t.textContent.slice(p ? p.textContent.length : 0);
  }));
}

async function setField(page, id, value) {
  await page.$eval("#" + id, (el, v) => { el.value = v; }, String(value));
}

async function lastBot(page) {
  return page.$$eval(".msg.bot, .msg.error", (els) => {
    const el = els[els.length - 1];
    return el ? { cls: el.className, text: el.querySelector(".text").textContent,
                  stats: (el.querySelector(".stats") || {}).textContent || "" } : null;
  });
}

// Sends what is in the message box by pressing Enter, and waits for the answer to end.
async function sendAndWait(page, text) {
  const before = await page.$$eval(".msg.bot, .msg.error", (e) => e.length);
  await page.focus("#prompt");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
  await until("the answer", () => page.$$eval(".msg.bot, .msg.error",
    (e, n) => e.length > n && !e[e.length - 1].classList.contains("streaming"), before), 30000);
  return lastBot(page);
}

async function main() {
  // A tenants file with one fresh key (stored as its SHA-256, as yunmind --new-key prints).
  const key = "pg-" + randomBytes(24).toString("hex");
  const tenants = path.join(tmp, "tenants.json");
  writeFileSync(tenants, JSON.stringify({ tenants: [{ name: "play",
    keys: ["sha256:" + createHash("sha256").update(key).digest("hex")] }] }));
  mkdirSync(path.join(tmp, "adapters"));
  const d = await startDaemon("tenants", ["--tenants-file", tenants,
                                          "--adapter-dir", path.join(tmp, "adapters")]);
  const url = d.url;
  const auth = { Authorization: "Bearer " + key, "Content-Type": "application/json" };

  // ---- the files over plain HTTP ----------------------------------------------------------
  const types = { "/": "text/html; charset=utf-8",
                  "/playground/app.js": "text/javascript; charset=utf-8",
                  "/playground/style.css": "text/css; charset=utf-8" };
  for (const [p, type] of Object.entries(types)) {
    const r = await fetch(url + p);
    const body = await r.text();
    const etag = r.headers.get("etag");
    check(r.status === 200 && r.headers.get("content-type") === type && body.length > 100,
          `GET ${p}: 200, ${type}`, `${r.status} ${r.headers.get("content-type")}`);
    check(/^"[0-9a-f]{32}"$/.test(etag || "") && r.headers.get("cache-control") === "no-cache",
          `GET ${p}: ETag and Cache-Control: no-cache`, etag + " " + r.headers.get("cache-control"));
    check(r.headers.get("x-content-type-options") === "nosniff" &&
          /script-src 'self'/.test(r.headers.get("content-security-policy") || "") &&
          !/unsafe-inline/.test(r.headers.get("content-security-policy") || ""),
          `GET ${p}: nosniff and a CSP without inline script`);
    const r304 = await fetch(url + p, { headers: { "If-None-Match": `W/"x", ${etag}` } });
    check(r304.status === 304 && (await r304.text()) === "", `GET ${p} with its ETag: 304`,
          r304.status);
    const rOld = await fetch(url + p, { headers: { "If-None-Match": '"0123"' } });
    check(rOld.status === 200, `GET ${p} with another ETag: 200`, rOld.status);
    const h = await fetch(url + p, { method: "HEAD" });
    check(h.status === 200 && h.headers.get("etag") === etag && (await h.text()) === "",
          `HEAD ${p}: 200, same ETag, no body`);
  }
  const post = await fetch(url + "/", { method: "POST", body: "x" });
  check(post.status === 405 && /GET/.test(post.headers.get("allow") || ""), "POST /: 405 with Allow");
  const nf = await fetch(url + "/playground/nope.js");
  check(nf.status === 404 && (await nf.json()).error.code === "not_found",
        "GET /playground/nope.js: 404 JSON error");

  // Off by the settings file; a reload (SIGHUP) turns it on.
  const conf = path.join(tmp, "yunmind.json");
  writeFileSync(conf, JSON.stringify({ playground: 0 }));
  const off = await startDaemon("off", ["--config", conf]);
  const offr = await fetch(off.url + "/");
  check(offr.status === 404 && /playground/.test((await offr.json()).error.message),
        "playground = 0: GET / is 404 naming the setting");
  check((await fetch(off.url + "/playground/app.js")).status === 404, "playground = 0: its files 404");
  check((await fetch(off.url + "/v1/models")).status === 200, "playground = 0: the API still serves");
  writeFileSync(conf, JSON.stringify({ playground: 1 }));
  off.p.kill("SIGHUP");
  const on = await until("the reload", async () => (await fetch(off.url + "/")).status === 200, 10000)
    .catch(() => false);
  check(on, "playground 0 -> 1 by SIGHUP: GET / is 200");

  // ---- the browser ---------------------------------------------------------------------------
  browser = await puppeteer.launch({
    executablePath: chromium, headless: true,
    args: ["--no-sandbox", "--headless=new", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", "--no-default-browser-check"],
  });
  log("node " + process.version + ", " + (await browser.version()) + ", " + chromium);
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 860 });
  const problems = [];
  const requests = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  // Expected failures: the 401 of /v1/models before the key, the 400 of the deliberate error.
  // Any other failed response, console error or CSP refusal is a problem.
  page.on("console", (m) => {
    if (m.type() === "error" && !/^Failed to load resource: .* status of 40[01]/.test(m.text()))
      problems.push("console: " + m.text());
  });
  page.on("response", (r) => {
    const p = new URL(r.url()).pathname;
    if (r.status() >= 400 && !(r.status() === 401 && p === "/v1/models") &&
        !(r.status() === 400 && p === "/v1/chat/completions"))
      problems.push(`${r.status()} for ${r.request().method()} ${p}`);
  });
  page.on("request", (r) => requests.push(r.url()));

  // Open mode (the second daemon, no tenants file): no key asked, the model list is there.
  await page.goto(off.url + "/", { waitUntil: "domcontentloaded" });
  await until("the open-mode model list", () => page.$$eval("#model option", (o) => o.length > 0))
    .catch(() => null);
  check(await page.$eval("#keyform", (f) => getComputedStyle(f).display === "none") &&
        await page.$eval("#notice", (n) => n.hidden) &&
        (await page.$$eval("#model option", (o) => o.map((x) => x.value))).includes("shakespeare-mamba"),
        "open mode: no key asked, the model list is filled");
  off.p.kill("SIGTERM");
  requests.length = 0;

  // Without a key: the API's 401 message, and the key form.
  await page.goto(url + "/", { waitUntil: "domcontentloaded" });
  await until("the 401 notice", () => page.$eval("#notice", (n) => !n.hidden));
  const noticeText = await page.$eval("#notice", (n) => n.textContent);
  check(/^401: missing or unknown API key/.test(noticeText), "no key: the 401 is shown", noticeText);
  check(await page.$eval("#keyform", (f) => getComputedStyle(f).display !== "none"),
        "no key: the key form shows");
  await shot(page, "playground-key.png");

  // Every control is labelled.
  const unlabelled = await page.$$eval("input, select, textarea, button", (els) => els
    .filter((e) => e.type !== "hidden" &&
            !(e.labels && e.labels.length) && !e.getAttribute("aria-label") &&
            !(e.tagName === "BUTTON" && e.textContent.trim()))
    .map((e) => e.id || e.name || e.tagName));
  check(unlabelled.length === 0, "every control has a label", unlabelled.join(", "));

  // The key, by keyboard: the field has focus, type it, Enter.
  check(await page.evaluate(() => document.activeElement.id === "key"), "the key field has focus");
  await page.keyboard.type(key);
  await page.keyboard.press("Enter");
  await until("the model list", () => page.$$eval("#model option", (o) => o.length > 0));
  const models = await page.$$eval("#model option", (o) => o.map((x) => x.value));
  check(models.includes("shakespeare-mamba"), "with the key: the model list", models.join(","));
  check(await page.$eval("#notice", (n) => n.hidden && getComputedStyle(n).display === "none") &&
        await page.$eval("#keyform", (f) => getComputedStyle(f).display === "none"),
        "with the key: the notice and the key form are gone");

  // Keyboard only: Tab from the top of the page reaches the message box.
  await page.evaluate(() => document.activeElement.blur());
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement.id === "prompt");
  }
  check(reached, "Tab reaches the message box");

  // A chat message, streamed: record the answer's text as it changes.
  await setField(page, "temperature", 0);
  await setField(page, "max_tokens", 300);
  await page.evaluate(() => {
    window.__updates = [];
    new MutationObserver(() => {
      const el = document.querySelector(".msg.bot.streaming .text");
      if (el) window.__updates.push(el.textContent.length);
    }).observe(document.getElementById("log"), { subtree: true, childList: true,
                                                 characterData: true });
  });
  const question = "Good morrow, fair maid.";
  await page.keyboard.type(question);
  await page.keyboard.press("Enter");
  await until("the answer", () => page.$$eval(".msg.bot",
    (e) => e.length === 1 && !e[0].classList.contains("streaming")), 30000);
  const a1 = await lastBot(page);
  const updates = await page.evaluate(() => window.__updates);
  const growing = new Set(updates.filter((n) => n > 0)).size;
  check(growing >= 2, "the answer streamed in (distinct lengths while streaming)", growing);
  const ref = await (await fetch(url + "/v1/chat/completions", { method: "POST", headers: auth,
    body: JSON.stringify({ model: "shakespeare-mamba", messages: [{ role: "user", content: question }],
                           temperature: 0, top_p: 0.95, max_tokens: 300 }) })).json();
  check(a1.text === ref.choices[0].message.content,
        "the streamed chat answer equals the non-streaming API answer",
        JSON.stringify(a1.text.slice(0, 80)) + " vs " +
        JSON.stringify(ref.choices[0].message.content.slice(0, 80)));
  check(/time to first token \d+ ms/.test(a1.stats) && /[\d.]+ tokens\/s/.test(a1.stats),
        "the answer shows time to first token and tokens/s", a1.stats);

  // Sessions: a new conversation with the toggle on; the second turn resumes.
  await page.click("#reset");
  await page.click("#session");
  const t1 = await sendAndWait(page, "What news?");
  const t2 = await sendAndWait(page, "Speak on.");
  const cached = Number((t2.stats.match(/cached_tokens (\d+)/) || [])[1]);
  check(/cached_tokens 0\b/.test(t1.stats) && cached > 0,
        "session: turn 2 shows cached_tokens > 0", t1.stats + " | " + t2.stats);
  await page.click("#session");
  await shot(page, "playground-chat.png");

  // Stop a long generation with Escape; the server cancels it.
  const m0 = await metrics(url);
  const cancelled0 = metric(m0, /^yunmin_requests_cancelled_total (\S+)$/m) || 0;
  await setField(page, "max_tokens", 8192);
  await setField(page, "temperature", 0.8);
  await setField(page, "seed", 7);
  const nBot = await page.$$eval(".msg.bot", (e) => e.length);
  await page.focus("#prompt");
  await page.keyboard.type("Tell me a long tale.");
  await page.keyboard.press("Enter");
  await until("streamed text", () => page.$$eval(".msg.bot", (e, n) => e.length > n &&
    e[e.length - 1].querySelector(".text").textContent.length > 0, nBot), 15000);
  const stopEnabled = await page.$eval("#stop", (b) => !b.disabled);
  await page.keyboard.press("Escape");
  await until("the stopped answer", () => page.$$eval(".msg.bot",
    (e) => !e[e.length - 1].classList.contains("streaming")), 15000);
  const stopped = await lastBot(page);
  check(stopEnabled && /finish stopped/.test(stopped.stats), "Escape stops the answer", stopped.stats);
  // The engine counts the cancellation and the transport the 499 in either order: wait for both.
  const is499 = (t) => /yunmin_http_requests_total\{route="\/v1\/chat\/completions",status="499"\} [1-9]/.test(t);
  let m1 = "";
  await until("the cancellation in /metrics", async () => {
    m1 = await metrics(url);
    return (metric(m1, /^yunmin_requests_cancelled_total (\S+)$/m) || 0) > cancelled0 && is499(m1);
  }, 10000).catch(() => null);
  check((metric(m1, /^yunmin_requests_cancelled_total (\S+)$/m) || 0) > cancelled0,
        "the server cancelled the stopped request (yunmin_requests_cancelled_total)");
  check(is499(m1), "the stopped request counts as 499 (client closed)",
        m1.split("\n").filter((l) => l.startsWith("yunmin_http_requests_total{route=\"/v1/chat")).join("; "));
  await setField(page, "seed", "");

  // An API error: max_tokens over the cap; the API's message is shown.
  await setField(page, "max_tokens", 100000);
  const e1 = await sendAndWait(page, "Too long.");
  check(/msg error/.test(e1.cls) && /^400: .*max_tokens/.test(e1.text), "an API error is shown",
        e1.cls + " " + e1.text);

  // An adapter: upload through the page's form, pick it, see a different answer.
  await page.click("#upload summary");
  await page.type("#upname", "petruchio-ia3");
  const fileInput = await page.$("#upfiles");
  await fileInput.uploadFile(path.join(adapterDir, "adapter_config.json"),
                             path.join(adapterDir, "adapter_model.safetensors"));
  await page.click("#upform button[type=submit]");
  await until("the upload", () => page.$eval("#upstatus", (s) => /Uploaded|failed/.test(s.textContent)));
  const up = await page.$eval("#upstatus", (s) => s.textContent);
  check(/^Uploaded petruchio-ia3/.test(up), "the adapter uploads through the page", up);
  const models2 = await page.$$eval("#model option", (o) => o.map((x) => x.value));
  check(models2.includes("petruchio-ia3"), "the adapter is in the picker", models2.join(","));

  await page.click("input[name=mode][value=completion]");
  await setField(page, "temperature", 0);
  await setField(page, "max_tokens", 30);
  await page.select("#model", "shakespeare-mamba");
  await sendAndWait(page, "PETRUCHIO:");
  await page.select("#model", "petruchio-ia3");
  await sendAndWait(page, "PETRUCHIO:");
  const outs = (await answerText(page, ".msg.bot")).slice(-2);
  const cli = (extra) => execFileSync(yunmin, ["generate", "-p", "PETRUCHIO:", "-n", "30",
    "--temperature", "0", ...extra], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const refBase = cli([]), refAdapted = cli(["--adapter", adapterDir]);
  check(outs[0].trimEnd() === refBase.trimEnd(), "base completion equals yunmin generate",
        JSON.stringify(outs[0]) + " vs " + JSON.stringify(refBase));
  check(outs[1].trimEnd() === refAdapted.trimEnd(),
        "adapter completion equals yunmin generate --adapter",
        JSON.stringify(outs[1]) + " vs " + JSON.stringify(refAdapted));
  check(outs[0] !== outs[1], "the adapter changes the answer");
  await shot(page, "playground-adapter.png");

  // The load panel.
  const panel = await until("the load panel", () => page.$eval("#load", (l) => {
    const v = (id) => l.querySelector("#" + id).textContent;
    return /^\d+$/.test(v("m-running")) && /^\d+$/.test(v("m-queue")) &&
           /^\d+$/.test(v("m-tps")) && /^\d+$/.test(v("m-cancelled")) ? l.textContent : null;
  }), 10000).catch(() => null);
  check(panel !== null, "the load panel shows running, queue, tok/s, cancelled", panel);

  // The key stayed out of URLs and storage.
  const stored = await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage));
  check(!requests.some((u) => u.includes(key)) && !stored.includes(key),
        "the key is in no URL and no storage");
  check(requests.every((u) => u.startsWith(url + "/")), "the page loads nothing from elsewhere",
        requests.filter((u) => !u.startsWith(url + "/")).join(" "));

  // A phone-sized window: one column, nothing wider than the screen; the key by keyboard again.
  const phone = await browser.newPage();
  await phone.setViewport({ width: 390, height: 844, deviceScaleFactor: 2, isMobile: true,
                            hasTouch: true });
  phone.on("pageerror", (e) => problems.push("page error (phone): " + e.message));
  await phone.goto(url + "/", { waitUntil: "domcontentloaded" });
  await until("the key form", () => phone.$eval("#keyform", (f) => !f.hidden));
  await phone.keyboard.type(key);
  await phone.keyboard.press("Enter");
  await until("the model list", () => phone.$$eval("#model option", (o) => o.length > 0));
  await setField(phone, "max_tokens", 60);
  await setField(phone, "temperature", 0);
  const pa = await sendAndWait(phone, "Good morrow, fair maid.");
  check(/time to first token/.test(pa.stats), "phone: the chat works", pa.stats);
  const widths = await phone.evaluate(() => [document.documentElement.scrollWidth, innerWidth,
    getComputedStyle(document.querySelector(".layout")).gridTemplateColumns.split(" ").length]);
  check(widths[0] <= widths[1] && widths[2] === 1, "phone: one column, no sideways scrolling",
        widths.join(" "));
  await shot(phone, "playground-phone.png");

  check(problems.length === 0, "no page errors, console errors or CSP refusals", problems.join(" | "));
}

const watchdog = setTimeout(() => {
  log("FAIL the test took longer than 110 s");
  cleanup().then(() => process.exit(1));
}, 110000);

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  for (const d of daemons) {
    if (d.p.exitCode === null) {
      d.p.kill("SIGTERM");
      await Promise.race([new Promise((r) => d.p.once("exit", r)), sleep(10000)]);
      if (d.p.exitCode === null && d.p.signalCode === null) d.p.kill("SIGKILL");
    }
  }
  rmSync(tmp, { recursive: true, force: true });
}

try {
  await main();
} catch (e) {
  failed++;
  log("FAIL " + (e && e.stack || e));
  for (const d of daemons) log(`--- ${d.name} yunmind stderr (tail) ---\n` + d.stderr.slice(-3000));
}
clearTimeout(watchdog);
await cleanup();
log(failed === 0 ? "passed" : failed + " check(s) failed");
process.exit(failed === 0 ? 0 : 1);
