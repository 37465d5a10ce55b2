// keygate's web console. It speaks only the public API (/v1/*, docs/console.md) with the
// browser session: the cookie is HttpOnly, and the CSRF token lives in this script's memory
// only (never in storage, never in a URL). Every text the server sends is set as text, never
// parsed as HTML.
"use strict";

const state = { csrf: null, me: null, scopes: [], providers: [], allKeys: false, operator: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.code = error.code;
    this.details = error.details || {};
  }
}

// One call of the API. Writes carry the session's CSRF token; the cookie goes by itself.
async function api(method, path, body, bearer) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (method !== "GET") {
    if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let parsed = null;
  try {
    parsed = await response.json();
  } catch (_) {
    parsed = null;
  }
  if (!response.ok) {
    const err = new ApiError(response.status, parsed);
    err.retryAfter = response.headers.get("Retry-After");
    throw err;
  }
  return parsed ? parsed.data : null;
}

function say(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
}

function problem(text) {
  const p = $("problem");
  p.textContent = text;
  p.hidden = !text;
}

// What to tell a person about a failed call; a lost session goes back to the sign-in form.
function explain(err) {
  if (!(err instanceof ApiError)) return `Something went wrong: ${err.message}`;
  if (err.status === 401) {
    signedOut("Your session has ended. Sign in again.");
    return null;
  }
  if (err.status === 429) {
    const wait = err.retryAfter ? ` Try again in ${err.retryAfter} seconds.` : "";
    return `Too many attempts.${wait}`;
  }
  if (err.status === 403 && err.details.restriction === "csrf") {
    return "This page could not prove the request is yours. Reload it and try again.";
  }
  return err.message;
}

async function attempt(fn) {
  problem("");
  try {
    return await fn();
  } catch (err) {
    const text = explain(err);
    if (text) problem(text);
    return undefined;
  }
}

function day(iso) {
  return iso ? iso.slice(0, 10) : "";
}

function showView(name) {
  for (const v of ["sign-in", "consent", "keys", "devices", "policy"]) $(`view-${v}`).hidden = v !== name;
  for (const v of ["keys", "devices", "policy"]) {
    const link = $(`nav-${v}`);
    if (v === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function signedOut(message) {
  if (AUTHORIZING && !message) message = "Sign in to answer the application's request.";
  state.csrf = null;
  state.me = null;
  state.operator = null;
  state.allKeys = false;
  // Nothing of the last user stays in the page for the next one.
  $("all-keys").checked = false;
  $("operator-form").hidden = false;
  for (const id of ["policy-status", "policy-files", "check-result", "check-key", "usage-chart"]) {
    $(id).replaceChildren();
  }
  for (const table of ["keys-table", "tokens-table", "usage-table"]) {
    $(table).querySelector("tbody").replaceChildren();
  }
  $("usage-box").hidden = true;
  $("who-name").textContent = "";
  $("nav").hidden = true;
  $("who").hidden = true;
  hideSecret("secret");
  hideSecret("token");
  showView("sign-in");
  problem("");
  say(message || "");
}

// --- signing in and out ---------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const body = {
    email: $("sign-in-email").value,
    password: $("sign-in-password").value,
    type: "session",
    device: "keygate console",
  };
  const workspace = $("sign-in-workspace").value.trim();
  if (workspace) body.workspace = workspace;
  problem("");
  say("");
  try {
    const done = await api("POST", "/v1/auth/login", body);
    state.csrf = done.csrfToken;
    $("sign-in-password").value = "";
    await start();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) problem("Wrong email or password.");
    else problem(explain(err) || "Sign-in failed.");
  }
}

async function signOut() {
  await attempt(() => api("POST", "/v1/auth/logout"));
  signedOut("You are signed out.");
}

// When the page opens: a session cookie from before may still sign this browser in. The
// answer carries the session's CSRF token, which this page keeps in memory only.
async function resume() {
  const session = await api("GET", "/v1/auth/session");
  if (!session.signedIn) {
    signedOut(session.reason ? "Your session has ended. Sign in again." : "");
    return;
  }
  state.csrf = session.csrfToken;
  await start();
}

