// Reads the job's live page in headless Chromium for dataflow/tests/http.rs, which compares
// what it prints with the job's own files. One JSON object per line on stdout.
//
//   node page.mjs final URL SCREENSHOT  waits for the final state; prints the page's figures,
//                                       then takes SCREENSHOT and, at a phone's 390x844,
//                                       SCREENSHOT with "-phone" before ".png", and prints
//                                       {"phone": {"width", "scroll_width"}}
//   node page.mjs live URL              prints two readings of a live page that differ
//   node page.mjs lost URL              prints {"ready":..} once figures show, then waits for
//                                       the error state (the test stops the job) and prints
//                                       what the page shows then
//   node page.mjs provisional URL SCREENSHOT
//                                       under a live feed: two readings of the provisional
//                                       panel that differ, the committed figures with the
//                                       /api/state of the same commit, then at 390x844 a
//                                       SCREENSHOT and {"phone": {"width", "scroll_width"}}
//
// Chromium is the system's ($CHROMIUM, default /usr/bin/chromium), driven by playwright-core.
import { chromium } from "playwright-core";
import { existsSync } from "node:fs";

const [mode, url, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!mode || !url) {
  console.error("usage: node page.mjs final|live|lost|provisional URL [SCREENSHOT]");
  process.exit(2);
}
if (!existsSync(executablePath)) {
  console.error(`no Chromium at ${executablePath}: install Debian's chromium or set CHROMIUM`);
  process.exit(2);
}

const TIMEOUT = 60_000;

// Every figure the page shows, as text; a product cell as its name and stock code.
async function read(page) {
  return page.evaluate(() => {
    const t = (id) => document.querySelector(`[data-testid="${id}"]`).textContent.trim();
    const product = (td) => ({
      description: td.querySelector(".product-name")?.textContent ?? null,
      stock_code: td.querySelector(".product-code").textContent,
    });
    const table = (id) =>
      [...document.querySelectorAll(`[data-testid="${id}"] tr`)].map((tr) =>
        [...tr.querySelectorAll("td")].map((td) =>
          td.dataset.testid === "product" ? product(td) : td.textContent.trim()));
    const items = (id) =>
      [...document.querySelectorAll(`[data-testid="${id}"] li`)].map((li) => li.textContent.trim());
    return {
      status: document.querySelector('[data-testid="status"]').dataset.state,
      status_text: t("status"),
      last_epoch: t("last-epoch"),
      total_revenue: t("total-revenue"),
      total_lines: t("total-lines"),
      total_units: t("total-units"),
      total_invoices: t("total-invoices"),
      total_customers: t("total-customers"),
      total_epochs: t("total-epochs"),
      epoch_label: t("epoch-label"),
      epoch_revenue: t("epoch-revenue"),
      epoch_lines: t("epoch-lines"),
      epoch_invoices: t("epoch-invoices"),
      epoch_top: table("epoch-top"),
      top_products: table("top-products"),
      countries: table("countries"),
      alerts: items("alerts"),
      open_alerts: t("open-alerts"),
      records_read: t("records-read"),
      late_lines: t("late-lines"),
      dead_letters: items("dead-letters"),
      lag: table("lag"),
      chart_bars: document.querySelectorAll('[data-testid="chart"] rect').length,
      chart_axis: [...document.querySelectorAll('[data-testid="chart"] text.axis')]
        .map((t) => t.textContent),
      chart_hover: [...document.querySelectorAll('[data-testid="chart"] rect title')]
        .map((t) => t.textContent),
    };
  });
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  chromiumSandbox: false,
  args: [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
let failed = false;
try {
  // A fixed locale, so that the test knows the separators: en-GB, "£1,234.5".
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, locale: "en-GB" });
  page.on("pageerror", (e) => {
    console.error(`page error: ${e.message}`);
    failed = true;
  });
  await page.goto(url);
  const state = (s) =>
    page.waitForSelector(`[data-testid="status"][data-state="${s}"]`, { timeout: TIMEOUT });
  if (mode === "final") {
    await state("finished");
    console.log(JSON.stringify(await read(page)));
    if (screenshot) {
      await page.screenshot({ path: screenshot, fullPage: true });
      await page.setViewportSize({ width: 390, height: 844 });
      await page.waitForTimeout(200);
      await page.screenshot({ path: screenshot.replace(/\.png$/, "-phone.png"), fullPage: true });
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      console.log(JSON.stringify({ phone: { width: 390, scroll_width: width } }));
    }
  } else if (mode === "live") {
    await state("live");
    const first = await read(page);
    await page.waitForFunction(
      (before) => document.querySelector('[data-testid="last-epoch"]').textContent !== before,
      first.last_epoch,
      { timeout: TIMEOUT },
    );
    const second = await read(page);
    console.log(JSON.stringify({ first, second }));
  } else if (mode === "lost") {
    await page.waitForFunction(
      () => ["live", "finished"].includes(document.querySelector('[data-testid="status"]').dataset.state),
      null,
      { timeout: TIMEOUT },
    );
    console.log(JSON.stringify({ ready: await read(page) }));
    await state("error");
    console.log(JSON.stringify({ lost: await read(page) }));
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  } else if (mode === "provisional") {
    await state("live");
    const shown = () => page.evaluate(() => {
      const t = (id) => document.querySelector(`[data-testid="${id}"]`).textContent.trim();
      const panel = document.querySelector('[data-testid="provisional"]');
      return {
        hidden: panel.hidden,
        marked: panel.classList.contains("provisional") && /provisional/i.test(panel.textContent),
        title: t("prov-title"),
        epoch: t("prov-epoch"),
        lines: t("prov-lines"),
        revenue: t("prov-revenue"),
        top: [...panel.querySelectorAll('[data-testid="prov-top"] tr')].map((tr) =>
          [...tr.querySelectorAll("td")].map((td) => td.textContent.trim())),
      };
    });
    await page.waitForSelector('[data-testid="provisional"]:not([hidden])', { timeout: TIMEOUT });
    const first = await shown();
    await page.waitForFunction(
      (before) => document.querySelector('[data-testid="prov-lines"]').textContent !== before,
      first.lines,
      { timeout: TIMEOUT },
    );
    const second = await shown();
    // The committed figures and /api/state of the same commit: read the page, the API, the
    // page again, until no commit came in between.
    let committed;
    for (let i = 0; i < 50 && !committed; i++) {
      const before = await read(page);
      const api = await page.evaluate(async () => (await fetch("/api/state")).json());
      const after = await read(page);
      if (before.last_epoch === api.epoch && after.last_epoch === api.epoch) {
        committed = { page: after, api };
      }
    }
    console.log(JSON.stringify({ first, second, committed }));
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(200);
    await page.screenshot({ path: screenshot, fullPage: true });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    console.log(JSON.stringify({ phone: { width: 390, scroll_width: width } }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
