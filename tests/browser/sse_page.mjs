// Drives examples/fastapi_sse's page in headless Chromium: click the button, watch the
// progress bar fill from the server-sent events, and wait for the final state.
// Usage: node sse_page.mjs <base url> <screenshot path>
// Prints one JSON line: {"percents": [...], "state": ..., "percentText": ..., ...};
// exits non-zero (with the reason on stderr) when the page misbehaves.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node sse_page.mjs <base url> <screenshot path>");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  page.on("dialog", async (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  const streams = [];
  page.on("request", (request) => {
    if (request.url().includes("/events")) streams.push(request.url());
  });

  await page.goto(url);
  // Record every value the bar takes, to show that progress arrived step by step.
  await page.evaluate(() => {
    window.seenPercents = [];
    new MutationObserver(() => {
      const bar = document.querySelector("#tracks li .bar");
      const value = bar && Number(bar.getAttribute("aria-valuenow"));
      if (bar && window.seenPercents.at(-1) !== value) window.seenPercents.push(value);
    }).observe(document.getElementById("tracks"), {
      subtree: true, childList: true, attributes: true, attributeFilter: ["aria-valuenow"],
    });
  });
  await page.fill('input[name="title"]', "Browser track");
  await page.click("#separate");
  const item = page.locator("#tracks li").first();
  await page.waitForFunction(() => {
    const bar = document.querySelector("#tracks li .bar");
    const value = Number(bar && bar.getAttribute("aria-valuenow"));
    return value > 0 && value < 100;
  }, null, { timeout: 30_000 });
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-running.png") });
  await page.locator('#tracks li[data-state="completed"]').waitFor({ timeout: 30_000 });
  await page.screenshot({ path: screenshot });

  const result = {
    percents: await page.evaluate(() => window.seenPercents),
    state: await item.getAttribute("data-state"),
    stateText: (await item.locator(".state").textContent()).trim(),
    percentText: (await item.locator(".percent").textContent()).trim(),
    valueNow: await item.locator(".bar").getAttribute("aria-valuenow"),
    width: await item.locator(".fill").evaluate((fill) => fill.style.width),
    title: (await item.locator(".title").textContent()).trim(),
    message: (await item.locator(".message").textContent()).trim(),
    stream: await item.getAttribute("data-stream"),
    streams: streams.length,
    problems,
  };
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