// After a sign-in, or when the page opens with a session cookie still good.
async function start() {
  const me = await api("GET", "/v1/me");
  if (me.operator) {
    signedOut("The operator token is not for the console: sign in as a user.");
    return;
  }
  state.me = me;
  $("who-name").textContent = `${me.user.email} · ${me.workspace} (${me.role || "no role"})`;
  $("who").hidden = false;
  $("nav").hidden = false;
  $("all-keys-label").hidden = me.role !== "admin";
  [state.scopes, state.providers] = await Promise.all([
    api("GET", "/v1/scopes"),
    api("GET", "/v1/providers"),
  ]);
  fillScopes();
  route();
}

// An application sent its user here (GET /oauth/authorize): the consent page, not the console.
const AUTHORIZING = location.pathname === "/oauth/authorize";

function route() {
  if (!state.me) return;
  if (AUTHORIZING) {
    $("nav").hidden = true;
    attempt(showConsent);
    return;
  }
  const name = (location.hash || "#keys").slice(1);
  if (name === "devices") {
    showView("devices");
    attempt(loadTokens);
  } else if (name === "policy") {
    showView("policy");
    attempt(loadCheckKeys);
    // An operator token that stopped working is forgotten; the user stays signed in.
    if (state.operator) loadPolicy().catch(() => forgetOperator("The operator token no longer works."));
  } else {
    showView("keys");
    attempt(loadKeys);
  }
}

// --- keys -------------------------------------------------------------------------------------

const COARSE = ["read", "write", "admin"];
const ACTION_WORDS = {
  readFile: "read files",
  writeFile: "upload files",
  deleteFile: "delete files",
  moveFile: "move files",
  copyFile: "copy files",
  listFolder: "list folders",
  createFolder: "create folders",
  searchFiles: "search",
  traverse: "open the folders above its base paths",
  createAncestor: "create the folders above its base paths",
  listTrash: "see the trash",
  restoreTrash: "restore from the trash",
  purgeTrash: "empty the trash",
};

// A scope in words: the wider scopes it contains ("everything read allows"), then what it
// adds to them. All of it comes from the running policies' schema (GET /v1/scopes), so a
// deployment's own scopes explain themselves too.
function describe(scope) {
  const byName = new Map(state.scopes.map((s) => [s.name, s]));
  const direct = scope.includes.filter((t) => !scope.includes.some(
    (u) => u !== t && (byName.get(u)?.includes || []).includes(t)));
  const wide = direct.filter((t) => (byName.get(t)?.includes || []).length > 0);
  const covered = new Set(wide.flatMap((t) => byName.get(t)?.actions || []));
  const rest = scope.actions.filter((a) => !covered.has(a));
  const storage = rest.filter((a) => ACTION_WORDS[a]).map((a) => ACTION_WORDS[a]);
  const other = rest.filter((a) => !ACTION_WORDS[a]);
  const parts = [];
  if (wide.length) parts.push(`everything ${wide.join(" and ")} allows`);
  if (storage.length) parts.push(storage.join(", "));
  if (other.length) parts.push(`manage the workspace (${other.join(", ")})`);
  return parts.join("; ") || "no request on its own";
}

