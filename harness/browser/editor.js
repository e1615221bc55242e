// Drive the real ComfyUI graph editor in headless Chromium (playwright-core + the system Chromium).
//   node editor.js export PORT API_DIR OUT_DIR   API workflows -> UI-format workflows + thumbnails, as the editor saves them
//   node editor.js check  PORT MANIFEST.json     MANIFEST = [{file, overrides}]: load each UI workflow, list missing node
//                                                types, set widget overrides, graphToPrompt, queue it through the UI (the
//                                                Run button's code path), wait for the result
//   node editor.js template PORT MODULE NAME      open ComfyUI's template browser, pick MODULE under Extensions, click the
//                                                NAME card; report the thumbnails it shows and the graph it loaded
// Prints one JSON object per workflow on stdout; exits 1 if anything failed.
const { chromium } = require('playwright-core');
const fs = require('fs'), os = require('os'), path = require('path');

const [mode, port, ...rest] = process.argv.slice(2);
const BASE = `http://127.0.0.1:${port}`;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

async function openEditor() {
  const ctx = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'hspace-chromium-')), {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1600, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => window.app && app.graph && window.LiteGraph &&
      Object.keys(LiteGraph.registered_node_types || {}).length > 100, null, { timeout: 180000 });
  await page.waitForTimeout(1000);
  if (await page.evaluate(() => document.querySelectorAll('.p-dialog').length)) await page.keyboard.press('Escape');
  return { ctx, page };
}

async function fitView(page) {
  await page.evaluate(() => {
    for (const b of document.querySelectorAll('button')) if (/close/i.test(b.getAttribute('aria-label') || '')) b.click();
    const nodes = app.graph.nodes;
    const x0 = Math.min(...nodes.map(n => n.pos[0])) - 20, y0 = Math.min(...nodes.map(n => n.pos[1])) - 50;
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + 20, y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + 20;
    app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], { zoom: 0.95 });
    app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(600);
}

async function exportAll(page, apiDir, outDir) {
  for (const file of fs.readdirSync(apiDir).filter(f => f.endsWith('.json')).sort()) {
    const api = JSON.parse(fs.readFileSync(path.join(apiDir, file), 'utf8'));
    const ui = await page.evaluate(async ([api, name]) => {
      await app.loadApiJson(api, name);
      app.graph.arrange(60);
      for (const node of app.graph.nodes)  // sample workflows are reproducible: seeds stay fixed
        for (const w of node.widgets || []) if (w.name === 'control_after_generate') w.value = 'fixed';
      return app.graph.serialize();
    }, [api, file]);
    fs.writeFileSync(path.join(outDir, file), JSON.stringify(ui, null, 1) + '\n');
    await fitView(page);
    // the template browser shows custom nodes' templates with the thumbnail <name>.jpg next to <name>.json
    await page.screenshot({ path: path.join(outDir, file.replace(/\.json$/, '.jpg')), type: 'jpeg', quality: 80,
                            clip: { x: 60, y: 80, width: 1540, height: 920 } });
    console.log(JSON.stringify({ workflow: file, nodes: ui.nodes.length, links: ui.links.length }));
  }
}

async function checkAll(page, manifest) {
  let ok = true;
  for (const { file, overrides } of manifest) {
    const ui = JSON.parse(fs.readFileSync(file, 'utf8'));
    const loaded = await page.evaluate(async ([ui, name, overrides]) => {
      const missing = ui.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types));
      const calls = [];
      const orig = app.showMissingNodesError.bind(app);
      app.showMissingNodesError = (m) => { calls.push(m); };
      await app.loadGraphData(ui, true, true, name, { showMissingNodesDialog: false });
      app.showMissingNodesError = orig;
      for (const node of app.graph.nodes)  // what a user does: edit widget values in the editor
        for (const w of node.widgets || []) if (w.name in overrides) w.value = overrides[w.name];
      const prompt = await app.graphToPrompt();
      return { missing, missingDialog: calls.length, errors: app.graph.nodes.filter(n => n.has_errors).map(n => n.type),
               prompt: prompt.output };
    }, [ui, path.basename(file), overrides || {}]);
    const response = page.waitForResponse(r => r.url().endsWith('/prompt') && r.request().method() === 'POST', { timeout: 60000 });
    await page.evaluate(() => app.queuePrompt(0, 1));
    const body = await (await response).json();
    let status = 'not queued', messages = [];
    if (body.prompt_id) {
      for (let i = 0; i < 3600; i++) {
        const h = await page.evaluate(async (id) => (await fetch(`/history/${id}`)).json(), body.prompt_id);
        const entry = h[body.prompt_id];
        if (entry && entry.status && entry.status.completed !== undefined &&
            ['success', 'error'].includes(entry.status.status_str)) {
          status = entry.status.status_str;
          messages = entry.status.messages.filter(m => m[0] === 'execution_error').map(m => m[1].exception_message);
          break;
        }
        await page.waitForTimeout(500);
      }
    } else {
      messages = [JSON.stringify(body).slice(0, 500)];
    }
    const result = { workflow: path.basename(file), missing: loaded.missing, missingDialog: loaded.missingDialog,
                     errors: loaded.errors, status, messages, prompt: loaded.prompt };
    console.log(JSON.stringify(result));
    ok = ok && status === 'success' && loaded.missing.length === 0;
  }
  return ok;
}

async function openTemplate(page, module, name) {
  const fetched = [];  // the browser fetches each thumbnail, then shows it from a blob: URL
  page.on('response', r => { if (r.url().includes('/workflow_templates/')) fetched.push({ url: r.url(), status: r.status() }); });
  await page.evaluate(() => app.extensionManager.command.execute('Comfy.BrowseTemplates'));
  await page.getByText(module, { exact: true }).first().click();
  const card = page.getByTestId(`template-workflow-${name}`);
  await card.waitFor({ timeout: 60000 });
  const shown = () => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(e => {
    const img = e.querySelector('img');
    return { name: e.getAttribute('data-testid').slice('template-workflow-'.length), thumbnail: img ? img.naturalWidth : 0 };
  });
  await page.waitForFunction(`(${shown})().every(c => c.thumbnail > 0)`, null, { timeout: 30000 }).catch(() => {});
  const cards = await page.evaluate(`(${shown})()`);
  await card.click();
  await page.waitForFunction(() => !document.querySelector('.p-dialog'), null, { timeout: 60000 });
  const nodes = await page.evaluate(() => app.graph.nodes.map(n => n.type));
  console.log(JSON.stringify({ module, name, cards, fetched, nodes }));
  return nodes.length > 0;
}

(async () => {
  const { ctx, page } = await openEditor();
  let ok = true;
  try {
    if (mode === 'export') await exportAll(page, rest[0], rest[1]);
    else if (mode === 'check') ok = await checkAll(page, JSON.parse(fs.readFileSync(rest[0], 'utf8')));
    else if (mode === 'template') ok = await openTemplate(page, rest[0], rest[1]);
    else throw new Error('mode must be export, check or template');
  } finally {
    await ctx.close();
  }
  process.exit(ok ? 0 : 1);
})().catch(e => { console.error(e); process.exit(1); });
