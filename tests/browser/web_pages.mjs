// Drives Kerrera's dashboard in headless Chromium, as an operator would.
// Usage: node web_pages.mjs <dashboard url> <mode> <screenshot dir>
//   mode "full":     live insert (asks the test to insert a job, then waits for the row
//                    without a reload), markup in args stays inert, search, bulk retry
//                    through its dry run, a cross-site form post, light/dark screenshots.
//   mode "readonly": no action is offered; a same-origin POST with the page's token
//                    gets 403.
// Talks to the test on stdout (one JSON object per line) and reads its answers on stdin.
// The last line is the result: {"checks": {...}, "problems": [...]}.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, mode, shots] = process.argv.slice(2);
if (!url || !mode || !shots) {
  console.error("usage: node web_pages.mjs <url> <full|readonly> <screenshot dir>");
  process.exit(2);
}
const reader = createInterface({ input: process.stdin });
const lines = reader[Symbol.asyncIterator]();
async function ask(need) {
  console.log(JSON.stringify({ need }));
  const answer = await lines.next();
  return answer.value;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const checks = {};
const problems = [];
function watch(page) {
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().includes("403")) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on("dialog", async (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
}
const rowIds = (page) => page.$$eval("table.jobs tbody tr[data-id]", (rows) => rows.map((r) => Number(r.dataset.id)));

try {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    httpCredentials: process.env.WEB_USER
      ? { username: process.env.WEB_USER, password: process.env.WEB_PASSWORD } : undefined,
  });
  const page = await context.newPage();
  watch(page);
  const streams = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname.endsWith("/events")) streams.push(request.url());
  });

  if (mode === "readonly") {
    await page.goto(`${url}/jobs?state=available`);
    checks.rows = (await rowIds(page)).length;
    checks.actionButtons = await page.locator("button.act, input[name=ids]").count();
    checks.postForms = await page.locator('form[method="post"]').count();
    await page.goto(`${url}/jobs/1`);
    checks.jobActionButtons = await page.locator("button.act").count();
    checks.postStatus = await page.evaluate(async (base) => {
      const body = new URLSearchParams({ csrf_token: document.body.dataset.csrf, action: "delete" });
      const response = await fetch(`${base}/jobs/1/actions`, { method: "POST", body });
      return response.status;
    }, new URL(url).pathname.replace(/\/$/, ""));
    checks.userLabel = (await page.locator(".user").textContent()).trim();
  } else {
    // ---- the jobs page, and markup in args ------------------------------------------
    await page.goto(`${url}/jobs?state=available`);
    await page.locator("#live-status[data-kind=live]").waitFor({ timeout: 15_000 });
    checks.status = (await page.locator("#live-status").textContent()).trim();
    checks.xssText = await page.locator("td.args code").filter({ hasText: "<script>" }).count();
    checks.xssRan = await page.evaluate(() => window.kerreraXss === 1);
    await page.screenshot({ path: `${shots}/jobs-light.png` });

    // ---- live: a job inserted elsewhere appears without a reload ---------------------
    await page.evaluate(() => { window.sameDocument = true; });
    const before = await rowIds(page);
    const inserted = Number(await ask("insert"));
    await page.locator(`tr[data-id="${inserted}"]`).waitFor({ timeout: 20_000 });
    checks.liveRow = (await rowIds(page))[0] === inserted && !before.includes(inserted);
    checks.noReload = await page.evaluate(() => window.sameDocument === true);

    // ---- a hidden tab closes its stream; shown again, it reopens and refreshes ----------
    const opened = streams.length;
    await page.evaluate(() => {
      Object.defineProperty(document, "hidden", { value: true, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    });
    checks.hiddenStatus = (await page.locator("#live-status").textContent()).trim();
    await page.evaluate(() => {
      Object.defineProperty(document, "hidden", { value: false, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    });
    await page.locator("#live-status[data-kind=live]").waitFor({ timeout: 15_000 });
    checks.reopened = streams.length - opened;

    // ---- search ----------------------------------------------------------------------
    await page.fill("#q", "queues:mail");
    await Promise.all([page.waitForURL(/q=queues/), page.press("#q", "Enter")]);
    checks.searchUrl = new URL(page.url()).search;
    checks.searchQueues = await page.$$eval("table.jobs tbody tr[data-id] td:nth-child(4)",
      (cells) => [...new Set(cells.map((c) => c.textContent.trim()))]);
    checks.searchRows = (await rowIds(page)).length;

    // ---- job detail ------------------------------------------------------------------
    await page.click("table.jobs tbody tr[data-id] td.id a");
    await page.locator(".job-head").waitFor();
    checks.detailTitle = (await page.locator(".job-head h1").textContent()).replace(/\s+/g, " ").trim();
    await page.screenshot({ path: `${shots}/job-light.png`, fullPage: true });

    // ---- failures grouped by worker and exception -------------------------------------
    await page.goto(`${url}/errors`);
    checks.errorGroups = await page.$$eval("table.errors tbody tr", (rows) =>
      rows.filter((r) => !r.querySelector(".empty")).map((r) => r.querySelector("code").textContent));
    await page.screenshot({ path: `${shots}/errors-light.png` });

    // ---- bulk retry of the discarded jobs, through the dry run ------------------------
    await page.goto(`${url}/jobs?state=discarded`);
    const discarded = (await rowIds(page)).length;
    await Promise.all([page.waitForURL(/\/jobs\/actions$/), page.click('button[value="retry:search"]')]);
    checks.dryRunTitle = (await page.locator(".confirm h1").textContent()).trim();
    checks.dryRunSample = await page.locator(".confirm table tbody tr").count();
    await page.screenshot({ path: `${shots}/confirm-light.png` });
    await Promise.all([page.waitForURL(/done=/), page.click("#confirm")]);
    checks.flash = (await page.locator(".flash").textContent()).trim();
    checks.discardedBefore = discarded;
    checks.discardedAfter = (await rowIds(page)).length;

    // ---- the queues page -------------------------------------------------------------
    await page.goto(`${url}/queues`);
    const nodeRow = page.locator("tr[data-node]").first();
    if (await nodeRow.count()) {
      // Pause the queue on that node; the page shows it once the node has obeyed.
      await Promise.all([page.waitForURL(/\/queues$/), nodeRow.locator('.queue-actions button[value="pause"]').click()]);
      await page.locator("tr[data-node] .pill.paused").waitFor({ timeout: 20_000 });
      checks.nodePaused = await nodeRow.getAttribute("data-node");
    }
    await page.screenshot({ path: `${shots}/queues-light.png` });

    // ---- charts, a workflow's graph, cron ------------------------------------------
    await page.goto(`${url}/charts?window=15m`);
    checks.charts = await page.locator("svg.chart").count();
    checks.chartLines = await page.locator("svg.chart .line").count();
    await page.screenshot({ path: `${shots}/charts-light.png`, fullPage: true });
    await page.goto(`${url}/workflows`);
    await Promise.all([page.waitForURL(/\/workflows\/[^/]+$/), page.click("tr[data-workflow] a")]);
    const workflowPath = new URL(page.url()).pathname.slice(new URL(url).pathname.replace(/\/$/, "").length);
    checks.workflowSteps = Object.fromEntries(await page.$$eval("svg.dag a.step",
      (steps) => steps.map((s) => [s.dataset.step, s.dataset.state])));
    await page.screenshot({ path: `${shots}/workflow-light.png`, fullPage: true });
    await page.goto(`${url}/cron`);
    checks.cronWords = (await page.locator("tr[data-cron] .words").first().textContent()).trim();
    await page.screenshot({ path: `${shots}/cron-light.png` });

    // ---- dark mode screenshots ------------------------------------------------------
    await page.emulateMedia({ colorScheme: "dark" });
    for (const [name, path] of [["jobs", "/jobs?state=available"], ["queues", "/queues"], ["job", "/jobs/8"], ["new-job", "/jobs/new"], ["charts", "/charts?window=15m"], ["workflow", workflowPath], ["cron", "/cron"]]) {
      await page.goto(`${url}${path}`);
      await page.screenshot({ path: `${shots}/${name}-dark.png`, fullPage: name === "job" || name === "charts" });
    }
    checks.darkBackground = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    await page.emulateMedia({ colorScheme: "light" });

    // ---- a cross-site form post (another origin, no token) ----------------------------
    const evil = await context.newPage();
    watch(evil);
    await evil.route("http://evil.test/**", (route) => route.fulfill({
      contentType: "text/html",
      body: `<form method="post" action="${url}/jobs/1/actions">
               <input name="action" value="delete"><button id="go">go</button></form>`,
    }));
    await evil.goto("http://evil.test/");
    const [response] = await Promise.all([
      evil.waitForResponse((r) => r.url().endsWith("/jobs/1/actions")),
      evil.click("#go"),
    ]);
    checks.crossSiteStatus = response.status();
    await evil.close();
    await page.goto(`${url}/jobs/1`);
    checks.stillThere = (await page.locator(".job-head").count()) === 1;
  }
  console.log(JSON.stringify({ checks, problems }));
} finally {
  await browser.close();
  reader.close(); // an open stdin would keep node running
}