function scopeBox(prefix, scope) {
  const id = `${prefix}-scope-${scope.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const box = el("input", { type: "checkbox", id, value: scope.name });
  return el("div", { class: "choice" }, box, " ",
    el("label", { for: id }, el("strong", {}, scope.name), ` — ${describe(scope)}`));
}

function fillScopes() {
  const keyScopes = $("create-scopes");
  const mintScopes = $("mint-scopes");
  for (const n of keyScopes.querySelectorAll(".choice, h4")) n.remove();
  for (const n of mintScopes.querySelectorAll(".choice")) n.remove();
  const coarse = state.scopes.filter((s) => COARSE.includes(s.name))
    .sort((a, b) => COARSE.indexOf(a.name) - COARSE.indexOf(b.name));
  const fine = state.scopes.filter((s) => !COARSE.includes(s.name) && !s.name.includes("."));
  const permissions = state.scopes.filter((s) => s.name.includes("."));
  keyScopes.append(el("h4", {}, "Levels"));
  for (const s of coarse) keyScopes.append(scopeBox("create", s));
  keyScopes.append(el("h4", {}, "One kind of request"));
  for (const s of fine) keyScopes.append(scopeBox("create", s));
  for (const s of permissions) mintScopes.append(scopeBox("mint", s));
}

function checked(container) {
  return [...container.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
}

function grantRow() {
  const n = $("grants").children.length;
  const select = el("select", { id: `grant-provider-${n}`, "aria-label": "Provider" });
  for (const p of state.providers) select.append(el("option", { value: p.name }, p.name));
  const path = el("input", {
    id: `grant-path-${n}`, type: "text", value: "/", "aria-label": "Base path", class: "path",
  });
  const remove = el("button", { type: "button", on: { click: () => row.remove() } }, "Remove");
  const row = el("div", { class: "grant" }, select, " ", path, " ", remove);
  $("grants").append(row);
}

function showSecret(which, title, value) {
  if (which === "secret") $("secret-title").textContent = title;
  $(`${which}-value`).textContent = value;
  $(`${which}-box`).hidden = false;
  $(`${which}-copy`).focus();
}

function hideSecret(which) {
  $(`${which}-value`).textContent = "";
  $(`${which}-box`).hidden = true;
}

async function copySecret(which) {
  const value = $(`${which}-value`).textContent;
  try {
    await navigator.clipboard.writeText(value);
    say("Copied.");
  } catch (_) {
    // No clipboard permission: select the text so the person can copy it themselves.
    const range = document.createRange();
    range.selectNodeContents($(`${which}-value`));
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    say("Press Ctrl+C (⌘C) to copy the selected key.");
  }
}

function status(key) {
  if (key.status === "revoked") return el("span", { class: "badge bad" }, "revoked");
  if (key.status === "expired") return el("span", { class: "badge bad" }, "expired");
  if (key.expiresSoon) return el("span", { class: "badge warn" }, "expires within 7 days");
  return "";
}

function where(key) {
  if (!key.providers) return "every provider";
  return key.providers.map((g) => `${g.provider}:${g.basePath}`).join(", ");
}

async function loadKeys() {
  const query = state.allKeys ? "?all=true" : "";
  const keys = await api("GET", `/v1/keys${query}`);
  const body = $("keys-table").querySelector("tbody");
  body.replaceChildren();
  $("keys-table").classList.toggle("with-owner", state.allKeys);
  for (const key of keys) {
    const actions = el("td", { class: "actions" });
    actions.append(el("button", { type: "button", class: "usage",
      on: { click: () => attempt(() => showUsage(key)) } }, "Usage"));
    if (key.status === "active") {
      actions.append(
        el("button", { type: "button", class: "rotate", on: { click: () => rotate(key) } }, "Rotate"),
        el("button", { type: "button", class: "revoke danger", on: { click: () => revoke(key) } }, "Revoke"));
    }
    body.append(el("tr", { "data-key-id": key.id, "data-key-name": key.name, class: `key ${key.status}` },
      el("td", { class: "name" }, key.name),
      el("td", {}, el("code", {}, `${key.displayPrefix}…`)),
      el("td", { class: "owner-col" }, key.owner),
      el("td", { class: "scopes" }, key.scopes.join(", ")),
      el("td", {}, where(key)),
      el("td", {}, day(key.createdAt)),
      el("td", { class: "last-used" }, key.lastUsedAt ? day(key.lastUsedAt) : "never"),
      el("td", { class: "expires" }, key.expiresAt ? day(key.expiresAt) : "never", " ", status(key)),
      actions));
  }
  $("keys-empty").hidden = keys.length > 0;
}

async function createKey(event) {
  event.preventDefault();
  const body = { name: $("create-name").value.trim(), scopes: checked($("create-scopes")) };
  if (!body.scopes.length) {
    problem("Choose at least one scope.");
    return;
  }
  if ($("where-some").checked) {
    body.providers = [...$("grants").querySelectorAll(".grant")].map((row) => ({
      provider: row.querySelector("select").value,
      basePath: row.querySelector("input").value.trim() || "/",
    }));
    if (!body.providers.length) {
      problem("Add at least one provider, or allow every provider.");
      return;
    }
  }
  const expiry = $("create-expiry").value;
  if (expiry === "date") {
    if (!$("create-date").value) {
      problem("Choose the expiry date.");
      return;
    }
    body.expiresAt = $("create-date").value;
  } else {
    body.expiresIn = expiry;
  }
  const created = await attempt(() => api("POST", "/v1/keys", body));
  if (!created) return;
  $("create-form").reset();
  $("grants").replaceChildren();
  toggleWhere();
  toggleDate();
  showSecret("secret", `Your new key “${created.name}”`, created.key);
  await attempt(loadKeys);
}

async function revoke(key) {
  if (!confirm(`Revoke the key “${key.name}”? Requests with it are refused at once, for good.`)) return;
  const done = await attempt(() => api("DELETE", `/v1/keys/${encodeURIComponent(key.id)}`));
  if (done === undefined) return;
  say(`The key “${key.name}” is revoked.`);
  await attempt(loadKeys);
}

async function rotate(key) {
  if (!confirm(`Rotate the key “${key.name}”? The current key stops working at once.`)) return;
  const rotated = await attempt(() => api("POST", `/v1/keys/${encodeURIComponent(key.id)}/rotate`));
  if (!rotated) return;
  showSecret("secret", `The new key for “${rotated.name}”`, rotated.key);
  await attempt(loadKeys);
}

// --- usage ------------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Requests and denied requests per day, as bars drawn here: no chart library, no network.
function chart(days) {
  const width = 640;
  const height = 200;
  const pad = 30;
  const max = Math.max(1, ...days.map((d) => d.requests));
  const slot = (width - pad) / Math.max(days.length, 1);
  const bar = Math.max(2, Math.min(40, slot * 0.7));
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height + 20}`, role: "img", class: "chart",
    "aria-label": `Requests per day, at most ${max}`,
  });
  root.append(svg("line", { x1: pad, y1: height, x2: width, y2: height, class: "axis" }));
  root.append(svg("text", { x: 0, y: 12, class: "label" }, String(max)));
  days.forEach((d, i) => {
    const x = pad + i * slot + (slot - bar) / 2;
    const h = (d.requests / max) * (height - 20);
    const denied = (d.denied / max) * (height - 20);
    const g = svg("g", { "data-day": d.day, "data-requests": d.requests, "data-denied": d.denied });
    g.append(svg("title", {}, `${d.day}: ${d.requests} requests, ${d.denied} denied`));
    g.append(svg("rect", { x, y: height - h, width: bar, height: h, class: "requests" }));
    g.append(svg("rect", { x, y: height - denied, width: bar, height: denied, class: "denied" }));
    g.append(svg("text", { x, y: height + 15, class: "label" }, d.day.slice(5)));
    root.append(g);
  });
  return root;
}

