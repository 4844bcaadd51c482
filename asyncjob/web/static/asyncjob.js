/*
 * asyncjob's live progress, for any page: no build step, no dependency.
 *
 *   <script src="/jobs/static/asyncjob.js" defer></script>
 *   <asyncjob-progress job="JOB_ID" src="/jobs"></asyncjob-progress>
 *
 * `src` is where the dashboard (asyncjob.web.dashboard) is mounted; the
 * element follows the job's live stream (Server-Sent Events), shows a
 * progress bar, the state, the data the job reported, then the result or
 * the error; it polls the JSON endpoint where a stream cannot be had.
 * Attributes: `max` (what a full bar is, default 100), `poll` (always poll;
 * its value in seconds, default 1). Events, bubbling, with the status as
 * `detail`: `asyncjob-change` on each change, `asyncjob-end` at the end.
 *
 * The same file runs the dashboard's page when it finds its root element.
 */
(() => {
  "use strict";

  const FINAL = new Set(["succeeded", "failed", "cancelled"]);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function text(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  /** Follow one job: SSE first, polling when SSE fails before it ever worked. */
  function follow(base, jobId, onStatus, options = {}) {
    const url = `${base}/api/jobs/${encodeURIComponent(jobId)}`;
    let stopped = false;
    let source = null;
    let timer = null;
    const period = (options.poll || 1) * 1000;
    const stop = () => {
      stopped = true;
      if (source) source.close();
      if (timer) clearTimeout(timer);
    };
    const seen = (status) => {
      onStatus(status);
      if (FINAL.has(status.state)) stop();
    };
    const poll = async () => {
      if (stopped) return;
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" } });
        if (response.status === 404) {
          onStatus(null);
          return stop();
        }
        if (response.ok) seen(await response.json());
      } catch (error) {
        /* the server is away: try again */
      }
      if (!stopped) timer = setTimeout(poll, period);
    };
    if (options.poll || !window.EventSource) {
      poll();
      return stop;
    }
    let worked = false;
    source = new EventSource(`${url}/events`);
    source.onmessage = (event) => {
      worked = true;
      seen(JSON.parse(event.data));
    };
    source.onerror = () => {
      // The browser reconnects by itself, with Last-Event-ID, once the
      // stream has worked; a stream that never opened (a proxy that buffers
      // or refuses it, an unknown job) falls back to polling.
      if (!worked && !stopped) {
        source.close();
        source = null;
        poll();
      }
    };
    return stop;
  }

  class AsyncjobProgress extends HTMLElement {
    static get observedAttributes() {
      return ["job", "src"];
    }

    connectedCallback() {
      this.connected = true;
      this.start();
    }

    disconnectedCallback() {
      this.connected = false;
      if (this.stop) this.stop();
      this.stop = null;
    }

    attributeChangedCallback(name, before, after) {
      // Upgraded with its attributes set, the element hears of each before
      // it is connected: it starts once, when connected.
      if (this.connected && before !== after) this.start();
    }

    start() {
      if (this.stop) this.stop();
      const jobId = this.getAttribute("job");
      if (!jobId) return;
      const base = (this.getAttribute("src") || "").replace(/\/$/, "");
      this.bar = el("progress", { max: this.getAttribute("max") || "100" });
      this.label = el("span", { class: "asyncjob-label" }, "…");
      this.replaceChildren(this.bar, " ", this.label);
      this.setAttribute("role", "status");
      const poll = this.hasAttribute("poll") ? Number(this.getAttribute("poll")) || 1 : 0;
      this.stop = follow(base, jobId, (status) => this.show(status), { poll });
    }

    show(status) {
      if (status === null) {
        this.setAttribute("state", "unknown");
        this.label.textContent = "no such job";
        return;
      }
      this.status = status;
      this.setAttribute("state", status.state);
      const max = Number(this.bar.max);
      if (status.state === "succeeded") this.bar.value = max;
      else if (status.progress !== null) this.bar.value = Math.min(status.progress, max);
      else if (FINAL.has(status.state)) this.bar.value = 0;
      else if (status.state !== "running") this.bar.removeAttribute("value");
      let label = status.state;
      if (status.progress !== null && !FINAL.has(status.state)) {
        label += ` ${Math.round((status.progress * 100) / max)}%`;
      }
      if (status.data !== null && status.data !== undefined) label += ` · ${text(status.data)}`;
      if (status.state === "failed" && status.error) label += ` · ${status.error}`;
      if (status.state === "succeeded" && status.result !== null) {
        label += ` · ${text(status.result)}`;
      }
      this.label.textContent = label;
      const detail = { detail: status, bubbles: true };
      this.dispatchEvent(new CustomEvent("asyncjob-change", detail));
      if (FINAL.has(status.state)) this.dispatchEvent(new CustomEvent("asyncjob-end", detail));
    }
  }

  if (!customElements.get("asyncjob-progress")) {
    customElements.define("asyncjob-progress", AsyncjobProgress);
  }
  window.asyncjob = Object.assign(window.asyncjob || {}, { follow });

  // -- the dashboard's page ------------------------------------------------------

  const root = document.getElementById("asyncjob-dashboard");
  if (!root) return;
  const base = root.dataset.base;
  const actions = root.dataset.actions === "true";
  const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
  const form = document.getElementById("filters");
  const table = document.getElementById("jobs");
  const more = document.getElementById("more");
  const detail = document.getElementById("job");
  let cursor = null;  // where the next page starts: {next, next_at} of the last one read
  let rowsStream = null;

  /** Ask for the page after `page`'s: after its last job (`next`), found
   * by its time (`next_at`) even if that job was deleted meanwhile. */
  function askAfter(params, page) {
    params.set("before", page.next);
    if (page.next_at) params.set("before_at", page.next_at);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function query() {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (!value) continue;
      // The browser's local time, as the server takes it: ISO 8601, in UTC.
      const time = key === "since" || key === "until";
      params.append(key, time ? new Date(value).toISOString() : value);
    }
    return params;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function row(status) {
    const bar = el("progress", { max: "100" });
    const tr = el(
      "tr",
      { "data-id": status.id },
      el("td", { class: "pick" }, actions
        ? el("input", { type: "checkbox", "aria-label": `select ${status.id}`, onchange: picked })
        : null),
      el("td", {}, el("a", { href: `#${status.id}` }, status.id)),
      el("td", {}, status.name),
      el("td", {}, status.queue),
      el("td", { class: "state" }),
      el("td", {}, bar),
      el("td", {}, when(status.enqueued_at)),
    );
    update(tr, status);
    return tr;
  }

  function update(tr, status) {
    tr.dataset.state = status.state;
    tr.querySelector(".state").textContent = status.state;
    const bar = tr.querySelector("progress");
    if (status.state === "succeeded") bar.value = 100;
    else if (status.progress !== null) bar.value = Math.min(status.progress, 100);
    else if (FINAL.has(status.state)) bar.value = 0;
  }

  /** One stream for the page's live rows: a browser keeps six connections
   * per host at most, and a page of fifty bars must not take them all. */
  function followRows() {
    if (rowsStream) rowsStream.close();
    rowsStream = null;
    const live = [...table.querySelectorAll("tr")].filter((tr) => !FINAL.has(tr.dataset.state));
    if (live.length === 0 || !window.EventSource) return;
    // One stream follows 100 jobs at most: the newest live rows.
    const followed = live.slice(0, 100);
    const params = new URLSearchParams(followed.map((tr) => ["id", tr.dataset.id]));
    const stream = new EventSource(`${base}/api/events?${params}`);
    const left = new Set(followed.map((tr) => tr.dataset.id));
    stream.onmessage = (event) => {
      const status = JSON.parse(event.data);
      const tr = table.querySelector(`tr[data-id="${CSS.escape(status.id)}"]`);
      if (tr) update(tr, status);
      if (FINAL.has(status.state)) left.delete(status.id);
      if (left.size === 0) stream.close();
    };
    rowsStream = stream;
  }

  let listing = 0;

  async function load(append, looked = 0) {
    const mine = ++listing;  // an older answer arriving last must not win
    const params = query();
    if (append && cursor) askAfter(params, cursor);
    const status = document.getElementById("list-error");
    try {
      const page = await getJSON(`${base}/api/jobs?${params}`);
      if (mine !== listing) return;
      status.textContent = "";
      if (!append) table.replaceChildren();
      for (const job of page.jobs) table.append(row(job));
      cursor = page.next ? { next: page.next, next_at: page.next_at } : null;
      more.hidden = !cursor;
      // A short page with more to look at: the store looks at so many jobs
      // a page (rare filters). Look on a few times, then leave it to "More".
      if (cursor && page.jobs.length < 50 && looked < 4) {
        load(true, looked + 1);
        return;
      }
      followRows();
    } catch (error) {
      status.textContent = error.message;
    }
  }

  let adding = false;
  let addAgain = false;
  /** How many pages addNewer reads at most before it reads the list again. */
  const NEWER_PAGES = 10;

  /** Jobs performed since the list was read, put on top: read when the
   * overview's stream says jobs changed (at most once a second). More than
   * a page may have come meanwhile: the newest page, then older ones (as
   * "More" reads them), until a job the list shows (its top row; one below
   * it when the top row's job no longer passes the filters). Past
   * NEWER_PAGES pages, or at the end of the jobs without meeting one, the
   * list is read again from the top, as at first: nothing goes missing. */
  async function addNewer() {
    if (adding) {
      addAgain = true;  // what changed meanwhile may come after the pages read
      return;
    }
    if (!table.querySelector("tr")) {
      if (!cursor) load(false);  // the list was empty: read it
      return;
    }
    adding = true;
    const mine = listing;
    const filters = query();
    try {
      const newer = [];
      for (let read = 1, before = null; ; read++) {
        const params = new URLSearchParams(filters);
        if (before) askAfter(params, before);
        const page = await getJSON(`${base}/api/jobs?${params}`);
        if (mine !== listing) {
          addAgain = true;  // the list was read again meanwhile ("More" too): read anew
          return;
        }
        const known = new Set([...table.querySelectorAll("tr")].map((tr) => tr.dataset.id));
        const met = page.jobs.findIndex((job) => known.has(job.id));
        newer.push(...(met < 0 ? page.jobs : page.jobs.slice(0, met)));
        if (met >= 0) break;
        if (!page.next || read === NEWER_PAGES) {
          addAgain = false;  // the list read again takes in whatever changed before
          load(false);
          return;
        }
        before = page;
      }
      const first = table.querySelector("tr");
      if (newer.length && first) {
        first.before(...newer.map(row));
        followRows();
      }
    } catch (error) {
      // The next reading tries again; the list as it is stays.
    } finally {
      adding = false;
      if (addAgain) {
        addAgain = false;
        addNewer();
      }
    }
  }

  async function show(jobId) {
    if (!jobId) {
      detail.hidden = true;
      return;
    }
    detail.hidden = false;
    document.getElementById("action-result").textContent = "";
    const body = document.getElementById("job-body");
    body.replaceChildren(el("p", {}, "…"));
    let status;
    try {
      status = await getJSON(`${base}/api/jobs/${encodeURIComponent(jobId)}`);
      if (location.hash.slice(1) !== jobId) return;  // another job was opened meanwhile
    } catch (error) {
      body.replaceChildren(el("p", { class: "error" }, error.message));
      return;
    }
    const fields = el("dl", { id: "job-fields" });
    const render = (s) => {
      fields.replaceChildren();
      const add = (name, value) => {
        if (value === null || value === undefined || value === "") return;
        fields.append(el("dt", {}, name), el("dd", { "data-field": name }, value));
      };
      add("id", s.id);
      add("name", s.name);
      add("state", s.state + (s.cancel_requested ? " (cancel requested)" : ""));
      add("queue", s.queue);
      add("priority", String(s.priority));
      add("attempts", String(s.attempts));
      add("unique", s.unique);
      add("arguments", [...s.args.map((v) => JSON.stringify(v)),
        ...Object.entries(s.kwargs).map(([k, v]) => `${k}=${JSON.stringify(v)}`)].join(", "));
      add("performed", when(s.enqueued_at));
      add("due", when(s.run_after));
      add("started", when(s.started_at));
      add("finished", when(s.finished_at));
      add("result", s.state === "succeeded" ? text(s.result) : null);
      add("error", s.error);
      if (s.traceback) {
        fields.append(el("dt", {}, "traceback"),
          el("dd", { "data-field": "traceback" }, el("pre", {}, s.traceback)));
      }
      s.errors.forEach((error, n) => add(`attempt ${n + 1}`, error));
      const shown = {
        cancel: !FINAL.has(s.state),
        retry: s.state === "failed" || s.state === "cancelled",
        delete: FINAL.has(s.state),
      };
      for (const [action, visible] of Object.entries(shown)) {
        const button = document.getElementById(action);
        if (button) button.hidden = !visible;
      }
    };
    const bar = el("asyncjob-progress", { job: jobId, src: base, id: "job-progress" });
    bar.addEventListener("asyncjob-change", (event) => render(event.detail));
    const button = (action, label) =>
      el("button", { id: action, type: "button", onclick: () => act(jobId, action) }, label);
    const buttons = actions
      ? el("p", {}, button("cancel", "Cancel"), " ", button("retry", "Retry"), " ",
        button("delete", "Delete"))
      : null;
    body.replaceChildren(...[el("h2", {}, status.name), bar, buttons, fields].filter(Boolean));
    render(status);
  }

  async function post(url, action, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-Asyncjob-Action": action, Accept: "application/json",
        "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return [response.ok, await response.json()];
  }

  async function act(jobId, action) {
    const [ok, body] = await post(`${base}/api/jobs/${encodeURIComponent(jobId)}/${action}`, action);
    const said = document.getElementById("action-result");
    if (!ok) said.textContent = body.error;
    else if (!body.done) said.textContent = `${action}: not done, ${body.why}`;
    else said.textContent = body.status ? `${action}: ${body.status.state}` : `${action}: done`;
    if (ok && body.done && action === "retry") show(jobId);  // a new attempt: follow it
    if (ok && body.done && action === "delete") location.hash = "";
  }

  function pickedRows() {
    return [...table.querySelectorAll("td.pick input:checked")].map((box) => box.closest("tr"));
  }

  function picked() {
    const rows = pickedRows();
    document.getElementById("picked").textContent = String(rows.length);
    document.getElementById("bulk").hidden = rows.length === 0;
  }

  async function actOnPicked(action) {
    const all = pickedRows().map((tr) => tr.dataset.id);
    const ids = all.slice(0, 100);  // the server takes 100 at a time
    const [ok, body] = await post(`${base}/api/actions`, action, { action, ids });
    const done = ok ? body.results.filter((r) => r.done).length : 0;
    document.getElementById("bulk-result").textContent = ok
      ? `${action}: ${done} of ${ids.length} done` +
        (all.length > ids.length ? ` (only 100 at a time: ${all.length - ids.length} not acted on)` : "")
      : body.error;
    load(false);
  }

  function ago(iso) {
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  async function loadOverview() {
    try {
      showOverview(await getJSON(`${base}/api/overview`));
    } catch (error) {
      /* shown as it was */
    }
  }

  function showOverview(overview) {
    const queues = [...new Set([...Object.keys(overview.waiting),
      ...Object.keys(overview.scheduled), ...Object.keys(overview.running)])].sort();
    const plus = overview.capped ? "+" : "";
    document.querySelector("#counts tbody").replaceChildren(...queues.map((queue) => el("tr",
      { "data-queue": queue }, el("td", {}, queue),
      el("td", {}, `${overview.waiting[queue] || 0}${plus}`),
      el("td", {}, `${overview.scheduled[queue] || 0}${plus}`),
      el("td", {}, `${overview.running[queue] || 0}`))));
    document.getElementById("oldest").textContent = overview.oldest_due
      ? `oldest waiting job: due ${ago(overview.oldest_due)} ago`
      : "no job waiting for a worker";
    const chart = document.getElementById("chart");
    const most = Math.max(1, ...overview.ended.map((m) => m.succeeded + m.failed + m.cancelled));
    const width = 360 / overview.ended.length;
    const bars = [];
    let total = 0;
    overview.ended.forEach((minute, n) => {
      let y = 80;
      for (const state of ["succeeded", "failed", "cancelled"]) {
        const height = (minute[state] * 76) / most;
        total += minute[state];
        if (height === 0) continue;
        y -= height;
        const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
        for (const [key, value] of Object.entries({ x: n * width, y, width: width - 1, height })) {
          bar.setAttribute(key, String(value));
        }
        bar.setAttribute("class", state);
        const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
        title.textContent = `${when(minute.minute)}: ${minute[state]} ${state}`;
        bar.append(title);
        bars.push(bar);
      }
    });
    chart.replaceChildren(...bars);
    document.getElementById("ended-total").textContent = String(total);
  }

  async function loadWorkers() {
    try {
      showWorkers(await getJSON(`${base}/api/workers`));
    } catch (error) {
      /* shown as absent */
    }
  }

  function showWorkers(workers) {
    document.getElementById("workers").replaceChildren(...workers.map((w) => el("tr",
      { "data-alive": String(w.alive) },
      el("td", {}, w.id), el("td", {}, w.host), el("td", {}, String(w.pid)),
      el("td", {}, w.queues === null ? "every queue" : w.queues.join(", ")),
      el("td", {}, `${w.running} of ${w.concurrency}`),
      el("td", {}, w.alive ? `${ago(w.last_seen)} ago` : `LOST, ${ago(w.last_seen)} ago`))));
    document.getElementById("workers-section").hidden = workers.length === 0;
  }

  async function loadSchedules() {
    const list = document.getElementById("schedules");
    try {
      const schedules = await getJSON(`${base}/api/schedules`);
      const outcome = (s) => s.last_job === null ? ""
        : el("a", { href: `#${s.last_job.id}` }, s.last_job.state);
      list.replaceChildren(...schedules.map((s) => el("tr", {},
        el("td", {}, s.name), el("td", {}, el("code", {}, s.cron)),
        el("td", {}, when(s.last_tick)), el("td", { class: "outcome" }, outcome(s)),
        el("td", {}, when(s.next_tick)))));
      document.getElementById("schedules-section").hidden = schedules.length === 0;
    } catch (error) {
      /* shown as absent */
    }
  }

  const stateSelect = form.elements.state;
  for (const state of STATES) stateSelect.append(el("option", { value: state }, state));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    cursor = null;
    load(false);
  });
  more.addEventListener("click", () => load(true));
  for (const button of document.querySelectorAll("[data-bulk]")) {
    button.addEventListener("click", () => actOnPicked(button.dataset.bulk));
  }
  const pickAll = document.getElementById("pick-all");
  pickAll.hidden = !actions;
  pickAll.addEventListener("change", () => {
    for (const box of table.querySelectorAll("td.pick input")) box.checked = pickAll.checked;
    picked();
  });
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  document.getElementById("refresh").addEventListener("click", () => {
    cursor = null;
    load(false);
    loadSchedules();
    loadOverview();
    loadWorkers();
  });
  load(false);
  loadSchedules();
  // The counts and the workers come on a stream of their own, read again
  // by the server when jobs change; where streams cannot be had, every 5 s.
  if (window.EventSource) {
    const overviews = new EventSource(`${base}/api/overview/events`);
    overviews.onmessage = (event) => {
      const reading = JSON.parse(event.data);
      showOverview(reading.overview);
      showWorkers(reading.workers);
      addNewer();
    };
  } else {
    loadOverview();
    loadWorkers();
    setInterval(() => {
      if (!document.hidden) {
        loadOverview();
        loadWorkers();
      }
    }, 5000);
  }
  show(location.hash.slice(1));
})();