async function showUsage(key) {
  const usage = await api("GET", `/v1/keys/${encodeURIComponent(key.id)}/usage`);
  $("usage-title").textContent = `Usage of “${key.name}” (${usage.totals.requests} requests, ${usage.totals.denied} denied)`;
  $("usage-chart").replaceChildren(chart(usage.days));
  const body = $("usage-table").querySelector("tbody");
  body.replaceChildren();
  for (const d of usage.days) {
    body.append(el("tr", { "data-day": d.day }, el("td", {}, d.day), el("td", { class: "requests" }, String(d.requests)),
      el("td", { class: "denied" }, String(d.denied)), el("td", {}, String(d.bytesIn)), el("td", {}, String(d.bytesOut))));
  }
  $("usage-box").hidden = false;
  $("usage-title").scrollIntoView();
}

// --- devices and tokens -----------------------------------------------------------------------

async function loadTokens() {
  const tokens = await api("GET", "/v1/auth/tokens");
  const body = $("tokens-table").querySelector("tbody");
  body.replaceChildren();
  for (const t of tokens) {
    const actions = el("td", { class: "actions" });
    if (t.current) actions.append(el("span", { class: "badge" }, "this browser"));
    else actions.append(el("button", { type: "button", class: "revoke danger",
      on: { click: () => revokeToken(t) } }, "Revoke"));
    body.append(el("tr", { "data-token-id": t.id, class: t.current ? "current" : "" },
      el("td", {}, t.type === "refresh" && t.scopes ? "application" : t.type),
      el("td", {}, t.label || ""), el("td", {}, day(t.createdAt)),
      el("td", {}, day(t.expiresAt)), actions));
  }
  $("revoke-others").hidden = tokens.filter((t) => !t.current).length === 0;
}

async function revokeToken(t) {
  if (!confirm(`Revoke “${t.label || t.type}”? It is signed out at once.`)) return;
  const done = await attempt(() => api("DELETE", `/v1/auth/tokens/${encodeURIComponent(t.id)}`));
  if (done === undefined) return;
  await attempt(loadTokens);
}

async function revokeOthers() {
  if (!confirm("Sign out every other device and revoke every other token?")) return;
  const tokens = await attempt(() => api("GET", "/v1/auth/tokens"));
  if (!tokens) return;
  for (const t of tokens.filter((t) => !t.current)) {
    const done = await attempt(() => api("DELETE", `/v1/auth/tokens/${encodeURIComponent(t.id)}`));
    if (done === undefined) return;
  }
  say("Every other device is signed out.");
  await attempt(loadTokens);
}

async function mint(event) {
  event.preventDefault();
  const body = {
    name: $("mint-name").value.trim(),
    permissions: checked($("mint-scopes")),
    expiresIn: $("mint-expiry").value,
  };
  if (!body.permissions.length) {
    problem("Choose at least one permission.");
    return;
  }
  const lines = $("mint-base").value.split("\n").map((l) => l.trim()).filter(Boolean);
  if (lines.length) {
    body.providers = [];
    for (const line of lines) {
      const at = line.indexOf(":");
      if (at < 1) {
        problem(`“${line}” is not provider:/folder.`);
        return;
      }
      body.providers.push({ provider: line.slice(0, at), basePath: line.slice(at + 1) || "/" });
    }
  }
  const minted = await attempt(() => api("POST", "/v1/auth/tokens", body));
  if (!minted) return;
  $("mint-form").reset();
  showSecret("token", "", minted.token);
  await attempt(loadTokens);
}

// --- granting an application access (OAuth 2.0) ------------------------------------------------

// The request's parameters, as the application sent them.
function authorizationRequest() {
  return Object.fromEntries(new URLSearchParams(location.search));
}

// Back to the application: with a code, or with why not. Never anywhere the server did not
// name: the address is one the application registered.
function leaveFor(redirectTo) {
  location.assign(redirectTo);
}

async function showConsent() {
  let consent;
  try {
    consent = await api("GET", `/v1/oauth/authorize${location.search}`);
  } catch (err) {
    if (err instanceof ApiError && err.details.redirectTo) {
      leaveFor(err.details.redirectTo);
      return;
    }
    throw err;
  }
  showView("consent");
  $("consent-client").textContent = consent.client.name;
  $("consent-client-again").textContent = consent.client.name;
  $("consent-user").textContent = consent.user;
  $("consent-workspace").textContent = consent.workspace;
  const byName = new Map(state.scopes.map((s) => [s.name, s]));
  $("consent-permissions").replaceChildren(...consent.permissions.map((p) => {
    const scope = byName.get(p);
    return el("li", { "data-permission": p }, el("strong", {}, p), scope ? ` — ${describe(scope)}` : "");
  }));
  $("consent-where").textContent = consent.providers
    ? `Only in: ${consent.providers.map((g) => `${g.provider}:${g.basePath}`).join(", ")}.`
    : "In every provider of the workspace.";
  const days = Math.round(consent.refreshTokenTtl / 86400);
  $("consent-terms").textContent = `It gets tokens of ${Math.round(consent.accessTokenTtl / 60)} minutes `
    + `that it may renew for ${days} days, never beyond your own role. Revoke them at any time under `
    + "Devices and tokens.";
  $("consent-return").textContent = new URL(authorizationRequest().redirect_uri).host;
  // Nothing is pre-selected, and Allow waits a moment: a key pressed or a click meant for
  // another window as the page appears answers nothing.
  const allow = $("consent-approve");
  allow.disabled = true;
  setTimeout(() => { allow.disabled = false; }, 1000);
}

async function answerConsent(approve) {
  const done = await attempt(() => api("POST", "/v1/oauth/authorize", { request: authorizationRequest(), approve }));
  if (done) leaveFor(done.redirectTo);
}

// --- policies ---------------------------------------------------------------------------------

async function loadCheckKeys() {
  const keys = await api("GET", state.me.role === "admin" ? "/v1/keys?all=true" : "/v1/keys");
  const select = $("check-key");
  const chosen = select.value;
  select.replaceChildren(...keys.filter((k) => k.status === "active").map((k) =>
    el("option", { value: k.id }, `${k.name} (${k.displayPrefix}…, ${k.owner})`)));
  if (chosen) select.value = chosen;
}

// POST /v1/admin/policy/check: the decision, and for each resource the policies that made it.
async function checkAccess(event) {
  event.preventDefault();
  const body = { key: $("check-key").value, method: $("check-method").value, path: $("check-path").value.trim() };
  const answer = await attempt(() => api("POST", "/v1/admin/policy/check", body, state.operator || undefined));
  const out = $("check-result");
  out.replaceChildren();
  if (!answer) return;
  out.append(el("p", { class: `decision ${answer.decision}` },
    el("strong", {}, answer.decision === "allow" ? "Allowed" : "Denied"), ` — ${answer.action}`));
  const list = el("ul", {});
  for (const r of answer.resources) {
    const why = r.policies.map((p) => `${p.id}${p.intent ? ` (${p.intent})` : ""}`).join("; ");
    list.append(el("li", { "data-resource": r.resource },
      `${r.resource}: ${r.allowed ? "allowed" : "denied"}${why ? ` by ${why}` : ""}`));
  }
  out.append(list);
}

async function operatorSignIn(event) {
  event.preventDefault();
  state.operator = $("operator-token").value.trim();
  $("operator-token").value = "";
  problem("");
  try {
    await loadPolicy();
  } catch (err) {
    forgetOperator(err instanceof ApiError && err.status === 401
      ? "That is not the operator token." : `The policy status could not be read: ${err.message}`);
  }
}

function forgetOperator(message) {
  state.operator = null;
  $("operator-form").hidden = false;
  $("policy-status").replaceChildren();
  $("policy-files").replaceChildren();
  problem(message);
}

async function loadPolicy() {
  const s = await api("GET", "/v1/admin/policy", undefined, state.operator);
  $("operator-form").hidden = true;
  const dl = $("policy-status");
  dl.replaceChildren();
  const row = (term, value) => dl.append(el("dt", {}, term), el("dd", {}, value));
  row("Epoch", String(s.epoch));
  row("Hash", s.hash);
  row("Loaded", s.loadedAt);
  row("From", s.version ? `published version ${s.version}` : s.dir);
  row("Last reload error", s.lastError || "none");
  row("Policies", String(s.policies.length));
  $("policy-files").replaceChildren(...s.files.map((f) => el("li", {}, f)));
}

// --- wiring -----------------------------------------------------------------------------------

function toggleWhere() {
  const some = $("where-some").checked;
  $("grants").hidden = !some;
  $("grant-add").hidden = !some;
  if (some && !$("grants").children.length) grantRow();
}

function toggleDate() {
  const date = $("create-expiry").value === "date";
  $("create-date").hidden = !date;
  $("create-date-label").hidden = !date;
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("create-form").addEventListener("submit", createKey);
  $("mint-form").addEventListener("submit", mint);
  $("operator-form").addEventListener("submit", operatorSignIn);
  $("check-form").addEventListener("submit", checkAccess);
  $("consent-approve").addEventListener("click", () => answerConsent(true));
  $("consent-deny").addEventListener("click", () => answerConsent(false));
  $("where-all").addEventListener("change", toggleWhere);
  $("where-some").addEventListener("change", toggleWhere);
  $("grant-add").addEventListener("click", grantRow);
  $("create-expiry").addEventListener("change", toggleDate);
  $("secret-copy").addEventListener("click", () => copySecret("secret"));
  $("secret-done").addEventListener("click", () => hideSecret("secret"));
  $("token-copy").addEventListener("click", () => copySecret("token"));
  $("token-done").addEventListener("click", () => hideSecret("token"));
  $("usage-close").addEventListener("click", () => { $("usage-box").hidden = true; });
  $("revoke-others").addEventListener("click", revokeOthers);
  $("all-keys").addEventListener("change", (e) => {
    state.allKeys = e.target.checked;
    attempt(loadKeys);
  });
  window.addEventListener("hashchange", route);
  resume().catch((err) => signedOut(explain(err) || ""));
});
